"""Pipelined proposals: while experiment n trains, the agent drafts experiment n+1 in a background thread.

The draft starts once n is committed (or while the baseline runs) and is written against the incumbent of that
moment; its agent events carry experiment n+1 and are emitted as they come. As soon as the agent returns it, the
draft is checked by the guard and announced (`ChangeProposed`); in supervised mode its approval gate opens at once,
so a person reviews n+1 while n trains. Nothing of the draft is written to the ledger or to git before n finishes:
a kill while drafting loses nothing and duplicates nothing, and a stop or abort cancels the draft
(`turn.cancelled()`) and drops it without a row.

When n finishes the loop takes the draft:
- n was reverted (the common case), crashed, or was the baseline: the incumbent is unchanged and the draft is used
  as it is;
- n was kept: the draft is rebased onto the new incumbent with a line-level three-way merge (base = the old
  incumbent, ours = the new one, theirs = the draft); changes to different lines, adjacent ones included, combine;
  overlapping changes conflict, and then the draft is dropped and the agent proposes afresh.
Either way the agent is told the outcome of n (`turn.feedback`, the history) before anything is committed, through
the agent's optional `revise(draft, turn)` (see `loopdeck.engine.agents.base.Agent`), and may change the draft. A decision a
person made during n stands if the diff that finally runs changes the same lines in the same way as the one they
saw; a rebase or revision that changes the diff opens the gate again. A veto made during n is final.

`[loop] pipeline`: "on", "off", or "auto" (the default): on once the agent's measured proposal time (an
exponential moving average over its turns) exceeds AUTO_FRACTION of the training budget. A fast agent gains nothing
from drafting ahead and would only compete with training for the CPU. The baseline is the exception: "auto" always
drafts the first proposal while it trains, because the baseline and its noise runs take several budgets and a new
user should review a diff as soon as the baseline is measured; that draft's time is the clock's first measurement.
"""

from __future__ import annotations

import dataclasses
import difflib
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from loopdeck.engine.agents.base import Agent, AgentCancelled, AgentError, AgentTurn, Proposal
from loopdeck.engine.control import Decision, make_command
from loopdeck.engine.events import Notice
from loopdeck.engine.research.context import LoopContext, Tally, one_line
from loopdeck.engine.research.gate import Gate
from loopdeck.engine.research.guard import GuardRejection
from loopdeck.engine.research.turns import TurnRecord, Turns
from loopdeck.engine.store.ledger import ExperimentRow

AUTO_FRACTION = 0.10  # auto: draft ahead once proposals take more than this fraction of the training budget
EMA_WEIGHT = 0.5  # weight of the newest proposal time in the moving average
CANCEL_WAIT_SECONDS = 30.0  # how long closing waits for an agent to notice that its draft was cancelled


# --- when to draft ahead -----------------------------------------------------------------------------------------


class ProposalClock:
    """Exponential moving average of the agent's proposal time, in seconds."""

    def __init__(self) -> None:
        self.average: float | None = None

    def add(self, seconds: float) -> None:
        self.average = seconds if self.average is None else EMA_WEIGHT * seconds + (1 - EMA_WEIGHT) * self.average

    def wanted(self, mode: str, budget_seconds: float) -> bool:
        if mode != "auto":
            return mode == "on"
        return self.average is not None and self.average > AUTO_FRACTION * budget_seconds


# --- rebasing a draft --------------------------------------------------------------------------------------------


def merge3(base: str, ours: str, theirs: str) -> str | None:
    """Both sides' line changes to `base` applied together, or None when they touch the same lines (a pure
    insertion touching another change counts as touching it: their order would be a guess)."""
    if theirs in (base, ours):
        return ours
    if ours == base:
        return theirs
    lines = base.splitlines(keepends=True)
    edits = sorted([*_edits(lines, ours), *_edits(lines, theirs)])
    merged: list[str] = []
    at = 0
    last: tuple[int, int, tuple[str, ...]] | None = None
    for edit in edits:
        start, end, new = edit
        if last is not None and start <= last[1]:
            if edit == last:
                continue  # the same change on both sides
            if start < last[1] or start == end or last[0] == last[1]:
                return None
        merged += lines[at:start]
        merged += new
        at, last = end, edit
    return "".join(merged + lines[at:])


