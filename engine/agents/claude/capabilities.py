"""What the configured model accepts: the thinking and effort settings checked against its capabilities (from
the Models API) at session start, so a combination the API would refuse is explained before the baseline runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loopdeck.engine.agents.base import AgentError

# With thinking off (disabled, or between_tools) the API refuses the two highest efforts.
THINKING_OFF = frozenset({"disabled", "between_tools"})
EFFORTS_NEEDING_THINKING = frozenset({"xhigh", "max"})
# Without a Models API answer: a window every current model has, used to bound a turn's context.
DEFAULT_CONTEXT_TOKENS = 200_000


@dataclass(frozen=True)
class ModelLimits:
    """What the agent needs to know about the model for the rest of the session."""

    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    max_tokens: int | None = None


def combination_problem(thinking: str, effort: str) -> str:
    """Why a thinking/effort pair is refused by every model, or ""."""
    if thinking in THINKING_OFF and effort in EFFORTS_NEEDING_THINKING:
        return (f"effort {effort!r} needs thinking on, and thinking is {thinking!r}: set [agent.claude] effort to "
                f"low, medium or high, or thinking to \"adaptive\"")
    return ""


def limits_from(info: Any, settings: Any, setting: str = "model") -> ModelLimits:
    """The model's limits, or the fatal `AgentError` naming the setting it cannot honour (`setting` names the
    model: model, or fallback_model)."""
    problems = []
    if info.lifecycle == "retired":
        problems.append(f"the model is retired; set [agent.claude] {setting} to a current one")
    capabilities = info.capabilities
    if capabilities is not None:
        accepted = [name for name in ("adaptive", "enabled", "disabled", "between_tools")
                    if getattr(capabilities.thinking.types, name).supported]
        if settings.thinking not in accepted:
            problems.append(f"thinking {settings.thinking!r} is not accepted by this model; set [agent.claude] "
                            f"thinking to one of {', '.join(accepted) or '(none)'}")
        effort = capabilities.effort
        levels = [name for name in ("low", "medium", "high", "xhigh", "max")
                  if getattr(effort, name) is not None and getattr(effort, name).supported]
        if settings.effort and effort.supported and settings.effort not in levels:
            problems.append(f"effort {settings.effort!r} is not offered by this model; set [agent.claude] effort "
                            f"to one of {', '.join(levels)}")
    if info.max_tokens and settings.max_tokens > info.max_tokens:
        problems.append(f"max_tokens {settings.max_tokens} is above the model's {info.max_tokens}; lower "
                        "[agent.claude] max_tokens")
    if problems:
        raise AgentError(f"[agent.claude] does not fit model {settings.model!r}: " + "; ".join(problems),
                         fatal=True, stop_reason="error")
    return ModelLimits(context_tokens=info.max_input_tokens or DEFAULT_CONTEXT_TOKENS, max_tokens=info.max_tokens)
