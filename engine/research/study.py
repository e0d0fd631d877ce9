"""A study's runs (ablation, scale transfer): each variant in its own scratch checkout, at a scale, on shared seeds.

A variant is a commit, optionally with kept changes reverted three-way on top (engine/store/gitops.py
`scratch_checkout`): the user's checkout and branch are never touched. Every variant runs once per study seed
(research/noise.py `study_seeds`, the same seeds for every variant, so variants compare run by run) through the
session's executor and the same scoring as any run (research/integrity.py `Integrity.measure`). At a scale above 1
the budget and the target's declared size knobs (`[experiment] scale_knobs`) are multiplied by it in the scratch
checkout. Each run emits `StudyRun`; nothing here is an experiment.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from loopdeck.engine.agents.offline.constants import discover
from loopdeck.engine.agents.offline.edit import apply_edits, render
from loopdeck.engine.config import BUDGET_VARIABLE, find_budget_constant, reads_variable
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import StudyKind, StudyRun, StudyStarted
from loopdeck.engine.research.context import LoopContext, LoopStopped, Tally
from loopdeck.engine.research.judge import Judge
from loopdeck.engine.research.noise import pooled_std, study_seeds
from loopdeck.engine.research.record import Recorder
from loopdeck.engine.store.budget import rewrite_constant
from loopdeck.engine.store.ledger import ExperimentRow, first_baseline

STUDIES_DIR = "studies"  # .loopdeck/studies/<n>/<variant>/seed-<s>/: each run's log and metrics
WORKTREES_DIR = "worktrees"


@dataclass(frozen=True)
class Variant:
    label: str  # "incumbent", "without #3", "baseline", "simplified"
    commit: str
    revert: tuple[str, ...] = ()  # kept commits reverted on top of `commit`, oldest first
    change: int | None = None  # the kept experiment this variant is about


@dataclass
class Measured:
    variant: Variant
    metrics: list[float | None] = field(default_factory=list)  # one per seed, None for a failed run
    problem: str = ""  # a conflicting revert, or the first failed run's reason

    @property
    def values(self) -> list[float] | None:
        """Every seed's metric, or None when the variant could not be measured on all of them."""
        if self.problem or any(value is None for value in self.metrics):
            return None
        return [value for value in self.metrics if value is not None]


