"""Issue 14's defects of the Claude agent, each against the fake Messages API speaking the real SSE format to the
real SDK: malformed tool JSON, per-turn 400s and prompts too long, max_tokens cuts, refusals, thinking/effort
settings the model refuses, the start check, prices, and a turn's context kept within the model's window."""

from __future__ import annotations

import typing
from pathlib import Path

import anthropic
import pytest
from fake_anthropic import (
    FakeAnthropic,
    HttpError,
    Usage,
    make_turn,
    malformed_tool_use,
    model_info,
    prompt_too_long,
    refusal,
    reply,
    text,
    thinking,
    tool_use,
    unauthorized,
    unsigned_thinking,
)
from test_claude_agent import KEY, TRAIN, Recorder, agent_for, read_edit_propose, tool_results

from loopdeck.engine.agents.base import AgentError, ExperimentSummary
from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings
from loopdeck.engine.agents.claude.context import TRIMMED, first_message, trim_tool_results
from loopdeck.engine.agents.claude.pricing import PRICES, UNPRICED, price_for
from loopdeck.engine.events import AgentToolResult, AgentUsage, Notice


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "prepare.py").write_text("EVAL_TOKENS = 1000\n")
    return tmp_path


@pytest.fixture
def api():
    with FakeAnthropic() as server:
        yield server


@pytest.fixture
def rec():
    return Recorder()


# --- malformed streamed tool JSON ---------------------------------------------------------------------------------


def test_malformed_tool_json_is_retried_keeping_earlier_rounds_and_usage(api, rec, workspace):
    first, edit, propose = read_edit_propose()
    api.script(first, reply(malformed_tool_use("write_file"), usage=Usage(input_tokens=700, output_tokens=90)),
               edit, propose)
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.files["train.py"].startswith("LEARNING_RATE = 0.03")
    assert api.requests[2].body["messages"] == api.requests[1].body["messages"]  # the same round, again
    assert len(api.requests[1].body["messages"]) == 3  # the read round survived the broken response
    (usage,) = rec.of(AgentUsage)
    assert usage.input_tokens == 100 + 700 + 100 + 100  # the broken response's input tokens are counted
    assert any("unreadable response" in n.message for n in rec.of(Notice))


def test_persistent_malformed_tool_json_costs_one_turn_not_the_session(api, rec, workspace):
    api.script(*[reply(malformed_tool_use("write_file"))] * 3)
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert not caught.value.fatal and caught.value.stop_reason == "error"  # this turn's, not an outage
    assert rec.of(AgentUsage)[0].input_tokens == 300


# --- 400 and 413 ------------------------------------------------------------------------------------------------


def test_prompt_too_long_trims_old_tool_results_and_retries(api, rec, workspace):
    first, edit, propose = read_edit_propose()
    api.script(first, reply(tool_use("list_files")), prompt_too_long(), edit, propose)
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.description == "raise LEARNING_RATE to 0.03"
    too_long, retried = api.requests[2].body["messages"], api.requests[3].body["messages"]
    assert tool_results({"messages": too_long[:3]})[0]["content"] == TRAIN
    assert tool_results({"messages": retried[:3]})[0]["content"] == TRIMMED  # the read of train.py
    assert retried[-1] == too_long[-1]  # the newest round is kept whole
    assert any("retrying with older tool results removed" in n.message for n in rec.of(Notice))


def test_prompt_too_long_with_nothing_to_trim_costs_one_turn(api, rec, workspace):
    api.script(HttpError(413, "request_too_large", "prompt is too long: 1000001 tokens > 1000000 maximum"))
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert not caught.value.fatal and "no longer fits" in str(caught.value)
    assert "Check [agent.claude]" not in str(caught.value)


def test_a_bad_request_of_one_turn_costs_that_turn_only(api, rec, workspace):
    api.script(HttpError(400, "invalid_request_error", "messages.1.content.0.text: text content blocks must "
                         "contain non-whitespace text"))
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert not caught.value.fatal and "refused this turn's request" in str(caught.value)


@pytest.mark.parametrize(("message", "setting"), [
    ("thinking.type.enabled: not supported on this model", "thinking"),
    ("output_config.effort: 'max' is not supported", "effort"),
    ("max_tokens: 999999 > 128000, the maximum allowed", "max_tokens"),
])
def test_a_bad_request_no_turn_can_fix_names_the_setting(api, rec, workspace, message, setting):
    api.script(HttpError(400, "invalid_request_error", message))
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert caught.value.fatal and f"Change [agent.claude] {setting}" in str(caught.value)


# --- max_tokens ---------------------------------------------------------------------------------------------------


