"""What the offline agent remembers: past experiments read back as knob moves and outcomes, plus people's notes.

Each past experiment becomes a `Trial`: the knob moves it made (from the `meta` the offline agent attached, or
parsed from the diff for anyone else's change, e.g. a human's `loopdeck try`), its status and its gain (the
improvement in the metric's own direction). From trials the memory answers what the search needs: has this exact
configuration been evaluated already, did moving a knob in a direction help or hurt lately, where did a knob crash.

Notes are read with simple keyword rules, one clause at a time (clauses split at `.`, `;`, `,`, "and", "but"):
a clause names knobs by constant name (`EMBEDDING_LR`, case-insensitive) or by family ("learning rate", "lr",
"depth", "layers", "batch", "weight decay", "warmup", "warmdown", "beta", "momentum", "width", "heads",
"softcap", "window"). "don't touch / leave / freeze / keep fixed / avoid" → never move it; a negation with a
direction ("stop increasing DEPTH", "don't lower X") → never move it that way; a direction alone ("try lower X",
"increase DEPTH") → do that next; "allow / unfreeze / feel free" → lift an earlier rule; a bare mention
("try X") → try X next in whichever direction looks best.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.agents.offline.constants import Knob, Value, classify, constant_changes

FAILED = frozenset({"crash", "timeout", "nan"})
# Statuses whose configuration counts as evaluated; an interrupted run never finished and may be tried again.
_TRIED = frozenset({"keep", "discard", "crash", "timeout", "nan", "rejected", "vetoed", "aborted"})
_DECAY = 0.6  # weight of evidence gathered one incumbent ago, relative to evidence about the current one
_CLIP = 3.0


@dataclass(frozen=True)
class Move:
    key: str
    name: str
    path: str
    kind: str
    old: Value
    new: Value
    direction: int  # +1 up, -1 down (for a window pattern: up = more full-context layers)
    step: str = ""  # "x1.5", "+1", … ("" when read from someone else's diff)

    def to_meta(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "path": self.path, "kind": self.kind, "old": self.old,
                "new": self.new, "direction": self.direction, "step": self.step}

    @property
    def label(self) -> str:
        """How a sentence names the move: 'MATRIX_LR x1.5', 'DEPTH +1' (worked out when read from a diff)."""
        return f"{self.key} {self.step or _step_between(self.kind, self.old, self.new)}"


@dataclass(frozen=True)
class Trial:
    id: int
    epoch: int  # how many changes had been kept before it: trials of one epoch share their incumbent
    status: str
    delta: float | None
    gain: float | None  # improvement in the metric's direction (positive = better)
    moves: tuple[Move, ...]
    reason: str = ""
    log_tail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in FAILED

    def failure(self) -> str:
        """A short why for a failed trial: 'out of memory', 'NaN loss', 'a timeout' or the first reason line."""
        text = f"{self.reason}\n{self.log_tail}"
        if re.search(r"out of memory|OutOfMemory|\bOOM\b", text, re.IGNORECASE):
            return "out of memory"
        if self.status == "nan":
            return "NaN loss"
        if self.status == "timeout":
            return "a timeout"
        first = next((line.strip() for line in self.reason.splitlines() if line.strip()), "")
        return first[:80] or self.status

    def outcome(self) -> str:
        """'(-0.0120)', 'crashed (out of memory)', … for rationale sentences."""
        if self.failed:
            verb = {"crash": "crashed", "timeout": "timed out", "nan": "diverged"}[self.status]
            return f"{verb} ({self.failure()})"
        if self.delta is not None:
            return f"{self.delta:+.4f}"
        return self.status


@dataclass(frozen=True)
class Directive:
    key: str
    rule: str  # avoid | forbid_up | forbid_down | prefer_up | prefer_down | prefer
    note: str

    def to_meta(self) -> dict[str, str]:
        return {"key": self.key, "rule": self.rule, "note": self.note}


def _step_between(kind: str, old: Value, new: Value) -> str:
    if isinstance(old, str) or isinstance(new, str) or kind == "beta":
        return "up" if direction_of(old, new) > 0 else "down"
    if kind in ("depth", "fraction", "softcap", "count") or old == 0 or new == 0:
        return f"{new - old:+g}"
    ratio = new / old
    return f"x{ratio:.3g}" if ratio > 1 else f"/{1 / ratio:.3g}"


def normalise(value: Value) -> Value:
    """Comparable form of a knob value: JSON and float rounding must not make 0.06 and 0.060000000001 differ."""
    return value if isinstance(value, str) else round(float(value), 12)


def direction_of(old: Value, new: Value) -> int:
    if isinstance(old, str) or isinstance(new, str):
        old_share, new_share = _full_share(str(old)), _full_share(str(new))
        return (new_share > old_share) - (new_share < old_share)
    return (new > old) - (new < old)


def _full_share(pattern: str) -> float:
    return pattern.count("L") / len(pattern) if pattern else 0.0


@dataclass
class Memory:
    knobs: Sequence[Knob]
    trials: list[Trial]
    epoch: int
    scale: float  # typical |gain|: evidence is measured in these units so noise-sized gains count as ~1
    metas: list[Mapping[str, Any]]  # what earlier offline proposals attached, oldest first
    evaluated: set[frozenset[tuple[str, Value]]] = field(default_factory=set)

    # --- construction -----------------------------------------------------------------------------------------

    @classmethod
    def read(cls, history: Sequence[ExperimentSummary], knobs: Sequence[Knob], direction: str) -> Memory:
        minimize = direction != "maximize"
        by_key = {k.key: k for k in knobs}
        by_name = {(k.path, k.name): k for k in knobs}
        trials: list[Trial] = []
        keeps = 0
        for row in history:
            if not row.baseline:
                moves = _moves_from_meta(row.meta) or _moves_from_diff(row.diff, by_key, by_name)
                gain = None if row.delta is None else (-row.delta if minimize else row.delta)
                trials.append(Trial(row.id, keeps, row.status, row.delta, gain, moves, row.reason, row.log_tail))
            if row.status == "keep":
                keeps += 1
        gains = [abs(t.gain) for t in trials if t.gain and t.status in ("keep", "discard", "aborted")]
        scale = max(statistics.median(gains), 1e-12) if gains else 1.0
        metas = [row.meta for row in history if row.meta.get("agent") == "offline"]
        memory = cls(knobs, trials, keeps, scale, metas)
        memory._rebuild_evaluated()
        return memory

    def _rebuild_evaluated(self) -> None:
        """Every knob configuration already run, walking back from the incumbent through the kept changes.
        A kept change whose moves are unknown (a code change) ends the walk: older results were measured on
        different code."""
        state = {k.key: normalise(k.value) for k in self.knobs}
        self.evaluated.add(frozenset(state.items()))
        for trial in reversed(self.trials):
            if trial.status == "keep":
                if not trial.moves or any(state.get(m.key, normalise(m.new)) != normalise(m.new)
                                          for m in trial.moves):
                    return
                state = {**state, **{m.key: normalise(m.old) for m in trial.moves if m.key in state}}
                self.evaluated.add(frozenset(state.items()))
            elif trial.status in _TRIED and trial.moves:
                self.evaluated.add(frozenset(_applied(state, trial.moves).items()))

    # --- questions the search asks ----------------------------------------------------------------------------

    def is_evaluated(self, moves: Sequence[Move]) -> bool:
        current = {k.key: normalise(k.value) for k in self.knobs}
        return frozenset(_applied(current, moves).items()) in self.evaluated

    def trials_of(self, key: str, direction: int | None = None) -> list[Trial]:
        return [t for t in self.trials if any(m.key == key and (direction is None or m.direction == direction)
                                              for m in t.moves) and t.status in _TRIED]

    def evidence(self, key: str, direction: int, *, failures: bool = True) -> float:
        """Recency-weighted, noise-scaled sum of how moving `key` in `direction` went (positive = it helped).
        A pair's outcome is split between its two moves."""
        total = 0.0
        for trial in self.trials_of(key, direction):
            value = self.normalised(trial)
            if value is None or (trial.failed and not failures):
                continue
            # A kept trial made the incumbent that follows it: it is evidence about that incumbent, not an old one.
            age = self.epoch - trial.epoch - (1 if trial.status == "keep" else 0)
            total += _DECAY ** max(age, 0) * value / len(trial.moves)
        return total

    def normalised(self, trial: Trial) -> float | None:
        """The trial's outcome in noise units, clipped; failures count as the worst outcome."""
        if trial.failed:
            return -_CLIP
        if trial.gain is not None:
            return max(-_CLIP, min(_CLIP, trial.gain / self.scale))
        return {"aborted": -1.5, "vetoed": -1.0, "rejected": -1.0}.get(trial.status)

    def last(self, key: str, direction: int) -> Trial | None:
        trials = self.trials_of(key, direction)
        return trials[-1] if trials else None

    def failures(self, key: str) -> list[Trial]:
        return [t for t in self.trials_of(key) if t.failed]

    def crash_limit(self, key: str, direction: int) -> tuple[Value, Trial] | None:
        """The nearest value at which a move of `key` alone in `direction` failed: values at or past it are
        off limits (a depth that ran out of memory does not fit one step later either)."""
        limit: tuple[Value, Trial] | None = None
        for trial in self.failures(key):
            if len(trial.moves) != 1 or trial.moves[0].direction != direction:
                continue
            value = trial.moves[0].new
            if limit is None or direction_of(value, limit[0]) == direction:
                limit = (value, trial)
        return limit

    def tried_elsewhere(self, key: str, value: Value) -> Trial | None:
        """An earlier incumbent's trial that set `key` to `value` and did not lead to a keep."""
        for trial in reversed(self.trials):
            if trial.epoch != self.epoch and trial.status != "keep" and any(
                m.key == key and normalise(m.new) == normalise(value) for m in trial.moves
            ):
                return trial
        return None

    def undone(self, key: str, current: Value, value: Value) -> Trial | None:
        """The kept trial that moved `key` from `value` to `current`, if going to `value` would undo it."""
        for trial in reversed(self.trials):
            if trial.status == "keep" and any(
                m.key == key and normalise(m.new) == normalise(current) and normalise(m.old) == normalise(value)
                for m in trial.moves
            ):
                return trial
        return None

    def near_misses(self) -> list[tuple[Move, Trial]]:
        """Single moves under the current incumbent that improved the metric but were not kept (below the
        minimum improvement or within the noise): candidates to combine with another good move."""
        return [(t.moves[0], t) for t in self.trials if t.epoch == self.epoch and len(t.moves) == 1
                and t.status in ("discard", "aborted") and (t.gain or 0.0) > 0]

    def directives(self) -> list[Directive]:
        """The rules from notes that the latest offline proposal carried forward (they survive a restart)."""
        for meta in reversed(self.metas):
            if isinstance(meta.get("directives"), list):
                return [Directive(d["key"], d["rule"], d.get("note", "")) for d in meta["directives"]
                        if isinstance(d, Mapping) and "key" in d and "rule" in d]
        return []


