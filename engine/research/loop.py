"""The research loop: baseline, then propose → guard → gate → commit → run → classify → keep/revert → record.

A small state machine that emits `StateChanged` on every transition. An approved change gets its ledger row
(status `running`, with its diff) *before* anything is committed, and its commit sha right after, so an engine
killed at any point leaves a row that the next start marks `interrupted` — never a lost or a duplicated one.
Proposals that never run (rejected by the guard, vetoed) get a row born with that final status; an engine killed
while the agent drafts or while a change awaits approval leaves no row, and the number is used again.

Stop conditions, checked between experiments: max experiments (every number used in this session counts,
rejected and vetoed proposals included; the baseline does not), max hours, a stop request, consecutive failures
(crash, timeout, NaN, guard rejection or a failed agent turn), and a fatal `AgentError`. An abort (or SIGTERM /
Ctrl-C) kills the running training process group at once and records that experiment as `interrupted` — the
same status a resumed session gives a run cut off by a dead engine: it has no result, and it is not re-run.
Pause takes effect at the next stage boundary (before a proposal, before a commit): a run in progress finishes.
A stop or abort while a change awaits approval records it `vetoed` ("the session stopped before this change ran").

Judging a finished run (trusted score, budget checked from outside, noise-aware keep with confirmation runs,
early abort of runs behind the incumbent, the holdout split) is `engine/integrity.py`'s job.

Pipelining (`engine/pipeline.py`, `[loop] pipeline`): while an experiment trains, the agent may draft the next
one in a background thread; when the run ends the draft is rebased onto the incumbent if it changed, revised by
the agent in the light of the outcome, and gated. Until then it has no ledger row and no commit.

Resuming (`recover`, at every start): rows still `running` are marked `interrupted` (not re-run; the agent sees
them in its history), a training process orphaned by the dead engine is killed, and the tree is reset to the
incumbent commit — which also undoes a commit made before its record, or a discarded commit whose revert the dead
engine never made. Numbering continues from the ledger; a baseline runs only when there is no incumbent.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from loopdeck.engine.agents.base import (
    Agent,
    AgentCancelled,
    AgentError,
    AgentTurn,
    ExperimentSummary,
    Proposal,
)
from loopdeck.engine.config import Config
from loopdeck.engine.control import Controller, Decision
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    AgentUsage,
    ApprovalRequested,
    ChangeProposed,
    ChangeRejected,
    DecisionMade,
    EngineState,
    Event,
    ExperimentFinished,
    ExperimentKept,
    ExperimentReverted,
    ExperimentStarted,
    LogLine,
    NoteDelivered,
    Notice,
    SessionFinished,
    SessionStarted,
    StateChanged,
    TrainStep,
)
from loopdeck.engine.research.early_abort import EarlyAbort, RunStop
from loopdeck.engine.research.guard import GuardRejection, check_proposal, check_substance
from loopdeck.engine.research.history import agent_history
from loopdeck.engine.research.integrity import Integrity, evaluation_label
from loopdeck.engine.research.pipeline import Pipeline, Review
from loopdeck.engine.run.runner import RunResult, metric_from_log, run_experiment, training_env
from loopdeck.engine.run.sandbox import sandboxed_argv
from loopdeck.engine.store.gitops import ResearchRepo, unified_diff
from loopdeck.engine.store.ledger import ExperimentRow, Ledger
from loopdeck.engine.store.workspace import file_hashes

CURVE_POINTS = 200  # the incumbent curve sent with ExperimentStarted
LOG_LINES_PER_SECOND = 200  # beyond this, log lines are counted, not sent as events (log.txt keeps them all)
FAILURES = frozenset({"crash", "timeout", "nan", "rejected"})
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
USAGE_FIELDS = (*TOKEN_FIELDS, "cost_usd")


class LoopStopped(Exception):
    """Ends the session: `reason` becomes SessionFinished.reason, the message (if any) an error Notice."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message


@dataclass
class LoopContext:
    """What a session hands its loop: the workspace's parts, already validated and opened."""

    workspace: Path
    state_dir: Path
    config: Config
    repo: ResearchRepo
    ledger: Ledger
    controller: Controller
    emit: Callable[[Event], None]
    branch: str
    protected_hashes: dict[str, str]
    track_pid: Callable[[int | None], None] = lambda pid: None
    resumed: bool = False
    agent_kind: str = ""


