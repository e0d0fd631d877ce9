"""ClaudeAgent against the local fake Messages API: the real anthropic client, streaming, tools, retries, usage,
budget and errors. The HTTP boundary is the only fake."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import pytest
from fake_anthropic import (
    FakeAnthropic,
    HttpError,
    Usage,
    make_turn,
    overloaded,
    rate_limited,
    reply,
    text,
    thinking,
    tool_use,
    unauthorized,
)

from loopdeck.engine.agents.base import AgentCancelled, AgentError, ExperimentSummary, Proposal
from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings
from loopdeck.engine.agents.claude.pricing import PRICES
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    AgentUsage,
    Event,
    NoteDelivered,
    Notice,
)

KEY = "sk-ant-test-0123456789-this-key-must-never-leak"
TRAIN = 'LEARNING_RATE = 0.02\nDEPTH = 4\nprint("---")\nprint(f"val_bpb: {abs(LEARNING_RATE - 0.03):.6f}")\n'
SONNET = PRICES["claude-sonnet-5-5"]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "prepare.py").write_text("EVAL_TOKENS = 1000\n")
    (tmp_path / "program.md").write_text("Lower val_bpb.\n")
    return tmp_path


@pytest.fixture
def api():
    with FakeAnthropic() as server:
        yield server


class Recorder:
    """Collects the agent's events and the backoff it asked to sleep."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.slept: list[float] = []

    def of(self, kind: type[Event]) -> list:
        return [event for event in self.events if isinstance(event, kind)]


@pytest.fixture
def rec():
    recorder = Recorder()
    yield recorder
    assert_key_absent(recorder)  # whatever the test did, no event carried the key


def agent_for(api: FakeAnthropic, rec: Recorder, **settings) -> ClaudeAgent:
    return ClaudeAgent(ClaudeSettings(base_url=api.url, **settings), api_key=KEY, sleep=rec.slept.append,
                       retry_attempts=3)


def read_edit_propose(usage: Usage | None = None) -> list:
    return [
        reply(thinking("The learning rate looks low. "), text("Reading train.py."),
              tool_use("read_file", path="train.py"), usage=usage),
        reply(tool_use("edit_file", path="train.py", old_string="LEARNING_RATE = 0.02",
                       new_string="LEARNING_RATE = 0.03"), usage=usage),
        reply(text("Proposing."), tool_use("propose_experiment", description="raise LEARNING_RATE to 0.03",
                                           rationale="The loss still falls fast at the end: the LR is too low."),
              usage=usage),
    ]


def assert_key_absent(rec: Recorder, *texts: object) -> None:
    dumped = json.dumps([event.to_dict() for event in rec.events]) + "".join(map(str, texts))
    assert KEY not in dumped


def tool_results(body: dict) -> list[dict]:
    return [block for block in body["messages"][-1]["content"] if block.get("type") == "tool_result"]


def test_reads_edits_and_proposes_through_the_real_client(api, rec, workspace):
    api.script(*read_edit_propose())
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.description == "raise LEARNING_RATE to 0.03"
    assert proposal.rationale.startswith("The loss still falls fast")
    assert proposal.files == {"train.py": TRAIN.replace("LEARNING_RATE = 0.02", "LEARNING_RATE = 0.03")}
    assert (workspace / "train.py").read_text() == TRAIN  # the agent never writes to disk
    assert len(api.requests) == 3
    # The file content reached the model as the read_file result, and the SDK sent the key as a bearer token.
    assert tool_results(api.requests[1].body)[0]["content"] == TRAIN
    assert api.requests[0].headers["authorization"] == f"Bearer {KEY}"
    calls = [(e.tool, e.summary) for e in rec.of(AgentToolCall)]
    assert calls == [("read_file", "read_file train.py"), ("edit_file", "edit_file train.py (−1 +1)"),
                     ("propose_experiment", "propose_experiment: raise LEARNING_RATE to 0.03")]
    assert all(e.ok for e in rec.of(AgentToolResult))
    assert all(e.experiment == 1 for e in rec.events)
    assert_key_absent(rec, proposal)


def test_thinking_and_text_deltas_arrive_in_order(api, rec, workspace):
    api.script(*read_edit_propose())
    agent_for(api, rec).propose(make_turn(workspace, rec.events))

    streamed = [e for e in rec.events if isinstance(e, AgentThinkingDelta | AgentTextDelta | AgentToolCall)]
    runs = [(kind, len(list(group))) for kind, group in itertools.groupby(type(e).__name__ for e in streamed)]
    assert [kind for kind, _ in runs] == ["AgentThinkingDelta", "AgentTextDelta", "AgentToolCall",
                                          "AgentTextDelta", "AgentToolCall"]
    assert runs[0][1] > 1 and runs[1][1] > 1  # several deltas each, as they streamed
    assert "".join(e.text for e in rec.of(AgentThinkingDelta)) == "The learning rate looks low. "
    assert "".join(e.text for e in rec.of(AgentTextDelta)) == "Reading train.py.Proposing."
    # A tool call is announced before its result, and results follow in call order.
    tool_events = [type(e).__name__ for e in rec.events if isinstance(e, AgentToolCall | AgentToolResult)]
    assert tool_events == ["AgentToolCall", "AgentToolResult"] * 3


