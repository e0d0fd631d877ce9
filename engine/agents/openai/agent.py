"""The agent on any OpenAI-compatible endpoint: the Claude agent's tools over streamed Chat Completions.

Each `propose` is one fresh conversation (system prompt, the same bounded history summary as Claude's, then tool
rounds until the model calls `propose_experiment`). Text and reasoning content stream into the reasoning pane as
delta events; tool-call arguments arrive in fragments and are reassembled per call index; the usage chunk the
endpoint sends last is counted per turn and per session against the same kind of budgets as Claude's. `check()`
makes one cheap request (the model list) so a wrong key, address or model ends the session before the baseline.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

try:
    import openai
except ImportError:  # the optional extra: loopdeck[openai]
    openai = None  # type: ignore[assignment]

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, Proposal
from loopdeck.engine.agents.claude.context import first_message
from loopdeck.engine.agents.claude.pricing import Price, TokenUsage
from loopdeck.engine.agents.claude.tools import ToolOutcome, Workbench, call_summary
from loopdeck.engine.agents.limits import check_budget, wait_to_retry
from loopdeck.engine.agents.openai.prompts import chat_tools, system_prompt
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    AgentUsage,
    NoteDelivered,
    Notice,
)

MISSING_SDK = "the openai agent needs the openai package: pip install 'loopdeck[openai]'"
OPENAI_URL = "https://api.openai.com/v1"
CHECK_TIMEOUT = 15.0  # seconds for the start-up request; a local server that takes longer is not answering
NO_KEY_PLACEHOLDER = "no-key"  # local servers want none, but the SDK refuses an empty one
_NUDGE = "Nothing is proposed until you call propose_experiment. Make your edit if you have not, then call it."
_LAST_ROUND = "This is your last round: call propose_experiment now with the edits you have made."


@dataclass
class OpenAISettings:
    """`[agent.openai]` of loopdeck.toml."""

    base_url: str = ""  # "" = OPENAI_BASE_URL, else api.openai.com
    model: str = ""  # "" = the one model the server lists
    api_key_env: str = "OPENAI_API_KEY"
    compact: bool = False  # shorter system prompt and simpler tool schemas for small models
    max_tokens: int = 0  # 0 = the server's default
    budget_usd: float = 0.0
    budget_tokens: int = 0
    prices: dict = field(default_factory=dict)  # $/MTok: input, output, cache_read

    @classmethod
    def from_config(cls, section: Any) -> OpenAISettings:
        """Settings from an `[agent.openai]` pydantic model or mapping; unknown fields are ignored."""
        data = section if isinstance(section, Mapping) else section.model_dump()
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})


@dataclass
class _Call:
    id: str
    name: str = ""
    arguments: str = ""  # the JSON text, reassembled from the streamed fragments


@dataclass
class _Reply:
    """One streamed response, reassembled."""

    text: str = ""
    calls: list[_Call] = field(default_factory=list)
    finish_reason: str = ""
    usage: TokenUsage = field(default_factory=TokenUsage)
    open_calls: dict[int, _Call] = field(default_factory=dict)  # stream index -> the call it currently builds

    def add_fragment(self, fragment: Any) -> None:
        """A `tool_calls` delta: the first fragment at an index names the call, later ones append to its
        arguments. A new id at a known index is a new call (some servers send every call as index 0)."""
        call = self.open_calls.get(fragment.index)
        if call is None or (fragment.id and fragment.id != call.id):
            call = _Call(id=fragment.id or f"call_{len(self.calls)}")
            self.open_calls[fragment.index] = call
            self.calls.append(call)
        if fragment.function is not None:
            call.name += fragment.function.name or ""
            call.arguments += fragment.function.arguments or ""

    def assistant_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = [{"id": call.id, "type": "function",
                                      "function": {"name": call.name, "arguments": call.arguments}}
                                     for call in self.calls]
        return message


class OpenAIAgent:
    """`Agent` on an OpenAI-compatible endpoint. Raises `AgentError(fatal=True)` for a missing SDK or key, a
    rejected key, an unknown model or a spent budget; passing faults are retried with backoff, and a request the
    endpoint refuses costs one turn."""

    name = "openai"

    def __init__(
        self,
        settings: OpenAISettings,
        api_key: str | None = None,
        *,
        max_retries: int = 2,
        retry_attempts: int = 6,
        retry_delay: float = 2.0,
        retry_max_delay: float = 120.0,
        max_tool_rounds: int = 25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if openai is None:
            raise AgentError(MISSING_SDK, fatal=True, stop_reason="error")
        self.settings = settings
        self.base_url = (settings.base_url or os.environ.get("OPENAI_BASE_URL", "") or OPENAI_URL).rstrip("/")
        key = (os.environ.get(settings.api_key_env, "") if api_key is None else api_key).strip()
        if not key and self.base_url == OPENAI_URL:
            raise AgentError(f"the openai agent needs an API key for {OPENAI_URL}: set {settings.api_key_env} "
                             "(or [agent.openai] base_url for a local server)", fatal=True, stop_reason="no_api_key")
        self._key = key
        self._price = _price(settings)
        self._retry_attempts = max(1, retry_attempts)
        self._retry_delay, self._retry_max_delay = retry_delay, retry_max_delay
        self._max_tool_rounds = max(1, max_tool_rounds)
        self._sleep = sleep
        self._client = openai.OpenAI(api_key=key or NO_KEY_PLACEHOLDER, base_url=self.base_url,
                                     max_retries=max_retries)
        self._tools = chat_tools(compact=settings.compact)
        self.model = settings.model
        self._session_usage = TokenUsage()
        self._session_cost = 0.0

    def close(self) -> None:
        self._client.close()

    def check(self) -> None:
        """One cheap request (the model list): a refused connection, a rejected key or an unknown model raises
        a fatal AgentError now, before the baseline trains. Resolves an unset model to the one served."""
        try:
            page = self._client.with_options(max_retries=0, timeout=CHECK_TIMEOUT).models.list()
            served = [model.id for model in page.data]
        except openai.APIStatusError as exc:
            if exc.status_code != 404:  # a server without a model list still answered: it is there
                problem = self._describe_failure(exc)
                raise AgentError(f"the openai endpoint {self.base_url} failed the start-up check ({problem})",
                                 fatal=True) from None
            served = []
        except openai.APIError as exc:
            raise AgentError(f"cannot reach the openai endpoint {self.base_url} ({self._redact(str(exc))}). Is "
                             "the server running? Check [agent.openai] base_url or OPENAI_BASE_URL.",
                             fatal=True) from None
        self.model = _model_from(self.settings.model, served, self.base_url)

    # --- one turn ---------------------------------------------------------------------------------------------

    def propose(self, turn: AgentTurn) -> Proposal:
        if not self.model:
            self.check()
        bench = Workbench(turn)
        self._check_budget()
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system_prompt(turn.program, compact=self.settings.compact)},
            {"role": "user", "content": first_message(turn)},
        ]
        turn_usage, turn_cost = TokenUsage(), 0.0
        try:
            for round_number in range(1, self._max_tool_rounds + 1):
                reply = self._call(turn, messages)
                cost = reply.usage.cost(self._price)
                turn_usage, turn_cost = turn_usage + reply.usage, turn_cost + cost
                self._session_usage = self._session_usage + reply.usage
                self._session_cost += cost
                if round_number == 1:
                    for note in turn.notes:
                        turn.emit(NoteDelivered(experiment=turn.experiment, text=note))
                messages.append(reply.assistant_message())
                answers, proposal = self._answer(turn, bench, reply)
                if proposal is not None:
                    description, rationale = proposal
                    return Proposal(description=description, rationale=rationale, files=bench.changed_files(),
                                    meta={"agent": self.name, "model": self.model,
                                          "usage": {**turn_usage.to_dict(), "cost_usd": round(turn_cost, 6)}})
                self._check_budget()
                messages.extend(answers)
                if round_number == self._max_tool_rounds - 1:
                    messages.append({"role": "user", "content": _LAST_ROUND})
            raise AgentError(f"the model used {self._max_tool_rounds} requests without proposing an experiment; "
                             "the turn was abandoned")
        finally:
            if turn_usage.total:
                turn.emit(AgentUsage(experiment=turn.experiment, **turn_usage.to_dict(), cost_usd=turn_cost,
                                     session_tokens=self._session_usage.total,
                                     session_cost_usd=self._session_cost))

    def _answer(self, turn: AgentTurn, bench: Workbench, reply: _Reply
                ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Run the response's tool calls; the messages that answer them, or the proposal that ends the turn."""
        if not reply.calls:
            return [{"role": "user", "content": _NUDGE}], None
        answers: list[dict[str, Any]] = []
        for number, call in enumerate(reply.calls):
            # Only the last call of a response cut at the token limit is incomplete.
            cut_off = reply.finish_reason == "length" and number == len(reply.calls) - 1
            args = _arguments(call.arguments)
            if cut_off:
                outcome = ToolOutcome(False, "your response hit the output token limit before this call was "
                                      "complete; make it again with shorter input", "cut off at the token limit")
            elif args is None:
                outcome = ToolOutcome(False, "the arguments of this call were not a valid JSON object; call it "
                                      "again with valid JSON arguments", "malformed arguments")
            else:
                outcome = bench.run(call.name, args)
            turn.emit(AgentToolResult(experiment=turn.experiment, tool=call.name, ok=outcome.ok,
                                      summary=outcome.summary))
            if outcome.proposal is not None:
                return answers, outcome.proposal
            answers.append({"role": "tool", "tool_call_id": call.id, "content": outcome.content})
        return answers, None

    # --- one request, streamed, with retries ------------------------------------------------------------------

    def _call(self, turn: AgentTurn, messages: list[dict[str, Any]]) -> _Reply:
        for attempt in range(1, self._retry_attempts + 1):
            if turn.cancelled():
                raise AgentCancelled("stopped while the model was drafting")
            try:
                return self._stream(turn, messages)
            except openai.APIError as exc:
                problem = self._describe_failure(exc)
                if attempt == self._retry_attempts:
                    raise AgentError(f"the openai endpoint still failing after {attempt} attempts: {problem}") \
                        from None
            delay = min(self._retry_delay * 2 ** (attempt - 1), self._retry_max_delay)
            turn.emit(Notice(level="warning", experiment=turn.experiment,
                             message=f"openai endpoint: {problem}; waiting {delay:.0f} s before retrying "
                             f"(attempt {attempt + 1} of {self._retry_attempts})"))
            wait_to_retry(turn, delay, self._sleep, "openai endpoint")
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _stream(self, turn: AgentTurn, messages: list[dict[str, Any]]) -> _Reply:
        """One streamed request. Cancellation is seen between chunks."""
        request: dict[str, Any] = {"model": self.model, "messages": messages, "tools": self._tools,
                                   "stream": True, "stream_options": {"include_usage": True}}
        if self.settings.max_tokens:
            request["max_completion_tokens"] = self.settings.max_tokens
        reply = _Reply()
        with self._client.chat.completions.create(**request) as stream:
            for chunk in stream:
                if turn.cancelled():
                    raise AgentCancelled("stopped while the model was drafting")
                if chunk.usage is not None:
                    reply.usage = _usage(chunk.usage)
                for choice in chunk.choices[:1]:
                    self._take_delta(turn, reply, choice.delta)
                    reply.finish_reason = choice.finish_reason or reply.finish_reason
        for call in reply.calls:
            turn.emit(AgentToolCall(experiment=turn.experiment, tool=call.name,
                                    summary=call_summary(call.name, _arguments(call.arguments) or {})))
        return reply

    @staticmethod
    def _take_delta(turn: AgentTurn, reply: _Reply, delta: Any) -> None:
        # Servers name the reasoning stream differently: vLLM and DeepSeek `reasoning_content`, Ollama `reasoning`.
        reasoning = getattr(delta, "reasoning_content", None) or getattr(delta, "reasoning", None)
        if isinstance(reasoning, str) and reasoning:
            turn.emit(AgentThinkingDelta(experiment=turn.experiment, text=reasoning))
        if delta.content:
            reply.text += delta.content
            turn.emit(AgentTextDelta(experiment=turn.experiment, text=delta.content))
        for fragment in delta.tool_calls or ():
            reply.add_fragment(fragment)

    def _describe_failure(self, exc: Exception) -> str:
        """One readable line for a passing fault, or the AgentError a lasting one calls for (fatal where no turn
        can fix it). Never chains the SDK exception, whose request carries the key."""
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = self._redact(f"{status}: {exc.message}")
            if status in (401, 403):
                raise AgentError(f"the openai endpoint {self.base_url} rejected the API key ({detail}). Check "
                                 f"{self.settings.api_key_env}.", fatal=True, stop_reason="auth") from None
            if status == 404:
                raise AgentError(f"the openai endpoint {self.base_url} answered {detail} for model "
                                 f"{self.model!r}. Check [agent.openai] model and base_url (most servers end it "
                                 "in /v1).", fatal=True) from None
            if status == 402:
                raise AgentError(f"the openai account cannot pay for requests ({detail}).", fatal=True,
                                 stop_reason="budget") from None
            if status in (408, 409, 429) or status >= 500:
                return detail
            raise AgentError(f"the openai endpoint refused this turn's request ({detail})") from None
        if isinstance(exc, openai.APIConnectionError):
            return self._redact(f"connection failed ({exc})")
        return self._redact(f"mid-stream error: {exc}")

    def _check_budget(self) -> None:
        settings = self.settings
        check_budget("openai", "agent.openai", cost=self._session_cost, budget_usd=settings.budget_usd,
                     tokens=self._session_usage.total, budget_tokens=settings.budget_tokens)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[api key redacted]") if self._key else text