def _edits(base: list[str], text: str) -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, new lines) of each change from base to text, in base's line numbers."""
    other = text.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, base, other, autojunk=False)
    return [(i1, i2, tuple(other[j1:j2])) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def rebase(base: Mapping[str, str], incumbent: Mapping[str, str], draft: Mapping[str, str]) -> dict[str, str] | None:
    """The draft's files moved from `base` onto `incumbent`; None on a conflict. Files the base lacks (which the
    guard will refuse anyway) are passed through."""
    rebased = {}
    for name, content in draft.items():
        if name not in base:
            rebased[name] = content
            continue
        merged = merge3(base[name], incumbent.get(name, base[name]), content)
        if merged is None:
            return None
        rebased[name] = merged
    return rebased


def same_change(shown: str, final: str) -> bool:
    """Two diffs change the same lines of the same files in the same way (context and line numbers aside)."""
    return _changed_lines(shown) == _changed_lines(final)


def _changed_lines(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if line.startswith(("+", "-", "diff --git "))]


# --- one draft ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Review:
    """What was shown and decided about a draft while the experiment before it trained."""

    diff: str  # the diff announced in ChangeProposed ("" when the guard refused the draft)
    decision: Decision | None  # a person's decision on that diff; None when nobody was asked yet

    @property
    def vetoed(self) -> bool:
        return self.decision is not None and not self.decision.approved

    def covers(self, diff: str) -> bool:
        """The decision (if any) applies to `diff`: the same change as the one shown."""
        return bool(self.diff) and same_change(self.diff, diff)


@dataclass
class Draft:
    """Experiment `number`, drafted in a background thread against the incumbent files `base`."""

    number: int
    after: int  # the experiment that trains while this one is drafted
    turn: AgentTurn
    record: TurnRecord
    notes: list[str]
    base: dict[str, str]
    proposal: Proposal | None = None
    error: BaseException | None = None
    seconds: float = 0.0  # the agent's time on it
    diff: str = ""
    decision: Decision | None = None
    awaiting_decision: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def result(self) -> Proposal:
        if self.error is not None:
            raise self.error
        assert self.proposal is not None
        return self.proposal


class Pipeline:
    """The loop's drafting machinery: `start` after committing experiment n, `propose` for the next number.

    It drafts through the session's `turns` and reviews drafts at its `gate`; `tally` says how many experiment
    numbers the session has used (no draft beyond max_experiments)."""

    def __init__(self, ctx: LoopContext, turns: Turns, gate: Gate, tally: Tally) -> None:
        self.ctx = ctx
        self.turns = turns
        self.gate = gate
        self.tally = tally
        self.clock = ProposalClock()
        self._draft: Draft | None = None

    @property
    def mode(self) -> str:
        return self.ctx.config.loop.pipeline

    # --- drafting while n trains -----------------------------------------------------------------------------

    def start(self, row: ExperimentRow) -> None:
        """Experiment `row` is about to train: draft the next one now if pipelining pays and it may run at all (not
        while a person holds the loop with pause: pause stops proposals)."""
        ctx, settings, agent = self.ctx, self.ctx.config.loop, self.turns.agent
        if self._draft is not None or agent is None or ctx.controller.halted or ctx.controller.paused:
            return
        first_draft = row.is_baseline and self.mode == "auto"
        if not first_draft and not self.clock.wanted(self.mode, ctx.config.experiment.budget_seconds):
            return
        if settings.max_experiments and self.tally.numbers_used >= settings.max_experiments:
            return
        notes = self.turns.take_notes()
        number = row.id + 1
        turn, record = self.turns.make_turn(number, notes, _drafting_feedback(row))
        draft = Draft(number=number, after=row.id, turn=turn, record=record, notes=notes, base=dict(turn.files))
        draft.turn = dataclasses.replace(turn, cancelled=lambda: draft.cancelled.is_set()
                                         or ctx.controller.halted)
        draft.thread = threading.Thread(target=self._work, args=(draft, agent), daemon=True,
                                        name=f"loopdeck-draft-{number}")
        self._draft = draft
        draft.thread.start()

    def _work(self, draft: Draft, agent: Agent) -> None:
        began = time.monotonic()
        try:
            draft.proposal = agent.propose(draft.turn)
        except BaseException as exc:  # handed to the loop thread, which treats it as a sequential turn would
            draft.error = exc
        draft.seconds = time.monotonic() - began
        if draft.proposal is not None and not draft.turn.cancelled():
            self._review(draft)

    def _review(self, draft: Draft) -> None:
        """Guard and announce the draft; in supervised mode, hold its approval gate open while the run goes on."""
        gate = self.gate
        assert draft.proposal is not None
        try:
            new_files, draft.diff = gate.check_change(draft.proposal, draft.base)
        except GuardRejection:
            return  # refused and recorded when the draft is taken, exactly as a sequential proposal would be
        except Exception as exc:  # the guard on a thread: report rather than lose the thread silently
            self.ctx.emit(Notice(level="warning", experiment=draft.number, message=f"draft check failed: {exc}"))
            return
        gate.announce_change(draft.number, draft.proposal, draft.diff, new_files)
        if self.ctx.controller.approval == "ask":
            draft.awaiting_decision = True
            draft.decision = gate.ask(draft.number, one_line(draft.proposal.description), announce_state=False)
            draft.awaiting_decision = False

    # --- taking the draft when n is done ---------------------------------------------------------------------

    def propose(self, number: int) -> tuple[Proposal, TurnRecord, Review | None] | None:
        """The proposal for experiment `number`: the draft made while the previous one trained (rebased and
        revised), or a fresh sequential turn. None when the agent failed this turn."""
        draft, self._draft = self._draft, None
        if draft is not None and draft.number != number:
            self._drop(draft, f"draft #{draft.number} dropped: the next experiment is #{number}")
            draft = None
        if draft is None:
            return self._sequential(number)
        ctx = self.ctx
        ctx.state("awaiting_approval" if draft.awaiting_decision else "proposing", number)
        assert draft.thread is not None
        draft.thread.join()
        self.clock.add(draft.seconds)
        ctx.halt_if_requested()  # a stop while n trained drops the draft: it was never committed
        feedback = self.turns.feedback  # the outcome of n, for the revision turn
        proposal = self.turns.settle_turn(number, draft.notes, draft.record, draft.result)
        if proposal is None:
            return None
        review = Review(draft.diff, draft.decision)
        if review.vetoed:
            return proposal, draft.record, review
        incumbent = ctx.incumbent_files(ctx.ledger.incumbent())
        if incumbent != draft.base:
            files = rebase(draft.base, incumbent, proposal.files)
            if files is None:
                ctx.emit(Notice(level="info", experiment=number, message=f"draft #{number} conflicts with "
                                     f"the change kept in #{draft.after}: asking the agent again"))
                self.turns.return_notes(draft.notes)  # the new turn must see them too
                return self._sequential(number, carried=draft.record.usage)
            proposal = dataclasses.replace(proposal, files=files)
        return self._revise(number, proposal, draft.record, feedback), draft.record, review

    def _revise(self, number: int, draft: Proposal, record: TurnRecord, feedback: str) -> Proposal:
        turns = self.turns
        revise = getattr(turns.agent, "revise", None)
        if revise is None:
            return draft  # notes that arrived meanwhile wait for the next turn
        notes = turns.take_notes()
        drafted = record.plan
        turn, _ = turns.make_turn(number, notes, feedback, record=record)
        revised = turns.settle_turn(number, notes, record, lambda: _revised_or_kept(revise, draft, turn))
        if (revised is None or revised is draft) and drafted is not None:
            record.plan = drafted  # the draft stands, written in the mode the planner chose then
            turns.announce(number, drafted)
        return revised if revised is not None else draft

    def _sequential(self, number: int, carried: Mapping[str, float] | None = None
                    ) -> tuple[Proposal, TurnRecord, None] | None:
        began = time.monotonic()
        proposed = self.turns.propose(number)
        self.clock.add(time.monotonic() - began)
        if proposed is None:
            return None
        proposal, record = proposed
        for name, value in (carried or {}).items():  # a dropped draft's tokens were spent on this experiment
            record.usage[name] = record.usage.get(name, 0) + value
        return proposal, record, None

    def _drop(self, draft: Draft, message: str) -> None:
        draft.cancelled.set()
        self.ctx.emit(Notice(level="info", experiment=draft.number, message=message))
        if draft.awaiting_decision:  # its gate is open: close it, or the thread would wait for a person forever
            self.ctx.controller.put(make_command("decide", approve=False, note=message,
                                                      experiment=draft.number))
        self._join(draft)
        self.turns.return_notes(draft.notes)

    def close(self) -> None:
        """Cancel a draft still in progress (the session is ending) and wait for its thread."""
        draft, self._draft = self._draft, None
        if draft is not None:
            draft.cancelled.set()
            if draft.awaiting_decision:
                # Its gate waits for a person, and a session that ends for another reason than a stop (crash limit,
                # time limit, an error) would leave it waiting: close it as a stop does.
                self.ctx.controller.interrupt()
            self._join(draft)

    def _join(self, draft: Draft) -> None:
        assert draft.thread is not None
        draft.thread.join(CANCEL_WAIT_SECONDS)
        if draft.thread.is_alive():
            self.ctx.emit(Notice(level="warning", experiment=draft.number, message=f"the agent did not stop "
                                      f"drafting #{draft.number} within {CANCEL_WAIT_SECONDS:g} s; left behind"))


def _revised_or_kept(revise: Callable[[Proposal, AgentTurn], Proposal], draft: Proposal, turn: AgentTurn
                     ) -> Proposal:
    """The agent's revision of its draft; a failed revision (not a stop, not a fatal error) keeps the draft."""
    try:
        return revise(draft, turn)
    except (AgentCancelled, KeyboardInterrupt):
        raise
    except AgentError as exc:
        if exc.fatal:
            raise
        message = str(exc)
    except Exception as exc:  # a bug in an agent's revise must not lose a good draft
        message = f"{type(exc).__name__}: {exc}"
    turn.emit(Notice(level="warning", experiment=turn.experiment,
                     message=f"the agent could not revise its draft ({message}); it runs as drafted"))
    return draft


def _drafting_feedback(running: ExperimentRow) -> str:
    what = "the baseline" if running.is_baseline else f"experiment #{running.id} ({running.description})"
    return (f"While you draft this proposal, {what} is training. Your proposal will run after it, on whatever is "
            "the incumbent then; you will hear its outcome before your proposal is committed and may revise it. "
            "Propose something other than what is training now.")
