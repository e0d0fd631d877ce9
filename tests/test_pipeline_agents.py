"""How the built-in agents revise a draft written while the previous experiment trained (engine/research/pipeline.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fake_anthropic import FakeAnthropic, make_turn, reply, text, tool_use
from fake_targets import fake_train_source, set_constant

from loopdeck.engine.agents.base import ExperimentSummary, Proposal
from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings
from loopdeck.engine.agents.offline.agent import OfflineAgent

KEY = "sk-ant-pipeline-test-key"
BASELINE = ExperimentSummary(id=0, status="keep", metric=1.3, delta=None, description="baseline",
                             meta={"baseline": True}, baseline=True)


def workspace_with(tmp_path: Path, source: str) -> Path:
    (tmp_path / "train.py").write_text(source)
    return tmp_path


def outcome(draft: Proposal, status: str, **fields) -> ExperimentSummary:
    """Experiment #1 as the history shows it after it ran the draft's own change."""
    return ExperimentSummary(id=1, status=status, metric=fields.pop("metric", 1.35), delta=fields.pop("delta", 0.05),
                             description=draft.description, meta=dict(draft.meta), **fields)


def test_offline_keeps_a_draft_unless_it_repeats_a_tried_configuration_or_a_crashed_move(tmp_path):
    workspace = workspace_with(tmp_path, fake_train_source(lr=0.5))
    agent = OfflineAgent(seed=3)
    drafting = make_turn(workspace, experiment=2, history=(BASELINE,), incumbent=BASELINE)
    draft = agent.propose(drafting)  # drafted while #1 trained: the search did not know #1 yet
    other = Proposal(description="something else", rationale="", files=draft.files,
                     meta={"agent": "offline", "moves": []})
    events: list = []

    unrelated = make_turn(workspace, events, experiment=2, history=(BASELINE, outcome(other, "discard")))
    assert agent.revise(draft, unrelated) is draft  # nothing learned argues against it: no new turn, no events
    assert events == []

    # #1 ran exactly this configuration (the draft repeats what was training): the search runs again.
    repeated = make_turn(workspace, events, experiment=2, history=(BASELINE, outcome(draft, "discard")),
                         incumbent=BASELINE)
    revised = agent.revise(draft, repeated)
    assert revised.files != draft.files and revised.description != draft.description
    assert any("repeats a configuration" in getattr(e, "text", "") for e in events)

    # #1 moved the same knob to another value and crashed: the draft's move is suspect too.
    moves = [{**move, "new": move["new"] * 2} for move in draft.meta["moves"]]
    crashed = dataclasses.replace(outcome(draft, "crash", metric=None, delta=None, reason="exit 1",
                                          log_tail="RuntimeError: out of memory"),
                                  meta={**draft.meta, "moves": moves})
    events.clear()
    assert agent.revise(draft, make_turn(workspace, events, experiment=2, history=(BASELINE, crashed))) is not draft
    assert any("moves what experiment #1 moved" in getattr(e, "text", "") for e in events)


def test_claude_revises_only_when_the_previous_experiment_was_kept(tmp_path):
    incumbent = fake_train_source(lr=0.5)
    workspace = workspace_with(tmp_path, incumbent)
    draft = Proposal(description="lower LR to 0.3", rationale="closer to the optimum",
                     files={"train.py": set_constant(incumbent, "LR", 0.3)})
    with FakeAnthropic() as api:
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY)
        discarded = ExperimentSummary(id=1, status="discard", metric=1.4, delta=0.1, description="raise STEPS")
        assert agent.revise(draft, make_turn(workspace, experiment=2, history=(BASELINE, discarded))) is draft
        assert api.requests == []  # not news for the draft: no call, no cost

        api.script(reply(text("The kept change does not touch LR; my draft still makes sense."),
                         tool_use("propose_experiment", description="lower LR to 0.3 on top of #1",
                                  rationale="still closer to the optimum")))
        kept = ExperimentSummary(id=1, status="keep", metric=1.25, delta=-0.05, description="raise STEPS")
        turn = make_turn(workspace, experiment=2, history=(BASELINE, kept), feedback="Experiment #1: keep.")
        revised = agent.revise(draft, turn)
        agent.close()

    assert revised.description == "lower LR to 0.3 on top of #1"
    assert revised.files == draft.files  # proposed without further edits: the draft's change, against the incumbent
    (request,) = api.requests
    opening = request.body["messages"][0]["content"]
    assert "You drafted this experiment while the previous one was still training" in opening
    assert "Experiment #1: keep." in opening
