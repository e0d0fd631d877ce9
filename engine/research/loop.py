"""The research loop: baseline, then propose → guard → gate → commit → run → classify → keep/revert → record.

A small state machine that emits `StateChanged` on every transition and composes the parts that do the work:
`turns` (the agent's turns), `gate` (guard, announcement, approval), `judge` (run, integrity, keep or revert,
record) and `pipeline` (drafting ahead). An approved change gets its ledger row (status `running`, with its diff)
*before* anything is committed, and its commit sha right after, so an engine killed at any point leaves a row that
the next start marks `interrupted` — never a lost or a duplicated one. An engine killed while the agent drafts or
while a change awaits approval leaves no row, and the number is used again.

Stop conditions, checked between experiments: max experiments (every number used in this session counts,
rejected and vetoed proposals included; the baseline does not), max hours, a stop request, consecutive failures
(crash, timeout, NaN, guard rejection or a failed agent turn), and a fatal `AgentError`. Pause takes effect at the
next stage boundary (before a proposal, before a commit): a run in progress finishes.

Pipelining (engine/research/pipeline.py, `[loop] pipeline`): while an experiment trains, the agent may draft the
next one in a background thread; when the run ends the draft is rebased onto the incumbent if it changed, revised
by the agent in the light of the outcome, and gated. Until then it has no ledger row and no commit.

Resuming (`recover`, at every start): rows still `running` are marked `interrupted` (not re-run; the agent sees
them in its history), a training process orphaned by the dead engine is killed, the worktrees of experiments that
ran in parallel are removed, and the tree is reset to the
incumbent commit — which also undoes a commit made before its record, or a discarded commit whose revert the dead
engine never made. Numbering continues from the ledger; a baseline runs only when there is no incumbent.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable

from loopdeck.engine.agents.base import Agent, AgentError, Proposal
from loopdeck.engine.agents.regions import repeat_of, touched
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import DecisionMade, ExperimentFinished, Notice, SessionFinished, SessionStarted
from loopdeck.engine.research.context import LoopContext, LoopStopped, Tally, one_line
from loopdeck.engine.research.gate import Gate
from loopdeck.engine.research.guard import GuardRejection
from loopdeck.engine.research.history import agent_history
from loopdeck.engine.research.judge import Judge, feedback
from loopdeck.engine.research.pipeline import Pipeline, Review
from loopdeck.engine.research.planner import Plan
from loopdeck.engine.research.record import Recorder
from loopdeck.engine.research.transfer import transfer
from loopdeck.engine.research.turns import Turns, usage_fields
from loopdeck.engine.run.executor import LOG_FILE
from loopdeck.engine.run.processes import kill_orphan
from loopdeck.engine.store.ledger import ExperimentRow, first_baseline
from loopdeck.engine.store.worktrees import Worktrees

__all__ = ["LoopContext", "ResearchLoop"]  # what a session needs


class ResearchLoop:
    """`ablate`: runs an ablation of the kept chain when the planner chooses that mode (without it, it never
    does)."""

    def __init__(self, ctx: LoopContext, agent_factory: Callable[[], Agent],
                 ablate: Callable[[], object] | None = None) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.tally = Tally()
        recorder = Recorder(ctx, self.tally)
        self.turns = Turns(ctx, agent_factory, self.tally)
        self.ablate = ablate
        if self.turns.planner is not None:
            self.turns.planner.can_ablate = ablate is not None
        self.gate = Gate(ctx, self.turns, recorder)
        self.judge = Judge(ctx, recorder)
        # Trusted score, budget check, noise-aware keep, early abort, holdout (engine/research/integrity.py).
        self.integrity = self.judge.integrity
        self._pipeline: Pipeline | None = None  # drafting ahead; only in run()
        self._started = time.monotonic()
        self.workers = 1  # experiments in flight at once (engine/research/parallel.py runs more)
        self.worktrees = Worktrees(ctx.workspace, ctx.branch)  # their checkouts
        self.failure_message = ""
        self.finished: SessionFinished | None = None

    # --- the session -------------------------------------------------------------------------------------------

    def run(self) -> SessionFinished:
        """Run until a stop condition; always ends with SessionFinished (and the tree at the incumbent)."""
        reason = "error"
        try:
            self._session_started(self.ctx.agent_kind)
            self.recover()
            self.turns.open()
            self._pipeline = Pipeline(self.ctx, self.turns, self.gate, self.tally)
            if self.ctx.ledger.incumbent() is None:
                self.run_baseline()
            self.integrity.refresh_noise()  # when the stored noise estimate does not hold for this session
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
            self.turns.close()
            self._finish_session(reason)
        assert self.finished is not None
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
            assert outcome is not None
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
            kill_orphan(self.ctx.run_dir(row.id))
            ledger.finish(row.id, "interrupted", reason="the engine stopped while this experiment was in flight; "
                          "it was not re-run")
            self.ctx.emit(Notice(level="warning", experiment=row.id,
                                 message=f"experiment #{row.id} was interrupted by an engine stop; recorded as "
                                 "interrupted (not re-run)"))
        for number in self.worktrees.leftovers():  # experiments that ran in parallel (engine/research/parallel.py)
            kill_orphan(self.ctx.run_dir(number))  # a load run beside the baseline has no row, but a pid note
        removed = self.worktrees.remove_all()
        if removed:
            self.ctx.emit(Notice(level="warning", message=f"removed {len(removed)} worktree(s) a stopped engine "
                                 f"left behind (experiments {', '.join(f'#{n}' for n in removed)})"))
        self._restore_incumbent()

    def _session_started(self, agent_name: str) -> None:
        cfg = self.config
        self.ctx.emit(SessionStarted(
            workspace=str(self.ctx.workspace), branch=self.ctx.branch, agent=agent_name,
            approval=self.ctx.controller.approval, budget_seconds=cfg.experiment.budget_seconds,
            metric_name=cfg.metric.name, metric_direction=cfg.metric.direction, resumed=self.ctx.resumed,
            editable=tuple(cfg.experiment.editable), self_reported=self.integrity.self_reported,
            workers=self.workers, budget_clock=cfg.experiment.budget_clock))
        self.integrity.session_started()

    def _finish_session(self, reason: str) -> None:
        try:
            self._restore_incumbent()
        except LoopdeckError as exc:
            self.ctx.emit(Notice(level="error", message=f"could not restore the incumbent commit: {exc}"))
        self.integrity.session_ending(reason)
        self.ctx.state("stopped", detail=reason)
        rows = self.ctx.ledger.rows()
        baseline = first_baseline(rows)
        incumbent = self.ctx.ledger.incumbent()
        self.finished = SessionFinished(
            reason=reason,
            experiments=len([row for row in rows if not row.is_baseline]),
            kept=len([row for row in rows if row.status == "keep" and not row.is_baseline]),
            baseline_metric=baseline.metric if baseline else None,
            best_metric=incumbent.metric if incumbent else None)
        self.ctx.emit(self.finished)

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

    def checkpoint(self) -> None:
        """Before a proposal: hold while paused, then raise LoopStopped if a stop condition holds."""
        ctl, loop, tally = self.ctx.controller, self.config.loop, self.tally
        ctl.wait_while_paused(lambda: self.ctx.state("paused"))
        self.ctx.halt_if_requested()
        if loop.max_experiments and tally.numbers_used >= loop.max_experiments:
            raise LoopStopped("max_experiments")
        if loop.max_hours and time.monotonic() - self._started >= loop.max_hours * 3600:
            raise LoopStopped("time_limit")
        if tally.failures >= loop.max_consecutive_crashes:
            raise LoopStopped("crash_limit", f"{tally.failures} failed experiments in a row (the last, "
                              f"{tally.last_failure}): stopping ([loop] max_consecutive_crashes sets the limit)")

    # --- one experiment ----------------------------------------------------------------------------------------

    def step(self) -> None:
        number = self.ctx.ledger.next_id()
        assert self._pipeline is not None and self.turns.agent is not None
        if self.ablate is not None and (plan := self.turns.plan(number)) is not None and plan.mode == "ablate":
            if plan.forced:
                self.ctx.controller.forced_mode = ""  # an ablation is one action, not a standing mode
            self.ablate()
            return
        proposed = self._pipeline.propose(number)  # the draft made while the last run trained, or a fresh turn
        if proposed is None:
            return
        proposal, record, review = proposed
        self.ctx.halt_if_requested()  # a stop that arrived while the agent worked: the proposal is dropped, never run
        self.tally.numbers_used += 1
        self.run_candidate(number, proposal, agent_name=self.turns.agent.name, usage=record.usage, gate=True,
                           review=review, plan=record.plan)

    def run_candidate(self, number: int, proposal: Proposal, *, agent_name: str, usage: dict,
                      gate: bool, review: Review | None = None, plan: Plan | None = None) -> ExperimentFinished | None:
        """guard → ChangeProposed → gate → commit → run → keep/revert → record, for one proposal. `review`: what
        was shown and decided about it (a draft) while the previous experiment trained; `plan`: the turn's mode."""
        ctx = self.ctx
        incumbent = ctx.ledger.incumbent()
        assert incumbent is not None
        old_files = ctx.incumbent_files(incumbent)
        row = ExperimentRow(id=number, status="running", description=one_line(proposal.description),
                            rationale=proposal.rationale, parent_commit=incumbent.commit, agent=agent_name,
                            incumbent_metric=incumbent.metric, meta=_json_safe(proposal.meta),
                            **usage_fields(usage))
        if plan is not None:
            row.mode, row.mode_reason = plan.mode, plan.reason
            if plan.mode == "combine":
                row.meta["combines"] = list(plan.near_misses)
        if review is not None and review.vetoed:  # a person vetoed it while the previous experiment trained
            row.diff = review.diff
            vetoed = self.gate.decide(row, review.decision)
            assert vetoed is not None
            return vetoed
        try:
            new_files, row.diff = self.gate.check_change(proposal, old_files)
        except GuardRejection as rejection:
            return self.gate.reject(row, rejection.reason)
        repeated = self._log_idea(row, old_files, new_files, incumbent)
        if repeated and gate and self.config.research.skip_repeats:
            return self.gate.reject(row, repeated)
        shown = review is not None and review.covers(row.diff)
        if not shown:
            self.gate.announce_change(number, proposal, row.diff, new_files)
        if gate:
            vetoed = self.gate.decide(row, review.decision if review is not None and shown else None)
            if vetoed is not None:
                return vetoed
        else:
            ctx.emit(DecisionMade(experiment=number, approved=True, note="loopdeck try", by="human"))
        ctx.state("committing", number)
        ctx.ledger.begin(row)  # before the commit: a kill from here on leaves a row that resuming marks interrupted
        return self.launch(row, incumbent, new_files)

    def launch(self, row: ExperimentRow, incumbent: ExperimentRow, new_files: dict[str, str]
               ) -> ExperimentFinished | None:
        """Commit an approved change (its row begun) and run it: here, to the end (engine/research/parallel.py
        overrides this to run it in its own worktree while the loop goes on, and returns None)."""
        row.commit = self.ctx.repo.commit_files(new_files, commit_message(row))
        self.ctx.ledger.update(row.id, commit=row.commit)
        if self._pipeline is not None:
            self._pipeline.start(row)  # the agent drafts the next experiment while this one trains
        return self._run(row, incumbent)

    def _log_idea(self, row: ExperimentRow, old_files: dict[str, str], new_files: dict[str, str],
                  incumbent: ExperimentRow) -> str:
        """Fill the row's research log (region, directions, the experiment it repeats); the repeat's message, or
        "" when the idea is new against this incumbent."""
        touch = touched(old_files, new_files)
        row.region, row.signs = " ".join(touch.region), dict(touch.signs)
        earlier = repeat_of(touch, agent_history(self.ctx.ledger.rows()), incumbent.id)
        if earlier is None:
            return ""
        row.repeat_of = earlier.id
        message = (f"a repeat of #{earlier.id} ({touch.describe()}; {earlier.status}): that idea was already tried "
                   "against this incumbent, so try another region or direction")
        self.ctx.emit(Notice(level="warning", experiment=row.id, message=message))
        return message

    def run_baseline(self) -> None:
        number = self.ctx.ledger.next_id()
        head = self.ctx.repo.head()
        row = ExperimentRow(id=number, status="running", description="baseline", parent_commit=head, commit=head,
                            agent="", meta={"baseline": True})
        self.ctx.ledger.begin(row)
        if self._pipeline is not None:
            self._pipeline.start(row)
        outcome = self._run(row, None)
        if outcome.status == "interrupted":
            self.ctx.halt_if_requested()
        if outcome.status != "keep":
            raise LoopStopped("error", f"the baseline run failed ({outcome.reason}): a baseline without a "
                              f"{self.config.metric.name} cannot be improved on. Fix the training code or the "
                              f"[metric] pattern, check the log at {self.ctx.run_dir(number) / LOG_FILE}, and run "
                              "again")

    def _run(self, row: ExperimentRow, incumbent: ExperimentRow | None) -> ExperimentFinished:
        """Run, judge and record a committed experiment; the agent hears its outcome in its next turn."""
        outcome = self.judge.run(row, incumbent)
        self.turns.feedback = feedback(outcome, self.config.metric.name)
        self.integrity.after_record(outcome)
        self._check_transfer(outcome)
        return outcome

    def _check_transfer(self, outcome: ExperimentFinished) -> None:
        """The scale-transfer check every `[research] transfer_every` kept experiments; a check that cannot run
        is a warning, never the end of the session."""
        every = self.config.research.transfer_every
        if not every or outcome.status != "keep":
            return
        kept = sum(row.status == "keep" and not row.is_baseline for row in self.ctx.ledger.rows())
        if kept == 0 or kept % every:
            return
        try:
            transfer(self.ctx, self.config.research.transfer_scale)
        except LoopdeckError as exc:
            self.ctx.emit(Notice(level="warning", message=f"the scale-transfer check did not run: {exc}"))


def commit_message(row: ExperimentRow) -> str:
    """An experiment's commit message: its description, then its rationale."""
    return row.description + (f"\n\n{row.rationale.strip()}" if row.rationale.strip() else "")


def _json_safe(meta: object) -> dict:
    """Proposal.meta as the ledger can store it (anything JSON cannot hold becomes its string form)."""
    return json.loads(json.dumps(dict(meta), default=str))  # type: ignore[call-overload]