class Study:
    """One study of the incumbent: its number, seeds, scale, and the runs of its variants."""

    def __init__(self, ctx: LoopContext, kind: StudyKind, incumbent: ExperimentRow, scale: float = 1.0) -> None:
        self.ctx, self.kind, self.incumbent, self.scale = ctx, kind, incumbent, scale
        self.number = ctx.ledger.next_study()
        self.seeds = study_seeds(self.number, ctx.config.research.study_seeds)
        baseline = first_baseline(ctx.ledger.rows())
        # σ was measured at the loop's scale; at another scale only the study's own spread counts.
        self._baseline_std = baseline.noise_std if baseline is not None and scale == 1.0 else None
        self.config = ctx.config
        if scale != 1.0:  # a longer budget and a larger model take longer to start, train and score
            self.config = ctx.config.updated(
                budget_seconds=ctx.config.experiment.budget_seconds * scale,
                timeout_seconds=ctx.config.experiment.timeout_seconds * scale,
                eval_timeout_seconds=ctx.config.evaluation.eval_timeout_seconds * scale)
        self._done = 0
        self._total = 0

    def noise(self, measured: list[Measured]) -> float | None:
        """One run's σ for this study: the larger of the baseline's (at scale 1) and the spread of the variants'
        own runs around their means (a few baseline seeds can underestimate it badly)."""
        spread = pooled_std([values for found in measured if (values := found.values) is not None])
        known = [std for std in (self._baseline_std, spread) if std is not None]
        return max(known) if known else None

    def run(self, variants: list[Variant], then: int = 0) -> list[Measured]:
        """Each variant on every seed, in order; a stop request ends the study (LoopStopped). `then`: how many
        variants will be measured afterwards (`measure`), so that the progress counts them too."""
        self._total = (len(variants) + then) * len(self.seeds)
        self.ctx.emit(StudyStarted(study=self.number, study_kind=self.kind, incumbent=self.incumbent.id,
                                   scale=self.scale, variants=tuple(v.label for v in variants),
                                   seeds=tuple(self.seeds)))
        return [self.measure(variant) for variant in variants]

    def measure(self, variant: Variant) -> Measured:
        """One variant on every seed of the study."""
        ctx = self.ctx
        dest = ctx.state_dir / WORKTREES_DIR / f"study-{self.number}"
        with ctx.repo.scratch_checkout(dest, variant.commit, variant.revert) as scratch:
            if scratch.conflict:
                self._done += len(self.seeds)
                return Measured(variant, problem=scratch.conflict)
            self._scale_files(scratch.path)
            here = dataclasses.replace(ctx, workspace=scratch.path, config=self.config,
                                       protected_hashes=dict(ctx.protected_hashes))
            integrity = Judge(here, Recorder(here, Tally())).integrity
            ctx.run_dir(self.incumbent.id).mkdir(parents=True, exist_ok=True)  # where the runs' pid notes go
            measured = Measured(variant)
            for seed in self.seeds:
                ctx.halt_if_requested()
                run_dir = ctx.state_dir / STUDIES_DIR / str(self.number) / _slug(variant.label) / f"seed-{seed}"
                run = integrity.measure(self.incumbent.id, variant.commit, run_dir, seed)
                if run.status == "aborted":
                    raise LoopStopped(ctx.controller.abort_reason or "stopped")
                self._done += 1
                ctx.emit(StudyRun(study=self.number, variant=variant.label, index=self._done, of=self._total,
                                  seed=seed, status=run.status, metric=run.metric, reason=run.reason))
                measured.metrics.append(run.metric)
                if run.metric is None and not measured.problem:
                    measured.problem = f"its run with seed {seed} failed: {run.status} {run.reason}".strip()
            return measured

    def _scale_files(self, checkout: Path) -> None:
        """Multiply the declared size knobs, and a budget the target keeps in an editable file, by the scale."""
        if self.scale == 1.0:
            return
        experiment = self.config.experiment
        for name, text in scaled_sources(checkout, experiment.editable, experiment.scale_knobs, self.scale).items():
            (checkout / name).write_text(text, encoding="utf-8")
        constant = find_budget_constant(checkout, experiment.editable)
        if constant is not None and not reads_variable(checkout, experiment.editable, BUDGET_VARIABLE):
            text = rewrite_constant((checkout / constant.file).read_bytes(), constant, experiment.budget_seconds)
            (checkout / constant.file).write_text(text, encoding="utf-8")


def scaled_sources(checkout: Path, editable: list[str], knobs: dict[str, str], scale: float) -> dict[str, str]:
    """The editable files whose declared size knobs change at `scale` ("x": multiplied, integers rounded), with
    their new text. LoopdeckError for a declared knob that no editable file defines."""
    files = {name: (checkout / name).read_text(encoding="utf-8") for name in editable if name.endswith(".py")}
    found = {knob.constant: knob for knob in discover(files) if knob.name == knob.constant}
    edits: dict[str, list] = {}
    for name in knobs:
        knob = found.get(name)
        if knob is None or isinstance(knob.value, str | bool):
            raise LoopdeckError(f"[experiment] scale_knobs names {name}, but no editable file defines a numeric "
                                f"module-level `{name} = …`: fix scale_knobs in loopdeck.toml")
        value = knob.value * scale
        edits.setdefault(knob.path, []).append((knob, render(knob, round(value) if isinstance(knob.value, int)
                                                             else value)))
    return {path: apply_edits(files[path], changes) for path, changes in edits.items()}


def scale_problem(workspace: Path, editable: list[str], protected: list[str], knobs: dict[str, str]) -> str:
    """Why nothing would grow at a larger scale ("" when the budget or a size knob can): the budget is fixed in a
    protected file (changing it breaks the pin) and no size knob is declared."""
    if knobs or reads_variable(workspace, [*editable, *protected], BUDGET_VARIABLE):
        return ""
    constant = find_budget_constant(workspace, [*editable, *protected])
    if constant is None or constant.file in editable:
        return ""
    return (f"the budget is fixed by {constant.describe()} (protected) and loopdeck.toml declares no size knob: "
            'declare one, e.g. `scale_knobs = { DEPTH = "x" }` under [experiment], to check transfer')


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "variant"
