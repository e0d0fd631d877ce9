"""End to end: the research loop driven by ClaudeAgent against the fake Messages API, on a fake training target.

The agent reads train.py, edits its LR constant, proposes; the engine commits, runs, keeps the improvement and
records the agent's usage. A budget cap stops the session cleanly, and the key is in no file the run wrote.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytest.importorskip("loopdeck.engine.session")

from fake_anthropic import FakeAnthropic, Usage, reply, text, thinking, tool_use  # noqa: E402
from fake_targets import expected_metric, fake_train_source  # noqa: E402

from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings  # noqa: E402
from loopdeck.engine.agents.claude.pricing import PRICES  # noqa: E402
from loopdeck.engine.events import AgentToolCall, AgentUsage, ExperimentKept, NoteDelivered  # noqa: E402
from loopdeck.engine.store.ledger import Ledger  # noqa: E402

# The fake service answers a script in order: a draft made ahead (`[loop] pipeline`) would take replies meant
# for the next turn, and whether "auto" drafts ahead depends on how loaded the machine is.
SCRIPTED = "off"
KEY = "sk-ant-engine-test-5f3c9e1d-never-to-be-written-anywhere"
USAGE = Usage(input_tokens=2000, output_tokens=300, cache_creation_input_tokens=1500, cache_read_input_tokens=4000)


def lr_turn(old: float, new: float) -> list:
    return [
        reply(thinking("The baseline LR is far from the sweet spot."), tool_use("read_file", path="train.py"),
              usage=USAGE),
        reply(tool_use("edit_file", path="train.py", old_string=f"LR = {old}", new_string=f"LR = {new}"),
              usage=USAGE),
        reply(text("Proposing it."), tool_use("propose_experiment", description=f"lower LR from {old} to {new}",
                                              rationale="The metric is minimised near LR 0.2."), usage=USAGE),
    ]


def all_text_under(root: Path) -> str:
    return "".join(path.read_bytes().decode("utf-8", "replace") for path in root.rglob("*") if path.is_file())


def git_history(root: Path) -> str:
    return subprocess.run(["git", "log", "--all", "-p"], cwd=root, capture_output=True, text=True, check=True).stdout


def test_the_loop_keeps_claudes_edit_and_records_its_usage(make_workspace, run_session, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)  # present in the engine's environment, as in real use
    workspace = make_workspace(fake_train_source(lr=0.5))
    with FakeAnthropic() as api:
        api.script(*lr_turn(0.5, 0.25))
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY)
        session, recorded = run_session(workspace, agent, max_experiments=1, approval="auto")

    assert recorded.finished.reason == "max_experiments"
    baseline, kept = recorded.of(ExperimentKept)
    assert (baseline.experiment, kept.experiment) == (0, 1)
    assert kept.metric == pytest.approx(expected_metric(0.25))
    assert kept.previous_metric == pytest.approx(expected_metric(0.5))
    assert "LR = 0.25" in (workspace / "train.py").read_text()
    assert [e.tool for e in recorded.of(AgentToolCall)] == ["read_file", "edit_file", "propose_experiment"]

    sonnet = PRICES["claude-sonnet-5-5"]
    per_call = (2000 * sonnet.input + 300 * sonnet.output + 1500 * sonnet.cache_write
                + 4000 * sonnet.cache_read) / 1e6
    ledger = Ledger(session.state_dir)
    try:
        row = ledger.get(kept.experiment)
    finally:
        ledger.close()
    assert row is not None and row.status == "keep" and row.description == "lower LR from 0.5 to 0.25"
    assert (row.input_tokens, row.output_tokens, row.cache_write_tokens, row.cache_read_tokens) == (
        6000, 900, 4500, 12000)
    assert row.cost_usd == pytest.approx(3 * per_call)
    assert row.meta["model"] == "claude-sonnet-5-5"

    assert KEY not in all_text_under(workspace)
    assert KEY not in git_history(workspace)


def test_a_spent_budget_stops_the_session_cleanly(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5))
    with FakeAnthropic() as api:
        api.script(*lr_turn(0.5, 0.25), *lr_turn(0.25, 0.2))
        # A turn of three calls costs about $0.033: it crosses the cap on its last call, so its proposal (already
        # paid for) still runs, and the session stops before the next turn makes any call.
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url, budget_usd=0.025), api_key=KEY)
        session, recorded = run_session(workspace, agent, max_experiments=5, approval="auto")
        requests = len(api.requests)

    assert recorded.finished.reason == "budget"
    assert "budget spent: $0.0335 of $0.0250" in session.error
    assert [e.experiment for e in recorded.of(ExperimentKept)] == [0, 1]
    assert requests == 3
    assert recorded.of(AgentUsage)[-1].session_cost_usd == pytest.approx(0.03345)
    assert KEY not in all_text_under(workspace)


def test_a_note_reaches_claude_in_the_next_turn(make_workspace, run_session):
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(fake_train_source(lr=0.5))
    with FakeAnthropic() as api:
        api.script(*lr_turn(0.5, 0.25))
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY)
        events: list = []
        session = Session(workspace, RunOptions(max_experiments=1, approval="auto", pipeline=SCRIPTED),
                          on_event=events.append, agent=agent)
        session.send_note("keep DEPTH fixed tonight")
        session.run()

    assert "keep DEPTH fixed tonight" in api.requests[0].body["messages"][0]["content"]
    assert [e.text for e in events if isinstance(e, NoteDelivered)] == ["keep DEPTH fixed tonight"]
