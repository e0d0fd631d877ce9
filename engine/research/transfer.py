"""The scale-transfer check: does the incumbent's gain over the baseline hold at a larger budget and model?

The baseline commit and the incumbent run at `scale` × the budget, with the target's declared size knobs
(`[experiment] scale_knobs`) multiplied too, on the study's shared seeds (research/study.py). The noise band there
comes from the baseline's own spread at that scale. The gain at scale is compared with the gain the loop measured:
it `holds` (beyond `confirm_multiple` bands and at least HOLD_FRACTION of it), `shrinks` (less, or within the
noise) or `reverses` (worse than the baseline beyond `confirm_multiple` bands). `per_change` also runs the incumbent without each kept change at that
scale: a change whose contribution reverses there helped only the small run. Rows go to the ledger's studies
table; `loopdeck report` draws them (transfer.png) and tables them in summary.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loopdeck.engine.config import SCALES
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import StudyFinished, StudyLine
from loopdeck.engine.research.ablation import kept_chain
from loopdeck.engine.research.context import LoopContext
from loopdeck.engine.research.noise import delta_band, gain, paired_gain
from loopdeck.engine.research.study import Measured, Study, Variant, scale_problem
from loopdeck.engine.store.ledger import ExperimentRow, StudyRow, first_baseline

HOLD_FRACTION = 0.5  # a gain at scale at least this share of the small-scale gain (and beyond the noise) holds


@dataclass(frozen=True)
class TransferLine:
    label: str  # "incumbent" (its gain over the baseline) or "#3" (that change's contribution)
    change: ExperimentRow | None
    reference_gain: float | None  # at the loop's scale
    reference_band: float | None
    gain: float | None  # at the study's scale
    band: float | None
    verdict: str  # holds | shrinks | reverses | failed
    detail: str = ""


@dataclass
class Transfer:
    study: int
    scale: float
    incumbent: ExperimentRow
    lines: list[TransferLine] = field(default_factory=list)
    summary: str = ""


def transfer(ctx: LoopContext, scale: float, per_change: bool = False) -> Transfer:
    """Run the baseline and the incumbent (and, with `per_change`, the incumbent without each kept change) at
    `scale`; LoopdeckError when there is nothing to compare or nothing that grows."""
    if scale not in SCALES:
        raise LoopdeckError(f"--scale must be one of {', '.join(f'{s:g}x' for s in SCALES)}, got {scale:g}")
    incumbent = ctx.ledger.incumbent()
    baseline = first_baseline(ctx.ledger.rows())
    if incumbent is None or baseline is None or incumbent.id == baseline.id:
        raise LoopdeckError("nothing to transfer: the incumbent is the baseline (let the loop keep a change first: "
                            "`loopdeck run DIR`)")
    experiment = ctx.config.experiment
    problem = scale_problem(ctx.workspace, experiment.editable, experiment.protected, experiment.scale_knobs)
    if problem:
        raise LoopdeckError(problem)
    chain = kept_chain(ctx.ledger.rows(), incumbent) if per_change else []
    study = Study(ctx, "transfer", incumbent, scale)
    measured = study.run([Variant("baseline", baseline.commit), Variant("incumbent", incumbent.commit),
                          *(Variant(f"without #{row.id}", incumbent.commit, (row.commit,), row.id) for row in chain)])
    base, top = measured[0].values, measured[1].values
    if base is None or top is None:  # recorded all the same: the study's number and its runs' logs stay taken
        ctx.ledger.record_study([StudyRow(study=study.number, kind="transfer", incumbent=incumbent.id,
                                          label=found.variant.label, scale=scale, change=found.variant.change,
                                          commit=found.variant.commit, seeds=list(study.seeds),
                                          metrics=list(found.metrics), verdict="failed" if found.problem else "",
                                          detail=found.problem) for found in measured])
        failed = measured[0] if base is None else measured[1]
        raise LoopdeckError(f"the {failed.variant.label} could not run at {scale:g}x ({failed.problem}): a larger "
                            "model may not fit; try a smaller --scale")
    std = study.noise(measured)  # the noise at this scale, from the variants' own runs
    direction = ctx.config.metric.direction
    assert incumbent.metric is not None and baseline.metric is not None
    small = gain(incumbent.metric, baseline.metric, direction)
    small_band = delta_band(baseline.noise_std, incumbent.metric_runs, baseline.metric_runs)
    result = Transfer(study.number, scale, incumbent)
    result.lines.append(_judge(ctx, "incumbent", None, small, small_band, *paired_gain(top, base, std, direction)))
    for row, found in zip(chain, measured[2:], strict=True):
        result.lines.append(_per_change(ctx, row, found, top, std))
    ctx.ledger.record_study(_study_rows(study, measured, result.lines))
    overall = result.lines[0]
    result.summary = (f"transfer of #{incumbent.id} at {scale:g}x: the gain over the baseline {overall.verdict} "
                      f"({_shown(overall.reference_gain, overall.reference_band)} → "
                      f"{_shown(overall.gain, overall.band)})")
    reversed_changes = [line.label for line in result.lines[1:] if line.verdict == "reverses"
                        and (line.reference_gain or 0.0) > (line.reference_band or 0.0)]
    if reversed_changes:
        result.summary += f"; helps only the small run: {', '.join(reversed_changes)}"
    ctx.emit(StudyFinished(study=study.number, study_kind="transfer", incumbent=incumbent.id, scale=scale,
                           lines=tuple(_line(line) for line in result.lines), summary=result.summary))
    return result


def _per_change(ctx: LoopContext, row: ExperimentRow, found: Measured, top: list[float],
                std: float | None) -> TransferLine:
    """A kept change's contribution at scale against its contribution at the loop's scale: the latest ablation's
    of this incumbent, else the gain it was kept for."""
    label = f"#{row.id}"
    reference, band = _small_contribution(ctx, row)
    values = found.values
    if values is None:
        return TransferLine(label, row, reference, band, None, None, "failed", found.problem)
    return _judge(ctx, label, row, reference, band, *paired_gain(top, values, std, ctx.config.metric.direction))


def _small_contribution(ctx: LoopContext, row: ExperimentRow) -> tuple[float | None, float | None]:
    ablations = [s for s in ctx.ledger.studies("ablation") if s.change == row.id and s.gain is not None]
    if ablations:
        return ablations[-1].gain, ablations[-1].band
    if row.metric is None or row.incumbent_metric is None:
        return None, None
    return gain(row.metric, row.incumbent_metric, ctx.config.metric.direction), row.delta_band


def _judge(ctx: LoopContext, label: str, change: ExperimentRow | None, reference: float | None,
           reference_band: float | None, at_scale: float, band: float | None) -> TransferLine:
    # The loop's own threshold for a difference the noise cannot explain: confirm_multiple bands.
    margin = ctx.config.evaluation.confirm_multiple * (band or 0.0)
    if at_scale < -margin:
        verdict = "reverses"
    elif at_scale > margin and (reference is None or at_scale >= HOLD_FRACTION * reference):
        verdict = "holds"
    else:
        verdict = "shrinks"
    return TransferLine(label, change, reference, reference_band, at_scale, band, verdict)


def _study_rows(study: Study, measured: list[Measured], lines: list[TransferLine]) -> list[StudyRow]:
    # The baseline's row has no line; the incumbent's carries the overall gain, each "without" its change's.
    judged: list[TransferLine | None] = [None, *lines]
    return [StudyRow(study=study.number, kind="transfer", incumbent=study.incumbent.id, label=found.variant.label,
                     scale=study.scale, change=found.variant.change, commit=found.variant.commit,
                     seeds=list(study.seeds), metrics=list(found.metrics),
                     gain=line.gain if line else None, band=line.band if line else None,
                     reference_gain=line.reference_gain if line else None, verdict=line.verdict if line else "",
                     detail=(line.detail if line else "") or found.problem)
            for found, line in zip(measured, judged, strict=True)]


def _line(line: TransferLine) -> StudyLine:
    return StudyLine(label=line.label, change=line.change.id if line.change else None,
                     description=line.change.description if line.change else "gain over the baseline",
                     gain=line.gain, band=line.band, reference_gain=line.reference_gain, verdict=line.verdict,
                     detail=line.detail)


def _shown(value: float | None, band: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.6f}" + (f" ± {band:.6f}" if band is not None else "")