def test_a_thinking_block_cut_by_max_tokens_is_not_replayed(api, rec, workspace):
    api.script(reply(unsigned_thinking("Let me think about the learning rate and"), stop_reason="max_tokens"),
               *read_edit_propose())
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert proposal.description == "raise LEARNING_RATE to 0.03"
    followed = api.requests[1].body["messages"]
    assert not [b for m in followed if isinstance(m["content"], list) for b in m["content"]
                if b.get("type") == "thinking"]
    assert "cut off at max_tokens" in followed[-1]["content"][-1]["text"]


def test_only_the_cut_off_tool_call_is_reported_cut_off(api, rec, workspace):
    api.script(reply(tool_use("read_file", path="train.py"), tool_use("write_file", path="train.py", content="x"),
                     stop_reason="max_tokens"), *read_edit_propose())
    agent_for(api, rec).propose(make_turn(workspace, rec.events))

    read, write = tool_results(api.requests[1].body)
    assert not read["is_error"] and read["content"] == TRAIN
    assert write["is_error"] and "max_tokens" in write["content"]


# --- refusals -----------------------------------------------------------------------------------------------------


def test_a_refusal_after_a_complete_tool_call_resets_the_context(api, rec, workspace):
    api.script(refusal(thinking("Hmm."), tool_use("write_file", path="train.py", content="import os\n"),
                       category="cyber", explanation="Looks like malware."),
               *read_edit_propose())
    proposal = agent_for(api, rec).propose(make_turn(workspace, rec.events))

    assert "import os" not in proposal.files["train.py"]  # the refused call never ran
    assert "write_file" not in [result.tool for result in rec.of(AgentToolResult)]
    fresh = api.requests[1].body["messages"]
    assert len(fresh) == 1 and fresh[0]["content"] != api.requests[0].body["messages"][0]["content"]
    (notice,) = rec.of(Notice)
    assert "category cyber: Looks like malware." in notice.message


def test_repeated_refusals_end_the_turn_as_a_refusal_not_a_crash(api, rec, workspace):
    api.script(refusal(text("I can't help with that.")), refusal(category="frontier_llm", explanation="No."))
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).propose(make_turn(workspace, rec.events))
    assert not caught.value.fatal and caught.value.stop_reason == "refusal"
    assert "category frontier_llm: No." in str(caught.value) and "crash" not in str(caught.value)


FALLBACK = "claude-haiku-5-5"


def test_a_fallback_model_answers_when_the_reworded_retry_is_refused_too(api, rec, workspace):
    api.models[FALLBACK] = model_info(FALLBACK)
    agent = agent_for(api, rec, fallback_model=FALLBACK)
    agent.check()
    api.script(refusal(category="cyber", explanation="No."), refusal(category="cyber", explanation="Still no."),
               *read_edit_propose())
    proposal = agent.propose(make_turn(workspace, rec.events))

    assert "LEARNING_RATE = 0.03" in proposal.files["train.py"] and proposal.meta["model"] == FALLBACK
    main = ClaudeSettings().model
    assert [request.body["model"] for request in api.requests] == [main, main, FALLBACK, FALLBACK, FALLBACK]
    assert len(api.requests[2].body["messages"]) == 1  # the fallback starts the turn afresh
    assert "fallback_model" in rec.of(Notice)[-1].message and "Still no." in rec.of(Notice)[-1].message
    (usage,) = rec.of(AgentUsage)
    priced = [price_for(main), price_for(main), *[price_for(FALLBACK)] * 3]
    assert usage.cost_usd == pytest.approx(sum(Usage().input_tokens * p.input / 1e6 + Usage().output_tokens
                                               * p.output / 1e6 for p in priced))
    api.requests.clear()
    api.script(*read_edit_propose())
    agent.propose(make_turn(workspace, rec.events))  # the next turn asks the main model again
    assert {request.body["model"] for request in api.requests} == {main}


def test_a_refusal_by_the_fallback_model_drops_the_turn(api, rec, workspace):
    api.script(*[refusal(category="cyber", explanation="No.")] * 3)
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec, fallback_model=FALLBACK).propose(make_turn(workspace, rec.events))
    assert caught.value.stop_reason == "refusal" and "after 3 refusals" in str(caught.value)
    assert api.requests[-1].body["model"] == FALLBACK and api.pending() == 0