@dataclass
class _TurnRecord:
    """What the agent emitted while drafting one proposal."""

    usage: dict[str, float] = field(default_factory=dict)
    delivered: set[str] = field(default_factory=set)


class ResearchLoop:
    def __init__(self, ctx: LoopContext, agent_factory: Callable[[], Agent]) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self._agent_factory = agent_factory
        self._agent: Agent | None = None
        self._pipeline: Pipeline | None = None  # drafting ahead (engine/pipeline.py); only in run()
        self._failures = 0  # consecutive
        self._numbers_used = 0
        self._feedback = ""
        self._notes: list[str] = []  # veto notes for the agent's next turn
        self._started = time.monotonic()
        self.failure_message = ""
        self.finished: SessionFinished | None = None
        # Trusted score, budget check, noise-aware keep, early abort, holdout (engine/integrity.py).
        self.integrity = Integrity(ctx, self._execute)

    # --- the session -------------------------------------------------------------------------------------------

    def run(self) -> SessionFinished:
        """Run until a stop condition; always ends with SessionFinished (and the tree at the incumbent)."""
        reason = "error"
        try:
            self._session_started(self.ctx.agent_kind)
            self.recover()
            self._agent = self._agent_factory()
            self._pipeline = Pipeline(self)
            if self.ctx.ledger.incumbent() is None:
                self.run_baseline()
            while True:
                self.checkpoint()
                self.step()
        except LoopStopped as stop:
            reason, self.failure_message = stop.reason, stop.message
        except AgentError as exc:  # raised by the agent's constructor
            reason, self.failure_message = exc.stop_reason, str(exc)
        except LoopdeckError as exc:
            self.failure_message = str(exc)
        except Exception as exc:  # an engine bug or a broken disk: stop cleanly, keep the traceback for a report
            self.failure_message = f"engine error: {type(exc).__name__}: {exc} ({self._save_traceback()})"
        finally:
            if self.failure_message:
                self.ctx.emit(Notice(level="error", message=self.failure_message))
            if self._pipeline is not None:
                self._pipeline.close()
            self._close_agent()
            self._finish_session(reason)
        return self.finished

    def run_patch(self, patch_text: str, description: str) -> ExperimentFinished:
        """`loopdeck try`: one hand-made change through the same path (the baseline first if there is none)."""
        self.recover()
        files = self.ctx.repo.apply_patch(patch_text)  # a patch that does not apply fails before anything runs
        proposal = Proposal(description=description, rationale="a person's own change (loopdeck try)",
                            files=files, meta={"source": "loopdeck try"})
        self._session_started("human")
        reason = "error"
        try:
            if self.ctx.ledger.incumbent() is None:
                self.run_baseline()
            outcome = self.run_candidate(self.ctx.ledger.next_id(), proposal, agent_name="human", usage={},
                                         gate=False)
            reason = "max_experiments"
            return outcome
        except LoopStopped as stop:
            reason = stop.reason
            raise LoopdeckError(stop.message or f"stopped ({stop.reason})") from None
        finally:
            self._finish_session(reason)

    def recover(self) -> None:
        """Resume after a dead engine: mark in-flight rows interrupted, kill their orphans, restore the incumbent."""
        ledger = self.ctx.ledger
        for row in ledger.unfinished():
            _kill_orphan(self._run_dir(row.id))
            ledger.finish(row.id, "interrupted", reason="the engine stopped while this experiment was in flight; "
                          "it was not re-run")
            self.ctx.emit(Notice(level="warning", experiment=row.id,
                                 message=f"experiment #{row.id} was interrupted by an engine stop; recorded as "
                                 "interrupted (not re-run)"))
        self._restore_incumbent()

    def _session_started(self, agent_name: str) -> None:
        cfg = self.config
        self.ctx.emit(SessionStarted(
            workspace=str(self.ctx.workspace), branch=self.ctx.branch, agent=agent_name,
            approval=self.ctx.controller.approval, budget_seconds=cfg.experiment.budget_seconds,
            metric_name=cfg.metric.name, metric_direction=cfg.metric.direction, resumed=self.ctx.resumed,
            editable=tuple(cfg.experiment.editable), self_reported=self.integrity.self_reported))
        self.integrity.session_started()

    def _finish_session(self, reason: str) -> None:
        try:
            self._restore_incumbent()
        except LoopdeckError as exc:
            self.ctx.emit(Notice(level="error", message=f"could not restore the incumbent commit: {exc}"))
        self.integrity.session_ending(reason)
        self._state("stopped", detail=reason)
        rows = self.ctx.ledger.rows()
        baselines = [row for row in rows if row.is_baseline]
        incumbent = self.ctx.ledger.incumbent()
        self.finished = SessionFinished(
            reason=reason,
            experiments=len([row for row in rows if not row.is_baseline]),
            kept=len([row for row in rows if row.status == "keep" and not row.is_baseline]),
            baseline_metric=next((row.metric for row in baselines if row.status == "keep"), None),
            best_metric=incumbent.metric if incumbent else None)
        self.ctx.emit(self.finished)

    def _close_agent(self) -> None:
        if self._agent is not None:
            try:
                self._agent.close()
            except Exception as exc:
                self.ctx.emit(Notice(level="warning", message=f"the agent did not close cleanly: {exc}"))

    def _restore_incumbent(self) -> None:
        incumbent = self.ctx.ledger.incumbent()
        if incumbent is not None and incumbent.commit and self.ctx.repo.head() != incumbent.commit:
            self.ctx.repo.reset_to(incumbent.commit)

    def _save_traceback(self) -> str:
        path = self.ctx.state_dir / "engine-errors.log"
        try:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{traceback.format_exc()}")
        except OSError:
            return "traceback not saved"
        return f"traceback in {path}"

    def _halt_if_requested(self) -> None:
        ctl = self.ctx.controller
        if ctl.abort_event.is_set():
            raise LoopStopped(ctl.abort_reason)
        if ctl.stop_requested:
            raise LoopStopped("stopped")

    def checkpoint(self) -> None:
        """Before a proposal: hold while paused, then raise LoopStopped if a stop condition holds."""
        ctl, loop = self.ctx.controller, self.config.loop
        ctl.wait_while_paused(lambda: self._state("paused"))
        self._halt_if_requested()
        if loop.max_experiments and self._numbers_used >= loop.max_experiments:
            raise LoopStopped("max_experiments")
        if loop.max_hours and time.monotonic() - self._started >= loop.max_hours * 3600:
            raise LoopStopped("time_limit")
        if self._failures >= loop.max_consecutive_crashes:
            raise LoopStopped("crash_limit", f"{self._failures} failed experiments in a row: stopping (see the "
                              "last crash's log; [loop] max_consecutive_crashes sets the limit)")

    # --- one experiment ----------------------------------------------------------------------------------------

    def step(self) -> None:
        number = self.ctx.ledger.next_id()
        assert self._pipeline is not None
        proposed = self._pipeline.propose(number)  # the draft made while the last run trained, or a fresh turn
        if proposed is None:
            return
        proposal, record, review = proposed
        self._halt_if_requested()  # a stop that arrived while the agent worked: the proposal is dropped, never run
        self._numbers_used += 1
        self.run_candidate(number, proposal, agent_name=self._agent.name, usage=record.usage, gate=True,
                           review=review)

    def propose(self, number: int) -> tuple[Proposal, _TurnRecord] | None:
        """One sequential agent turn for experiment `number`."""
        self._state("proposing", number)
        notes = self.take_notes()
        turn, record = self.make_turn(number, notes, self._feedback)
        assert self._agent is not None
        agent = self._agent
        proposal = self.settle_turn(number, notes, record, lambda: agent.propose(turn))
        return None if proposal is None else (proposal, record)

    def take_notes(self) -> list[str]:
        """The notes for the agent's next turn: veto notes, then notes sent since the last turn."""
        notes = self._notes + self.ctx.controller.take_notes()
        self._notes = []
        return notes

    def return_notes(self, notes: list[str]) -> None:
        """Notes taken for a turn that was dropped go to the next one."""
        self._notes = notes + self._notes

    def make_turn(self, number: int, notes: list[str], feedback: str, record: _TurnRecord | None = None
                  ) -> tuple[AgentTurn, _TurnRecord]:
        """The agent's view of experiment `number` now, and the record its events add up in."""
        ctx = self.ctx
        incumbent = ctx.ledger.incumbent()
        record = _TurnRecord() if record is None else record

        def turn_emit(event: Event) -> None:
            if isinstance(event, AgentUsage):
                for name in USAGE_FIELDS:
                    record.usage[name] = record.usage.get(name, 0) + getattr(event, name)
            elif isinstance(event, NoteDelivered):
                record.delivered.add(event.text)
            ctx.emit(event)

        turn = AgentTurn(
            experiment=number, workspace=ctx.workspace, files=self._incumbent_files(incumbent),
            editable=tuple(self.config.experiment.editable), protected=tuple(self.config.experiment.protected),
            program=_program(ctx.workspace), metric_name=self.config.metric.name,
            direction=self.config.metric.direction, history=agent_history(ctx.ledger.rows()),
            incumbent=_summary(incumbent), notes=tuple(notes), feedback=feedback, emit=turn_emit,
            cancelled=lambda: ctx.controller.halted)
        return turn, record

    def settle_turn(self, number: int, notes: list[str], record: _TurnRecord, produce: Callable[[], Proposal]
                    ) -> Proposal | None:
        """The proposal `produce` returns, or None after a failed turn (counted); a stop or a fatal agent error
        raises LoopStopped."""
        try:
            proposal = produce()
        except AgentCancelled:
            self._halt_if_requested()
            raise LoopStopped("stopped") from None
        except AgentError as exc:
            if exc.fatal:
                raise LoopStopped(exc.stop_reason, str(exc)) from None
            return self._agent_failed(number, notes, record, str(exc))
        except Exception as exc:  # a bug in an agent must not take the engine down with it
            return self._agent_failed(number, notes, record, f"{type(exc).__name__}: {exc}")
        for note in notes:
            if note not in record.delivered:
                self.ctx.emit(NoteDelivered(experiment=number, text=note))
        if not record.usage and isinstance(proposal.meta.get("usage"), dict):
            record.usage = {name: proposal.meta["usage"].get(name, 0) for name in USAGE_FIELDS}
        self._feedback = ""
        return proposal

    def _agent_failed(self, number: int, notes: list[str], record: _TurnRecord, message: str) -> None:
        self._notes = [note for note in notes if note not in record.delivered]
        self._failures += 1
        self.ctx.emit(Notice(level="warning", experiment=number, message=f"the agent failed to propose: {message}"))

    def run_candidate(self, number: int, proposal: Proposal, *, agent_name: str, usage: dict,
                      gate: bool, review: Review | None = None) -> ExperimentFinished:
        """guard → ChangeProposed → gate → commit → run → keep/revert → record, for one proposal. `review`: what
        was shown and decided about it (a draft) while the previous experiment trained."""
        ctx = self.ctx
        incumbent = ctx.ledger.incumbent()
        assert incumbent is not None
        old_files = self._incumbent_files(incumbent)
        row = ExperimentRow(id=number, status="running", description=_one_line(proposal.description),
                            rationale=proposal.rationale, parent_commit=incumbent.commit, agent=agent_name,
                            incumbent_metric=incumbent.metric, meta=_json_safe(proposal.meta),
                            **_usage_fields(usage))
        if review is not None and review.vetoed:  # a person vetoed it while the previous experiment trained
            row.diff = review.diff
            return self._gate(row, review.decision)
        try:
            new_files, row.diff = self.check_change(proposal, old_files)
        except GuardRejection as rejection:
            return self._reject(row, rejection.reason)
        shown = review is not None and review.covers(row.diff)
        if not shown:
            self.announce_change(number, proposal, row.diff, new_files)
        if gate:
            vetoed = self._gate(row, review.decision if review is not None and shown else None)
            if vetoed is not None:
                return vetoed
        else:
            ctx.emit(DecisionMade(experiment=number, approved=True, note="loopdeck try", by="human"))
        self._state("committing", number)
        ctx.ledger.begin(row)  # before the commit: a kill from here on leaves a row that resuming marks interrupted
        message = row.description + (f"\n\n{row.rationale.strip()}" if row.rationale.strip() else "")
        row.commit = ctx.repo.commit_files(new_files, message)
        ctx.ledger.update(number, commit=row.commit)
        if self._pipeline is not None:
            self._pipeline.start(row)  # the agent drafts the next experiment while this one trains
        return self._run_and_record(row, incumbent)

    def check_change(self, proposal: Proposal, old_files: dict[str, str]) -> tuple[dict[str, str], str]:
        """The files `proposal` really changes and its diff against `old_files`; GuardRejection if refused."""
        changed = check_proposal(proposal.files, workspace=self.ctx.workspace,
                                 editable=self.config.experiment.editable,
                                 protected_hashes=self.ctx.protected_hashes, incumbent=old_files)
        new_files = {name: proposal.files[name] for name in changed}
        check_substance(old_files, new_files, allow_seed=self.config.evaluation.allow_seed_changes,
                        allow_cosmetic=self.config.evaluation.allow_cosmetic_changes)
        return new_files, unified_diff({name: old_files.get(name, "") for name in changed}, new_files)

    def announce_change(self, number: int, proposal: Proposal, diff: str, new_files: dict[str, str]) -> None:
        added, removed = _diff_counts(diff)
        self.ctx.emit(ChangeProposed(experiment=number, description=_one_line(proposal.description),
                                     rationale=proposal.rationale, diff=diff, files=tuple(new_files), added=added,
                                     removed=removed))

    def _not_run(self, row: ExperimentRow, status: str, reason: str) -> ExperimentFinished:
        """Record a proposal that never ran (rejected or vetoed): its row is born with its final status."""
        row.status, row.reason = status, reason
        self.ctx.ledger.begin(row)
        return self._record(row, status, reason=reason)

    def _reject(self, row: ExperimentRow, reason: str) -> ExperimentFinished:
        self.ctx.emit(ChangeRejected(experiment=row.id, reason=reason))
        self._feedback = f"Your proposal #{row.id} ({row.description}) was rejected before running: {reason}"
        return self._not_run(row, "rejected", reason)

    def _gate(self, row: ExperimentRow, decision: Decision | None = None) -> ExperimentFinished | None:
        """None when the change may run; else its `vetoed` record (or LoopStopped, after recording, on a stop).
        `decision`: one already made (on a draft, while the previous experiment trained); else the gate asks.

        A pause requested while the gate waits holds the approved change before its commit."""
        ctl = self.ctx.controller
        if decision is None:
            decision = self.ask(row.id, row.description)
        if decision is not None:
            if decision.note:
                self._notes.append(decision.note)
            if not decision.approved:
                self._feedback = (f"Your proposal #{row.id} ({row.description}) was vetoed by a person"
                                  + (f": {decision.note}" if decision.note else "."))
                return self._not_run(row, "vetoed", decision.note or "vetoed by a person")
            ctl.wait_while_paused(lambda: self._state("paused", row.id))
            if not ctl.abort_event.is_set():
                return None
        self._not_run(row, "vetoed", "the session stopped before this change ran")
        self._halt_if_requested()
        raise AssertionError("unreachable: the gate ends only on a decision, a stop or an abort")

    def ask(self, experiment: int, description: str, *, announce_state: bool = True) -> Decision | None:
        """Open the approval gate (in ask mode) and wait: a person's decision, auto's, or None on a stop/abort."""
        ctl = self.ctx.controller
        if ctl.approval == "ask":
            if announce_state:
                self._state("awaiting_approval", experiment)
            self.ctx.emit(ApprovalRequested(experiment=experiment, description=description))
        decision = ctl.wait_decision(experiment)
        if decision is not None:
            self.ctx.emit(DecisionMade(experiment=experiment, approved=decision.approved, note=decision.note,
                                       by=decision.by))
        return decision

    def run_baseline(self) -> None:
        number = self.ctx.ledger.next_id()
        head = self.ctx.repo.head()
        row = ExperimentRow(id=number, status="running", description="baseline", parent_commit=head, commit=head,
                            agent="", meta={"baseline": True})
        self.ctx.ledger.begin(row)
        if self._pipeline is not None:
            self._pipeline.start(row)
        outcome = self._run_and_record(row, None)
        if outcome.status == "interrupted":
            self._halt_if_requested()
        if outcome.status != "keep":
            raise LoopStopped("error", f"the baseline run failed ({outcome.reason}): a baseline without a "
                              f"{self.config.metric.name} cannot be improved on. Fix the training code or the "
                              f"[metric] pattern, check the log at {self._run_dir(number) / 'log.txt'}, and run "
                              "again")

    def _run_and_record(self, row: ExperimentRow, incumbent: ExperimentRow | None) -> ExperimentFinished:
        ctx, number = self.ctx, row.id
        run_dir = self._run_dir(number)
        curve = _curve(self._run_dir(incumbent.id) / "metrics.jsonl") if incumbent else ()
        ctx.emit(ExperimentStarted(experiment=number, commit=row.commit, parent_commit=row.parent_commit,
                                   description=row.description, budget_seconds=self.config.experiment.budget_seconds,
                                   baseline=incumbent is None, incumbent_curve=curve))
        self._state("training", number)
        watch = self.integrity.watch(incumbent, curve)
        result, records = self._execute(number, run_dir, watch=watch)
        self._state("evaluating", number)
        reported = metric_from_log(self.config.metric.pattern, result.read_log())
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
        if status == "keep":
            ctx.emit(ExperimentKept(experiment=number, commit=row.commit, metric=fields["metric"],
                                    previous_metric=incumbent.metric if incumbent else None))
        elif incumbent is not None:
            ctx.repo.reset_to(incumbent.commit)
            ctx.emit(ExperimentReverted(experiment=number, to_commit=incumbent.commit, reason=reason))
        outcome = self._record(row, status, reason=reason, **fields)
        self._feedback = _feedback(outcome, self.config.metric.name)
        self.integrity.after_record(outcome)
        return outcome

    def _record(self, row: ExperimentRow, status: str, **fields: object) -> ExperimentFinished:
        """Give the row its final status, tell everyone, and count failures."""
        ctx = self.ctx
        ctx.ledger.finish(row.id, status, **fields)
        final = ctx.ledger.get(row.id)
        assert final is not None
        self._failures = self._failures + 1 if status in FAILURES else (0 if status in ("keep", "discard")
                                                                         else self._failures)
        outcome = ExperimentFinished(
            experiment=row.id, status=status, metric=final.metric, delta=final.delta,
            incumbent_metric=final.incumbent_metric, commit=final.commit, description=final.description,
            training_seconds=final.training_seconds, wall_seconds=final.wall_seconds,
            peak_memory_mb=final.peak_memory_mb, reason=final.reason, log_tail=final.log_tail,
            reported_metric=final.reported_metric, noise=final.delta_band, evaluation=evaluation_label(final))
        ctx.emit(outcome)
        return outcome

    def _execute(self, number: int, run_dir: Path, *, seed: int | None = None, watch: EarlyAbort | None = None,
                 argv: list[str] | None = None, timeout: float | None = None,
                 stream: bool = True) -> tuple[RunResult, dict[str, dict]]:
        """Run the training command (or `argv`: the trusted evaluator) for experiment `number` in `run_dir`,
        streaming its log lines and metrics records as events unless `stream` is off (extra runs and evaluations
        keep their output in their own directory). `watch` stops the run early when it falls behind."""
        ctx = self.ctx
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / "metrics.jsonl"
        records: dict[str, dict] = {}
        lines = _LineThrottle(ctx.emit if stream else lambda event: None, number)
        pid_note = _PidNote(self._run_dir(number), ctx.track_pid)  # where a restarted engine looks for orphans
        stop = RunStop(ctx.controller.abort_event)

        def on_metrics(record: dict) -> None:
            kind = record.get("type")
            if kind == "step":
                step = _train_step(number, record)
                if step is not None and stream:
                    ctx.emit(step)
                if step is not None and watch is not None and watch.observe(step.elapsed_seconds, step.loss):
                    stop.set()
            elif kind in ("start", "end"):
                records[kind] = record

        try:
            result = run_experiment(
                sandboxed_argv(argv or self.config.command_argv(), self.config.sandbox), cwd=ctx.workspace,
                env=training_env(self.config, metrics_path=metrics_path, run_dir=run_dir, seed=seed),
                log_path=run_dir / "log.txt", metrics_path=metrics_path, timeout=timeout or self.config.timeout(),
                on_line=lines, on_metrics=on_metrics, stop_event=stop,
                on_start=pid_note.started)
        finally:
            pid_note.done()
            lines.flush()
        return result, records

    def _run_fields(self, result: RunResult, records: dict[str, dict], run_dir: Path) -> dict[str, object]:
        summary = result.summary
        peak = _number(summary.get("peak_vram_mb"))
        start = records.get("start", {})
        env = {
            "python": str(start.get("python") or platform.python_version()),
            "torch": start.get("torch"), "device": start.get("device"),
            "corpus_fingerprint": start.get("corpus_fingerprint"), "tokenizer": start.get("tokenizer"),
            "seed": start.get("seed"), "num_params": start.get("num_params"),
            "files": file_hashes(self.ctx.workspace, self.config.experiment.editable),
            "command": self.config.command_argv(), "config": self.config.model_dump(),
        }
        return {
            "peak_memory_mb": peak if peak else result.peak_rss_mb,
            "training_seconds": _number(summary.get("training_seconds")),
            "wall_seconds": result.wall_seconds,
            "log_path": str(run_dir / "log.txt"),
            "env": env,
        }

    # --- helpers -----------------------------------------------------------------------------------------------

    def _incumbent_files(self, incumbent: ExperimentRow | None) -> dict[str, str]:
        at = incumbent.commit if incumbent else None
        return self.ctx.repo.read_files(self.config.experiment.editable, at=at)

    def _run_dir(self, number: int) -> Path:
        return self.ctx.state_dir / "runs" / str(number)

    def _state(self, state: EngineState, experiment: int | None = None, detail: str = "") -> None:
        self.ctx.emit(StateChanged(state=state, experiment=experiment, detail=detail))


