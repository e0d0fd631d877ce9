"""An approved, committed experiment from its run to its record: run → classify → judge → keep or revert → record.

Every process of an experiment — its training run, the trusted evaluation of its weights, the extra noise and
confirmation runs — goes through the session's executor (engine/run/executor.py) via `execute`, which streams the
run's log lines and training steps as events and stops the run early when its watcher says it is behind. An abort
(or SIGTERM / Ctrl-C) kills the running training process group at once and records that experiment as
`interrupted` — the same status a resumed session gives a run cut off by a dead engine: it has no result, and it is
not re-run. Judging a finished run (trusted score, budget checked from outside, noise-aware keep with confirmation
runs, early abort of runs behind the incumbent, the holdout split) is engine/research/integrity.py's job.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopdeck.engine.events import (
    Event,
    ExperimentFinished,
    ExperimentKept,
    ExperimentReverted,
    ExperimentStarted,
    LogLine,
)
from loopdeck.engine.research.context import LoopContext
from loopdeck.engine.research.early_abort import EarlyAbort
from loopdeck.engine.research.integrity import Integrity
from loopdeck.engine.research.record import Recorder
from loopdeck.engine.run.environment import training_env
from loopdeck.engine.run.executor import LOG_FILE, METRICS_FILE, ExperimentSpec, RunResult
from loopdeck.engine.run.metrics import incumbent_curve, metric_from_log, parse_step, summary_numbers
from loopdeck.engine.run.processes import PidNote
from loopdeck.engine.run.sandbox import sandboxed_argv
from loopdeck.engine.store.ledger import ExperimentRow
from loopdeck.engine.store.workspace import file_hashes

LOG_LINES_PER_SECOND = 200  # beyond this, log lines are counted, not sent as events (log.txt keeps them all)


@dataclass
class Verdict:
    """A measured experiment before it is recorded: its final status, why, and its ledger fields."""

    status: str
    reason: str
    fields: dict[str, Any] = field(default_factory=dict)


class Judge:
    """Runs committed experiments and records their verdicts; `integrity` judges each finished run."""

    def __init__(self, ctx: LoopContext, recorder: Recorder, shared: Integrity | None = None) -> None:
        """`shared`: the session's integrity, when this judge runs experiments in a worktree of their own."""
        self.ctx = ctx
        self.recorder = recorder
        self.integrity = Integrity(ctx, self.execute, shared)

    def run(self, row: ExperimentRow, incumbent: ExperimentRow | None) -> ExperimentFinished:
        """Run experiment `row` (committed, its row `running`), judge it against `incumbent` (None: it is the
        baseline), keep it or revert the tree to the incumbent, and record the outcome."""
        return self.settle(row, incumbent, self.measure(row, incumbent))

    def measure(self, row: ExperimentRow, incumbent: ExperimentRow | None) -> Verdict:
        """Run experiment `row` and judge it against `incumbent`, recording nothing (`settle` does)."""
        ctx, number = self.ctx, row.id
        run_dir = ctx.run_dir(number)
        curve = incumbent_curve(ctx.run_dir(incumbent.id) / METRICS_FILE) if incumbent else ()
        ctx.emit(ExperimentStarted(experiment=number, commit=row.commit, parent_commit=row.parent_commit,
                                   description=row.description, budget_seconds=ctx.config.experiment.budget_seconds,
                                   baseline=incumbent is None, incumbent_curve=curve))
        ctx.state("training", number)
        watch = self.integrity.watch(incumbent, curve)
        result, records = self.execute(number, row.commit, run_dir, watch=watch)
        ctx.state("evaluating", number)
        reported = metric_from_log(ctx.config.metric.pattern, result.read_log())
        status, reason = self.integrity.classify(result, reported)
        fields = self._run_fields(result, records, run_dir)
        if status == "ok":
            judgement = self.integrity.judge(row, incumbent, result, reported, run_dir)
            status, reason = judgement.status, judgement.reason
            fields.update(judgement.fields)
        if status == "aborted" and watch is not None and watch.reason:  # stopped early: behind the incumbent
            status, reason = "aborted", watch.reason
            fields.update(training_seconds=watch.stopped_at)
        elif status == "aborted":
            status, reason = "interrupted", ("aborted by a person" if ctx.controller.abort_reason == "aborted"
                                             else "the engine was stopped")
        elif status not in ("keep", "discard"):
            fields.setdefault("log_tail", result.log_tail)
        return Verdict(status, reason, fields)

    def settle(self, row: ExperimentRow, incumbent: ExperimentRow | None, verdict: Verdict) -> ExperimentFinished:
        """Keep `row` or revert the tree to `incumbent`, and record the verdict."""
        ctx, status = self.ctx, verdict.status
        if status == "keep":
            ctx.emit(ExperimentKept(experiment=row.id, commit=row.commit, metric=verdict.fields["metric"],
                                    previous_metric=incumbent.metric if incumbent else None))
        elif incumbent is not None:
            ctx.repo.reset_to(incumbent.commit)
            ctx.emit(ExperimentReverted(experiment=row.id, to_commit=incumbent.commit, reason=verdict.reason))
        return self.recorder.finish(row, status, reason=verdict.reason, **verdict.fields)

    def execute(self, number: int, commit: str, run_dir: Path, *, seed: int | None = None,
                watch: EarlyAbort | None = None, argv: list[str] | None = None, timeout: float | None = None,
                stream: bool = True, stop: threading.Event | None = None,
                inputs_from: Path | None = None) -> tuple[RunResult, dict[str, dict]]:
        """Run the training command (or `argv`: the trusted evaluator) for experiment `number` at `commit` in
        `run_dir`, streaming its log lines and training steps as events unless `stream` is off (extra runs and
        evaluations keep their output in their own directory). `watch` stops the run early when it falls behind,
        `stop` when it is set; `inputs_from`: the run directory whose weights it scores (engine/run/executor.py).
        Returns the result and the run's "start" and "end" metrics records."""
        ctx, config = self.ctx, self.ctx.config
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = ExperimentSpec(
            number=number, commit=commit, checkout=ctx.workspace,
            argv=tuple(sandboxed_argv(argv or config.command_argv(), config.sandbox)),
            env=training_env(config, metrics_path=run_dir / METRICS_FILE, run_dir=run_dir, seed=seed,
                             trusted_eval=self.integrity.plan.trusted and config.evaluation.evaluate_once),
            run_dir=run_dir, budget_seconds=config.experiment.budget_seconds, timeout=timeout or config.timeout(),
            seed=seed, inputs_from=inputs_from)
        sink = _RunStream(ctx, number, stream=stream, watch=watch, stop=stop)
        try:
            result = ctx.executor.start(spec, sink).wait()
        finally:
            sink.done()
        return result, sink.records

    def _run_fields(self, result: RunResult, records: dict[str, dict], run_dir: Path) -> dict[str, object]:
        config = self.ctx.config
        summary = summary_numbers(result.summary)
        peak = summary.get("peak_vram_mb")
        start = records.get("start", {})
        env = {
            "python": str(start.get("python") or platform.python_version()),
            "torch": start.get("torch"), "device": start.get("device"),
            "corpus_fingerprint": start.get("corpus_fingerprint"), "tokenizer": start.get("tokenizer"),
            "seed": start.get("seed"), "num_params": start.get("num_params"),
            "files": file_hashes(self.ctx.workspace, config.experiment.editable),
            "command": config.command_argv(), "config": config.model_dump(),
        }
        return {
            "peak_memory_mb": peak if peak else result.peak_rss_mb,
            "training_seconds": summary.get("training_seconds"),
            "wall_seconds": result.wall_seconds,
            "budget_clock": "process" if start.get("budget_clock") == "process" else "wall",
            "log_path": str(run_dir / LOG_FILE),
            "env": env,
            "worker": result.worker,
        }


