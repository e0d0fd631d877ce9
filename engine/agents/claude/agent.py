"""The Claude agent: a tool-using research agent on the anthropic SDK, streamed live into loopdeck's events.

Each `propose` is one fresh conversation: a cached system prompt (program.md + loopdeck's rules) and tools, a
bounded summary of the history, then tool rounds until Claude calls `propose_experiment`. Thinking and text
arrive as delta events while they stream; usage and an estimated cost are counted per turn and per session.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import anthropic
import httpx2

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, Proposal
from loopdeck.engine.agents.claude.context import first_message, system_prompt
from loopdeck.engine.agents.claude.pricing import COST_NOTE, TokenUsage, price_for, usage_from_api
from loopdeck.engine.agents.claude.tools import TOOL_SCHEMAS, ToolOutcome, Workbench, call_summary
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    AgentUsage,
    NoteDelivered,
    Notice,
)

DEFAULT_MODEL = "claude-sonnet-5-5"
THINKING_MODES = ("adaptive", "enabled", "disabled", "between_tools")
NO_KEY_MESSAGE = (
    "The Claude agent needs an Anthropic API key: set ANTHROPIC_API_KEY in the environment "
    "(export ANTHROPIC_API_KEY=...), or run with --agent offline to use the built-in offline agent."
)
# Error types an SSE `event: error` carries for a passing fault. The SDK does not retry an error that arrives
# in the middle of a stream (the HTTP status was already 200), so the agent retries those calls itself.
_PASSING_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
_EPHEMERAL = {"type": "ephemeral"}
_REVISE = (
    "You drafted this experiment while the previous one was still training: \"{description}\". The previous "
    "experiment's outcome is below. Your draft is already applied to the editable files (rebased onto the current "
    "incumbent). If it still makes sense, call propose_experiment right away; otherwise change the files first."
)


@dataclass
class ClaudeSettings:
    """`[agent.claude]` of loopdeck.toml."""

    model: str = DEFAULT_MODEL
    max_tokens: int = 16000
    thinking: str = "adaptive"  # adaptive | enabled | disabled | between_tools
    effort: str = "medium"  # low | medium | high (| xhigh | max on models that accept them)
    budget_usd: float = 0.0  # 0 = no cap
    budget_tokens: int = 0  # 0 = no cap; counts input, output, cache-write and cache-read tokens
    base_url: str = ""  # "" = the SDK default
    prices: dict | None = None  # $/MTok overrides: any of input, output, cache_write, cache_read

    @classmethod
    def from_config(cls, section: Any) -> ClaudeSettings:
        """Settings from a `[agent.claude]` pydantic model or mapping; fields this class does not know are
        ignored."""
        data = section if isinstance(section, Mapping) else section.model_dump()
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})


class ClaudeAgent:
    """`Agent` backed by Claude. Raises `AgentError(fatal=True)` for a missing or rejected key, a spent budget
    or a request the API will never accept; passing faults are retried with backoff."""

    name = "claude"

    def __init__(
        self,
        settings: ClaudeSettings,
        api_key: str | None = None,
        *,
        max_retries: int = 2,
        retry_attempts: int = 8,
        retry_delay: float = 2.0,
        retry_max_delay: float = 120.0,
        max_tool_rounds: int = 25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = (os.environ.get("ANTHROPIC_API_KEY", "") if api_key is None else api_key).strip()
        if not key:
            raise AgentError(NO_KEY_MESSAGE, fatal=True, stop_reason="no_api_key")
        self.settings = settings
        self._key = key
        self._thinking = _thinking_config(settings)
        try:
            self._price = price_for(settings.model, settings.prices)
        except ValueError as err:
            raise AgentError(f"[agent.claude] prices: {err}", fatal=True, stop_reason="error") from None
        if self._price is None and settings.budget_usd > 0:
            raise AgentError(
                f"[agent.claude] budget_usd is set but loopdeck has no price for model {settings.model!r}; add "
                "prices = {input = …, output = …, cache_write = …, cache_read = …} ($ per million tokens) to "
                "[agent.claude] in loopdeck.toml",
                fatal=True, stop_reason="error",
            )
        self._retry_attempts = max(1, retry_attempts)
        self._retry_delay = retry_delay
        self._retry_max_delay = retry_max_delay
        self._max_tool_rounds = max(1, max_tool_rounds)
        self._sleep = sleep
        self._new_client = lambda: anthropic.Anthropic(api_key=key, base_url=settings.base_url or None,
                                                       max_retries=max_retries)
        self._client = self._new_client()
        self._tools = [*TOOL_SCHEMAS[:-1], {**TOOL_SCHEMAS[-1], "cache_control": _EPHEMERAL}]
        self._session_usage = TokenUsage()
        self._session_cost = 0.0
        self._warned_unpriced = False

    def close(self) -> None:
        self._client.close()

    # --- one turn ---------------------------------------------------------------------------------------------

    def propose(self, turn: AgentTurn) -> Proposal:
        return self._converse(turn, Workbench(turn))

    def _converse(self, turn: AgentTurn, bench: Workbench) -> Proposal:
        """Tool rounds on `bench` (the turn's in-memory files) until Claude proposes."""
        self._check_budget()
        system = [{"type": "text", "text": system_prompt(turn.program), "cache_control": _EPHEMERAL}]
        messages: list[dict[str, Any]] = [{"role": "user", "content": first_message(turn)}]
        turn_usage, turn_cost = TokenUsage(), 0.0
        try:
            for round_number in range(1, self._max_tool_rounds + 1):
                message = self._call(turn, system, messages)
                usage = usage_from_api(message.usage)
                cost = self._cost(turn, usage)
                turn_usage, turn_cost = turn_usage + usage, turn_cost + cost
                self._session_usage, self._session_cost = self._session_usage + usage, self._session_cost + cost
                if round_number == 1:
                    for note in turn.notes:
                        turn.emit(NoteDelivered(experiment=turn.experiment, text=note))
                if assistant := _assistant_content(message):
                    messages.append({"role": "assistant", "content": assistant})
                reply, proposal = self._answer(turn, bench, message)
                if proposal is not None:
                    description, rationale = proposal
                    return Proposal(
                        description=description, rationale=rationale, files=bench.changed_files(),
                        meta={"agent": self.name, "model": self.settings.model,
                              "usage": {**turn_usage.to_dict(), "cost_usd": round(turn_cost, 6)}},
                    )
                # A proposal already paid for is still returned; no further call is made past the budget.
                self._check_budget()
                if round_number == self._max_tool_rounds - 1:
                    reply.append({"type": "text", "text": "This is your last round: call propose_experiment "
                                  "now with the edits you have made."})
                messages.append({"role": "user", "content": reply})
            raise AgentError(
                f"Claude used {self._max_tool_rounds} requests without proposing an experiment; "
                "the turn was abandoned"
            )
        finally:
            if turn_usage.total:
                turn.emit(AgentUsage(
                    experiment=turn.experiment, **turn_usage.to_dict(), cost_usd=turn_cost,
                    session_tokens=self._session_usage.total, session_cost_usd=self._session_cost,
                ))

    def _answer(
        self, turn: AgentTurn, bench: Workbench, message: Any
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Run the tool calls of one response; return the next user content, or the proposal that ends the
        turn."""
        calls = [block for block in message.content if block.type == "tool_use"]
        if not calls:
            if message.stop_reason == "refusal":
                raise AgentError("Claude declined to continue this turn (stop reason: refusal)")
            return [{"type": "text", "text": "Nothing is proposed until you call propose_experiment. Make your "
                     "edit if you have not, then call it."}], None
        reply = []
        for call in calls:
            if message.stop_reason == "max_tokens":
                outcome = ToolOutcome(False, "your response hit max_tokens before this call was complete; make "
                                      "it again with shorter input", "cut off at max_tokens")
            else:
                outcome = bench.run(call.name, call.input if isinstance(call.input, dict) else {})
            turn.emit(AgentToolResult(experiment=turn.experiment, tool=call.name, ok=outcome.ok,
                                      summary=outcome.summary))
            if outcome.proposal is not None:
                return reply, outcome.proposal
            reply.append({"type": "tool_result", "tool_use_id": call.id, "content": outcome.content,
                          "is_error": not outcome.ok})
        return reply, None

    def revise(self, draft: Proposal, turn: AgentTurn) -> Proposal:
        """A short follow-up turn only when the outcome is news for the draft: the experiment before it was kept
        (the draft now sits on a new incumbent) or a person sent notes. Otherwise the draft stands, at no cost."""
        last = turn.history[-1] if turn.history else None
        kept = last is not None and last.status == "keep" and not last.baseline
        if not kept and not turn.notes:
            return draft
        follow_up = replace(turn, feedback=(_REVISE.format(description=draft.description) + "\n\n"
                                            + turn.feedback).strip())
        bench = Workbench(follow_up)
        bench.files.update(draft.files)  # Claude starts from its draft; the incumbent stays the base of the diff
        return self._converse(follow_up, bench)

    # --- one API call, streamed, with retries -----------------------------------------------------------------

    def _call(self, turn: AgentTurn, system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> Any:
        for attempt in range(1, self._retry_attempts + 1):
            if turn.cancelled():
                raise AgentCancelled("stopped while Claude was drafting")
            try:
                return self._stream(turn, system, messages)
            except (anthropic.APIError, httpx2.TransportError) as exc:
                problem = self._describe_failure(exc)
                if attempt == self._retry_attempts:
                    raise AgentError(
                        f"Claude API still failing after {attempt} attempts: {problem}"
                    ) from None
            delay = min(self._retry_delay * 2 ** (attempt - 1), self._retry_max_delay)
            turn.emit(Notice(
                level="warning", experiment=turn.experiment,
                message=f"Claude API: {problem}; waiting {delay:.0f} s before retrying "
                f"(attempt {attempt + 1} of {self._retry_attempts})",
            ))
            self._wait(turn, delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _stream(self, turn: AgentTurn, system: list[dict[str, Any]], messages: list[dict[str, Any]]) -> Any:
        request: dict[str, Any] = {
            "model": self.settings.model, "max_tokens": self.settings.max_tokens, "system": system,
            "tools": self._tools, "messages": messages, "thinking": self._thinking,
            # Automatic caching moves a breakpoint along the conversation, so later tool rounds of a turn
            # read the earlier ones from the cache; the system block's own breakpoint outlives the turn.
            "cache_control": _EPHEMERAL,
        }
        if self.settings.effort:
            request["output_config"] = {"effort": self.settings.effort}
        # The request runs in a worker so that a stop is honoured even while the service sends nothing at all
        # (cancellation is otherwise only seen between stream events).
        outcome: dict[str, Any] = {}
        worker = threading.Thread(target=self._stream_into, args=(turn, request, outcome), daemon=True,
                                  name=f"claude-request-{turn.experiment}")
        worker.start()
        while worker.is_alive():
            worker.join(0.1)
            if worker.is_alive() and turn.cancelled():
                # Closing the client drops its connections, which ends the worker's read; a new client serves
                # the next request.
                abandoned, self._client = self._client, self._new_client()
                abandoned.close()
                raise AgentCancelled("stopped while Claude was drafting")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["message"]

    def _stream_into(self, turn: AgentTurn, request: dict[str, Any], outcome: dict[str, Any]) -> None:
        try:
            outcome["message"] = self._stream_request(turn, request)
        except BaseException as exc:  # handed to the turn's own thread, which raises it
            outcome["error"] = exc

    def _stream_request(self, turn: AgentTurn, request: dict[str, Any]) -> Any:
        with self._client.messages.stream(**request) as stream:
            for event in stream:
                if turn.cancelled():
                    raise AgentCancelled("stopped while Claude was drafting")
                if event.type == "thinking":
                    turn.emit(AgentThinkingDelta(experiment=turn.experiment, text=event.thinking))
                elif event.type == "text":
                    turn.emit(AgentTextDelta(experiment=turn.experiment, text=event.text))
                elif event.type == "content_block_stop" and event.content_block.type == "tool_use":
                    block = event.content_block
                    args = block.input if isinstance(block.input, dict) else {}
                    turn.emit(AgentToolCall(experiment=turn.experiment, tool=block.name,
                                            summary=call_summary(block.name, args)))
            return stream.get_final_message()

    def _describe_failure(self, exc: Exception) -> str:
        """Describe a failed call in one readable line, or raise the fatal `AgentError` it calls for. Never
        chains the SDK exception, whose request carries the key in its headers."""
        if isinstance(exc, anthropic.APIStatusError):
            status, kind = exc.status_code, exc.type or ""
            # An error event inside a 200 stream has no status of its own.
            where = f"{status}" if status >= 400 else "mid-stream"
            detail = self._redact(f"{where} {kind}: {exc.api_message or exc.message}")
            if status in (401, 403):
                raise AgentError(
                    f"The Anthropic API rejected the API key ({detail}). Check ANTHROPIC_API_KEY, or run with "
                    "--agent offline.", fatal=True, stop_reason="auth",
                ) from None
            if status == 402 or kind == "billing_error":
                raise AgentError(f"The Anthropic account cannot pay for requests ({detail}).",
                                 fatal=True, stop_reason="budget") from None
            passing = status in (408, 409, 429) or status >= 500 or (status < 400 and kind in _PASSING_ERROR_TYPES)
            if not passing:
                raise AgentError(
                    f"The Anthropic API refused loopdeck's request ({detail}). Check [agent.claude] in "
                    f"loopdeck.toml (model {self.settings.model!r}, thinking {self.settings.thinking!r}, "
                    f"effort {self.settings.effort!r}).",
                    fatal=status in (400, 404, 413, 422), stop_reason="error",
                ) from None
            return detail
        return self._redact(f"connection failed ({type(exc).__name__}: {exc})")

    def _wait(self, turn: AgentTurn, seconds: float) -> None:
        """Sleep in short steps so a stop request is honoured while waiting to retry."""
        remaining = seconds
        while remaining > 0:
            if turn.cancelled():
                raise AgentCancelled("stopped while waiting to retry the Claude API")
            step = min(0.5, remaining)
            self._sleep(step)
            remaining -= step

    # --- usage, cost and budget -------------------------------------------------------------------------------

    def _cost(self, turn: AgentTurn, usage: TokenUsage) -> float:
        if self._price is None and not self._warned_unpriced:
            self._warned_unpriced = True
            turn.emit(Notice(
                level="warning", experiment=turn.experiment,
                message=f"no price known for model {self.settings.model!r}: costs show as $0. Set [agent.claude] "
                "prices in loopdeck.toml to estimate them.",
            ))
        return usage.cost(self._price)

    def _check_budget(self) -> None:
        settings = self.settings
        if settings.budget_usd > 0 and self._session_cost >= settings.budget_usd:
            raise AgentError(
                f"Claude budget spent: {_usd(self._session_cost)} of {_usd(settings.budget_usd)} ({COST_NOTE}). "
                "Raise [agent.claude] budget_usd in loopdeck.toml to go on.", fatal=True, stop_reason="budget",
            )
        if settings.budget_tokens > 0 and self._session_usage.total >= settings.budget_tokens:
            raise AgentError(
                f"Claude token budget spent: {self._session_usage.total:,} of {settings.budget_tokens:,} tokens. "
                "Raise [agent.claude] budget_tokens in loopdeck.toml to go on.", fatal=True, stop_reason="budget",
            )

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[api key redacted]")


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def _thinking_config(settings: ClaudeSettings) -> dict[str, Any]:
    """The API's thinking parameter. Thinking is shown summarised so the console's reasoning pane is readable."""
    mode = settings.thinking
    if mode == "adaptive":
        return {"type": "adaptive", "display": "summarized"}
    if mode == "enabled":
        if settings.max_tokens <= 2048:
            raise AgentError("[agent.claude] thinking = \"enabled\" needs max_tokens above 2048",
                             fatal=True, stop_reason="error")
        return {"type": "enabled", "budget_tokens": settings.max_tokens // 2, "display": "summarized"}
    if mode in ("disabled", "between_tools"):
        return {"type": mode}
    raise AgentError(f"[agent.claude] thinking must be one of {', '.join(THINKING_MODES)}, got {mode!r}",
                     fatal=True, stop_reason="error")


def _assistant_content(message: Any) -> list[dict[str, Any]]:
    """The response's blocks as request params, thinking signatures intact (the API checks them on tool turns).
    Empty text blocks are dropped: the API refuses them in a request."""
    blocks: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text" and block.text:
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "thinking":
            blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif block.type == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": block.data})
        elif block.type == "tool_use":
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return blocks
