"""Token usage of the Claude agent and its estimated cost from a dated price table.

The cost is an estimate: prices change, long-prompt tiers and regional multipliers are not modelled, and the
table below is only as current as `PRICES_AS_OF`. `[agent.claude] prices` in loopdeck.toml overrides it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

# Where and when the table was taken. Cache writes are priced at the 5-minute rate, the TTL loopdeck requests.
PRICES_AS_OF = "2026-11-10"
PRICES_SOURCE = "https://platform.claude.com/docs/en/about-claude/pricing"
COST_NOTE = f"estimated from list prices as of {PRICES_AS_OF}"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cache_write: float
    cache_read: float


_OPUS_4_5 = Price(5.00, 25.00, 6.25, 0.50)
_SONNET_4 = Price(3.00, 15.00, 3.75, 0.30)
_FABLE_5_2 = Price(8.00, 40.00, 10.00, 0.20)
_FABLE_5_1 = Price(10.00, 50.00, 12.50, 0.25)
_FABLE_5 = Price(10.00, 50.00, 12.50, 1.00)

PRICES: dict[str, Price] = {
    "claude-fable-5-2": _FABLE_5_2,
    "claude-mythos-5-2": _FABLE_5_2,  # Mythos shares its Fable generation's price
    "claude-fable-5-1": _FABLE_5_1,
    "claude-mythos-5-1": _FABLE_5_1,
    "claude-fable-5": _FABLE_5,
    "claude-mythos-5": _FABLE_5,
    "claude-opus-5-5": Price(4.00, 20.00, 5.00, 0.20),
    "claude-opus-5": _OPUS_4_5,
    "claude-opus-4-8": _OPUS_4_5,
    "claude-opus-4-7": _OPUS_4_5,
    "claude-opus-4-6": _OPUS_4_5,
    "claude-opus-4-5": _OPUS_4_5,
    "claude-sonnet-5-5": Price(2.00, 10.00, 2.50, 0.10),
    "claude-sonnet-5": Price(2.00, 10.00, 2.50, 0.20),
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    # Haiku 5.5's rate for prompts up to 100k tokens; longer prompts cost more and are underestimated here.
    "claude-haiku-5-5": Price(0.10, 0.50, 0.125, 0.01),
    "claude-haiku-4-5": Price(1.00, 5.00, 1.25, 0.10),
}
# Models the SDK names that have no public list price: a session on one gets the warning below.
UNPRICED = frozenset({"claude-mythos-preview"})
_DATE_SUFFIX = re.compile(r"-\d{8}$")


@dataclass(frozen=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
        )

    @property
    def total(self) -> int:
        """Every token the API processed or produced, cached or not: what a token budget counts."""
        return self.input_tokens + self.output_tokens + self.cache_write_tokens + self.cache_read_tokens

    def cost(self, price: Price | None) -> float:
        if price is None:
            return 0.0
        dollars_per_mtok = (
            self.input_tokens * price.input
            + self.output_tokens * price.output
            + self.cache_write_tokens * price.cache_write
            + self.cache_read_tokens * price.cache_read
        )
        return dollars_per_mtok / 1_000_000

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def usage_from_api(usage: Any) -> TokenUsage:
    """The four counters of an API `Usage` (a final message's, where message_delta totals replaced
    message_start's)."""
    return TokenUsage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_write_tokens=usage.cache_creation_input_tokens or 0,
        cache_read_tokens=usage.cache_read_input_tokens or 0,
    )


def price_for(model: str, overrides: Mapping[str, float] | None = None) -> Price | None:
    """The price of `model` (a dated id falls back to its alias), with `overrides` (any of input, output,
    cache_write, cache_read in $/MTok) applied on top. None when the model is unknown and not fully overridden."""
    known = PRICES.get(model) or PRICES.get(_DATE_SUFFIX.sub("", model))
    fields = asdict(known) if known else {}
    unknown_keys = set(overrides or {}) - set(Price.__dataclass_fields__)
    if unknown_keys:
        raise ValueError(
            f"unknown price field(s) {sorted(unknown_keys)}; allowed: input, output, cache_write, cache_read "
            "(US dollars per million tokens)"
        )
    fields.update({key: float(value) for key, value in (overrides or {}).items()})
    if set(fields) != set(Price.__dataclass_fields__):
        return None
    return Price(**fields)


def unpriced_warning(model: str) -> str:
    """What a person is told once when `model` has no price: costs read $0 until they set one."""
    return (f"no price known for model {model!r}: its costs show as $0 and a dollar budget cannot be kept. Set "
            "prices = {input = …, output = …, cache_write = …, cache_read = …} ($ per million tokens) under "
            "[agent.claude] in loopdeck.toml.")