def feedback(outcome: ExperimentFinished, metric_name: str) -> str:
    """What the agent is told about its last experiment."""
    head = f"Experiment #{outcome.experiment} ({outcome.description}): {outcome.status}"
    if outcome.status in ("keep", "discard") and outcome.metric is not None:
        text = f"{head}, {metric_name} {outcome.metric:.6f}"
        if outcome.delta is not None:
            band = f" ± {outcome.noise:.6f}" if outcome.noise is not None else ""
            text += f" (delta {outcome.delta:+.6f}{band} vs incumbent {outcome.incumbent_metric:.6f})"
        return text + (f" — {outcome.reason}." if outcome.reason else ".")
    text = f"{head} — {outcome.reason}."
    if outcome.log_tail:
        text += f"\nLast lines of its log:\n{outcome.log_tail}"
    return text


class _RunStream:
    """A run's sink: its output as events (unless quiet), its start and end records, its early-abort watcher, and
    the pid note where a restarted engine looks for orphans (always in the experiment's own run directory)."""

    def __init__(self, ctx: LoopContext, number: int, *, stream: bool, watch: EarlyAbort | None,
                 stop: threading.Event | None) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        self._stop = stop
        self._ctx, self._number, self._stream, self._watch = ctx, number, stream, watch
        self._lines = _LineThrottle(ctx.emit if stream else lambda event: None, number)
        self._pid = PidNote(ctx.run_dir(number), ctx.track_pid)
        self._behind = False

    def line(self, text: str) -> None:
        self._lines(text)

    def record(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "step":
            step = parse_step(record, self._number)
            if step is not None and self._stream:
                self._ctx.emit(step)
            if step is not None and self._watch is not None and self._watch.observe(step.elapsed_seconds, step.loss):
                self._behind = True
        elif kind in ("start", "end"):
            self.records[kind] = record

    def started(self, pid: int) -> None:
        self._pid.started(pid)

    def cancelled(self) -> bool:
        return self._behind or self._ctx.controller.abort_event.is_set() or bool(self._stop and self._stop.is_set())

    def done(self) -> None:
        self._pid.done()
        self._lines.flush()


class _LineThrottle:
    """Forwards log lines as events, at most LOG_LINES_PER_SECOND; the rest are counted and summarised."""

    def __init__(self, emit: Callable[[Event], None], experiment: int) -> None:
        self._emit, self._experiment = emit, experiment
        self._window = 0.0
        self._sent = 0
        self._skipped = 0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self._window >= 1.0:
            self.flush()
            self._window, self._sent = now, 0
        if self._sent < LOG_LINES_PER_SECOND:
            self._sent += 1
            self._emit(LogLine(experiment=self._experiment, line=line))
        else:
            self._skipped += 1

    def flush(self) -> None:
        if self._skipped:
            self._emit(LogLine(experiment=self._experiment,
                               line=f"[loopdeck: {self._skipped} lines not shown here; log.txt has them all]"))
            self._skipped = 0