def test_request_shape_caching_thinking_and_no_sampling_parameters(api, rec, workspace):
    api.script(*read_edit_propose())
    agent_for(api, rec, effort="high").propose(make_turn(workspace, rec.events, program="Use Muon wisely."))

    body = api.requests[0].body
    assert body["model"] == "claude-sonnet-5-5" and body["stream"] is True
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["system"][0]["text"].startswith("# Research program (program.md)\nUse Muon wisely.")
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert [tool["name"] for tool in body["tools"]] == [
        "read_file", "list_files", "search_files", "edit_file", "write_file", "read_history", "research_log",
        "propose_experiment"]
    assert body["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert body["output_config"] == {"effort": "high"}
    assert not {"temperature", "top_p", "top_k", "tool_choice"} & set(body)
    # The stable prefix is byte-identical from one request to the next, so the cache can serve it.
    assert all(r.body["system"] == body["system"] and r.body["tools"] == body["tools"] for r in api.requests)


@pytest.mark.parametrize(("mode", "expected"), [
    ("enabled", {"type": "enabled", "budget_tokens": 8000, "display": "summarized"}),
    ("disabled", {"type": "disabled"}),
    ("between_tools", {"type": "between_tools"}),
])
def test_thinking_modes_map_to_the_api_parameter(api, rec, workspace, mode, expected):
    api.script(*read_edit_propose())
    agent_for(api, rec, thinking=mode).propose(make_turn(workspace, rec.events))
    assert api.requests[0].body["thinking"] == expected


def test_usage_and_cost_accumulate_per_turn_and_per_session(api, rec, workspace):
    usage = Usage(input_tokens=1000, output_tokens=200, cache_creation_input_tokens=3000,
                  cache_read_input_tokens=5000)
    api.script(*read_edit_propose(usage), *read_edit_propose(usage))
    agent = agent_for(api, rec)
    first = agent.propose(make_turn(workspace, rec.events))
    second = agent.propose(make_turn(workspace, rec.events, experiment=2))

    per_call = (1000 * SONNET.input + 200 * SONNET.output + 3000 * SONNET.cache_write
                + 5000 * SONNET.cache_read) / 1e6
    expected = {"input_tokens": 3000, "output_tokens": 600, "cache_write_tokens": 9000,
                "cache_read_tokens": 15000, "cost_usd": pytest.approx(3 * per_call)}
    assert first.meta["usage"] == expected and second.meta["usage"] == expected
    one, two = rec.of(AgentUsage)  # exactly one per turn
    assert (one.experiment, two.experiment) == (1, 2)
    assert one.cost_usd == pytest.approx(3 * per_call) and two.cost_usd == pytest.approx(3 * per_call)
    assert one.session_tokens == 3 * 9200 and two.session_tokens == 6 * 9200
    assert two.session_cost_usd == pytest.approx(6 * per_call)


def test_price_override_from_settings(api, rec, workspace):
    api.script(*read_edit_propose(Usage(input_tokens=1_000_000, output_tokens=0)))
    proposal = agent_for(api, rec, prices={"input": 1.5}).propose(make_turn(workspace, rec.events))
    assert proposal.meta["usage"]["cost_usd"] == pytest.approx(3 * 1.5)


def test_529_and_429_are_retried_by_the_sdk(api, rec, workspace):
    first, *rest = read_edit_propose()
    api.script(overloaded(), rate_limited(), first, *rest)
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.description == "raise LEARNING_RATE to 0.03"
    assert [r.headers["x-stainless-retry-count"] for r in api.requests[:3]] == ["0", "1", "2"]
    assert not rec.of(Notice)  # the SDK's own retries are quick and silent


def test_an_outage_longer_than_the_sdk_retries_is_waited_out(api, rec, workspace):
    api.script(overloaded(), overloaded(), overloaded(), *read_edit_propose())
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.description == "raise LEARNING_RATE to 0.03"
    assert len(api.requests) == 6  # three 529s (the SDK's first try and two retries), then the turn
    (notice,) = rec.of(Notice)
    assert "529 overloaded_error: Overloaded" in notice.message and "attempt 2 of 3" in notice.message


def test_overloaded_error_in_the_middle_of_a_stream_is_retried(api, rec, workspace):
    first, *rest = read_edit_propose()
    api.script(reply(thinking("Half a thought that gets cut off"), fail_after=5), first, *rest)
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.description == "raise LEARNING_RATE to 0.03"
    assert len(api.requests) == 4
    assert api.requests[1].body["messages"] == api.requests[0].body["messages"]  # the same call, again
    (notice,) = rec.of(Notice)
    assert notice.level == "warning" and "waiting 2 s" in notice.message
    assert "mid-stream overloaded_error: Overloaded" in notice.message
    assert sum(rec.slept) == pytest.approx(2.0)
    assert rec.of(AgentThinkingDelta)[0].text == "Half a thoug"  # it streamed before it broke


def test_persistent_mid_stream_failure_gives_up_with_backoff(api, rec, workspace):
    api.script(*[reply(text("never finishes"), fail_after=3, fail_type="api_error")] * 3)
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert not caught.value.fatal
    assert "after 3 attempts" in str(caught.value) and "api_error" in str(caught.value)
    assert sum(rec.slept) == pytest.approx(2.0 + 4.0)  # exponential: 2 s, then 4 s
    assert len(rec.of(Notice)) == 2


def test_connection_refused_is_retried_then_reported(rec, workspace):
    with FakeAnthropic() as gone:
        url = gone.url  # a port nothing listens on once the server stops
    agent = ClaudeAgent(ClaudeSettings(base_url=url), api_key=KEY, sleep=rec.slept.append, retry_attempts=3,
                        max_retries=0)
    with pytest.raises(AgentError) as caught:
        agent.propose(make_turn(workspace, rec.events))
    assert not caught.value.fatal and "connection failed" in str(caught.value)
    assert [n.message.split(";")[0] for n in rec.of(Notice)] == ["Claude API: connection failed "
                                                                 "(APIConnectionError: Connection error.)"] * 2
    assert_key_absent(rec, caught.value)


def test_401_stops_cleanly_with_a_readable_message(api, rec, workspace):
    api.script(unauthorized())
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))

    error = caught.value
    assert error.fatal and error.stop_reason == "auth"
    assert "rejected the API key" in str(error) and "ANTHROPIC_API_KEY" in str(error)
    assert "--agent offline" in str(error)
    assert error.__cause__ is None and error.__suppress_context__  # no SDK traceback chained to it
    assert len(api.requests) == 1  # 401 is not retried
    assert_key_absent(rec, error, repr(error))