def _applied(state: Mapping[str, Value], moves: Sequence[Move]) -> dict[str, Value]:
    return {**state, **{m.key: normalise(m.new) for m in moves if m.key in state}}


def _moves_from_meta(meta: Mapping[str, Any]) -> tuple[Move, ...]:
    moves = meta.get("moves") if meta.get("agent") == "offline" else None
    if not isinstance(moves, list):
        return ()
    try:
        return tuple(Move(m["key"], m["name"], m["path"], m["kind"], m["old"], m["new"], int(m["direction"]),
                          m.get("step", "")) for m in moves)
    except (KeyError, TypeError, ValueError):
        return ()


def _moves_from_diff(diff: str, by_key: Mapping[str, Knob], by_name: Mapping[tuple[str, str], Knob]
                     ) -> tuple[Move, ...]:
    moves = []
    for path, name, old, new in constant_changes(diff):
        knob = by_name.get((path, name)) or by_key.get(name)
        constant = name.split("[")[0]
        kind = knob.kind if knob else classify(constant, old)
        if kind is None or isinstance(old, str) != isinstance(new, str):
            continue
        key = knob.key if knob else name
        moves.append(Move(key, name, path, kind, old, new, direction_of(old, new)))
    return tuple(moves)


# --- notes -------------------------------------------------------------------------------------------------------

