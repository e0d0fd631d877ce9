"""Pipelined proposals: the next experiment is drafted while the current one trains, then used, rebased, revised
or re-proposed; stops cancel the draft without a trace; supervised review overlaps training; off is sequential."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, change, expected_metric, fake_train_source, set_constant

from loopdeck.engine.agents.base import AgentCancelled, AgentTurn, Proposal
from loopdeck.engine.events import (
    ApprovalRequested,
    ChangeProposed,
    DecisionMade,
    ExperimentFinished,
    ExperimentStarted,
    Notice,
    PlanChosen,
    StateChanged,
)
from loopdeck.engine.research.pipeline import ProposalClock, merge3, rebase, same_change

pytestmark = pytest.mark.timeout(60)

RUN = {"steps": 8, "step_seconds": 0.08}  # a fake run trains for 0.64 s (plus its start-up)
AGENT_SECONDS = 0.25


class TimedAgent(ScriptedAgent):
    """A scripted agent that takes AGENT_SECONDS per proposal (noticing cancellation), notes when each turn ran
    and which ledger rows existed meanwhile, and revises drafts with `revisions[experiment]` when given."""

    def __init__(self, steps, workspace=None, delay: float = AGENT_SECONDS, revisions=None) -> None:
        super().__init__(steps)
        self.delay = delay
        self.workspace = workspace
        self.calls: list[tuple[int, float, float | None]] = []  # (experiment, started, finished or None)
        self.rows_while_drafting: dict[int, list[int]] = {}
        self.revisions = revisions or {}
        self.revised: list[tuple[Proposal, AgentTurn]] = []

    def propose(self, turn: AgentTurn) -> Proposal:
        started = time.time()
        if self.workspace is not None:
            self.rows_while_drafting[turn.experiment] = [row.id for row in ledger_rows(self.workspace)]
        while time.time() < started + self.delay:
            if turn.cancelled():
                self.calls.append((turn.experiment, started, None))
                raise AgentCancelled()
            time.sleep(0.01)
        proposal = super().propose(turn)
        self.calls.append((turn.experiment, started, time.time()))
        return proposal

    def revise(self, draft: Proposal, turn: AgentTurn) -> Proposal:
        self.revised.append((draft, turn))
        revision = self.revisions.get(turn.experiment)
        return revision(draft, turn) if revision else draft


def first(events, kind, experiment):
    return next(e for e in events if isinstance(e, kind) and e.experiment == experiment)


def run_pipelined(run_session, workspace, agent, **options):
    return run_session(workspace, agent, pipeline=options.pop("pipeline", "on"), **options)


# --- the merge -------------------------------------------------------------------------------------------------


def test_three_way_merge_combines_changes_to_different_lines_and_refuses_overlaps():
    base = "A = 1\nB = 2\nC = 3\nD = 4\n"
    assert merge3(base, "A = 10\nB = 2\nC = 3\nD = 4\n", "A = 1\nB = 20\nC = 3\nD = 4\n") == (
        "A = 10\nB = 20\nC = 3\nD = 4\n")  # adjacent lines combine
    assert merge3(base, "A = 10\nB = 2\nC = 3\nD = 4\n", "A = 1\nB = 2\nC = 3\nD = 40\nE = 5\n") == (
        "A = 10\nB = 2\nC = 3\nD = 40\nE = 5\n")
    assert merge3(base, "A = 10\nB = 2\nC = 3\nD = 4\n", "A = 11\nB = 2\nC = 3\nD = 4\n") is None  # same line
    assert merge3(base, "A = 1\nX = 0\nB = 2\nC = 3\nD = 4\n", "A = 1\nB = 20\nC = 3\nD = 4\n") is None  # touching
    assert merge3(base, "A = 10\nB = 2\nC = 3\nD = 4\n", "A = 10\nB = 2\nC = 30\nD = 4\n") == (
        "A = 10\nB = 2\nC = 30\nD = 4\n")  # the same change on both sides is taken once
    assert merge3(base, "A = 10\n", base) == "A = 10\n"  # an untouched draft file follows the incumbent
    assert rebase({"t.py": base}, {"t.py": base.replace("A = 1", "A = 5")}, {"t.py": base.replace("D = 4", "D = 0"),
                                                                           "x.py": "new"}) == {
        "t.py": "A = 5\nB = 2\nC = 3\nD = 0\n", "x.py": "new"}
    assert rebase({"t.py": base}, {"t.py": "A = 5\n"}, {"t.py": "A = 6\n"}) is None


def test_the_same_change_ignores_context_and_line_numbers():
    shown = "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1,3 +1,3 @@\n A = 1\n-B = 2\n+B = 3\n C = 3\n"
    moved = "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -4,3 +4,3 @@\n A = 9\n-B = 2\n+B = 3\n C = 3\n"
    assert same_change(shown, moved)
    assert not same_change(shown, moved.replace("+B = 3", "+B = 4"))


def test_auto_pipelines_once_proposals_take_more_than_a_tenth_of_the_budget():
    clock = ProposalClock()
    assert not clock.wanted("auto", 60.0) and clock.wanted("on", 60.0) and not clock.wanted("off", 60.0)
    clock.add(3.0)
    assert not clock.wanted("auto", 60.0)
    clock.add(30.0)  # average 16.5 s
    assert clock.wanted("auto", 60.0)


# --- the loop --------------------------------------------------------------------------------------------------


def test_the_next_draft_is_written_while_the_run_trains_and_used_at_once_after_a_revert(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5, **RUN))
    agent = TimedAgent([change("LR", 0.6), change("LR", 0.3)], workspace=workspace)
    session, recorded = run_pipelined(run_session, workspace, agent)

    assert recorded.finished.reason == "exhausted"
    assert [(r.id, r.status) for r in ledger_rows(workspace)] == [(0, "keep"), (1, "discard"), (2, "keep")]
    events = recorded.events
    for number, (experiment, started, finished) in enumerate(agent.calls[:2], start=1):
        running = number - 1  # the draft of #1 is written while the baseline trains
        assert experiment == number and finished is not None
        assert first(events, ExperimentStarted, running).ts - 0.2 < started
        assert finished < first(events, ExperimentFinished, running).ts  # the agent worked while the run trained
        assert first(events, ChangeProposed, number).ts < first(events, ExperimentFinished, running).ts
        assert agent.rows_while_drafting[number] == list(range(number))  # no row for a draft
    draft_turn = agent.turns[1]
    assert [row.id for row in draft_turn.history] == [0]  # #1 is not history yet: the feedback says it trains
    assert "experiment #1 (LR 0.6) is training" in draft_turn.feedback
    # After the revert the draft is told the outcome, then runs at once: no second turn, one announcement.
    (draft, turn) = agent.revised[1]
    assert turn.history[-1].status == "discard" and "Experiment #1 (LR 0.6): discard" in turn.feedback
    assert "LR = 0.3" in draft.files["train.py"]
    assert len([e for e in events if isinstance(e, ChangeProposed) and e.experiment == 2]) == 1
    states = [(e.state, e.experiment) for e in recorded.of(StateChanged)]
    at = states.index(("evaluating", 1))
    assert states[at + 1 : at + 4] == [("proposing", 2), ("committing", 2), ("training", 2)]
    assert [e.metric for e in recorded.of(ExperimentFinished)] == [expected_metric(v) for v in (0.5, 0.6, 0.3)]


def test_a_draft_is_rebased_onto_a_kept_change_that_touched_other_lines(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5, **RUN))
    agent = TimedAgent([change("LR", 0.3), change("STEP_SECONDS", 0.07)], workspace=workspace)
    session, recorded = run_pipelined(run_session, workspace, agent, max_experiments=2)

    assert "LR = 0.5" in agent.turns[1].files["train.py"]  # #2 was drafted while #1 (LR 0.3, kept) trained
    rows = ledger_rows(workspace)
    assert [(r.id, r.status) for r in rows] == [(0, "keep"), (1, "keep"), (2, "discard")]
    rebased = rows[2]
    assert rebased.parent_commit == rows[1].commit
    assert "-STEP_SECONDS = 0.08" in rebased.diff and "+STEP_SECONDS = 0.07" in rebased.diff
    assert "LR" not in "".join(line for line in rebased.diff.splitlines() if line.startswith(("+", "-")))
    assert rebased.metric == expected_metric(0.3)  # it ran on top of the kept LR = 0.3
    assert not [e for e in recorded.of(Notice) if "conflicts" in e.message]


def test_a_draft_that_conflicts_with_a_kept_change_is_proposed_again(make_workspace, run_session):
    conflicting = make_workspace(fake_train_source(lr=0.5, **RUN))
    agent = TimedAgent([change("LR", 0.3), change("LR", 0.4), change("LR", 0.25)], workspace=conflicting)
    session, recorded = run_pipelined(run_session, conflicting, agent, max_experiments=2)
    assert [t.experiment for t in agent.turns] == [1, 2, 2]  # the draft of #2 conflicted: asked again
    assert "LR = 0.3" in agent.turns[2].files["train.py"]  # ... against the new incumbent
    assert any("draft #2 conflicts with the change kept in #1" in e.message for e in recorded.of(Notice))
    rows = ledger_rows(conflicting)
    assert [(r.id, r.status, r.metric) for r in rows] == [
        (0, "keep", expected_metric(0.5)), (1, "keep", expected_metric(0.3)), (2, "keep", expected_metric(0.25))]
    assert "-LR = 0.3" in rows[2].diff and "+LR = 0.25" in rows[2].diff


def test_the_agent_is_told_the_outcome_and_its_revision_is_what_runs(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5, **RUN))

    def rethink(draft: Proposal, turn: AgentTurn) -> Proposal:
        return Proposal(description="LR 0.35 instead", rationale="#1 did not help",
                        files={"train.py": set_constant(turn.files["train.py"], "LR", 0.35)})

    agent = TimedAgent([change("LR", 0.6), change("LR", 0.7)], revisions={2: rethink})
    session, recorded = run_pipelined(run_session, workspace, agent)

    rows = ledger_rows(workspace)
    assert [(r.id, r.description, r.metric) for r in rows][1:] == [
        (1, "LR 0.6", expected_metric(0.6)), (2, "LR 0.35 instead", expected_metric(0.35))]
    draft, turn = agent.revised[1]
    assert draft.description == "LR 0.7" and turn.experiment == 2
    assert turn.history[-1].id == 1 and turn.history[-1].status == "discard"
    announced = [e.description for e in recorded.of(ChangeProposed) if e.experiment == 2]
    assert announced == ["LR 0.7", "LR 0.35 instead"]  # the draft as shown during #1, then the revision


def test_a_draft_that_stands_keeps_the_mode_it_was_written_in(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5, **RUN))
    agent = TimedAgent([change("LR", 0.3), change("STEPS", 9)])
    _, recorded = run_pipelined(run_session, workspace, agent)

    # #2 was drafted while #1 trained (explore); #1's keep made the planner say exploit, but the draft ran unchanged.
    assert [row.status for row in ledger_rows(workspace)] == ["keep", "keep", "discard"]
    said = [e.mode for e in recorded.of(PlanChosen) if e.experiment == 2]
    assert said == ["explore", "exploit", "explore"]
    assert ledger_rows(workspace)[2].mode == "explore"


def test_a_stop_while_drafting_cancels_the_draft_and_leaves_no_row(make_workspace):
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(fake_train_source(lr=0.5, **RUN))
    agent = TimedAgent([change("LR", 0.3), change("LR", 0.25)], delay=0.05)
    events: list = []
    session: Session

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, ExperimentStarted) and event.experiment == 1:
            agent.delay = 30.0  # the draft of #2 would take far longer than the run
        if isinstance(event, StateChanged) and event.state == "training" and event.experiment == 1:
            threading.Timer(0.2, session.stop_after_current).start()

    session = Session(workspace, RunOptions(pipeline="on"), on_event=on_event, agent=agent)
    began = time.monotonic()
    session.run()

    assert session.finished.reason == "stopped"
    assert time.monotonic() - began < 20  # the 30 s draft was cancelled, not waited for
    assert agent.calls[-1][0] == 2 and agent.calls[-1][2] is None  # the draft noticed the stop
    rows = ledger_rows(workspace)
    assert [(r.id, r.status) for r in rows] == [(0, "keep"), (1, "keep")]  # #1 finished; no row for #2
    assert not [e for e in events if isinstance(e, ChangeProposed) and e.experiment == 2]


def test_supervised_the_next_diff_is_reviewed_while_the_current_one_trains(make_workspace):
    from loopdeck.engine.session import RunOptions, Session

    # LR goes up three times against one incumbent: repeats, let through so that each one runs.
    workspace = make_workspace(fake_train_source(lr=0.5, **RUN), approval="ask", research={"skip_repeats": False})

    def rethink(draft: Proposal, turn: AgentTurn) -> Proposal:
        return Proposal(description="LR 0.55", rationale="changed after #1",
                        files={"train.py": set_constant(turn.files["train.py"], "LR", 0.55)})

    agent = TimedAgent([change("LR", 0.6), change("LR", 0.7), change("LR", 0.8)], revisions={2: rethink})
    events: list = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, ApprovalRequested):  # a person approves shortly after the gate opens
            threading.Timer(0.1, session.decide, args=(True,), kwargs={"experiment": event.experiment}).start()

    session = Session(workspace, RunOptions(pipeline="on", approval="ask", max_experiments=3), on_event=on_event,
                      agent=agent)
    session.run()

    assert [(r.id, r.status) for r in ledger_rows(workspace)] == [
        (0, "keep"), (1, "discard"), (2, "discard"), (3, "discard")]
    for number in (2, 3):  # the gate for the draft opened, and was decided, while the previous run trained
        assert first(events, ApprovalRequested, number).ts < first(events, ExperimentFinished, number - 1).ts
        assert first(events, DecisionMade, number).ts < first(events, ExperimentFinished, number - 1).ts
    asked = [e.experiment for e in events if isinstance(e, ApprovalRequested)]
    assert asked == [1, 2, 2, 3]  # #2 was revised after #1's outcome: its new diff was approved again; #3 was not
    second = [e for e in events if isinstance(e, ApprovalRequested) and e.experiment == 2][1]
    assert second.ts > first(events, ExperimentFinished, 1).ts and second.description == "LR 0.55"


def test_a_veto_given_while_the_previous_run_trains_is_recorded_when_it_ends(make_workspace):
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(fake_train_source(lr=0.5, **RUN), approval="ask")
    agent = TimedAgent([change("LR", 0.6), change("LR", 0.3)])
    events: list = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, ApprovalRequested):
            approve = event.experiment == 1
            threading.Timer(0.1, session.decide, args=(approve, "" if approve else "not LR again"),
                            kwargs={"experiment": event.experiment}).start()

    session = Session(workspace, RunOptions(pipeline="on", approval="ask", max_experiments=2), on_event=on_event,
                      agent=agent)
    session.run()

    rows = ledger_rows(workspace)
    assert [(r.id, r.status, r.reason) for r in rows][1:] == [
        (1, "discard", rows[1].reason), (2, "vetoed", "not LR again")]
    assert "+LR = 0.3" in rows[2].diff and rows[2].commit == ""
    assert first(events, DecisionMade, 2).ts < first(events, ExperimentFinished, 1).ts
    assert [turn.experiment for _, turn in agent.revised] == [1]  # a vetoed draft is not revised


def test_a_session_that_ends_while_a_draft_awaits_approval_closes_its_gate(make_workspace):
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(fake_train_source(lr=0.5, **RUN), approval="ask", crashes=1)
    agent = TimedAgent([change("MODE", "crash"), change("LR", 0.3)])

    def on_event(event) -> None:
        if isinstance(event, ApprovalRequested) and event.experiment == 1:  # nobody answers for #2
            threading.Timer(0.1, session.decide, args=(True,), kwargs={"experiment": 1}).start()

    session = Session(workspace, RunOptions(pipeline="on", approval="ask"), on_event=on_event, agent=agent)
    began = time.monotonic()
    session.run()

    assert session.finished.reason == "crash_limit"
    assert time.monotonic() - began < 15  # the open gate of #2 did not hold the session
    assert [(r.id, r.status) for r in ledger_rows(workspace)] == [(0, "keep"), (1, "crash")]


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_off_is_strictly_sequential_and_auto_drafts_during_the_baseline_and_once_the_agent_is_slow(make_workspace, run_session,
                                                                                     mode):
    workspace = make_workspace(fake_train_source(lr=0.5, **RUN), research={"skip_repeats": False})  # as above
    agent = TimedAgent([change("LR", 0.6), change("LR", 0.7), change("LR", 0.8)])
    session, recorded = run_pipelined(run_session, workspace, agent, pipeline=mode, max_experiments=3)

    finished = {e.experiment: e.ts for e in recorded.of(ExperimentFinished)}
    overlapped = [experiment for experiment, started, _ in agent.calls if started < finished[experiment - 1]]
    # auto drafts the first proposal while the baseline trains, and the next ones because 0.25 s per proposal
    # against a 1 s budget is over a tenth of it.
    assert overlapped == ([] if mode == "off" else [1, 2, 3])
    assert [(r.id, r.status) for r in ledger_rows(workspace)] == [
        (0, "keep"), (1, "discard"), (2, "discard"), (3, "discard")]


def test_auto_drafts_the_first_proposal_while_the_baseline_and_its_noise_runs_train(make_workspace):
    from loopdeck.engine.events import RunRepeated
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(fake_train_source(lr=0.5, **RUN), approval="ask", evaluation={"baseline_seeds": 3})
    agent = TimedAgent([change("LR", 0.3)], workspace=workspace)
    events: list = []

    def on_event(event) -> None:
        events.append(event)
        if isinstance(event, ApprovalRequested):  # a person reviews the first diff as soon as it is shown
            threading.Timer(0.1, session.decide, args=(True,), kwargs={"experiment": event.experiment}).start()

    session = Session(workspace, RunOptions(approval="ask", max_experiments=1), on_event=on_event, agent=agent)
    session.run()

    baseline_done = first(events, ExperimentFinished, 0).ts
    experiment, started, finished = agent.calls[0]
    assert experiment == 1 and started < first(events, RunRepeated, 0).ts  # drafting began with the first run
    assert finished < baseline_done and agent.rows_while_drafting[1] == [0]
    assert first(events, ApprovalRequested, 1).ts < baseline_done  # reviewed while the seeds still trained
    assert first(events, DecisionMade, 1).ts < baseline_done
    # Judged against the measured baseline (the mean of its three seeds), through the same guard, gate and
    # integrity as a sequential proposal: one turn, revised with the baseline's outcome, one approval.
    rows = ledger_rows(workspace)
    assert [(r.id, r.status, r.metric_runs) for r in rows] == [(0, "keep", 3), (1, "keep", 1)]
    assert rows[1].parent_commit == rows[0].commit and rows[1].incumbent_metric == rows[0].metric
    outcome = first(events, ExperimentFinished, 1)
    assert outcome.incumbent_metric == rows[0].metric and outcome.metric == expected_metric(0.3)
    assert [turn.experiment for turn in agent.turns] == [1]
    (_, revision) = agent.revised[0]
    assert "Experiment #0 (baseline): keep" in revision.feedback
    assert [e.experiment for e in events if isinstance(e, ApprovalRequested)] == [1]