def _price(settings: OpenAISettings) -> Price | None:
    """The configured price; a dollar budget without one is refused at start (no silent $0)."""
    prices = settings.prices or {}
    if "input" in prices and "output" in prices:
        return Price(input=prices["input"], output=prices["output"], cache_write=prices["input"],
                     cache_read=prices.get("cache_read", prices["input"]))
    if settings.budget_usd > 0:
        raise AgentError("[agent.openai] budget_usd needs prices = {input = …, output = …} ($ per million "
                         "tokens) in loopdeck.toml", fatal=True)
    return None


def _usage(usage: Any) -> TokenUsage:
    """A Chat Completions usage: cached prompt tokens (where the server reports them) counted apart."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0
    return TokenUsage(input_tokens=(usage.prompt_tokens or 0) - cached, output_tokens=usage.completion_tokens or 0,
                      cache_read_tokens=cached)


def _arguments(text: str) -> dict[str, Any] | None:
    """A call's arguments as an object, or None when they are not valid JSON (an empty string is no arguments)."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _model_from(wanted: str, served: list[str], base_url: str) -> str:
    """The model to ask for: the configured one, or the only one served. A server that lists one model (such
    as llama.cpp's) answers to any name; otherwise a model it does not list is refused here."""
    if not wanted:
        if len(served) == 1:
            return served[0]
        listed = ", ".join(served[:10]) or "none listed"
        raise AgentError(f"set [agent.openai] model: {base_url} serves {listed}", fatal=True)
    if served and len(served) > 1 and wanted not in served:
        raise AgentError(f"{base_url} does not serve model {wanted!r} (it lists {', '.join(served[:10])}). "
                         "Check [agent.openai] model.", fatal=True)
    return wanted