def test_check_validates_the_fallback_model_like_the_model(api, rec):
    with pytest.raises(AgentError, match=r"\[agent.claude\] fallback_model") as caught:
        agent_for(api, rec, fallback_model="claude-nonexistent").check()
    assert caught.value.fatal
    api.models[FALLBACK] = model_info(FALLBACK, thinking=("between_tools",))
    with pytest.raises(AgentError, match=f"{FALLBACK}.*thinking 'adaptive' is not accepted"):
        agent_for(api, rec, fallback_model=FALLBACK).check()
    assert [request.path.split("?")[0] for request in api.model_requests][-2:] == [
        f"/v1/models/{ClaudeSettings().model}", f"/v1/models/{FALLBACK}"]


def test_refusals_are_counted_apart_from_crashes_in_a_session(make_workspace, run_session):
    workspace = make_workspace(crashes=2)
    with FakeAnthropic() as api:
        api.script(*[refusal(category="cyber", explanation="Refused.")] * 4)
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY)
        session, recorded = run_session(workspace, agent, approval="auto", pipeline="off")
    assert recorded.finished.reason == "refusal_limit"
    assert "declined 2 turns in a row" in session.error and "crash" not in session.error
    assert "category cyber: Refused." in session.error


def test_an_outage_does_not_burn_the_crash_budget(make_workspace, run_session):
    workspace = make_workspace(crashes=1)
    from fake_anthropic import overloaded
    from test_claude_engine import lr_turn
    with FakeAnthropic() as api:
        api.script(*[overloaded()] * 6, *lr_turn(0.5, 0.25))  # two whole turns lost to the outage
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, max_retries=0, retry_attempts=3,
                            sleep=lambda seconds: None)
        _, recorded = run_session(workspace, agent, approval="auto", pipeline="off", max_experiments=1)
    assert recorded.finished.reason == "max_experiments"
    assert sum("outage of the agent's service" in n.message for n in recorded.of(Notice)) == 2


def test_the_wait_between_tries_grows_to_the_configured_ceiling(make_workspace, run_session):
    from fake_anthropic import overloaded
    from test_claude_engine import lr_turn

    from loopdeck.engine.config import parse_config

    section = parse_config("[agent.claude]\noutage_max_wait_seconds = 5.0\n").agent.claude
    with FakeAnthropic() as api:
        api.script(*[overloaded()] * 6, *lr_turn(0.5, 0.25))
        settings = ClaudeSettings.from_config(section)
        settings.base_url = api.url
        agent = ClaudeAgent(settings, api_key=KEY, max_retries=0, retry_attempts=8, sleep=lambda seconds: None)
        _, recorded = run_session(make_workspace(), agent, approval="auto", pipeline="off", max_experiments=1)
    assert recorded.finished.reason == "max_experiments"
    waits = [int(n.message.split("waiting ")[1].split(" s")[0]) for n in recorded.of(Notice)
             if "waiting " in n.message]
    assert waits == [2, 4, 5, 5, 5, 5]  # doubling from 2 s, then the ceiling


# --- settings the model refuses, and the start check ----------------------------------------------------------


@pytest.mark.parametrize("thinking_mode", ["between_tools", "disabled"])
@pytest.mark.parametrize("effort", ["xhigh", "max"])
def test_high_efforts_without_thinking_are_refused_at_start(thinking_mode, effort):
    with pytest.raises(AgentError) as caught:
        ClaudeAgent(ClaudeSettings(thinking=thinking_mode, effort=effort), api_key=KEY)
    assert caught.value.fatal and "[agent.claude] effort" in str(caught.value)


def test_check_refuses_a_thinking_mode_the_model_does_not_accept(api, rec):
    agent = agent_for(api, rec, thinking="enabled")
    with pytest.raises(AgentError) as caught:
        agent.check()
    assert caught.value.fatal and "thinking 'enabled' is not accepted" in str(caught.value)
    assert "adaptive, between_tools" in str(caught.value)
    assert not api.requests  # found without a single Messages call


def test_check_refuses_an_effort_and_max_tokens_the_model_does_not_offer(api, rec):
    api.models["claude-haiku-5-5"] = model_info("claude-haiku-5-5", efforts=("low", "medium", "high"),
                                                max_tokens=8000)
    agent = agent_for(api, rec, model="claude-haiku-5-5", effort="xhigh", max_tokens=16000)
    with pytest.raises(AgentError) as caught:
        agent.check()
    assert "effort 'xhigh' is not offered" in str(caught.value) and "max_tokens 16000" in str(caught.value)