def _usage_fields(usage: dict) -> dict[str, float | int]:
    fields: dict[str, float | int] = {name: int(usage.get(name) or 0) for name in TOKEN_FIELDS}
    fields["cost_usd"] = float(usage.get("cost_usd") or 0.0)
    return fields


def _json_safe(meta: object) -> dict:
    """Proposal.meta as the ledger can store it (anything JSON cannot hold becomes its string form)."""
    return json.loads(json.dumps(dict(meta), default=str))  # type: ignore[call-overload]


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no description)"


def _program(workspace: Path) -> str:
    try:
        return (workspace / "program.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _summary(row: ExperimentRow | None) -> ExperimentSummary | None:
    if row is None:
        return None
    return ExperimentSummary(id=row.id, status=row.status, metric=row.metric, delta=row.delta,
                             description=row.description, meta=dict(row.meta))


def _diff_counts(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _train_step(number: int, record: dict) -> TrainStep | None:
    """A TrainStep from one metrics record written by code we do not trust; None if it is malformed."""
    step, elapsed, loss = record.get("step"), _number(record.get("elapsed_seconds")), record.get("loss")
    if not isinstance(step, int) or elapsed is None or not isinstance(loss, int | float):
        return None
    return TrainStep(experiment=number, step=step, elapsed_seconds=elapsed, loss=float(loss),
                     progress=_number(record.get("progress")) or 0.0,
                     tokens_per_second=_number(record.get("tokens_per_second")) or 0.0,
                     mfu_percent=_number(record.get("mfu_percent")))


def _curve(path: Path) -> tuple[tuple[float, float], ...]:
    """(elapsed, loss) of a finished run's step records, downsampled to at most CURVE_POINTS (last one kept)."""
    points = []
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("type") == "step":
                    elapsed, loss = _number(record.get("elapsed_seconds")), _number(record.get("loss"))
                    if elapsed is not None and loss is not None:
                        points.append((elapsed, loss))
    except OSError:
        return ()
    if len(points) > CURVE_POINTS:
        stride = math.ceil(len(points) / CURVE_POINTS)
        points = points[:-1:stride][: CURVE_POINTS - 1] + [points[-1]]
    return tuple(points)


def _feedback(outcome: ExperimentFinished, metric_name: str) -> str:
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


class _PidNote:
    """Notes the training process in runs/<id>/pid (so a restarted engine can kill a run orphaned by a killed one)
    and points telemetry at it."""

    def __init__(self, run_dir: Path, track: Callable[[int | None], None]) -> None:
        self._path = run_dir / "pid"
        self._track = track

    def started(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self._path.write_text(json.dumps({"pid": pid, "create_time": created}))
        self._track(pid)

    def done(self) -> None:
        self._track(None)
        self._path.unlink(missing_ok=True)


def _kill_orphan(run_dir: Path) -> None:
    """Kill the process group of a training run left behind by a killed engine (if it is still the same process)."""
    try:
        noted = json.loads((run_dir / "pid").read_text())
        process = psutil.Process(int(noted["pid"]))
        # Only the very process we started (not a recycled pid), and only if it leads its own process group.
        if abs(process.create_time() - float(noted["create_time"])) > 0.01 or os.getpgid(process.pid) != process.pid:
            return
        os.killpg(process.pid, signal.SIGKILL)
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return
    finally:
        (run_dir / "pid").unlink(missing_ok=True)
