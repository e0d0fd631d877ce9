"""What the API-backed agents share: a wait between retries that a stop cuts short, and the session's budgets."""

from __future__ import annotations

from collections.abc import Callable

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn

WAIT_STEP_SECONDS = 0.5  # how soon a stop request is noticed while waiting to retry


def wait_to_retry(turn: AgentTurn, seconds: float, sleep: Callable[[float], None], service: str) -> None:
    """Sleep `seconds` in short steps, so a stop request is honoured while waiting to retry `service`."""
    remaining = seconds
    while remaining > 0:
        if turn.cancelled():
            raise AgentCancelled(f"stopped while waiting to retry the {service}")
        step = min(WAIT_STEP_SECONDS, remaining)
        sleep(step)
        remaining -= step


def check_budget(who: str, section: str, *, cost: float, budget_usd: float, tokens: int, budget_tokens: int,
                 cost_note: str = "") -> None:
    """Raise a fatal AgentError once the session has spent the dollar or token budget of `[section]`."""
    if budget_usd > 0 and cost >= budget_usd:
        note = f" ({cost_note})" if cost_note else ""
        raise AgentError(f"{who} budget spent: {usd(cost)} of {usd(budget_usd)}{note}. Raise [{section}] budget_usd "
                         "in loopdeck.toml to go on.", fatal=True, stop_reason="budget")
    if budget_tokens > 0 and tokens >= budget_tokens:
        raise AgentError(f"{who} token budget spent: {tokens:,} of {budget_tokens:,} tokens. Raise [{section}] "
                         "budget_tokens in loopdeck.toml to go on.", fatal=True, stop_reason="budget")


def usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"
