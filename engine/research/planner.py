"""The research planner: from the ledger's history, each turn's mode (explore, exploit, combine, ablate) and why.

Greedy hill-climbing plateaus and repeats itself. The planner reads the incumbent's history and says what the
next turn should do: *exploit* right after a keep whose gain is clearly outside the noise band (twice the band;
refine it: the same code, further the same way — unless the keep moved a constant back the way an earlier keep had,
which brackets the best value); *combine* when two or more near-misses — runs against the
incumbent that were not kept but came within the noise band of it — touch different code (their changes, merged
three-way onto the incumbent, are the next experiment; a combination that was not kept is followed by a turn of
another mode, so merging never takes over a plateau); *ablate* on a plateau when there is a kept chain to take
apart and an ablation hook was given (part of the engine that owns ablation runs it; without one the planner
never chooses it); otherwise *explore* a direction not tried recently. A plateau is K experiments without a keep,
or keeps whose gains are all inside the band. A person may force a mode (`loopdeck ctl DIR mode …`, the console);
"auto" hands the choice back.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from loopdeck.engine.agents.regions import Touch
from loopdeck.engine.config.schema import ResearchSettings
from loopdeck.engine.store.ledger import ExperimentRow

FALLBACK_BAND = 0.005  # near-miss band relative to the incumbent's metric when no noise was measured
CLEAR_GAIN = 2.0  # a keep is worth refining when it gained this many bands (a smaller one may be noise)
_NOT_TRIED = frozenset({"running", "interrupted", "rejected", "vetoed"})


@dataclass(frozen=True)
class Plan:
    mode: str  # explore | exploit | combine | ablate
    reason: str  # one line, shown to the agent, the console and the ledger
    near_misses: tuple[int, ...] = ()  # for combine: the experiments whose changes are merged
    forced: bool = False


class Planner:
    """Chooses each turn's mode; remembers only which incumbent it last ablated (ablation runs once per
    incumbent)."""

    def __init__(self, settings: ResearchSettings, direction: str, *, can_ablate: bool = False) -> None:
        self.settings = settings
        self.sign = -1.0 if direction == "minimize" else 1.0  # gain = sign * delta
        self.can_ablate = can_ablate
        self._ablated: int | None = None

    def choose(self, rows: Sequence[ExperimentRow], incumbent: ExperimentRow | None, forced: str = "") -> Plan:
        """The plan for the next turn, given every ledger row (oldest first) and the incumbent."""
        if forced:
            return self._forced(forced, rows, incumbent)
        tried = [row for row in rows if not row.is_baseline and row.status not in _NOT_TRIED]
        since = [row for row in tried if incumbent is None or row.id > incumbent.id]
        last = tried[-1] if tried else None
        if last is not None and incumbent is not None and last.id == incumbent.id:
            gain, band = self._gain(last), self._band(last, incumbent)
            if gain > CLEAR_GAIN * band and not self._reverses(last, tried):
                return Plan("exploit", f"#{last.id} gained {gain:.4g} (band ±{band:.2g}): refining it further")
        pair = self._near_misses(since, incumbent, rows)
        if pair and not (last is not None and last.mode == "combine" and last.status != "keep"):
            ids = " and #".join(str(row.id) for row in pair)
            return Plan("combine", f"#{ids} came within the noise band of the incumbent and touch different "
                        "code: trying them together", tuple(row.id for row in pair))
        plateau = self._plateau(tried, since, incumbent)
        if plateau and self._may_ablate(rows, incumbent):
            assert incumbent is not None
            self._ablated = incumbent.id
            return Plan("ablate", f"{plateau}: measuring what each kept change contributes")
        if plateau:
            return Plan("explore", f"{plateau}: changing direction to code not tried recently")
        if last is not None and last.mode == "exploit" and last.status != "keep":
            return Plan("explore", f"refining #{last.id} did not pay off ({last.status}): exploring")
        return Plan("explore", "trying a new direction" if tried else "first experiment: trying a new direction")

    def _forced(self, mode: str, rows: Sequence[ExperimentRow], incumbent: ExperimentRow | None) -> Plan:
        if mode == "ablate" and not self.can_ablate:
            return Plan("explore", "ablate was asked for but this session has no ablation: exploring", forced=True)
        if mode == "combine":
            since = [row for row in rows if incumbent is None or row.id > incumbent.id]
            pair = self._near_misses(since, incumbent, rows)
            if not pair:
                return Plan("explore", "combine was asked for but no two near-misses touch different code: "
                            "exploring", forced=True)
            return Plan("combine", "a person asked to combine near-misses", tuple(r.id for r in pair), forced=True)
        return Plan(mode, f"a person asked to {mode}", forced=True)

    # --- what the history says ----------------------------------------------------------------------------------

    def _gain(self, row: ExperimentRow) -> float:
        return self.sign * row.delta if row.delta is not None else float("-inf")

    def _band(self, row: ExperimentRow, incumbent: ExperimentRow | None) -> float:
        """The ± band a delta is judged against: the measured one, else the setting, else a fraction of the
        incumbent's metric."""
        if row.delta_band is not None and row.delta_band > 0:
            return row.delta_band
        if self.settings.near_miss_band > 0:
            return self.settings.near_miss_band
        reference = incumbent.metric if incumbent is not None and incumbent.metric is not None else 1.0
        return abs(reference) * FALLBACK_BAND

    def _plateau(self, tried: Sequence[ExperimentRow], since: Sequence[ExperimentRow],
                 incumbent: ExperimentRow | None) -> str:
        """Why the search has plateaued ("" when it has not)."""
        k = self.settings.plateau_k
        if len(since) >= k:
            return f"plateau: no keep in the last {len(since)} experiments"
        keeps = [row for row in tried[-k:] if row.status == "keep"]
        if len(tried) >= k and keeps and all(self._gain(row) <= self._band(row, incumbent) for row in keeps):
            return f"plateau: the last {len(keeps)} keeps gained less than the noise band"
        return ""

    def _near_misses(self, since: Sequence[ExperimentRow], incumbent: ExperimentRow | None,
                     rows: Sequence[ExperimentRow]) -> tuple[ExperimentRow, ...]:
        """The best two not-kept runs against the incumbent within its band, on disjoint code, not combined yet.
        Their gains must add up to a gain; a combination is never a part (its parts were); a pair whose merged
        change is an idea already discarded against this incumbent would be refused as a repeat."""
        if incumbent is None:
            return ()
        close = [row for row in since if row.status in ("discard", "aborted") and row.commit and row.region
                 and row.mode != "combine" and row.delta is not None
                 and -self._gain(row) <= self._band(row, incumbent)]
        close.sort(key=self._gain, reverse=True)
        combined = {frozenset(row.meta.get("combines", ())) for row in rows if row.mode == "combine"}
        discarded = [row for row in since if row.status == "discard"]
        for first, second in itertools.combinations(close, 2):
            if set(first.region.split()) & set(second.region.split()):
                continue
            if self._gain(first) + self._gain(second) <= 0:
                continue  # were the two gains to add up, the merge would still not beat the incumbent
            merged = Touch(tuple(sorted(first.region.split() + second.region.split())),
                           {**first.signs, **second.signs})
            repeat = any(merged.same_idea(row.region.split(), row.signs) for row in discarded)
            if frozenset((first.id, second.id)) not in combined and not repeat:
                return (first, second)
        return ()

    @staticmethod
    def _reverses(kept: ExperimentRow, tried: Sequence[ExperimentRow]) -> bool:
        """True when `kept` moved a constant back the way an earlier keep had moved it: the best value lies between
        the two, so pushing further would overshoot."""
        moved = {name: sign for name, sign in kept.signs.items() if sign in (1, -1)}
        return any(row.status == "keep" and row.id < kept.id and any(row.signs.get(name) == -sign
                                                                      for name, sign in moved.items())
                   for row in tried)

    def _may_ablate(self, rows: Sequence[ExperimentRow], incumbent: ExperimentRow | None) -> bool:
        if not self.can_ablate or incumbent is None or self._ablated == incumbent.id:
            return False
        return sum(1 for row in rows if row.status == "keep" and not row.is_baseline) >= 2
