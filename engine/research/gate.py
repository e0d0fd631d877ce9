"""The way from a proposal to a run: the guard's check, the announced change, the approval gate and its veto.

In ask mode a change waits at the gate for a person's decision; in auto mode the gate approves at once. A veto is
recorded as the experiment's final row (`vetoed`, with the person's note for the agent's next turn). A pause
requested while the gate waits holds the approved change before its commit. A stop or abort while a change awaits
approval records it `vetoed` ("the session stopped before this change ran"), then ends the session.
"""

from __future__ import annotations

from loopdeck.engine.agents.base import Proposal
from loopdeck.engine.control import Decision
from loopdeck.engine.events import (
    ApprovalRequested,
    ChangeProposed,
    ChangeRejected,
    DecisionMade,
    ExperimentFinished,
)
from loopdeck.engine.research.context import LoopContext, one_line
from loopdeck.engine.research.guard import check_proposal, check_substance
from loopdeck.engine.research.record import Recorder
from loopdeck.engine.research.turns import Turns
from loopdeck.engine.store.gitops import unified_diff
from loopdeck.engine.store.ledger import ExperimentRow


class Gate:
    def __init__(self, ctx: LoopContext, turns: Turns, recorder: Recorder) -> None:
        self.ctx = ctx
        self.turns = turns
        self.recorder = recorder

    def check_change(self, proposal: Proposal, old_files: dict[str, str]) -> tuple[dict[str, str], str]:
        """The files `proposal` really changes and its diff against `old_files`; GuardRejection if refused."""
        config = self.ctx.config
        changed = check_proposal(proposal.files, workspace=self.ctx.workspace, editable=config.experiment.editable,
                                 protected_hashes=self.ctx.protected_hashes, incumbent=old_files)
        new_files = {name: proposal.files[name] for name in changed}
        check_substance(old_files, new_files, allow_seed=config.evaluation.allow_seed_changes,
                        allow_cosmetic=config.evaluation.allow_cosmetic_changes)
        return new_files, unified_diff({name: old_files.get(name, "") for name in changed}, new_files)

    def announce_change(self, number: int, proposal: Proposal, diff: str, new_files: dict[str, str]) -> None:
        added, removed = _diff_counts(diff)
        self.ctx.emit(ChangeProposed(experiment=number, description=one_line(proposal.description),
                                     rationale=proposal.rationale, diff=diff, files=tuple(new_files), added=added,
                                     removed=removed))

    def reject(self, row: ExperimentRow, reason: str) -> ExperimentFinished:
        """Record a change the guard refused; the agent hears why in its next turn."""
        self.ctx.emit(ChangeRejected(experiment=row.id, reason=reason))
        self.turns.feedback = f"Your proposal #{row.id} ({row.description}) was rejected before running: {reason}"
        return self.recorder.not_run(row, "rejected", reason)

    def decide(self, row: ExperimentRow, decision: Decision | None = None) -> ExperimentFinished | None:
        """None when the change may run; else its `vetoed` record (or LoopStopped, after recording, on a stop).
        `decision`: one already made (on a draft, while the previous experiment trained); else the gate asks."""
        ctl = self.ctx.controller
        if decision is None:
            decision = self.ask(row.id, row.description)
        if decision is not None:
            if decision.note:
                self.turns.add_note(decision.note)
            if not decision.approved:
                self.turns.feedback = (f"Your proposal #{row.id} ({row.description}) was vetoed by a person"
                                       + (f": {decision.note}" if decision.note else "."))
                return self.recorder.not_run(row, "vetoed", decision.note or "vetoed by a person")
            ctl.wait_while_paused(lambda: self.ctx.state("paused", row.id))
            if not ctl.abort_event.is_set():
                return None
        self.recorder.not_run(row, "vetoed", "the session stopped before this change ran")
        self.ctx.halt_if_requested()
        raise AssertionError("unreachable: the gate ends only on a decision, a stop or an abort")

    def ask(self, experiment: int, description: str, *, announce_state: bool = True) -> Decision | None:
        """Open the approval gate (in ask mode) and wait: a person's decision, auto's, or None on a stop/abort."""
        ctl = self.ctx.controller
        if ctl.approval == "ask":
            if announce_state:
                self.ctx.state("awaiting_approval", experiment)
            self.ctx.emit(ApprovalRequested(experiment=experiment, description=description))
        decision = ctl.wait_decision(experiment)
        if decision is not None:
            self.ctx.emit(DecisionMade(experiment=experiment, approved=decision.approved, note=decision.note,
                                       by=decision.by, client=decision.client))
        return decision


def _diff_counts(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()
    added = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
    return added, removed
