"""Plain-text formatting of numbers, durations and metric deltas for the console (no Textual imports)."""

from __future__ import annotations

import math

MINUS = "\u2212"  # a real minus sign lines up with "+" in tables


def signed(value: float, digits: int = 4) -> str:
    text = f"{abs(value):.{digits}f}"
    if value > 0:
        return "+" + text
    if value < 0:
        return MINUS + text
    return "±" + text


def metric(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def delta(value: float | None, digits: int = 4, band: float | None = None) -> str:
    """−0.0042, or with the noise band of the delta −0.0042±0.0011."""
    if value is None:
        return "—"
    return signed(value, digits) + (f"±{band:.{digits}f}" if band is not None else "")


def improved(delta_value: float | None, direction: str) -> bool | None:
    """Whether a delta (new - old) is an improvement for the metric's direction; None when unknown or zero."""
    if delta_value is None or delta_value == 0:
        return None
    return delta_value < 0 if direction == "minimize" else delta_value > 0


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def count(n: float) -> str:
    """Compact counts: 950, 12.3k, 4.5M."""
    if n < 1000:
        return f"{int(n)}"
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def megabytes(mb: float | None) -> str:
    if mb is None:
        return "n/a"
    if mb >= 1024:
        return f"{mb / 1024:.1f} GB"
    return f"{mb:.0f} MB"


def usd(amount: float) -> str:
    return f"${amount:.2f}" if amount >= 0.01 or amount == 0 else f"${amount:.4f}"
