"""One agent turn: the AgentTurn it sees, what it used and which notes reached it, how a turn is settled.

`Turns` owns the agent for the session (made at the start, closed at the end), the notes waiting for its next turn
(a person's notes, veto notes, notes of a dropped turn), and the feedback it gets about its last experiment. A
proposal is drafted without a ledger row: an engine killed while the agent drafts leaves nothing behind, and the
number is used again. A failed turn (an agent error that is not fatal, or a bug in an agent) counts as a failure
towards the crash limit; a fatal `AgentError` or a stop ends the session (`LoopStopped`). Two failures are not the
change's or the agent's code's fault and are counted apart: a refusal (`stop_reason="refusal"`; as many in a row
as the crash limit end the session as `refusal_limit`), and an outage of the agent's service
(`stop_reason="outage"`, raised after the agent's own backoff), which never ends the session by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loopdeck.engine.agents.base import (
    Agent,
    AgentCancelled,
    AgentError,
    AgentTurn,
    ExperimentSummary,
    Proposal,
)
from loopdeck.engine.events import AgentUsage, Event, NoteDelivered, Notice, PlanChosen
from loopdeck.engine.research.combine import combined_files
from loopdeck.engine.research.context import LoopContext, LoopStopped, Tally
from loopdeck.engine.research.history import agent_history, in_flight, summary
from loopdeck.engine.research.planner import Plan, Planner
from loopdeck.engine.store.ledger import ExperimentRow

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")
USAGE_FIELDS = (*TOKEN_FIELDS, "cost_usd")


@dataclass
class TurnRecord:
    """What the agent emitted while drafting one proposal: its usage, and the notes it was shown."""

    usage: dict[str, float] = field(default_factory=dict)
    delivered: set[str] = field(default_factory=set)
    plan: Plan | None = None  # the planner's mode for the turn (None with the planner off)


class Turns:
    """The agent's turns in one session."""

    def __init__(self, ctx: LoopContext, agent_factory: Callable[[], Agent], tally: Tally) -> None:
        self.ctx = ctx
        self.tally = tally
        self.refusals = 0  # consecutive turns the agent declined
        self._agent_factory = agent_factory
        self.agent: Agent | None = None  # made by `open`
        self.feedback = ""  # about the last experiment, for the next turn
        self._notes: list[str] = []  # veto notes and notes of dropped turns, for the next turn
        research = ctx.config.research
        self.planner = Planner(research, ctx.config.metric.direction) if research.planner else None
        self._shown_plan: tuple[int, Plan] | None = None

    # --- the agent's lifetime ----------------------------------------------------------------------------------

    def open(self) -> Agent:
        """Make the agent and let it check its service before the baseline runs (its constructor or its optional
        `check()` may raise AgentError, which ends the session)."""
        self.agent = self._agent_factory()
        check = getattr(self.agent, "check", None)
        if callable(check):
            self._check(check)
        return self.agent

    def _check(self, check: Callable[[], None]) -> None:
        """Run the agent's start check in a worker, so that a stop is honoured while its service does not answer."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                check()
            except BaseException as exc:  # handed to the loop's thread, which raises it
                failure.append(exc)

        worker = threading.Thread(target=run, daemon=True, name="agent-check")
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            if worker.is_alive():
                self.ctx.halt_if_requested()
        if failure:
            raise failure[0]

    def close(self) -> None:
        if self.agent is not None:
            try:
                self.agent.close()
            except Exception as exc:
                self.ctx.emit(Notice(level="warning", message=f"the agent did not close cleanly: {exc}"))

    # --- notes -------------------------------------------------------------------------------------------------

    def add_note(self, note: str) -> None:
        """A note for the agent's next turn (a person's note on a decision)."""
        self._notes.append(note)

    def take_notes(self) -> list[str]:
        """The notes for the agent's next turn: veto notes, then notes sent since the last turn."""
        notes = self._notes + self.ctx.controller.take_notes()
        self._notes = []
        return notes

    def return_notes(self, notes: list[str]) -> None:
        """Notes taken for a turn that was dropped go to the next one."""
        self._notes = notes + self._notes

    # --- one turn ----------------------------------------------------------------------------------------------

    def propose(self, number: int) -> tuple[Proposal, TurnRecord] | None:
        """One sequential agent turn for experiment `number`; None when the agent failed this turn."""
        self.ctx.state("proposing", number)
        notes = self.take_notes()
        turn, record = self.make_turn(number, notes, self.feedback)
        agent = self.agent
        assert agent is not None
        proposal = self.settle_turn(number, notes, record, lambda: agent.propose(turn))
        return None if proposal is None else (proposal, record)

    def make_turn(self, number: int, notes: list[str], feedback: str, record: TurnRecord | None = None
                  ) -> tuple[AgentTurn, TurnRecord]:
        """The agent's view of experiment `number` now, and the record its events add up in."""
        ctx, config = self.ctx, self.ctx.config
        incumbent = ctx.ledger.incumbent()
        record = TurnRecord() if record is None else record

        def turn_emit(event: Event) -> None:
            if isinstance(event, AgentUsage):
                for name in USAGE_FIELDS:
                    record.usage[name] = record.usage.get(name, 0) + getattr(event, name)
            elif isinstance(event, NoteDelivered):
                record.delivered.add(event.text)
            ctx.emit(event)

        rows = ctx.ledger.rows()
        turn = AgentTurn(
            experiment=number, workspace=ctx.workspace, files=ctx.incumbent_files(incumbent),
            editable=tuple(config.experiment.editable), protected=tuple(config.experiment.protected),
            program=_program(ctx.workspace), metric_name=config.metric.name,
            direction=config.metric.direction, history=agent_history(rows),
            incumbent=_summary(incumbent), notes=tuple(notes), feedback=feedback, emit=turn_emit,
            cancelled=lambda: ctx.controller.halted, running=in_flight(rows),
            refuse_repeats=config.research.skip_repeats)
        record.plan = self.plan(number)
        if record.plan is not None:
            turn.mode, turn.mode_reason = record.plan.mode, record.plan.reason
            if record.plan.mode == "combine":
                turn.near_misses = tuple(s for s in turn.history if s.id in record.plan.near_misses)
                turn.combined = self._combined(record.plan, turn.files)
        return turn, record

    # --- the research plan -------------------------------------------------------------------------------------

    def plan(self, number: int) -> Plan | None:
        """The planner's mode for experiment `number` (None with the planner off); announced once per change."""
        if self.planner is None:
            return None
        ledger = self.ctx.ledger
        plan = self.planner.choose(ledger.rows(), ledger.incumbent(), self.ctx.controller.forced_mode)
        if plan.mode == "combine" and self._combined(plan, self.ctx.incumbent_files(ledger.incumbent())) == {}:
            plan = Plan("explore", f"{_ids(plan.near_misses)} conflict when merged: exploring instead",
                        forced=plan.forced)
        self.announce(number, plan)
        return plan

    def announce(self, number: int, plan: Plan) -> None:
        """Say that experiment `number` runs in `plan`'s mode, unless that was the last thing said."""
        if self._shown_plan != (number, plan):
            self._shown_plan = (number, plan)
            self.ctx.emit(PlanChosen(experiment=number, mode=plan.mode,  # type: ignore[arg-type]
                                     reason=plan.reason, forced=plan.forced))

    def _combined(self, plan: Plan, files: dict[str, str]) -> dict[str, str]:
        """The near-misses' changes merged onto `files` ({} when they conflict or change nothing together)."""
        rows = [row for row in self.ctx.ledger.rows() if row.id in plan.near_misses]
        return combined_files(self.ctx.repo, files, rows) or {}

    def settle_turn(self, number: int, notes: list[str], record: TurnRecord, produce: Callable[[], Proposal]
                    ) -> Proposal | None:
        """The proposal `produce` returns, or None after a failed turn (counted); a stop or a fatal agent error
        raises LoopStopped."""
        try:
            proposal = produce()
        except AgentCancelled:
            self.ctx.halt_if_requested()
            raise LoopStopped("stopped") from None
        except AgentError as exc:
            if exc.fatal:
                raise LoopStopped(exc.stop_reason, str(exc)) from None
            if exc.stop_reason == "refusal":
                return self._agent_refused(number, notes, record, str(exc))
            if exc.stop_reason == "outage":
                return self._agent_unreachable(number, notes, record, str(exc))
            return self._agent_failed(number, notes, record, str(exc))
        except Exception as exc:  # a bug in an agent must not take the engine down with it
            return self._agent_failed(number, notes, record, f"{type(exc).__name__}: {exc}")
        for note in notes:
            if note not in record.delivered:
                self.ctx.emit(NoteDelivered(experiment=number, text=note))
        if not record.usage and isinstance(proposal.meta.get("usage"), dict):
            record.usage = {name: proposal.meta["usage"].get(name, 0) for name in USAGE_FIELDS}
        self.feedback = ""
        self.refusals = 0
        return proposal

    def _agent_failed(self, number: int, notes: list[str], record: TurnRecord, message: str) -> None:
        self._notes = [note for note in notes if note not in record.delivered]
        self.tally.failures += 1
        self.tally.last_failure = f"#{number}: the agent failed to propose: {message}"
        self.ctx.emit(Notice(level="warning", experiment=number, message=f"the agent failed to propose: {message}"))

    def _agent_refused(self, number: int, notes: list[str], record: TurnRecord, message: str) -> None:
        """A declined turn: told as such, counted apart from crashes; as many in a row as the crash limit end
        the session."""
        self._notes = [note for note in notes if note not in record.delivered]
        self.refusals += 1
        limit = self.ctx.config.loop.max_consecutive_crashes
        if self.refusals >= limit:
            raise LoopStopped("refusal_limit", f"the agent declined {self.refusals} turns in a row (no experiment ran; "
                              f"the last: {message}). Reword program.md or choose another model.")
        self.ctx.emit(Notice(level="warning", experiment=number, topic="agent_refusal",
                             message=f"the agent declined this turn ({self.refusals} of {limit} in a row): {message}"))

    def _agent_unreachable(self, number: int, notes: list[str], record: TurnRecord, message: str) -> None:
        """A turn lost to an outage of the agent's service (the agent already waited it out with backoff up to
        its ceiling): not a failed experiment, so the loop simply tries again, however long the outage lasts."""
        self._notes = [note for note in notes if note not in record.delivered]
        self.ctx.emit(Notice(level="warning", experiment=number, topic="agent_outage",
                             message=f"the agent failed to propose: {message} (an outage of the agent's service: "
                             "not counted toward [loop] max_consecutive_crashes; trying again)"))


def usage_fields(usage: dict) -> dict[str, float | int]:
    """A turn's usage as the ledger's token and cost fields."""
    fields: dict[str, float | int] = {name: int(usage.get(name) or 0) for name in TOKEN_FIELDS}
    fields["cost_usd"] = float(usage.get("cost_usd") or 0.0)
    return fields


def _program(workspace: Path) -> str:
    try:
        return (workspace / "program.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _summary(row: ExperimentRow | None) -> ExperimentSummary | None:
    return None if row is None else summary(row)


def _ids(numbers: tuple[int, ...]) -> str:
    return " and ".join(f"#{n}" for n in numbers)
