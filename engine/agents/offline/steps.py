"""How a knob moves: one step up or down per kind and level, and the batch arithmetic kept whole.

Rates multiply, depth counts, batch sizes stay powers of two, ratios move by tenths, betas move in `1 - beta`.
The kinds are those `constants.classify` reads from a constant's name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from loopdeck.engine.agents.offline.constants import Knob, Value

# Step sizes per kind, by level: the usual step, a finer one, a bolder one, the finest. A kind may lack a level
# (depth has no finer step than 1). The search prefers lower levels and moves on when a step is spent.
LEVELS = 4

KIND_LABELS = {
    "lr": "learning rate", "scalar": "scalar setting", "wd": "weight decay", "beta": "momentum/beta",
    "fraction": "schedule fraction", "depth": "depth", "heads": "head count", "batch": "batch size",
    "width": "width", "count": "count", "softcap": "logit soft-cap", "window": "attention window pattern",
}

_MULTIPLY = {"lr": (1.5, 1.25, 2.0, 1.1), "scalar": (1.5, 1.25, 2.0, 1.1), "wd": (2.0, 1.5, None, 1.25)}
_WD_FROM_ZERO = (0.1, 0.05, 0.2, 0.01)
_BETA_FACTORS = (2.0, 1.5, 4.0, 1.25)
_FRACTION_STEPS = (0.1, 0.05, 0.2, 0.025)
_SOFTCAP_SHARES = (1 / 3, 1 / 6, 2 / 3, 1 / 12)


def neighbour(knob: Knob, direction: int, level: int) -> tuple[Value, str] | None:
    """The value one step from the knob's current value (direction +1 up, -1 down) at `level`, with a label
    for the step ("x1.5", "+1", "-0.1"); None when this kind has no such step or the value would be invalid."""
    value = knob.value
    if isinstance(value, str):
        return _window_step(value, direction, level)
    kind = knob.kind
    if kind in _MULTIPLY:
        return _multiplicative(knob, _MULTIPLY[kind][level], direction, level)
    if kind == "beta":
        return _beta_step(float(value), direction, _BETA_FACTORS[level], knob)
    if kind == "fraction":
        new = min(1.0, max(0.0, round(value + direction * _FRACTION_STEPS[level], 4)))
        new = _same_type(knob, new)
        return None if new == value else (new, f"{direction * _FRACTION_STEPS[level]:+g}")
    if kind == "depth":
        add = (1, None, 2, None)[level]
        return _additive(knob, add, direction, minimum=1)
    if kind in ("heads", "batch"):
        factor = (2, None, 4, None)[level]
        return None if factor is None else _integer_scale(knob, factor, direction)
    if kind == "softcap":
        step = _nice(abs(value) * _SOFTCAP_SHARES[level])
        new = _same_type(knob, _round_sig(value + direction * step))
        return None if new <= 0 or new == value else (new, f"{direction * step:+g}")
    return _count_or_width_step(knob, direction, level)


def _multiplicative(knob: Knob, factor: float | None, direction: int, level: int) -> tuple[Value, str] | None:
    value = float(knob.value)
    if knob.kind == "wd" and value == 0:
        return (_same_type(knob, _WD_FROM_ZERO[level]), "from 0") if direction > 0 else None
    if factor is None:  # weight decay's bold step down is switching it off
        return (_same_type(knob, 0.0), "to 0") if direction < 0 and value > 0 else None
    new = _same_type(knob, _round_sig(value * factor if direction > 0 else value / factor))
    return None if new == knob.value or new <= 0 else (new, f"{'x' if direction > 0 else '/'}{factor:g}")


def _beta_step(value: float, direction: int, factor: float, knob: Knob) -> tuple[Value, str] | None:
    gap = 1.0 - value
    new_gap = _round_sig(gap / factor if direction > 0 else gap * factor)
    new = round(1.0 - new_gap, 10)
    # A beta of 0.9 never drops below 0.5 in one move: past that the optimizer has no memory worth the name.
    if not 0.0 <= new < 1.0 or new == value or (value >= 0.5 > new):
        return None
    return _same_type(knob, new), f"1-beta {'/' if direction > 0 else 'x'}{factor:g}"


def _additive(knob: Knob, add: int | None, direction: int, minimum: int) -> tuple[Value, str] | None:
    if add is None:
        return None
    new = int(knob.value) + direction * add
    return None if new < minimum else (new, f"{direction * add:+d}")


def _integer_scale(knob: Knob, factor: int, direction: int) -> tuple[Value, str] | None:
    value = int(knob.value)
    if direction > 0:
        return value * factor, f"x{factor}"
    if value % factor or value // factor < 1:
        return None
    return value // factor, f"/{factor}"


def _count_or_width_step(knob: Knob, direction: int, level: int) -> tuple[Value, str] | None:
    value = knob.value
    if isinstance(value, float):
        return _multiplicative(knob, (1.5, 1.25, 2.0, 1.1)[level], direction, level)
    if value < 8:
        return _additive(knob, (1, None, 2, None)[level], direction, minimum=1)
    if level in (0, 2):
        return _integer_scale(knob, 2 if level == 0 else 4, direction)
    # Finer steps keep the divisibility the value already has (heads, head_dim, multiples of 64…).
    share = 4 if level == 1 else 8
    if value % share:
        return None
    step = value // share
    return _additive(knob, step, direction, minimum=1)


def _window_step(pattern: str, direction: int, level: int) -> tuple[Value, str] | None:
    """Patterns of sliding (S) and full-context (L) layers; up means more full-context attention. At least one
    L stays, so some layer always sees the whole context."""
    length, full = len(pattern), pattern.count("L")
    if level in (0, 2):
        full += direction * (1 if level == 0 else 2)
    elif level == 1:
        length -= direction
        full = min(full, length)
    else:
        return None
    if length < 1 or not 1 <= full <= length:
        return None
    new = _spread(length, full)
    return None if new == pattern else (new, "more global" if direction > 0 else "more local")


def _spread(length: int, full: int) -> str:
    """`full` L's spread evenly over `length` layers, the last layer always full ("SSSL", "SLSL", …)."""
    return "".join("L" if (i + 1) * full // length > i * full // length else "S" for i in range(length))


def _same_type(knob: Knob, value: float) -> Value:
    """Keep an int knob an int where the new value is whole (a soft-cap of 15 stays `15`, not `15.0`)."""
    if isinstance(knob.value, int) and float(value).is_integer():
        return int(value)
    return float(value)


def _round_sig(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def _nice(step: float) -> float:
    """The nearest 1, 2, 2.5 or 5 times a power of ten, so soft-cap steps read as 5 or 10, not 4.333."""
    if step <= 0:
        return 0.0
    exponent = math.floor(math.log10(step))
    base = step / 10**exponent
    mantissa = min((1, 2, 2.5, 5, 10), key=lambda m: abs(m - base))
    return _round_sig(mantissa * 10**exponent)


# Names of the sequence length a batch of sequences is multiplied by to count tokens.
SEQUENCE_NAMES = ("MAX_SEQ_LEN", "SEQ_LEN", "SEQUENCE_LEN", "SEQUENCE_LENGTH", "BLOCK_SIZE", "CONTEXT_LEN",
                  "CONTEXT_LENGTH")


def batch_partner(knob: Knob, value: Value, knobs: Sequence[Knob], sequence: int | None
                  ) -> list[tuple[Knob, Value]] | None:
    """Keep the batch arithmetic whole when a batch size moves. With a total batch (tokens or sequences per
    optimizer step) and a per-device micro-batch, the total must be a whole number of micro-batches: a move that
    breaks that brings the other knob along by the same factor (halving the total below one micro-batch halves
    the micro-batch too). [] = the move stands alone; [(other, value)] = move both; None = no valid way."""
    batches = [k for k in knobs if k.kind == "batch" and isinstance(k.value, int)]
    total = _only(k for k in batches if {"TOTAL", "GLOBAL", "EFFECTIVE"} & set(k.constant.split("_")))
    device = _only(k for k in batches if {"DEVICE", "MICRO", "PER", "LOCAL"} & set(k.constant.split("_")))
    if total is None or device is None or knob.key not in (total.key, device.key) or not isinstance(value, int):
        return []
    # A total of at least one micro-batch of full sequences counts tokens; otherwise it counts sequences.
    unit = sequence if sequence and int(total.value) >= int(device.value) * sequence else 1
    new_total, new_device = (value, int(device.value)) if knob.key == total.key else (int(total.value), value)
    if new_total >= new_device * unit and new_total % (new_device * unit) == 0:
        return []
    other = device if knob.key == total.key else total
    scaled = int(other.value) * value / int(knob.value)
    if not scaled.is_integer() or scaled < 1:
        return None
    new_total, new_device = (value, int(scaled)) if knob.key == total.key else (int(scaled), value)
    return [(other, int(scaled))] if new_total % (new_device * unit) == 0 else None


def _only(knobs: Iterable[Knob]) -> Knob | None:
    found = list(knobs)
    return found[0] if len(found) == 1 else None