@pytest.mark.parametrize(("setup", "expected"), [
    ("unknown_model", "does not know model 'claude-nonesuch-1'"),
    ("rejected_key", "rejected the API key"),
    ("unreachable", "cannot reach"),
])
def test_check_finds_a_bad_key_model_or_endpoint(api, rec, setup, expected):
    settings = {"model": "claude-nonesuch-1"} if setup == "unknown_model" else {}
    if setup == "rejected_key":
        api.models["claude-sonnet-5-5"] = unauthorized()
    agent = agent_for(api, rec, **settings)
    if setup == "unreachable":
        api.stop()
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, max_retries=0)
    with pytest.raises(AgentError) as caught:
        agent.check()
    assert caught.value.fatal and expected in str(caught.value) and KEY not in str(caught.value)


def test_a_busy_service_at_start_is_not_a_reason_to_stop(api, rec):
    api.models["claude-sonnet-5-5"] = HttpError(529, "overloaded_error", "Overloaded", (("retry-after-ms", "1"),))
    agent_for(api, rec).check()  # the first turn retries what is passing
    assert len(api.model_requests) == 3  # the SDK's own retries


def test_a_retired_model_is_found_at_start(api, rec):
    api.models["claude-sonnet-5-5"] = {**model_info("claude-sonnet-5-5"), "lifecycle": "retired"}
    with pytest.raises(AgentError) as caught:
        agent_for(api, rec).check()
    assert caught.value.fatal and "retired" in str(caught.value)


def test_a_rejected_key_stops_the_session_before_the_baseline(make_workspace, run_session):
    workspace = make_workspace()
    with FakeAnthropic() as api:
        api.models["claude-sonnet-5-5"] = unauthorized()
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY)
        session, recorded = run_session(workspace, agent, approval="auto")
    assert recorded.finished.reason == "auth" and "rejected the API key" in session.error
    assert recorded.finished.experiments == 0 and recorded.finished.baseline_metric is None
    assert not (workspace / ".loopdeck" / "runs").exists() or not any((workspace / ".loopdeck" / "runs").iterdir())


def test_the_check_reads_the_context_window_that_bounds_a_turn(api, rec, workspace):
    api.models["claude-sonnet-5-5"] = model_info("claude-sonnet-5-5", max_input_tokens=40_000)
    big = "# the big file\n" + "x = 1\n" * 9000  # 54,000 characters: three reads overflow a 40k-token window
    (workspace / "train.py").write_text(big)
    api.script(*[reply(tool_use("read_file", path="train.py"))] * 3,
               reply(tool_use("propose_experiment", description="d", rationale="r")))
    agent = agent_for(api, rec)
    agent.check()
    with pytest.raises(AgentError):  # it proposes without an edit, which is refused; the point is the sizes
        agent.propose(make_turn(workspace, rec.events))
    sent = str(api.requests[3].body["messages"])
    assert sent.count("# the big file") == 1 and sent.count(TRIMMED) == 2


# --- prices and the opening message -------------------------------------------------------------------------------


def test_every_model_the_sdk_names_has_a_price():
    (literal,) = [arg for arg in typing.get_args(anthropic.types.Model) if typing.get_args(arg)]
    named = set(typing.get_args(literal))
    assert "claude-fable-5-2" in named
    assert {model for model in named if price_for(model) is None} <= UNPRICED
    assert not UNPRICED & set(PRICES)


def test_a_missing_price_is_a_warning_that_spells_out_the_override(api, rec, workspace):
    api.script(*read_edit_propose())
    agent_for(api, rec, model="claude-nonesuch-1").propose(make_turn(workspace, rec.events))
    (notice,) = [n for n in rec.of(Notice) if "no price" in n.message]
    assert "prices = {input" in notice.message and "[agent.claude]" in notice.message


def test_trimming_keeps_a_night_of_big_reads_bounded():
    messages = [{"role": "user", "content": "start"}]
    for number in range(25):
        messages.append({"role": "assistant", "content": [{"type": "tool_use", "id": f"t{number}", "name": "read_file",
                                                            "input": {}}]})
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{number}",
                                                       "content": "y" * 60_000}]})
        trim_tool_results(messages, 200_000)
    assert sum(len(str(m["content"])) for m in messages) < 300_000
    assert messages[-1]["content"][0]["content"] == "y" * 60_000


def test_the_log_tail_of_a_crash_appears_once_in_the_opening_message(workspace):
    tail = "Traceback (most recent call last):\n  File train.py\nZeroDivisionError: division by zero"
    crash = ExperimentSummary(id=3, status="crash", metric=None, delta=None, description="divide by depth",
                              reason="exit code 1", log_tail=tail)
    feedback = f"Experiment #3 (divide by depth): crash — exit code 1.\nLast lines of its log:\n{tail}"
    opening = first_message(make_turn(workspace, history=(crash,), feedback=feedback))
    assert opening.count("ZeroDivisionError") == 1
