"""Research integrity around each run: a score the agent cannot game, gains that are real, the holdout split.

The research loop owns an experiment's life cycle (commit, run, record, revert) and calls in here at a few points:
`classify` and `judge` turn a finished run into keep / discard / rejected, `watch` gives a run its early-abort
watcher, `after_record` and `session_ending` score the incumbent on the holdout split.

`judge`, in order:
1. Budget, checked from outside (research/budget_check.py): wall time within budget + the start-up allowance
   (at least twice the baseline's own overhead), and training time before the last step within 10% + 1 s.
   Over: `rejected` — except the unchanged baseline and its repeats, the reference, which only get a warning.
2. Score: trusted mode (engine/run/evaluator.py) re-checks the protected files, then a separate process scores the
   saved weights; a model that looks ahead is `rejected`. The printed number is kept as `reported_metric` and
   flagged when it disagrees. Self-reported mode uses the printed number.
3. Keep: the baseline is re-run with `baseline_seeds` seeds to measure the noise σ (its metric is their mean). A
   candidate within `confirm_multiple`·σ of the incumbent is re-run with fresh seeds (research/noise.py) and kept
   only if the mean over its runs clears the threshold. Extra runs are rows of the ledger's runs table, never
   experiments: results.tsv stays one line per experiment. A target whose files never read LOOPDECK_SEED cannot
   be seeded: unless its settings ask otherwise it gets one baseline run (engine/config/files.py), and σ is
   unknown, so nothing is re-run for confirmation. Each extra run is announced (`RunRepeatStarted`, with a label
   such as "baseline seed 2/3") and streams its training steps, so a person sees which run trains and its time left.
4. Noise paid once: the estimate is stored under its key (target, budget, machine; research/noise.py) and reused
   by later sessions; `refresh_noise` (at session start) and `after_record` (after a keep) re-measure it on the
   incumbent when it no longer holds.

About 500 lines: every extra run (noise, confirmation, incumbent, holdout, study) goes through `_repeat`/`_score` here,
and splitting the noise bookkeeping from them would hand those privates to another module.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopdeck.engine.config import budget_location, seedable
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    ExperimentFinished,
    HoldoutScored,
    NoiseEstimated,
    Notice,
    RunRepeated,
    RunRepeatStarted,
    StateChanged,
)
from loopdeck.engine.research.budget_check import BudgetCheck, reported_seconds
from loopdeck.engine.research.context import LoopContext
from loopdeck.engine.research.early_abort import AbortRule, EarlyAbort
from loopdeck.engine.research.guard import GuardRejection, check_protected
from loopdeck.engine.research.noise import (
    baseline_seeds,
    confirm,
    confirmation_seeds,
    delta_band,
    gain,
    machine_id,
    needs_confirmation,
    noise_key,
    reusable,
    run_std,
)
from loopdeck.engine.run.evaluator import (
    Evaluation,
    evaluation_plan,
    evaluator_argv,
    read_evaluation,
    trusted_hashes,
)
from loopdeck.engine.run.executor import LOG_FILE, METRICS_FILE, RunResult, classify
from loopdeck.engine.run.metrics import end_record, metric_from_log
from loopdeck.engine.store.ledger import ExperimentRow, NoiseEstimate, RunRow, first_baseline
from loopdeck.engine.store.workspace import file_hashes

WEIGHTS = "model.pt"

Execute = Callable[..., tuple[RunResult, dict[str, dict]]]


@dataclass
class Judgement:
    status: str  # keep | discard | rejected | crash | aborted (a stop request reached an extra run)
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)  # ledger fields: metric, delta, reported_metric, …


@dataclass(frozen=True)
class _Score:
    status: str  # ok | rejected | crash | aborted
    reason: str = ""
    metric: float | None = None
    val_metric: float | None = None
    log_tail: str = ""
    printed: float | None = None  # the trusted score of what the run printed (the same subset, or in full)


@dataclass(frozen=True)
class Measurement:
    """An extra run's outcome: its status ("ok", a failure, or "aborted" by a stop request) and metric."""

    status: str
    metric: float | None
    reason: str = ""
    reported: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None


class _Interrupted(Exception):
    """A stop request killed an extra run: the experiment is interrupted."""


