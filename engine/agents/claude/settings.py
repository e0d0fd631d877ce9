"""`[agent.claude]` as the Claude agent reads it, and the API's thinking parameter those settings make."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from loopdeck.engine.agents.base import AgentError
from loopdeck.engine.agents.claude.capabilities import combination_problem

DEFAULT_MODEL = "claude-sonnet-5-5"
THINKING_MODES = ("adaptive", "enabled", "disabled", "between_tools")


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
    outage_max_wait_seconds: float = 120.0  # the ceiling of the doubling wait between tries while the API is down
    fallback_model: str = ""  # asked for the rest of a turn whose reworded retry was refused too; "" = none

    @classmethod
    def from_config(cls, section: Any) -> ClaudeSettings:
        """Settings from a `[agent.claude]` pydantic model or mapping; fields this class does not know are
        ignored."""
        data = section if isinstance(section, Mapping) else section.model_dump()
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known and value is not None})


def thinking_config(settings: ClaudeSettings) -> dict[str, Any]:
    """The API's thinking parameter. Thinking is shown summarised so the console's reasoning pane is readable."""
    mode = settings.thinking
    if problem := combination_problem(mode, settings.effort):
        raise AgentError(f"[agent.claude] {problem}", fatal=True, stop_reason="error")
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