def test_bad_request_is_fatal_and_names_the_settings(api, rec, workspace):
    api.script(HttpError(400, "invalid_request_error", "thinking.type: use between_tools"))
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec, thinking="disabled").propose(make_turn(workspace, rec.events))
    assert caught.value.fatal and "use between_tools" in str(caught.value)
    assert "thinking 'disabled'" in str(caught.value)


def test_missing_key_is_a_fatal_error_that_says_what_to_do(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(AgentError) as caught:
        ClaudeAgent(ClaudeSettings())
    assert caught.value.fatal and caught.value.stop_reason == "no_api_key"
    assert "ANTHROPIC_API_KEY" in str(caught.value) and "--agent offline" in str(caught.value)


def test_key_is_read_from_the_environment(api, rec, workspace, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    api.script(*read_edit_propose())
    ClaudeAgent(ClaudeSettings(base_url=api.url)).propose(make_turn(workspace, rec.events))
    assert api.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_edit_to_a_protected_file_is_refused_and_the_model_is_told(api, rec, workspace):
    first, second, third = read_edit_propose()
    api.script(reply(tool_use("edit_file", path="prepare.py", old_string="1000", new_string="10")),
               reply(tool_use("write_file", path="../outside.py", content="x = 1\n")), second, third)
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    refusal = tool_results(api.requests[1].body)[0]
    assert refusal["is_error"] is True and "prepare.py is protected" in refusal["content"]
    escape = tool_results(api.requests[2].body)[0]
    assert escape["is_error"] is True and "'..' is refused" in escape["content"]
    failed = [e for e in rec.of(AgentToolResult) if not e.ok]
    assert [e.tool for e in failed] == ["edit_file", "write_file"]
    assert "protected" in failed[0].summary
    assert (workspace / "prepare.py").read_text() == "EVAL_TOKENS = 1000\n"
    assert not (workspace.parent / "outside.py").exists()
    assert set(proposal.files) == {"train.py"}


def test_budget_cap_stops_with_a_fatal_budget_error(api, rec, workspace):
    usage = Usage(input_tokens=10_000, output_tokens=1_000)  # $0.03 per call
    api.script(*read_edit_propose(usage))
    agent = agent_for(api, rec, budget_usd=0.05)
    with pytest.raises(AgentError) as caught:
        agent.propose(make_turn(workspace, rec.events))

    assert caught.value.fatal and caught.value.stop_reason == "budget"
    assert "budget spent: $0.0600 of $0.0500" in str(caught.value)
    assert len(api.requests) == 2  # stopped right after the call that crossed the cap
    assert rec.of(AgentUsage)[-1].session_cost_usd == pytest.approx(0.06)
    with pytest.raises(AgentError) as again:  # and every later turn stops before calling the API
        agent.propose(make_turn(workspace, rec.events, experiment=2))
    assert again.value.stop_reason == "budget" and len(api.requests) == 2


def test_token_budget_counts_every_token(api, rec, workspace):
    api.script(*read_edit_propose(Usage(input_tokens=10, output_tokens=10, cache_read_input_tokens=500)))
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec, budget_tokens=1000).propose(make_turn(workspace, rec.events))
    assert caught.value.stop_reason == "budget" and "1,040 of 1,000 tokens" in str(caught.value)


def test_notes_are_delivered_in_the_first_message_and_acknowledged(api, rec, workspace):
    api.script(*read_edit_propose())
    notes = ("Do not touch DEPTH tonight.", "Try the learning rate first.")
    history = (ExperimentSummary(id=0, status="keep", metric=0.01, delta=None, description="baseline",
                                  baseline=True),)
    agent_for(api, rec).propose(make_turn(workspace, rec.events, notes=notes, history=history,
                                          incumbent=history[0], feedback="#3 was vetoed: too risky"))

    opening = api.requests[0].body["messages"][0]["content"]
    assert all(note in opening for note in notes) and "#3 was vetoed: too risky" in opening
    assert [e.text for e in rec.of(NoteDelivered)] == list(notes)
    assert rec.events.index(rec.of(NoteDelivered)[0]) > rec.events.index(rec.of(AgentThinkingDelta)[0])


def test_a_reply_without_a_tool_call_is_nudged_toward_a_proposal(api, rec, workspace):
    api.script(reply(text("I think the LR should go up.")), *read_edit_propose())
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert isinstance(proposal, Proposal)
    last = api.requests[1].body["messages"][-1]
    assert last["role"] == "user" and "propose_experiment" in last["content"][0]["text"]


def test_proposing_without_an_edit_is_refused(api, rec, workspace):
    _, second, third = read_edit_propose()
    api.script(reply(tool_use("propose_experiment", description="nothing", rationale="none")), second, third)
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert "edit first" in tool_results(api.requests[1].body)[0]["content"]
    assert proposal.files["train.py"] != TRAIN


def test_tool_rounds_are_capped(api, rec, workspace):
    api.script(*[reply(tool_use("list_files"))] * 3)
    agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, max_tool_rounds=3)
    with pytest.raises(AgentError) as caught:
        agent.propose(make_turn(workspace, rec.events))
    assert not caught.value.fatal and "3 requests without proposing" in str(caught.value)
    # Told inside the last tool result: a text block after tool results invites an empty reply.
    last = api.requests[2].body["messages"][-1]["content"]
    assert [block["type"] for block in last] == ["tool_result"] and "last round" in last[-1]["content"]
    assert rec.of(AgentUsage)[0].input_tokens == 300  # the spent tokens are still reported


