"""Rewriting a knob's literal in the training file's source, in the literal's own style, everything else kept."""

from __future__ import annotations

import re
from collections.abc import Sequence

from loopdeck.engine.agents.offline.constants import Knob, Value

_POW2_TEXT = re.compile(r"^2(\s*)\*\*(\s*)\d+$")


def render(knob: Knob, value: Value) -> str:
    """Source text for `value` in the style of the knob's current literal."""
    if isinstance(value, str):
        quote = knob.text[0] if knob.text[:1] in ("'", '"') else '"'
        return f"{quote}{value}{quote}"
    pow2 = _POW2_TEXT.match(knob.text.strip())
    if pow2 and isinstance(value, int) and value > 0 and value & (value - 1) == 0:
        return f"2{pow2.group(1)}**{pow2.group(2)}{value.bit_length() - 1}"
    if isinstance(value, int):
        return str(value)
    if "e" in knob.text.lower() and value != 0:
        mantissa, exponent = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return repr(float(value))


def apply_edits(source: str, edits: Sequence[tuple[Knob, str]]) -> str:
    """Replace each knob's literal with the given text. Everything else stays byte for byte, except the spaces
    before a trailing comment, which absorb the length change so aligned comments stay aligned."""
    by_statement: dict[int, list[tuple[Knob, str]]] = {}
    for knob, text in edits:
        by_statement.setdefault(knob.stmt_end, []).append((knob, text))
    for stmt_end in sorted(by_statement, reverse=True):
        group = sorted(by_statement[stmt_end], key=lambda edit: edit[0].start, reverse=True)
        growth = 0
        for knob, text in group:
            source = source[: knob.start] + text + source[knob.end :]
            growth += len(text) - (knob.end - knob.start)
        source = _realign_comment(source, stmt_end + growth, growth)
    return source


def _realign_comment(source: str, at: int, growth: int) -> str:
    padding = re.match(r"( +)#", source[at:])
    if padding is None or growth == 0:
        return source
    spaces = max(1, len(padding.group(1)) - growth)
    return source[:at] + " " * spaces + source[at + len(padding.group(1)) :]