_FAMILIES = {
    r"learning rates?|\blrs?\b": "lr", r"\bdepth\b|\blayers?\b": "depth", r"\bbatch": "batch",
    r"weight decay": "wd", r"\bbetas?\b|momentum": "beta", r"\bwidth\b|\bwider\b|\bnarrower\b": "width",
    r"\bheads?\b": "heads", r"soft-?cap": "softcap", r"\bwindow": "window",
}
_NAMED_FAMILIES = {r"\bwarmup\b": "WARMUP", r"\bwarmdown\b": "WARMDOWN"}
_NEGATION = re.compile(r"\b(?:don'?t|do not|never|no more|stop|avoid|not)\b", re.IGNORECASE)
_FREEZE = re.compile(r"\b(?:leave|freeze|frozen|fixed|alone|untouched|hands off)\b", re.IGNORECASE)
_ALLOW = re.compile(r"\b(?:allow|unfreeze|may touch|can touch|feel free|ok to touch)\b", re.IGNORECASE)
_UP = re.compile(r"\b(?:higher|increase|increasing|raise|raising|larger|bigger|more|up|grow|deeper|wider|"
                 r"longer|above)\b", re.IGNORECASE)
_DOWN = re.compile(r"\b(?:lower|lowering|decrease|decreasing|reduce|reducing|smaller|less|down|shrink|fewer|"
                   r"shallower|narrower|shorter|below)\b", re.IGNORECASE)


