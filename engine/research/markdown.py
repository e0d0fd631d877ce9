"""Numbers and text as the report's Markdown tables show them (summary.md, its handover sections)."""

from __future__ import annotations


def signed(value: float | None) -> str:
    return "-" if value is None else fixed(value, 6, sign="+")


def number(value: float | None) -> str:
    return "-" if value is None else fixed(value, 6)


def fixed(value: float, digits: int, sign: str = "") -> str:
    """`value` with `digits` decimals, never as a negative zero (-0.000000 reads as a loss that is not there)."""
    return f"{round(value, digits) + 0.0:{sign}.{digits}f}"


def cell(text: str) -> str:
    """Text for one table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")
