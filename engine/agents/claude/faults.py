"""How the Claude agent reads a failed API call: a passing fault to retry, a prompt too long for the model, a
request this one turn got wrong, or a setting no turn can fix (fatal, and the message names the setting)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import anthropic

from loopdeck.engine.agents.base import AgentError

# Error types an SSE `event: error` carries for a passing fault. The SDK does not retry an error that arrives
# in the middle of a stream (the HTTP status was already 200), so the agent retries those calls itself.
PASSING_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
# A 400/413 that names one of these request fields comes from a setting in [agent.claude]: every request of the
# session would get it, so it ends the session with the setting named. Any other 400 belongs to one turn.
_SETTING_FIELDS: tuple[tuple[str, str], ...] = (
    ("thinking", "thinking"), ("budget_tokens", "thinking"), ("effort", "effort"), ("output_config", "effort"),
    ("max_tokens", "max_tokens"), ("model", "model"),
)
_TOO_LONG = re.compile(r"prompt is too long|too many (input )?tokens|context (window|length)", re.IGNORECASE)

Kind = Literal["passing", "too_long", "turn"]


@dataclass(frozen=True)
class Failure:
    """One failed call: what kind of fault it is, and one readable line about it (the key redacted)."""

    kind: Kind
    detail: str
    unreadable: bool = False  # the service answered, but with a response the SDK could not parse


class MalformedStream(Exception):
    """A response the SDK could not parse (a tool call's streamed JSON was malformed). `usage` is what the API
    had counted for it when the stream broke, so the tokens are still paid for in the figures."""

    def __init__(self, message: str, usage: Any) -> None:
        super().__init__(message)
        self.usage = usage


def classify(exc: Exception, settings: Any, redact: Any) -> Failure:
    """Describe a failed call, or raise the fatal `AgentError` it calls for. Never chains the SDK exception,
    whose request carries the key in its headers. `redact` removes the key from a text."""
    if isinstance(exc, MalformedStream):
        return Failure("passing", f"unreadable response ({exc})", unreadable=True)
    if not isinstance(exc, anthropic.APIStatusError):
        return Failure("passing", redact(f"connection failed ({type(exc).__name__}: {exc})"))
    status, kind = exc.status_code, exc.type or ""
    where = f"{status}" if status >= 400 else "mid-stream"  # an error event inside a 200 stream has no status
    message = exc.api_message or exc.message
    detail = redact(f"{where} {kind}: {message}")
    if status in (401, 403):
        raise AgentError(f"The Anthropic API rejected the API key ({detail}). Check ANTHROPIC_API_KEY, or run with "
                         "--agent offline.", fatal=True, stop_reason="auth") from None
    if status == 402 or kind == "billing_error":
        raise AgentError(f"The Anthropic account cannot pay for requests ({detail}).",
                         fatal=True, stop_reason="budget") from None
    if status == 404:
        raise AgentError(f"The Anthropic API does not know model {settings.model!r} ({detail}). Set [agent.claude] "
                         "model in loopdeck.toml to a model your key can use.", fatal=True, stop_reason="error") from None
    if status in (408, 409, 429) or status >= 500 or (status < 400 and kind in PASSING_ERROR_TYPES):
        return Failure("passing", detail)
    if _TOO_LONG.search(str(message)):
        return Failure("too_long", detail)
    setting = _setting_named(str(message))
    if setting is not None:
        raise AgentError(
            f"The Anthropic API refused loopdeck's request ({detail}). Change [agent.claude] {setting} in "
            f"loopdeck.toml (model {settings.model!r}, thinking {settings.thinking!r}, effort {settings.effort!r}).",
            fatal=True, stop_reason="error",
        ) from None
    return Failure("turn", detail)


def _setting_named(message: str) -> str | None:
    """The [agent.claude] setting a 400's message points at (the API names the request field first)."""
    head = message.split(":", 1)[0].strip().lower()
    for field, setting in _SETTING_FIELDS:
        if head == field or head.startswith(f"{field}.") or head.endswith(f".{field}"):
            return setting
    return None
