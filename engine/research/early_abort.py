"""Doomed runs stopped early: a run's loss compared with the incumbent's recorded curve at the same training time.

Past `after_fraction` of the budget, a loss record more than `margin` (relative) above the incumbent's loss at the
same elapsed training seconds (linear interpolation of its curve; its last value beyond its end) counts as behind;
`sustain` behind records in a row stop the run. The loss is the run's smoothed training loss, the same quantity
in both curves. Conservative by design: the learning-rate warmdown in a run's last part can overturn a small
lead, so a stop needs a clear and lasting gap. `bench/early_abort_replay.py` measures what this rule saves and how
often it would have stopped a run that was in fact kept.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class AbortRule:
    after_fraction: float = 0.5
    margin: float = 0.1
    sustain: int = 10


class EarlyAbort:
    """Feed it a run's (elapsed, loss) records in order; `observe` returns True once the run should stop."""

    def __init__(self, reference: Sequence[tuple[float, float]], budget_seconds: float, rule: AbortRule) -> None:
        points = sorted((float(x), float(y)) for x, y in reference)
        self._xs = [x for x, _ in points]
        self._ys = [y for _, y in points]
        self._from = rule.after_fraction * budget_seconds
        self._budget = budget_seconds
        self._rule = rule
        self._behind = 0
        self.reason = ""  # set when the rule fires
        self.stopped_at: float | None = None  # elapsed training seconds when it fired

    def reference_at(self, elapsed: float) -> float | None:
        """The incumbent's loss at `elapsed` training seconds; None before its first record."""
        if not self._xs or elapsed < self._xs[0]:
            return None
        i = bisect.bisect_right(self._xs, elapsed)
        if i >= len(self._xs):
            return self._ys[-1]
        x0, x1, y0, y1 = self._xs[i - 1], self._xs[i], self._ys[i - 1], self._ys[i]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (elapsed - x0) / (x1 - x0)

    def observe(self, elapsed: float, loss: float) -> bool:
        if self.reason:
            return True
        if elapsed < self._from:
            return False
        reference = self.reference_at(elapsed)
        if reference is None or reference <= 0:
            return False
        if not loss > reference * (1 + self._rule.margin):  # a NaN loss is the run's own failure, not "behind"
            self._behind = 0
            return False
        self._behind += 1
        if self._behind < self._rule.sustain:
            return False
        self.stopped_at = elapsed
        self.reason = (f"behind incumbent: loss {loss:.4f} at {elapsed:.1f} s of {self._budget:g} s, the incumbent's "
                       f"was {reference:.4f} (+{100 * (loss / reference - 1):.0f}%, {self._rule.sustain} records "
                       "in a row)")
        return True
