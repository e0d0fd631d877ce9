"""OpenAIAgent against the local fake Chat Completions endpoint: the real openai client, streamed tool-call
fragments, reasoning content, usage, per-turn and fatal errors, the start-up check, and whole sessions that
choose the agent by name. The HTTP boundary is the only fake."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

pytest.importorskip("openai")

from fake_anthropic import make_turn  # noqa: E402
from fake_openai import Call, FakeOpenAI, HttpError, call, reply  # noqa: E402
from fake_targets import expected_metric, fake_train_source  # noqa: E402

import loopdeck.engine.agents.openai.agent as openai_agent  # noqa: E402
from loopdeck.engine.agents.base import AgentError  # noqa: E402
from loopdeck.engine.agents.openai.agent import MISSING_SDK, OpenAIAgent, OpenAISettings  # noqa: E402
from loopdeck.engine.agents.openai.prompts import COMPACT_TOOLS  # noqa: E402
from loopdeck.engine.config import parse_config  # noqa: E402
from loopdeck.engine.events import (  # noqa: E402
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    AgentUsage,
    ExperimentKept,
    ExperimentStarted,
)
from loopdeck.engine.store.ledger import Ledger  # noqa: E402

KEY = "sk-openai-test-7d1e-never-to-be-written-anywhere"
TRAIN = "LEARNING_RATE = 0.02\nDEPTH = 4\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "prepare.py").write_text("EVAL_TOKENS = 1000\n")
    return tmp_path


@pytest.fixture
def api():
    with FakeOpenAI() as server:
        yield server


def agent_for(api: FakeOpenAI, **settings: object) -> OpenAIAgent:
    return OpenAIAgent(OpenAISettings(base_url=api.url, **settings), api_key=KEY, max_retries=0,
                       sleep=lambda seconds: None)


def read_edit_propose(**usage: int) -> list:
    return [
        reply(call("read_file", path="train.py"), reasoning="The LR looks low; read the file first.", **usage),
        reply(call("edit_file", path="train.py", old_string="LEARNING_RATE = 0.02",
                   new_string="LEARNING_RATE = 0.03"), **usage),
        reply(call("propose_experiment", description="raise LR to 0.03", rationale="0.02 undertrains."),
              content="Proposing the change.", **usage),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_reads_edits_and_proposes_through_the_real_client(api, workspace):
    api.script(*read_edit_propose())
    events: list = []
    agent = agent_for(api, model="fake-model")
    proposal = agent.propose(make_turn(workspace, events))
    agent.close()

    assert proposal.description == "raise LR to 0.03"
    assert proposal.files == {"train.py": TRAIN.replace("0.02", "0.03")}
    assert proposal.meta["agent"] == "openai" and proposal.meta["model"] == "fake-model"
    assert [e.tool for e in events if isinstance(e, AgentToolCall)] == ["read_file", "edit_file",
                                                                        "propose_experiment"]
    assert all(e.ok for e in events if isinstance(e, AgentToolResult))
    first, second, _ = api.completions()
    assert first["stream"] is True and first["stream_options"] == {"include_usage": True}
    assert {tool["function"]["name"] for tool in first["tools"]} >= {"read_file", "edit_file", "list_files"}
    # The tool call went back as the assistant's, answered by a tool message holding the file.
    assistant, answer = second["messages"][-2:]
    assert assistant["tool_calls"][0]["function"] == {"name": "read_file", "arguments": '{"path": "train.py"}'}
    assert answer == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "content": TRAIN}


def test_argument_fragments_of_several_calls_are_reassembled(api, workspace):
    long_text = "LEARNING_RATE = 0.03  # " + "a long comment " * 20
    api.script(
        reply(call("read_file", path="train.py"),
              call("edit_file", path="train.py", old_string="LEARNING_RATE = 0.02", new_string=long_text)),
        reply(call("propose_experiment", description="raise LR", rationale="why not")),
    )
    proposal = agent_for(api, model="fake-model").propose(make_turn(workspace))
    assert proposal.files["train.py"].startswith(long_text)
    tool_messages = [m for m in api.completions()[1]["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 2 and tool_messages[1]["content"].startswith("edited train.py")


def test_reasoning_content_and_text_stream_as_deltas(api, workspace):
    api.script(*read_edit_propose())
    events: list = []
    agent_for(api, model="fake-model").propose(make_turn(workspace, events))
    thinking = "".join(e.text for e in events if isinstance(e, AgentThinkingDelta))
    text = "".join(e.text for e in events if isinstance(e, AgentTextDelta))
    assert thinking == "The LR looks low; read the file first."
    assert text == "Proposing the change."
    assert len([e for e in events if isinstance(e, AgentThinkingDelta)]) > 1  # streamed, not one block


def test_usage_and_cost_per_turn_and_per_session(api, workspace):
    api.script(*read_edit_propose(prompt_tokens=1000, completion_tokens=200, cached_tokens=400),
               *read_edit_propose(prompt_tokens=1000, completion_tokens=200, cached_tokens=400))
    events: list = []
    agent = agent_for(api, model="fake-model", prices={"input": 1.0, "output": 4.0, "cache_read": 0.5})
    proposal = agent.propose(make_turn(workspace, events))
    agent.propose(make_turn(workspace, events))
    first, second = [e for e in events if isinstance(e, AgentUsage)]
    assert (first.input_tokens, first.output_tokens, first.cache_read_tokens) == (1800, 600, 1200)
    per_turn = (1800 * 1.0 + 600 * 4.0 + 1200 * 0.5) / 1e6
    assert first.cost_usd == pytest.approx(per_turn)
    assert second.session_tokens == 2 * 3600 and second.session_cost_usd == pytest.approx(2 * per_turn)
    assert proposal.meta["usage"]["input_tokens"] == 1800


def test_token_budget_stops_the_session(api, workspace):
    api.script(*read_edit_propose(prompt_tokens=1000, completion_tokens=200))
    agent = agent_for(api, model="fake-model", budget_tokens=3000)
    agent.propose(make_turn(workspace))  # the proposal already paid for still comes back
    with pytest.raises(AgentError) as raised:
        agent.propose(make_turn(workspace))
    assert raised.value.fatal and raised.value.stop_reason == "budget"


def test_a_dollar_budget_without_prices_is_refused_at_start(api):
    with pytest.raises(AgentError, match="budget_usd needs prices") as raised:
        agent_for(api, budget_usd=5.0)
    assert raised.value.fatal


def test_malformed_arguments_are_returned_to_the_model_and_the_turn_goes_on(api, workspace):
    api.script(
        reply(Call("edit_file", raw_arguments='{"path": "train.py", "old_string": "LEARN', id="call_bad")),
        *read_edit_propose(),
    )
    events: list = []
    proposal = agent_for(api, model="fake-model").propose(make_turn(workspace, events))
    assert proposal.description == "raise LR to 0.03"
    (bad, *_) = [e for e in events if isinstance(e, AgentToolResult)]
    assert not bad.ok and bad.summary == "malformed arguments"
    answer = api.completions()[1]["messages"][-1]
    assert answer["tool_call_id"] == "call_bad" and "not a valid JSON object" in answer["content"]


def test_only_the_last_call_of_a_response_cut_at_the_token_limit_is_cut_off(api, workspace):
    api.script(
        reply(call("read_file", path="train.py"),
              Call("edit_file", raw_arguments='{"path": "train.py", "old_str', id="call_cut"), finish_reason="length"),
        *read_edit_propose(),
    )
    events: list = []
    agent_for(api, model="fake-model", max_tokens=64).propose(make_turn(workspace, events))
    read, cut = [e for e in events if isinstance(e, AgentToolResult)][:2]
    assert read.ok and not cut.ok and cut.summary == "cut off at the token limit"
    assert api.completions()[0]["max_completion_tokens"] == 64


def test_a_reply_without_a_tool_call_is_nudged(api, workspace):
    api.script(reply(content="I think the LR is too low."), *read_edit_propose())
    agent_for(api, model="fake-model").propose(make_turn(workspace))
    nudge = api.completions()[1]["messages"][-1]
    assert nudge["role"] == "user" and "propose_experiment" in nudge["content"]


def test_compact_mode_sends_a_short_prompt_and_simple_schemas(api, workspace):
    api.script(*read_edit_propose(), *read_edit_propose())
    agent_for(api, model="fake-model").propose(make_turn(workspace))
    agent_for(api, model="fake-model", compact=True).propose(make_turn(workspace))
    full, compact = api.completions()[0], api.completions()[3]
    assert len(compact["messages"][0]["content"]) < len(full["messages"][0]["content"]) / 2
    assert [t["function"]["name"] for t in compact["tools"]] == list(COMPACT_TOOLS)
    read_file = compact["tools"][0]["function"]
    assert read_file["parameters"] == {"type": "object", "properties": {"path": {"type": "string"}},
                                       "required": ["path"]}


def test_a_bad_request_costs_one_turn_not_the_session(api, workspace):
    api.script(HttpError(400, "This model's maximum context length is 8192 tokens"))
    with pytest.raises(AgentError, match="maximum context length") as raised:
        agent_for(api, model="fake-model").propose(make_turn(workspace))
    assert not raised.value.fatal


def test_an_unknown_model_at_the_first_request_is_fatal_and_names_the_setting(api, workspace):
    with pytest.raises(AgentError, match=r"404.*does not exist.*Check \[agent.openai\] model") as raised:
        agent_for(api, model="gpt-9").propose(make_turn(workspace))
    assert raised.value.fatal


def test_server_errors_are_retried(api, workspace):
    api.script(HttpError(503, "overloaded", type="server_error"), *read_edit_propose())
    events: list = []
    proposal = agent_for(api, model="fake-model").propose(make_turn(workspace, events))
    assert proposal.description == "raise LR to 0.03"
    assert any("waiting 2 s before retrying" in getattr(e, "message", "") for e in events)


def test_an_error_in_the_middle_of_a_stream_is_retried(api, workspace):
    first, *rest = read_edit_propose()
    api.script(reply(*first.calls, reasoning=first.reasoning, fail_after=3), first, *rest)
    events: list = []
    proposal = agent_for(api, model="fake-model").propose(make_turn(workspace, events))
    assert proposal.description == "raise LR to 0.03"
    assert any("mid-stream error" in getattr(e, "message", "") for e in events)
    assert len(api.completions()) == 4


# --- the start-up check ---------------------------------------------------------------------------------------


def test_check_resolves_an_unset_model_to_the_one_served(api):
    agent = agent_for(api)
    agent.check()
    assert agent.model == "fake-model"
    assert [(r.method, r.path) for r in api.requests] == [("GET", "/v1/models")]


def test_check_refuses_an_unknown_model():
    with (FakeOpenAI(models=("qwen3:4b", "llama3.2:3b")) as server,
          pytest.raises(AgentError, match="does not serve model 'gpt-9'.*qwen3:4b") as raised):
        agent_for(server, model="gpt-9").check()
    assert raised.value.fatal


def test_check_fails_fast_on_a_rejected_key():
    with FakeOpenAI(key="the-right-key") as server, pytest.raises(AgentError, match="rejected the API key") as raised:
        agent_for(server, model="fake-model").check()
    assert raised.value.fatal and raised.value.stop_reason == "auth"
    assert KEY not in str(raised.value)


def test_check_fails_fast_on_a_refused_connection():
    agent = OpenAIAgent(OpenAISettings(base_url=f"http://127.0.0.1:{free_port()}/v1"), api_key="")
    with pytest.raises(AgentError, match="cannot reach the openai endpoint") as raised:
        agent.check()
    assert raised.value.fatal


def test_the_default_endpoint_needs_a_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(AgentError, match="set OPENAI_API_KEY") as raised:
        OpenAIAgent(OpenAISettings())
    assert raised.value.fatal


def test_base_url_and_key_come_from_the_environment(api, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", api.url)
    monkeypatch.setenv("MY_KEY", KEY)
    agent = OpenAIAgent(OpenAISettings(api_key_env="MY_KEY"), max_retries=0)
    agent.check()
    assert api.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_a_missing_sdk_names_the_extra(monkeypatch):
    monkeypatch.setattr(openai_agent, "openai", None)
    with pytest.raises(AgentError) as raised:
        OpenAIAgent(OpenAISettings(base_url="http://127.0.0.1:1/v1"))
    assert str(raised.value) == MISSING_SDK == "the openai agent needs the openai package: pip install " \
        "'loopdeck[openai]'"
    assert raised.value.fatal


def test_the_settings_section_parses():
    config = parse_config('[agent]\nkind = "openai"\n[agent.openai]\nbase_url = "http://localhost:11434/v1"\n'
                          'model = "qwen3:4b"\ncompact = true\n')
    settings = OpenAISettings.from_config(config.agent.openai)
    assert (config.agent.kind, settings.model, settings.compact, settings.api_key_env) == (
        "openai", "qwen3:4b", True, "OPENAI_API_KEY")


# --- whole sessions -----------------------------------------------------------------------------------------------


def lr_turn(old: float, new: float) -> list:
    return [
        reply(call("read_file", path="train.py"), reasoning="The LR is far from the sweet spot.",
              prompt_tokens=2000, completion_tokens=300),
        reply(call("edit_file", path="train.py", old_string=f"LR = {old}", new_string=f"LR = {new}"),
              prompt_tokens=2000, completion_tokens=300),
        reply(call("propose_experiment", description=f"lower LR from {old} to {new}", rationale="minimum near 0.2"),
              prompt_tokens=2000, completion_tokens=300),
    ]


def test_a_session_with_agent_openai_keeps_the_models_edit(make_workspace, run_session, monkeypatch):
    workspace = make_workspace(fake_train_source(lr=0.5))
    with FakeOpenAI(key=KEY) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        server.script(*lr_turn(0.5, 0.25))
        session, recorded = run_session(workspace, None, agent="openai", max_experiments=1, approval="auto",
                                        pipeline="off")

    assert recorded.finished.reason == "max_experiments", session.error
    baseline, kept = recorded.of(ExperimentKept)
    assert (baseline.experiment, kept.experiment) == (0, 1)
    assert kept.metric == pytest.approx(expected_metric(0.25))
    assert "LR = 0.25" in (workspace / "train.py").read_text()
    assert [e.tool for e in recorded.of(AgentToolCall)] == ["read_file", "edit_file", "propose_experiment"]
    assert recorded.of(AgentThinkingDelta)
    ledger = Ledger(session.state_dir)
    try:
        row = ledger.get(kept.experiment)
    finally:
        ledger.close()
    assert row is not None and (row.input_tokens, row.output_tokens) == (6000, 900)
    assert row.meta["model"] == "fake-model"
    assert [r.path for r in server.requests][0] == "/v1/models"  # the check came first


def test_a_rejected_key_ends_the_session_before_the_baseline(make_workspace, run_session, monkeypatch):
    workspace = make_workspace(fake_train_source(lr=0.5))
    with FakeOpenAI(key="the-right-key") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        session, recorded = run_session(workspace, None, agent="openai", approval="auto")
    assert recorded.finished.reason == "auth"
    assert "rejected the API key" in session.error and "OPENAI_API_KEY" in session.error
    assert not recorded.of(ExperimentStarted)


def test_an_unreachable_endpoint_ends_the_session_before_the_baseline(make_workspace, run_session, monkeypatch):
    workspace = make_workspace(fake_train_source(lr=0.5))
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    session, recorded = run_session(workspace, None, agent="openai", approval="auto")
    assert "cannot reach the openai endpoint" in session.error
    assert not recorded.of(ExperimentStarted)