class Integrity:
    def __init__(self, ctx: LoopContext, execute: Execute, shared: Integrity | None = None) -> None:
        """`execute(number, commit, run_dir, *, seed, argv, timeout, stream, inputs_from)` runs a process for
        experiment `number` at `commit` through the session's executor, the way the loop runs training (sandbox, scrubbed
        env, abort), and returns its result (engine/research/judge.py). `shared`: the session's own, whose
        evaluation reference this one checks against too (a run in its own worktree, engine/research/parallel.py)."""
        self.ctx = ctx
        self.settings = ctx.config.evaluation
        self.plan = evaluation_plan(ctx.workspace, ctx.config)
        if self.plan.trusted:  # hashed now, at session start, and checked before every run and every evaluation
            ctx.protected_hashes.update(trusted_hashes(ctx.workspace))
        self._execute = execute
        self._budget_location = budget_location(ctx.workspace, ctx.config.experiment)
        self._seedable = seedable(ctx.workspace, ctx.config.experiment)
        # The first trusted evaluation's corpus and constants; one dict for every run in flight (`shared`).
        self._reference: dict[str, Any] = shared._reference if shared is not None else {}
        baseline = self._baseline()
        self._std = baseline.noise_std if baseline else None
        self._machine = machine_id()
        self._stale = ""  # why the stored noise estimate does not hold (it is re-measured before the next run)
        self._overhead = _overhead(baseline.wall_seconds, baseline.training_seconds) if baseline else None

    @property
    def self_reported(self) -> bool:
        return not self.plan.trusted

    def session_started(self) -> None:
        """Refuse an impossible mode; say how runs are scored; repeat the noise measured by an earlier session."""
        if self.plan.error:
            raise LoopdeckError(self.plan.error)
        self.ctx.emit(Notice(level="info", message=self.plan.note))
        baseline = self._baseline()
        if baseline is None and not self._seedable and self.settings.baseline_seeds > 1:
            self.ctx.emit(Notice(level="info", message=f"the target never reads LOOPDECK_SEED: its "
                                 f"{self.settings.baseline_seeds} baseline runs measure its nondeterminism, not "
                                 "seed-to-seed noise"))
        incumbent = self.ctx.ledger.incumbent()
        if baseline is None or incumbent is None or self.settings.baseline_seeds < 2:
            return
        estimate = self._estimate_in_force(baseline, incumbent)
        if estimate is None:
            self._std = None
            self.ctx.emit(Notice(level="info", message=f"the run-to-run noise is re-measured on the incumbent "
                                 f"#{incumbent.id} before the next experiment: {self._stale}"))
            return
        self._std = estimate.std
        if estimate.std is not None:
            values = [run.metric for run in self.ctx.ledger.runs(estimate.experiment)
                      if run.role == "noise" and run.metric is not None]  # a re-measurement's runs come last
            self.ctx.emit(NoiseEstimated(std=estimate.std, n=estimate.runs, mean=estimate.mean,
                                         values=tuple(values[-estimate.runs:])))

    def _estimate_in_force(self, baseline: ExperimentRow, incumbent: ExperimentRow) -> NoiseEstimate | None:
        """The stored noise estimate that holds for this session (noise.reusable's rule), or None (self._stale
        says why). A ledger from before estimates were keyed adopts its baseline's σ for the conditions of now."""
        key, context = self._noise_key()
        estimates = self.ctx.ledger.noise_estimates()
        if not estimates and baseline.noise_std is not None:
            legacy = NoiseEstimate(key, context, baseline.noise_std, baseline.metric or 0.0, baseline.metric_runs,
                                   baseline.id)
            self.ctx.ledger.save_noise(legacy)
            return legacy
        estimate, self._stale = reusable(estimates, key, context, incumbent.metric, self.settings.noise_drift)
        return estimate

    def refresh_noise(self) -> None:
        """Re-measure the noise on the incumbent when the stored estimate does not hold (see session_started)."""
        incumbent = self.ctx.ledger.incumbent()
        if self._stale and incumbent is not None:
            try:
                self._remeasure(incumbent, self._stale)
            except _Interrupted:
                self.ctx.halt_if_requested()

    def _remeasure(self, row: ExperimentRow, why: str) -> None:
        """Noise runs of a kept experiment (the tree at its commit): the new estimate, stored and in force."""
        assert row.metric is not None
        self.ctx.emit(Notice(level="info", experiment=row.id, message=f"re-measuring the run-to-run noise on "
                             f"#{row.id}: {why}"))
        # A metric that is already a mean of several runs is quieter than one run: it is not a sample of the noise.
        values = [row.metric] if row.metric_runs == 1 else []
        seeds = baseline_seeds(self.settings.baseline_seeds + (0 if values else 1))
        for index, seed in enumerate(seeds, start=len(values) + 1):
            value = self._repeat(row, "noise", seed, index, len(seeds) + len(values))
            if value is not None:
                values.append(value)
        self._std, self._stale = run_std(values), ""
        self._save_estimate(row.id, values)

    def _noise_key(self) -> tuple[str, str]:
        files = file_hashes(self.ctx.workspace, self.ctx.config.experiment.editable)
        return noise_key(files, self.ctx.protected_hashes, self.ctx.config.experiment.budget_seconds, self._machine)

    def _save_estimate(self, experiment: int, values: list[float]) -> None:
        key, context = self._noise_key()
        mean = statistics.fmean(values)
        self.ctx.ledger.save_noise(NoiseEstimate(key, context, self._std, mean, len(values), experiment))
        if self._std is not None:
            self.ctx.emit(NoiseEstimated(std=self._std, n=len(values), values=tuple(values), mean=mean))

    # --- during the run ----------------------------------------------------------------------------------------

    def watch(self, incumbent: ExperimentRow | None, curve: tuple[tuple[float, float], ...]) -> EarlyAbort | None:
        """The early-abort watcher of a candidate's run (None: off, the baseline, or no incumbent curve)."""
        if not self.settings.early_abort or incumbent is None or not curve:
            return None
        rule = AbortRule(self.settings.abort_after_fraction, self.settings.abort_margin,
                         self.settings.abort_sustain_points)
        return EarlyAbort(curve, self.ctx.config.experiment.budget_seconds, rule)

    # --- after the run -----------------------------------------------------------------------------------------

    def classify(self, result: RunResult, reported: float | None) -> tuple[str, str]:
        """executor.classify, except that in trusted mode the printed metric decides nothing (not even whether the
        run produced a result): a run that exits cleanly is scored from its weights."""
        return classify(result, 0.0 if self.plan.trusted else reported)

    def judge(self, row: ExperimentRow, incumbent: ExperimentRow | None, result: RunResult, reported: float | None,
              run_dir: Path) -> Judgement:
        """The verdict on a run that ended cleanly (classify said ok): budget, score, noise-aware keep."""
        fields: dict[str, Any] = {"reported_metric": reported, "self_reported": self.self_reported}
        if incumbent is None:
            self._overhead = _overhead(result.wall_seconds, reported_seconds(result))
        problem = self._over_budget(result, run_dir, row.id, baseline=incumbent is None)
        if problem:
            return Judgement("rejected", problem, fields)
        score = self._score(row.id, row.commit, run_dir, reported)
        if score.status != "ok":
            return Judgement(score.status, score.reason, {**fields, "log_tail": score.log_tail})
        assert score.metric is not None
        fields.update(self._mismatch(row.id, score.printed, reported))
        try:
            if incumbent is None:
                return self._judge_baseline(row, score.metric, fields)
            return self._judge_candidate(row, incumbent, score.metric, fields)
        except _Interrupted:
            return Judgement("aborted", "", fields)

    def _over_budget(self, result: RunResult, run_dir: Path, number: int, *, baseline: bool) -> str:
        """Why the run is over its budget ("" when it is not). The unchanged baseline is never rejected: it is
        what the repository does, the reference every change is judged against; a person hears of it instead."""
        allowance = max(self.settings.startup_allowance_seconds, 2 * (self._overhead or 0.0))
        check = BudgetCheck(self.ctx.config.experiment.budget_seconds, allowance, self._budget_location,
                            self.ctx.config.wall_budget())
        problem = check.problem(result, run_dir)
        if problem and baseline:
            self.ctx.emit(Notice(level="warning", experiment=number, message=f"the baseline is {problem} (kept: "
                                 "the unchanged code is the reference, never rejected)"))
            return ""
        return problem

    def _score(self, number: int, commit: str, run_dir: Path, reported: float | None, split: str = "val") -> _Score:
        """The run's metric: the trusted evaluator's score of its weights, or (self-reported) what it printed."""
        if not self.plan.trusted:
            return _Score("ok", metric=reported)
        try:
            check_protected(self.ctx.workspace, self.ctx.protected_hashes)
        except GuardRejection as rejection:
            return _Score("rejected", rejection.reason)
        weights = run_dir / WEIGHTS
        if not weights.is_file():
            return _Score("crash", f"the run saved no {WEIGHTS}: trusted evaluation scores the saved weights, so "
                          f"{self.plan.train_file} must keep its save_model(...) call")
        argv = evaluator_argv(self.ctx.workspace, self.plan.train_file, weights,
                              self.ctx.protected_hashes[self.plan.harness], split)
        # Where the weights are: on a cluster, the node (and worker) that trained them.
        result, _ = self._execute(number, commit, run_dir / f"eval-{split}", argv=argv,
                                  timeout=self.settings.eval_timeout_seconds, stream=False, inputs_from=run_dir)
        if result.aborted:
            return _Score("aborted")
        evaluation = read_evaluation(result)
        if evaluation.status != "ok":
            return _Score(evaluation.status, evaluation.reason, log_tail=result.log_tail)
        problem = self._changed_evaluation(evaluation)
        if problem:
            return _Score("rejected", problem, log_tail=result.log_tail)
        printed = evaluation.printed_counterpart(end_record(run_dir / METRICS_FILE).get("eval_tokens"))
        return _Score("ok", metric=evaluation.bpb, val_metric=evaluation.val_bpb, printed=printed)

    def _changed_evaluation(self, evaluation: Evaluation) -> str:
        if evaluation.harness_sha256 != self.ctx.protected_hashes[self.plan.harness]:
            return (f"the evaluation used {evaluation.harness or 'an unknown harness'} instead of the workspace's "
                    f"hash-checked {self.plan.harness}")
        if not self._reference:
            self._reference.update(evaluation.reference)
        changed = [f"{key} {self._reference.get(key)!r} → {value!r}" for key, value in evaluation.reference.items()
                   if value != self._reference.get(key)]
        if changed:
            return f"the evaluation changed since the session started ({'; '.join(changed)})"
        return ""

    def _mismatch(self, number: int, metric: float | None, reported: float | None) -> dict[str, Any]:
        """Flag a printed number that disagrees with the trusted score of the same tokens (`metric`)."""
        if (not self.plan.trusted or reported is None or metric is None
                or abs(reported - metric) <= self.settings.mismatch_tolerance):
            return {}
        name = self.ctx.config.metric.name
        self.ctx.emit(Notice(level="warning", experiment=number,
                             message=f"#{number} printed {name} {reported:.6f} but scores {metric:.6f} on the same tokens in the "
                             "trusted evaluation: the printed number is ignored"))
        return {"metric_mismatch": True}

    def _judge_baseline(self, row: ExperimentRow, metric: float, fields: dict[str, Any]) -> Judgement:
        key, _ = self._noise_key()
        stored = next((e for e in self.ctx.ledger.noise_estimates() if e.key == key), None)
        if stored is not None and stored.std is not None and self.settings.baseline_seeds > 1:
            self._std = stored.std
            fields.update(metric=metric, noise_std=stored.std)
            self.ctx.emit(NoiseEstimated(std=stored.std, n=stored.runs, mean=stored.mean, values=()))
            return Judgement("keep", f"baseline: run-to-run noise σ {stored.std:.6f} reused (measured by "
                             f"#{stored.experiment} on the same target, budget and machine)", fields)
        values = [metric]
        seeds = baseline_seeds(self.settings.baseline_seeds)
        for index, seed in enumerate(seeds, start=2):
            value = self._repeat(row, "noise", seed, index, len(seeds) + 1)
            if value is not None:
                values.append(value)
        self._std = run_std(values)
        mean = statistics.fmean(values)
        fields.update(metric=mean, metric_runs=len(values), noise_std=self._std)
        if len(values) > 1:
            self._save_estimate(row.id, values)
        if self._std is None:
            return Judgement("keep", "baseline", fields)
        runs = f"{len(values)} seeds" if self._seedable else f"{len(values)} runs (not seedable: σ is its nondeterminism)"
        return Judgement("keep", f"baseline: mean of {runs}, run-to-run noise σ {self._std:.6f}", fields)

    def _judge_candidate(self, row: ExperimentRow, incumbent: ExperimentRow, metric: float,
                         fields: dict[str, Any]) -> Judgement:
        cfg = self.ctx.config.metric
        assert incumbent.metric is not None
        improvement = gain(metric, incumbent.metric, cfg.direction)
        band = delta_band(self._std, 1, incumbent.metric_runs)
        fields.update(metric=metric, delta=metric - incumbent.metric, noise_std=self._std, delta_band=band)
        if improvement <= cfg.min_improvement:
            return Judgement("discard", f"not better than the incumbent ({metric:.6f} vs {incumbent.metric:.6f})",
                             fields)
        if not needs_confirmation(improvement, self._std, self.settings.confirm_multiple, cfg.min_improvement):
            return Judgement("keep", f"improved on the incumbent by {improvement:.6f}", fields)
        seeds = confirmation_seeds(row.id, self.settings.confirm_runs)
        values = [metric]
        for index, seed in enumerate(seeds, start=2):
            value = self._repeat(row, "confirm", seed, index, len(seeds) + 1)
            if value is None:
                return Judgement("discard", f"not confirmed: its re-run with seed {seed} failed", fields)
            values.append(value)
        paired = self._incumbent_reruns(row, incumbent, seeds) if self.settings.paired else []
        if paired is None:
            return Judgement("discard", "not confirmed: an incumbent re-run failed", fields)
        verdict = confirm(values, incumbent.metric, incumbent.metric_runs, std=self._std, direction=cfg.direction,
                          min_improvement=cfg.min_improvement, paired=paired)
        fields.update(metric=verdict.metric, delta=verdict.metric - incumbent.metric, metric_runs=verdict.runs,
                      delta_band=verdict.band)
        return Judgement("keep" if verdict.keep else "discard", verdict.reason, fields)

    def _incumbent_reruns(self, row: ExperimentRow, incumbent: ExperimentRow, seeds: list[int]) -> list[float] | None:
        """The incumbent re-run on the candidate's fresh seeds (the tree goes to the incumbent and back)."""
        values = []
        self.ctx.repo.reset_to(incumbent.commit)
        try:
            for index, seed in enumerate(seeds, start=1):
                value = self._repeat(row, "incumbent", seed, index, len(seeds), commit=incumbent.commit)
                if value is None:
                    return None
                values.append(value)
        finally:
            self.ctx.repo.reset_to(row.commit)
        return values

    def _repeat(self, row: ExperimentRow, role: str, seed: int, index: int, of: int, commit: str = "") -> float | None:
        """One extra run of the tree as it is, recorded in the runs table; its metric, or None if it failed."""
        run_dir = self.ctx.run_dir(row.id) / f"{role}-{seed}"
        label = repeat_label(role, index, of)
        self.ctx.emit(StateChanged(state="training", experiment=row.id, detail=f"{label}, seed {seed}"))
        self.ctx.emit(RunRepeatStarted(experiment=row.id, role=role, label=label, seed=seed,
                                       budget_seconds=self.ctx.config.experiment.budget_seconds))
        # Streamed like a first run: a person sees which run trains, its loss curve and its time left.
        run = self.measure(row.id, commit or row.commit, run_dir, seed, reference=role == "noise", stream=True)
        if run.status == "aborted":
            raise _Interrupted
        self.ctx.ledger.record_run(RunRow(
            experiment=row.id, role=role, seed=seed, status=run.status, commit=commit or row.commit,
            metric=run.metric, reported_metric=run.reported, training_seconds=run.training_seconds,
            wall_seconds=run.wall_seconds, reason=run.reason, log_path=str(run_dir / LOG_FILE)))
        self.ctx.emit(RunRepeated(experiment=row.id, role=role, index=index, of=of, seed=seed, status=run.status,
                                  metric=run.metric, reason=run.reason, label=label))
        return run.metric

    def measure(self, number: int, commit: str, run_dir: Path, seed: int, *, reference: bool = False,
                stream: bool = False) -> Measurement:
        """One run of the checkout as it is, scored like every run (budget checked, trusted score where it
        applies); records nothing. `reference`: the unchanged code, which is never rejected for its budget;
        `stream`: its training steps and log lines go out as events."""
        result, _ = self._execute(number, commit, run_dir, seed=seed, stream=stream)
        reported = metric_from_log(self.ctx.config.metric.pattern, result.read_log())
        status, reason = self.classify(result, reported)
        score = _Score(status, reason)
        if status == "ok":
            problem = self._over_budget(result, run_dir, number, baseline=reference)
            score = _Score("rejected", problem) if problem else self._score(number, commit, run_dir, reported)
        (run_dir / WEIGHTS).unlink(missing_ok=True)  # an extra run's weights are scored once, not kept
        return Measurement(score.status, score.metric if score.status == "ok" else None, score.reason, reported,
                           reported_seconds(result), result.wall_seconds)

    # --- the holdout split -------------------------------------------------------------------------------------

    def after_record(self, outcome: ExperimentFinished) -> None:
        """After a keep: re-measure the noise once the incumbent has drifted far from where it was measured; score
        the baseline on the holdout split once, and the incumbent every `holdout_every` keeps."""
        if outcome.status != "keep":
            return
        row = self.ctx.ledger.get(outcome.experiment)
        assert row is not None
        if not row.is_baseline and self._std is not None and self.settings.baseline_seeds > 1:
            key, context = self._noise_key()
            estimate, why = reusable(self.ctx.ledger.noise_estimates(), key, context, row.metric,
                                     self.settings.noise_drift)
            if estimate is None:
                try:
                    self._remeasure(row, why)
                except _Interrupted:
                    return
        if not self.plan.trusted:
            return
        kept = sum(r.status == "keep" and not r.is_baseline for r in self.ctx.ledger.rows())
        every = self.settings.holdout_every
        if row.is_baseline or (every and kept % every == 0):
            self._score_holdout(row)

    def session_ending(self, reason: str) -> None:
        """Score the incumbent on the holdout split at the end (not after an abort or an engine error). Never
        raises: the session is finishing."""
        incumbent = self.ctx.ledger.incumbent()
        if (not self.plan.trusted or incumbent is None or incumbent.holdout_metric is not None
                or reason == "error" or self.ctx.controller.abort_event.is_set()):
            return
        try:
            self._score_holdout(incumbent)
        except (LoopdeckError, OSError) as exc:
            self.ctx.emit(Notice(level="warning", message=f"could not score the incumbent on the holdout split: "
                                 f"{exc}"))

    def _score_holdout(self, row: ExperimentRow) -> None:
        self.ctx.emit(StateChanged(state="evaluating", experiment=row.id,
                                   detail=f"scoring #{row.id} on the holdout split"))
        score = self._score(row.id, row.commit, self.ctx.run_dir(row.id), None, split="holdout")
        if score.status != "ok" or score.metric is None or score.val_metric is None:
            if score.status != "aborted":
                self.ctx.emit(Notice(level="warning", experiment=row.id, message=f"could not score #{row.id} on "
                                     f"the holdout split: {score.reason}"))
            return
        self.ctx.ledger.update(row.id, holdout_metric=score.metric, holdout_val_metric=score.val_metric)
        baseline = self._baseline()
        base_holdout = baseline.holdout_metric if baseline else None
        base_val = baseline.holdout_val_metric if baseline else None
        transfer = None
        direction = self.ctx.config.metric.direction
        if base_holdout is not None and base_val is not None and baseline is not None and baseline.id != row.id:
            val_gain = gain(score.val_metric, base_val, direction)
            holdout_gain = gain(score.metric, base_holdout, direction)
            if val_gain > 0:
                transfer = holdout_gain / val_gain
                if val_gain > 2 * (self._std or 0.0) and transfer < self.settings.transfer_warning:
                    self.ctx.emit(Notice(level="warning", experiment=row.id, message=(
                        f"gains stop transferring: since the baseline the validation split improved by "
                        f"{val_gain:.4f}, the holdout split by {holdout_gain:.4f} ({transfer:.0%}); the changes may "
                        "fit the validation text rather than the task")))
        self.ctx.emit(HoldoutScored(experiment=row.id, holdout_metric=score.metric, val_metric=score.val_metric,
                                    baseline_holdout=base_holdout, baseline_val=base_val, transfer=transfer))

    # --- helpers -----------------------------------------------------------------------------------------------

    def _baseline(self) -> ExperimentRow | None:
        return first_baseline(self.ctx.ledger.rows())


def repeat_label(role: str, index: int, of: int) -> str:
    """How a person reads an extra run (renderers put the experiment's number before it). The first run of a
    baseline or of a candidate is run 1 of the series `of` counts, so a candidate's confirmations count from 1."""
    if role == "noise":
        return f"baseline seed {index}/{of}"
    if role == "confirm":
        return f"confirmation run {index - 1}/{of - 1}"
    return f"incumbent re-run {index}/{of}"


def _overhead(wall: float | None, trained: float | None) -> float | None:
    """Seconds of a run outside its training: start-up, compilation, its own final evaluation."""
    if wall is None or trained is None:
        return None
    return max(0.0, wall - trained)
