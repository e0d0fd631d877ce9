"""The offline agent's search step: every next move around the incumbent, scored, with the reasons that scored it.

A candidate is one knob one step up or down (plus the other batch knob when batch arithmetic requires it), or two
moves that each showed a gain, combined. A move scores higher for a knob family that usually matters (learning
rates first), for a direction that helped lately, for the reverse of one that hurt, for a knob not explored yet,
and when a person's note asks for it; lower for a bolder or finer step than the usual one, and for a value that
did not pay off under an earlier incumbent. Configurations already evaluated, values past a crash, knobs that
failed twice, and knobs a note put off limits are never candidates. A small seeded jitter breaks ties. When every
single move repeats an idea already tried, `diagonals` offers two knobs moved at once.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loopdeck.engine.agents.offline.constants import Knob, Value
from loopdeck.engine.agents.offline.memory import Memory, Move, Trial, direction_of, normalise
from loopdeck.engine.agents.offline.steps import KIND_LABELS, LEVELS, batch_partner, neighbour

# How much each knob family tends to matter for a short fixed-budget run: the order of first exploration.
PRIORS = {
    "lr": 1.0, "batch": 0.8, "depth": 0.8, "fraction": 0.6, "width": 0.5, "wd": 0.5, "window": 0.4, "beta": 0.3,
    "softcap": 0.3, "heads": 0.3, "scalar": 0.2, "count": 0.1,
}
MAX_FAILURES = 2  # a knob whose moves failed this often is left alone
_LEVEL_COST = 0.35  # each step away from the usual step size
_EVIDENCE = 1.5  # weight of how this move's direction went, in noise units: momentum beats exploring a new knob
_REVERSAL = 1.0  # weight of how the opposite direction went, as (inverted) evidence for this one
_UNEXPLORED = 0.6
_NEW_DIRECTION = 0.2
_REVISIT = 0.4
_UNDO = 1.0  # going back to the value a kept change moved away from
_PAIR_BONUS = 0.3
_NEAR_MISS = 0.4
_NOTE_BONUS = 5.0
_JITTER = 0.3
_HELPFUL = 0.3  # evidence above which a direction counts as having helped


@dataclass
class Candidate:
    moves: tuple[Move, ...]
    score: float
    reasons: list[str] = field(default_factory=list)


@dataclass
class Search:
    knobs: Sequence[Knob]
    memory: Memory
    rules: Mapping[str, str]  # knob key -> rule from people's notes (see offline_memory)
    sequence: int | None  # the harness's sequence length, for batch arithmetic; None when unknown
    rng: random.Random

    def best(self) -> Candidate | None:
        candidates = self.candidates()
        return candidates[0] if candidates else None

    def candidates(self) -> list[Candidate]:
        """Every candidate, best first."""
        singles = [c for knob in self.knobs for c in self._singles(knob)]
        return sorted(singles + self._pairs(singles), key=lambda c: c.score, reverse=True)

    # --- single moves ---------------------------------------------------------------------------------------------

    def _singles(self, knob: Knob) -> list[Candidate]:
        """The best step of `knob` in each direction it may move: every step size on the ladder that is valid,
        short of any crash and not evaluated yet is scored, and the best one is the candidate."""
        rule = self.rules.get(knob.key, "")
        if rule == "avoid" or len(self.memory.failures(knob.key)) >= MAX_FAILURES:
            return []
        found = []
        for direction in (1, -1):
            if rule == ("forbid_up" if direction > 0 else "forbid_down"):
                continue
            ladder = self._ladder(knob, direction)
            options = [(self._score(knob, moves[0], level), moves, level) for level, moves, why in ladder if not why]
            if not options:
                continue
            (score, reasons), moves, level = max(options, key=lambda option: option[0][0])
            reasons.extend(self._passed_over(knob, ladder, level, moves[0].step))
            if len(moves) > 1:
                partner = moves[1]
                reasons.append(f"{partner.name} moves with it ({partner.old} -> {partner.new}) so the total batch "
                               "stays a whole number of micro-batches.")
            found.append(Candidate(moves, score + self.rng.uniform(0.0, _JITTER), reasons))
        return found

    def _passed_over(self, knob: Knob, ladder: list[tuple[int, tuple[Move, ...], str]], level: int,
                     step: str) -> list[str]:
        """Why the usual step size was not the one: 'For X, x1.5 is already tried from this incumbent, so
        narrowing to x1.25.' (nothing when the usual step is the one)."""
        passed: dict[str, list[str]] = {}
        for lower, moves, why in ladder:
            if lower < level and why != "is past a crash":  # the crash has its own sentence
                passed.setdefault(why or self._drawback(knob, moves[0]), []).append(moves[0].step)
        if not passed:
            return []
        said = "; ".join(f"{' and '.join(steps)} {_plural(why) if len(steps) > 1 else why}"
                         for why, steps in passed.items())
        return [f"For {knob.name}, {said}, so {'narrowing' if level in (1, 3) else 'widening'} to {step}."]

    def _drawback(self, knob: Knob, move: Move) -> str:
        undone = self.memory.undone(knob.key, knob.value, move.new)
        if undone is not None:
            return f"would undo the kept #{undone.id}"
        earlier = self.memory.tried_elsewhere(knob.key, move.new)
        return "was tried under an earlier incumbent" if earlier is not None else "looks less promising"

    def _ladder(self, knob: Knob, direction: int) -> list[tuple[int, tuple[Move, ...], str]]:
        """(level, moves, why not) for every valid step size of `knob` in `direction`; `why not` is "" for an
        open step."""
        limit = self.memory.crash_limit(knob.key, direction)
        ladder = []
        for level in range(LEVELS):
            step = neighbour(knob, direction, level)
            if step is None:
                continue
            value, label = step
            partners = batch_partner(knob, value, self.knobs, self.sequence)
            if partners is None:
                continue
            moves = (_move(knob, value, label), *(_move(k, v, label) for k, v in partners))
            why = ""
            if limit is not None and _reaches(value, limit[0], direction):
                why = "is past a crash"
            elif self.memory.is_evaluated(moves):
                why = "is already tried from this incumbent"
            ladder.append((level, moves, why))
        return ladder

    def _score(self, knob: Knob, move: Move, level: int) -> tuple[float, list[str]]:
        memory, direction, rule = self.memory, move.direction, self.rules.get(knob.key, "")
        reasons: list[str] = []
        score = PRIORS.get(knob.kind, 0.1) - _LEVEL_COST * level
        # The other direction's fate is evidence about this one: it hurt → promising; it helped → a step back.
        score += _EVIDENCE * memory.evidence(knob.key, direction)
        score -= _REVERSAL * memory.evidence(knob.key, -direction, failures=False)
        if rule in ("prefer_up", "prefer_down") and (direction > 0) == (rule == "prefer_up"):
            score += _NOTE_BONUS
            reasons.append(f"Following the note: {'higher' if direction > 0 else 'lower'} {knob.name}.")
        elif rule == "prefer":
            score += _NOTE_BONUS * 0.6
            reasons.append(f"The note asked to try {knob.name}.")
        same, opposite = memory.last(knob.key, direction), memory.last(knob.key, -direction)
        if same is not None and not same.failed and (same.gain or 0.0) > 0:
            reasons.append(f"{_label(same, knob.key)} helped last time ({same.outcome()}), pushing further.")
        elif opposite is not None and opposite.failed:
            reasons.append(f"{_label(opposite, knob.key)} {opposite.outcome()}, backing off the other way.")
        elif opposite is not None and (opposite.gain or 0.0) <= 0:
            effect = "hurt" if (opposite.gain or 0.0) < 0 or opposite.gain is None else "made no difference"
            reasons.append(f"{_label(opposite, knob.key)} {effect} ({opposite.outcome()}), trying the other "
                           "direction.")
        elif same is not None:
            since = ("" if same.epoch == memory.epoch else
                     "; the incumbent has changed since, so trying that direction again")
            reasons.append(f"{_label(same, knob.key)} did not help last time ({same.outcome()}){since}.")
        elif not memory.trials_of(knob.key):
            score += _UNEXPLORED
            reasons.append(f"{knob.name} ({KIND_LABELS.get(knob.kind, knob.kind)}) has not been tried yet.")
        if same is None:
            score += _NEW_DIRECTION
        limit = memory.crash_limit(knob.key, direction)
        if limit is not None:
            reasons.append(f"Staying short of {knob.name} = {limit[0]}, which {limit[1].outcome()}.")
        undone = memory.undone(knob.key, knob.value, move.new)
        earlier = memory.tried_elsewhere(knob.key, move.new)
        if undone is not None:
            score -= _UNDO
            reasons.append(f"This undoes the kept #{undone.id} ({_label(undone, knob.key)}, {undone.outcome()}); "
                           "worth a look only because the rest has changed since.")
        elif earlier is not None and (earlier.gain or 0.0) <= 0:
            score -= _REVISIT + _REVERSAL * max(0.0, -(memory.normalised(earlier) or 0.0))
            reasons.append(f"{knob.name} = {move.new} was tried under an earlier incumbent "
                           f"({earlier.outcome()}); the rest has changed since.")
        return score, reasons

    def diagonals(self, limit: int = 10) -> list[Candidate]:
        """Two knobs moved at once, from the best `limit` single moves, best first: once every single move has
        been tried against the incumbent, a valley that runs across two knobs (a learning rate that must fall as
        the depth rises) is reached only this way."""
        singles = [c for knob in self.knobs for c in self._singles(knob) if len(c.moves) == 1]
        singles.sort(key=lambda c: c.score, reverse=True)
        found = []
        for first, second in itertools.combinations(singles[:limit], 2):
            moves = first.moves + second.moves
            if first.moves[0].key == second.moves[0].key or self.memory.is_evaluated(moves):
                continue
            names = " and ".join(m.label for m in moves)
            found.append(Candidate(moves, (first.score + second.score) / 2, [*first.reasons, *second.reasons,
                                   f"Every single move has been tried from this incumbent; moving {names} together."]))
        return sorted(found, key=lambda c: c.score, reverse=True)

    # --- combinations ---------------------------------------------------------------------------------------------

    def _pairs(self, singles: Sequence[Candidate]) -> list[Candidate]:
        """Two moves that each showed a gain, proposed together: next steps in directions that helped, and single
        moves from this incumbent that improved without being kept."""
        helpful = [c for c in singles if len(c.moves) == 1
                   and self.memory.evidence(c.moves[0].key, c.moves[0].direction) > _HELPFUL]
        by_key = {k.key: k for k in self.knobs}
        for move, trial in self.memory.near_misses():
            knob = by_key.get(move.key)
            if knob is None or self.rules.get(move.key) == "avoid" or normalise(knob.value) != normalise(move.old):
                continue
            score, _ = self._score(knob, move, 0)
            reason = f"{move.name} {move.old} -> {move.new} alone improved ({trial.outcome()}) but was not kept."
            helpful.append(Candidate((move,), score + _NEAR_MISS, [reason]))
        helpful.sort(key=lambda c: c.score, reverse=True)
        pairs = []
        for first, second in itertools.combinations(helpful[:4], 2):
            if first.moves[0].key == second.moves[0].key:
                continue
            moves = first.moves + second.moves
            if self.memory.is_evaluated(moves):
                continue
            names = " and ".join(m.label for m in moves)
            reasons = [*first.reasons, *second.reasons, f"Each helped on its own; combining {names}."]
            pairs.append(Candidate(moves, (first.score + second.score) / 2 + _PAIR_BONUS, reasons))
        return pairs


def _move(knob: Knob, value: Value, step: str) -> Move:
    return Move(knob.key, knob.name, knob.path, knob.kind, knob.value, value, direction_of(knob.value, value), step)


def _reaches(value: Value, limit: Value, direction: int) -> bool:
    """True when `value` is at or past `limit` going in `direction`."""
    if isinstance(value, str) or isinstance(limit, str):
        return value == limit or direction_of(limit, value) == direction
    return (value >= limit) if direction > 0 else (value <= limit)


def _plural(phrase: str) -> str:
    verb, _, rest = phrase.partition(" ")
    return f"{ {'is': 'are', 'was': 'were', 'looks': 'look'}.get(verb, verb)} {rest}"


def _label(trial: Trial, key: str) -> str:
    return next(m for m in trial.moves if m.key == key).label