def test_cut_off_tool_call_is_answered_with_an_error(api, rec, workspace):
    api.script(reply(tool_use("write_file", path="train.py", content="x"), stop_reason="max_tokens"),
               *read_edit_propose())
    agent_for(api, rec).propose(make_turn(workspace, rec.events))
    result = tool_results(api.requests[1].body)[0]
    assert result["is_error"] and "max_tokens" in result["content"]


def test_cancel_while_streaming_closes_the_stream(api, rec, workspace):
    api.script(reply(thinking("a long thought " * 40), event_delay=0.01))
    stop = threading.Event()

    def emit(event: Event) -> None:
        rec.events.append(event)
        if len(rec.of(AgentThinkingDelta)) == 3:
            stop.set()

    turn = make_turn(workspace, emit=emit, cancelled=stop.is_set)
    with pytest.raises(AgentCancelled):
        agent_for(api, rec).propose(turn)
    assert len(rec.of(AgentThinkingDelta)) == 3


def test_cancel_while_waiting_to_retry(api, rec, workspace):
    api.script(reply(text("x"), fail_after=3))
    waits: list[float] = []
    turn = make_turn(workspace, rec.events, cancelled=lambda: len(waits) >= 2)
    agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, sleep=waits.append)
    with pytest.raises(AgentCancelled):
        agent.propose(turn)
    assert sum(waits) < 2.0  # gave up part-way through the first backoff