def parse_note(text: str, knobs: Sequence[Knob]) -> list[Directive]:
    """Rules a note sets for the knobs it names (see the module docstring for the keywords)."""
    directives = []
    for clause in re.split(r"[.;,!?\n]+|\b(?:and|but|then)\b", text, flags=re.IGNORECASE):
        targets = _named_knobs(clause, knobs)
        if not targets:
            continue
        rule = _rule(clause)
        directives.extend(Directive(k.key, rule, text.strip()) for k in targets)
    return directives


def _named_knobs(clause: str, knobs: Sequence[Knob]) -> list[Knob]:
    named = [k for k in knobs if re.search(rf"(?<![A-Za-z0-9_]){re.escape(k.constant)}(?![A-Za-z0-9_])",
                                           clause, re.IGNORECASE)]
    if named:
        return named
    kinds = {kind for pattern, kind in _FAMILIES.items() if re.search(pattern, clause, re.IGNORECASE)}
    words = {word for pattern, word in _NAMED_FAMILIES.items() if re.search(pattern, clause, re.IGNORECASE)}
    return [k for k in knobs if k.kind in kinds or any(w in k.constant.split("_") for w in words)]


def _rule(clause: str) -> str:
    if _ALLOW.search(clause):
        return "allow"
    negated = _NEGATION.search(clause)
    rest = _NEGATION.sub(" ", clause)
    up, down = bool(_UP.search(rest)), bool(_DOWN.search(rest))
    if negated and up != down:
        return "forbid_up" if up else "forbid_down"
    if negated or _FREEZE.search(clause):
        return "avoid"
    if up != down:
        return "prefer_up" if up else "prefer_down"
    return "prefer"


def merge_directives(earlier: Sequence[Directive], later: Sequence[Directive]) -> list[Directive]:
    """Later rules replace earlier ones for the same knob; "allow" just lifts them."""
    merged = {d.key: d for d in earlier}
    for directive in later:
        merged[directive.key] = directive
    return [d for d in merged.values() if d.rule != "allow"]
