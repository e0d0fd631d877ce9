"""Ablation of the kept chain: what each kept change contributes to the incumbent, ± the noise, and a simpler one.

For the incumbent, each kept change is removed alone (its commit reverted three-way on top of the incumbent, in a
scratch checkout) and run on the study's seeds, the same seeds as the incumbent's own re-runs
(research/study.py). A change's contribution is the paired gain of the incumbent over the variant without it, ±
one standard error (the band): it `matters` beyond `confirm_multiple` bands (the loop's own threshold for a gain
the noise cannot explain), `hurts` below minus that, and contributes `nothing` within it. A revert that
conflicts with later changes is reported (`conflict`), not guessed. Changes that contribute nothing or hurt are
offered for removal; `apply` reverts them all together, re-runs that simpler incumbent on the same seeds, and
keeps it — a new experiment row, the research branch moved to it — only when it scores the same within the noise.
The study's rows go to the ledger's studies table, never to results.tsv.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import ExperimentKept, StudyFinished, StudyLine
from loopdeck.engine.research.context import LoopContext, Tally
from loopdeck.engine.research.noise import paired_gain
from loopdeck.engine.research.record import Recorder
from loopdeck.engine.research.study import WORKTREES_DIR, Measured, Study, Variant
from loopdeck.engine.store.ledger import ExperimentRow, StudyRow

REMOVABLE = frozenset({"nothing", "hurts"})


@dataclass(frozen=True)
class Contribution:
    change: ExperimentRow
    gain: float | None  # how much better the incumbent is with the change than without it
    band: float | None
    verdict: str  # matters | nothing | hurts | conflict | failed
    detail: str = ""


@dataclass
class Ablation:
    study: int
    incumbent: ExperimentRow
    contributions: list[Contribution] = field(default_factory=list)
    applied: ExperimentRow | None = None  # the simpler incumbent, when `apply` made one
    summary: str = ""

    @property
    def removable(self) -> list[ExperimentRow]:
        return [c.change for c in self.contributions if c.verdict in REMOVABLE]


def kept_chain(rows: list[ExperimentRow], incumbent: ExperimentRow) -> list[ExperimentRow]:
    """The kept changes the incumbent is made of, oldest first: kept since its research line's baseline, minus
    those an applied ablation removed (and those simplifications themselves)."""
    rows = [row for row in rows if row.id <= incumbent.id]
    start = max((row.id for row in rows if row.is_baseline and row.status == "keep"), default=-1)
    kept = [row for row in rows if row.id > start and row.status == "keep"]
    removed = {number for row in kept for number in row.meta.get("ablation_removes", [])}
    return [row for row in kept if row.id not in removed and "ablation_removes" not in row.meta]


def ablate(ctx: LoopContext, apply: bool = False) -> Ablation:
    """Measure every kept change's contribution to the incumbent; with `apply`, keep the incumbent without the
    ones that contribute nothing if it scores the same within the noise. LoopdeckError when there is nothing to
    ablate or the incumbent itself cannot be measured."""
    incumbent = ctx.ledger.incumbent()
    if incumbent is None:
        raise LoopdeckError("nothing to ablate: no experiment has finished in this workspace yet (run "
                            "`loopdeck run DIR` first)")
    chain = kept_chain(ctx.ledger.rows(), incumbent)
    if not chain:
        raise LoopdeckError(f"nothing to ablate: the incumbent #{incumbent.id} has no kept changes on top of its "
                            "baseline (let the loop keep some first: `loopdeck run DIR`)")
    study = Study(ctx, "ablation", incumbent)
    variants = [Variant("incumbent", incumbent.commit),
                *(Variant(f"without #{row.id}", incumbent.commit, (row.commit,), row.id) for row in chain)]
    measured = study.run(variants, then=1 if apply else 0)
    reference = measured[0].values
    if reference is None:  # recorded all the same: the study's number and its runs' logs stay taken
        ctx.ledger.record_study([_study_row(study, found, None, "failed" if found.problem else "", "")
                                 for found in measured])
        raise LoopdeckError(f"the incumbent #{incumbent.id} could not be re-run ({measured[0].problem}): fix what "
                            "stops it (`loopdeck doctor DIR`) and ablate again")
    result = Ablation(study.number, incumbent)
    std = study.noise(measured)
    result.contributions = [_contribution(ctx, std, row, found, reference)
                            for row, found in zip(chain, measured[1:], strict=True)]
    rows = [_study_row(study, measured[0], None, "", "")]
    rows += [_study_row(study, found, c, c.verdict, c.detail) for c, found in zip(result.contributions,
                                                                                   measured[1:], strict=True)]
    ctx.ledger.record_study(rows)  # before a simplification, which may fail (a dirty checkout on the branch)
    note = ""
    if apply and result.removable:
        result.applied, note, simplified = _simplify(ctx, study, std, result.removable, reference)
        ctx.ledger.record_study([_study_row(study, simplified, None, "kept" if result.applied else "not kept",
                                            note)])
    result.summary = _summary(result, note, apply)
    ctx.emit(StudyFinished(study=study.number, study_kind="ablation", incumbent=incumbent.id,
                           lines=tuple(_line(c) for c in result.contributions),
                           removable=tuple(row.id for row in result.removable),
                           applied=result.applied.id if result.applied else None, summary=result.summary))
    return result


def _contribution(ctx: LoopContext, std: float | None, row: ExperimentRow, found: Measured,
                  reference: list[float]) -> Contribution:
    values = found.values
    if values is None:
        verdict = "conflict" if "conflict" in found.problem else "failed"
        return Contribution(row, None, None, verdict, found.problem)
    metric = ctx.config.metric
    contribution, band = paired_gain(reference, values, std, metric.direction)
    margin = ctx.config.evaluation.confirm_multiple * (band or 0.0)
    if contribution > metric.min_improvement + margin:
        verdict = "matters"
    elif contribution < -margin:
        verdict = "hurts"
    else:
        verdict = "nothing"
    return Contribution(row, contribution, band, verdict)


def _simplify(ctx: LoopContext, study: Study, std: float | None, removable: list[ExperimentRow],
              reference: list[float]) -> tuple[ExperimentRow | None, str, Measured]:
    """Run the incumbent without every removable change; keep it when it scores the same within the noise."""
    incumbent = study.incumbent
    reverts = tuple(row.commit for row in removable)
    names = ", ".join(f"#{row.id}" for row in removable)
    found = study.measure(Variant("simplified", incumbent.commit, reverts))
    values = found.values
    if values is None:
        return None, f"the incumbent without {names} could not be measured ({found.problem})", found
    direction = ctx.config.metric.direction
    change, band = paired_gain(values, reference, std, direction)
    shown = f"{change:+.6f}" + (f" ± {band:.6f}" if band is not None else "")
    if change < -ctx.config.evaluation.confirm_multiple * (band or 0.0):
        return None, f"without {names} it scores worse ({shown} vs the incumbent): not kept", found
    with ctx.repo.scratch_checkout(ctx.state_dir / WORKTREES_DIR / f"study-{study.number}", incumbent.commit,
                                   reverts) as scratch:
        description = f"simplify: remove {names} (ablation study {study.number}: no contribution)"
        commit = scratch.commit(description)
    ctx.repo.move_research_branch(ctx.branch, commit, incumbent.commit)
    assert incumbent.metric is not None
    shift = statistics.fmean(values) - statistics.fmean(reference)
    row = ExperimentRow(id=ctx.ledger.next_id(), status="running", description=description,
                        rationale=f"ablation study {study.number}: {names} contribute nothing within the noise",
                        parent_commit=incumbent.commit, commit=commit, agent="ablation",
                        incumbent_metric=incumbent.metric, diff=ctx.repo.diff(incumbent.commit, commit),
                        meta={"ablation_removes": [r.id for r in removable], "study": study.number})
    ctx.ledger.begin(row)
    reason = f"scores the same as #{incumbent.id} within the noise ({shown} on {len(values)} shared seeds)"
    ctx.emit(ExperimentKept(experiment=row.id, commit=commit, metric=incumbent.metric + shift,
                            previous_metric=incumbent.metric))
    Recorder(ctx, Tally()).finish(row, "keep", reason=reason, metric=incumbent.metric + shift, delta=shift,
                                  metric_runs=len(values), noise_std=std, delta_band=band)
    kept = ctx.ledger.get(row.id)
    return kept, f"kept as #{row.id} ({commit[:8]}): {reason}", found


def _study_row(study: Study, found: Measured, contribution: Contribution | None, verdict: str,
               detail: str) -> StudyRow:
    return StudyRow(study=study.number, kind="ablation", incumbent=study.incumbent.id, label=found.variant.label,
                    change=found.variant.change, commit=found.variant.commit, seeds=list(study.seeds),
                    metrics=list(found.metrics), gain=contribution.gain if contribution else None,
                    band=contribution.band if contribution else None, verdict=verdict,
                    detail=detail or found.problem)


def _line(c: Contribution) -> StudyLine:
    return StudyLine(label=f"#{c.change.id}", change=c.change.id, description=c.change.description, gain=c.gain,
                     band=c.band, verdict=c.verdict, detail=c.detail)


def _summary(result: Ablation, note: str, apply: bool) -> str:
    counts = {verdict: sum(c.verdict == verdict for c in result.contributions)
              for verdict in ("matters", "nothing", "hurts", "conflict", "failed")}
    text = f"ablation of #{result.incumbent.id}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    removable = ", ".join(f"#{row.id}" for row in result.removable)
    if not removable:
        return text + "; every measured change matters"
    if not apply:
        return text + f"; removable: {removable} (`loopdeck ablate DIR --apply` keeps the simpler incumbent)"
    return text + f"; {note}"
