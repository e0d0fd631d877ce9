"""The Claude agent: a tool-using research agent on the anthropic SDK, streamed live into loopdeck's events.

Each `propose` is one fresh conversation: a cached system prompt (program.md + loopdeck's rules) and tools, a
bounded summary of the history, then tool rounds until Claude calls `propose_experiment`. Thinking and text
arrive as delta events while they stream; usage and an estimated cost are counted per turn and per session.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import httpx2

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, Proposal
from loopdeck.engine.agents.claude.capabilities import ModelLimits, limits_from
from loopdeck.engine.agents.claude.context import (
    append_to_last,
    assistant_content,
    context_chars,
    conversation_chars,
    first_message,
    system_prompt,
    trim_tool_results,
)
from loopdeck.engine.agents.claude.faults import MalformedStream, classify
from loopdeck.engine.agents.claude.pricing import (
    COST_NOTE,
    TokenUsage,
    price_for,
    unpriced_warning,
    usage_from_api,
)
from loopdeck.engine.agents.claude.settings import ClaudeSettings, thinking_config
from loopdeck.engine.agents.claude.tools import TOOL_SCHEMAS, ToolOutcome, Workbench, call_summary
from loopdeck.engine.agents.limits import check_budget, wait_to_retry
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    AgentUsage,
    NoteDelivered,
    Notice,
)

NO_KEY_MESSAGE = (
    "The Claude agent needs an Anthropic API key: set ANTHROPIC_API_KEY in the environment "
    "(export ANTHROPIC_API_KEY=...), or run with --agent offline to use the built-in offline agent."
)
_EPHEMERAL = {"type": "ephemeral"}
_REVISE = (
    "You drafted this experiment while the previous one was still training: \"{description}\". The previous "
    "experiment's outcome is below. Your draft is already applied to the editable files (rebased onto the current "
    "incumbent). If it still makes sense, call propose_experiment right away; otherwise change the files first."
)
_NUDGE = ("Nothing is proposed until you call propose_experiment. Make your edit if you have not, then call it.")
_CUT_OFF = ("Your response was cut off at max_tokens. Continue more briefly: make one tool call now, or call "
            "propose_experiment if your edit is done.")
_LAST_ROUND = "This is your last round: call propose_experiment now with the edits you have made."
_AFTER_REFUSAL = (
    "\n\nThis is ordinary machine-learning research on the training script of a small language model in a local "
    "sandbox: propose one measurable change to its hyperparameters, architecture or optimiser."
)
_REFUSALS_PER_TURN = 2
_CHECK_TIMEOUT_S = 30.0  # the start check is one small GET: a service that takes longer is not usable


@dataclass
class _Meter:
    """What one turn has used so far, and the model it is asking now (the fallback after repeated refusals)."""

    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0


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
        retry_max_delay: float | None = None,
        max_tool_rounds: int = 25,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = (os.environ.get("ANTHROPIC_API_KEY", "") if api_key is None else api_key).strip()
        if not key:
            raise AgentError(NO_KEY_MESSAGE, fatal=True, stop_reason="no_api_key")
        self.settings = settings
        self._key = key
        self._thinking = thinking_config(settings)
        self._limits = ModelLimits()  # until `check` asks the Models API
        try:
            # `prices` overrides the main model's price; a fallback model is priced from the built-in table.
            self._prices = {settings.model: price_for(settings.model, settings.prices)}
        except ValueError as err:
            raise AgentError(f"[agent.claude] prices: {err}", fatal=True, stop_reason="error") from None
        if settings.fallback_model:
            self._prices.setdefault(settings.fallback_model, price_for(settings.fallback_model))
        unpriced = [model for model, price in self._prices.items() if price is None]
        if unpriced and settings.budget_usd > 0:
            raise AgentError(
                f"[agent.claude] budget_usd is set but loopdeck has no price for model {unpriced[0]!r}; add "
                "prices = {input = …, output = …, cache_write = …, cache_read = …} ($ per million tokens) to "
                "[agent.claude] in loopdeck.toml",
                fatal=True, stop_reason="error",
            )
        self._retry_attempts = max(1, retry_attempts)
        self._retry_delay = retry_delay
        self._retry_max_delay = settings.outage_max_wait_seconds if retry_max_delay is None else retry_max_delay
        self._max_tool_rounds = max(1, max_tool_rounds)
        self._sleep = sleep
        self._new_client = lambda: anthropic.Anthropic(api_key=key, base_url=settings.base_url or None,
                                                       max_retries=max_retries)
        self._client = self._new_client()
        self._tools = [*TOOL_SCHEMAS[:-1], {**TOOL_SCHEMAS[-1], "cache_control": _EPHEMERAL}]
        self._session_usage = TokenUsage()
        self._session_cost = 0.0
        self._warned_unpriced: set[str] = set()

    def close(self) -> None:
        self._client.close()

    # --- session start --------------------------------------------------------------------------------------

    def check(self) -> None:
        """One cheap request per model before the baseline trains: the Models API's entry for the model (and the
        fallback model). A rejected key, an unknown model, an unreachable endpoint or a thinking/effort setting
        the model refuses is fatal here, not after the baseline's runs."""
        fallback = self.settings.fallback_model
        known = [limits for limits in (self._model_limits(self.settings.model, "model"),
                                       self._model_limits(fallback, "fallback_model") if fallback else None)
                 if limits is not None]
        if known:  # a turn's context must fit whichever model answers it
            self._limits = min(known, key=lambda limits: limits.context_tokens)

    def _model_limits(self, model: str, setting: str) -> ModelLimits | None:
        """`model`'s limits from the Models API; None when the service answered busily (the turns retry)."""
        settings = replace(self.settings, model=model)
        try:
            info = self._client.with_options(timeout=_CHECK_TIMEOUT_S).models.retrieve(model)
        except anthropic.NotFoundError:
            raise AgentError(f"The Anthropic API does not know model {model!r}. Set [agent.claude] {setting} in "
                             "loopdeck.toml to a model your key can use.", fatal=True, stop_reason="error") from None
        except (anthropic.APIError, httpx2.TransportError) as exc:
            failure = classify(exc, settings, self._redact)  # raises for a rejected key
            if isinstance(exc, anthropic.APIStatusError):
                return None
            where = self.settings.base_url or "the Anthropic API"
            raise AgentError(f"Claude agent: cannot reach {where} ({failure.detail}). Check the network or "
                             "[agent.claude] base_url, or run with --agent offline.",
                             fatal=True, stop_reason="error") from None
        return limits_from(info, settings, setting)

    # --- one turn ---------------------------------------------------------------------------------------------

    def propose(self, turn: AgentTurn) -> Proposal:
        return self._converse(turn, Workbench(turn))

    def _converse(self, turn: AgentTurn, bench: Workbench) -> Proposal:
        """Tool rounds on `bench` (the turn's in-memory files) until Claude proposes."""
        self._check_budget()
        system = [{"type": "text", "text": system_prompt(turn.program), "cache_control": _EPHEMERAL}]
        opening = first_message(turn)
        messages: list[dict[str, Any]] = [{"role": "user", "content": opening}]
        start_files, meter, refusals = dict(bench.files), _Meter(self.settings.model), 0
        try:
            for round_number in range(1, self._max_tool_rounds + 1):
                message = self._call(turn, system, messages, meter)
                self._charge(turn, meter, usage_from_api(message.usage))
                if round_number == 1:
                    for note in turn.notes:
                        turn.emit(NoteDelivered(experiment=turn.experiment, text=note))
                if message.stop_reason == "refusal":
                    refusals += 1
                    meter.model = self._refused(turn, message, refusals, meter.model)
                    # The API's guidance: after a refusal start the conversation afresh; the edits go with it.
                    bench.files = dict(start_files)
                    messages = [{"role": "user", "content": opening + _AFTER_REFUSAL}]
                    continue
                if assistant := assistant_content(message):
                    messages.append({"role": "assistant", "content": assistant})
                reply, proposal = self._answer(turn, bench, message)
                if proposal is not None:
                    description, rationale = proposal
                    return Proposal(
                        description=description, rationale=rationale, files=bench.changed_files(),
                        meta={"agent": self.name, "model": meter.model,
                              "usage": {**meter.usage.to_dict(), "cost_usd": round(meter.cost, 6)}},
                    )
                # A proposal already paid for is still returned; no further call is made past the budget.
                self._check_budget()
                if round_number == self._max_tool_rounds - 1:
                    append_to_last(reply, _LAST_ROUND)
                messages.append({"role": "user", "content": reply})
                trim_tool_results(messages, self._context_chars())
            raise AgentError(
                f"Claude used {self._max_tool_rounds} requests without proposing an experiment; "
                "the turn was abandoned"
            )
        finally:
            if meter.usage.total:
                turn.emit(AgentUsage(
                    experiment=turn.experiment, **meter.usage.to_dict(), cost_usd=meter.cost,
                    session_tokens=self._session_usage.total, session_cost_usd=self._session_cost,
                ))

    def _refused(self, turn: AgentTurn, message: Any, refusals: int, model: str) -> str:
        """Tell the person why Claude declined and return the model to ask next: the same one with a reworded
        request, then the fallback model if one is set. A refusal after that ends the turn (counted as a
        refusal, not as a crash)."""
        details = getattr(message, "stop_details", None)
        category = getattr(details, "category", None) or "no category given"
        explanation = getattr(details, "explanation", None) or "no explanation given"
        what = f"Claude ({model}) declined to continue (refusal, category {category}: {explanation})"
        fallback = self.settings.fallback_model
        if refusals < _REFUSALS_PER_TURN:
            next_step = "starting the turn afresh with a reworded request"
        elif refusals == _REFUSALS_PER_TURN and fallback and fallback != model:
            next_step = f"asking the fallback model {fallback} ([agent.claude] fallback_model) for this turn"
            model = fallback
        else:
            raise AgentError(f"{what}; the turn was dropped after {refusals} refusals", stop_reason="refusal")
        turn.emit(Notice(level="warning", experiment=turn.experiment, message=f"{what}; {next_step}"))
        return model

    def _answer(
        self, turn: AgentTurn, bench: Workbench, message: Any
    ) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
        """Run the tool calls of one response; return the next user content, or the proposal that ends the
        turn."""
        calls = [block for block in message.content if block.type == "tool_use"]
        cut_off = message.stop_reason == "max_tokens"
        if not calls:
            nudge = _CUT_OFF if cut_off else _NUDGE
            return [{"type": "text", "text": nudge}], None
        reply = []
        for call in calls:
            # max_tokens can only cut the response's last block; the calls before it are complete.
            if cut_off and call is message.content[-1]:
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

    def _call(self, turn: AgentTurn, system: list[dict[str, Any]], messages: list[dict[str, Any]],
              meter: _Meter) -> Any:
        """One response, retried through passing faults; a prompt too long for the model is retried with older
        tool results trimmed. Raises a non-fatal `AgentError` for what costs only this turn."""
        attempt, limit = 0, self._context_chars()
        while True:
            if turn.cancelled():
                raise AgentCancelled("stopped while Claude was drafting")
            try:
                return self._stream(turn, meter.model, system, messages)
            except (anthropic.APIError, httpx2.TransportError, MalformedStream) as exc:
                if isinstance(exc, MalformedStream):
                    self._charge(turn, meter, usage_from_api(exc.usage))
                failure = classify(exc, self.settings, self._redact)
            if failure.kind == "turn":
                raise AgentError(f"the Anthropic API refused this turn's request ({failure.detail})")
            if failure.kind == "too_long":
                limit = min(limit, conversation_chars(messages)) // 2
                if not trim_tool_results(messages, limit):
                    raise AgentError(f"the turn's conversation no longer fits the model ({failure.detail})")
                turn.emit(Notice(level="warning", experiment=turn.experiment,
                                 message=f"Claude API: {failure.detail}; retrying with older tool results removed"))
                continue
            attempt += 1
            if attempt == self._retry_attempts:
                # An unreadable response is this turn's fault; anything else that persists is the service's.
                raise AgentError(f"Claude API still failing after {attempt} attempts: {failure.detail}",
                                 stop_reason="error" if failure.unreadable else "outage") from None
            delay = min(self._retry_delay * 2 ** (attempt - 1), self._retry_max_delay)
            turn.emit(Notice(
                level="warning", experiment=turn.experiment,
                message=f"Claude API: {failure.detail}; waiting {delay:.0f} s before retrying "
                f"(attempt {attempt + 1} of {self._retry_attempts})",
            ))
            wait_to_retry(turn, delay, self._sleep, "Claude API")

    def _stream(self, turn: AgentTurn, model: str, system: list[dict[str, Any]],
                messages: list[dict[str, Any]]) -> Any:
        request: dict[str, Any] = {
            "model": model, "max_tokens": self.settings.max_tokens, "system": system,
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

    def _read(self, turn: AgentTurn, stream: Any) -> Any:
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

    def _stream_request(self, turn: AgentTurn, request: dict[str, Any]) -> Any:
        with self._client.messages.stream(**request) as stream:
            try:
                return self._read(turn, stream)
            except ValueError as exc:  # the SDK's parse of a tool call's streamed JSON
                raise MalformedStream(str(exc).splitlines()[0], stream.current_message_snapshot.usage) from None

    # --- usage, cost and budget -------------------------------------------------------------------------------

    def _charge(self, turn: AgentTurn, meter: _Meter, usage: TokenUsage) -> None:
        """Count one response's tokens (a broken one's too) for the turn and the session."""
        cost = self._cost(turn, meter.model, usage)
        meter.usage, meter.cost = meter.usage + usage, meter.cost + cost
        self._session_usage, self._session_cost = self._session_usage + usage, self._session_cost + cost

    def _cost(self, turn: AgentTurn, model: str, usage: TokenUsage) -> float:
        price = self._prices.get(model)
        if price is None and model not in self._warned_unpriced:
            self._warned_unpriced.add(model)
            turn.emit(Notice(level="warning", experiment=turn.experiment, message=unpriced_warning(model)))
        return usage.cost(price)

    def _context_chars(self) -> int:
        return context_chars(self._limits.context_tokens, self.settings.max_tokens)

    def _check_budget(self) -> None:
        settings = self.settings
        check_budget("Claude", "agent.claude", cost=self._session_cost, budget_usd=settings.budget_usd,
                     tokens=self._session_usage.total, budget_tokens=settings.budget_tokens, cost_note=COST_NOTE)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[api key redacted]")
