"""How the offline agent acts on the planner's mode: the search's candidate that fits the turn, repeats skipped.

explore: the best candidate that moves no code the way one of the last few experiments did (the other way is a
new direction); exploit: the best one that moves a constant the incumbent's kept change moved, the same way; no
mode (the planner off): the best candidate. In every mode a candidate that repeats an idea already tried against
the incumbent (engine/agents/regions.py) is skipped while another is left; when none is, the wider candidates
(two knobs at once) are the pool.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from loopdeck.engine.agents.base import AgentTurn
from loopdeck.engine.agents.offline.search import Candidate
from loopdeck.engine.agents.regions import Touch, repeat_of, touched

RECENT = 4  # explore avoids the directions this many latest experiments took


def pick(turn: AgentTurn, ranked: Sequence[Candidate], files_of: Callable[[Candidate], Mapping[str, str]],
         wider: Callable[[], Sequence[Candidate]] = tuple) -> tuple[Candidate, list[str]] | None:
    """The candidate for this turn's mode, and the sentences that say why; None when there is none. `wider` gives
    the candidates to fall back on when every ranked one is a repeat."""
    incumbent = turn.incumbent.id if turn.incumbent is not None else None
    touches = {id(c): touched(turn.files, {**turn.files, **files_of(c)}) for c in ranked}
    fresh = [c for c in ranked if repeat_of(touches[id(c)], turn.history, incumbent) is None]
    skipped = len(ranked) - len(fresh)
    if not fresh:
        more = wider()
        touches.update({id(c): touched(turn.files, {**turn.files, **files_of(c)}) for c in more})
        fresh = [c for c in more if repeat_of(touches[id(c)], turn.history, incumbent) is None]
    pool = fresh or list(ranked)
    if not pool:
        return None
    reasons = [f"Skipping {skipped} candidate{'s' if skipped != 1 else ''} that would repeat an idea already "
               "tried against this incumbent."] if skipped and fresh else []
    wanted: Callable[[Touch], bool] | None = None
    if turn.mode == "exploit" and turn.incumbent is not None and turn.incumbent.signs:
        gained = dict(turn.incumbent.signs)
        wanted = lambda touch: any(sign in (1, -1) and gained.get(name) == sign  # noqa: E731
                                   for name, sign in touch.signs.items())
        what = f"pushing what #{turn.incumbent.id} changed further the same way"
    elif turn.mode == "explore":
        recent = {(name, s.signs.get(name)) for s in [s for s in turn.history if not s.baseline][-RECENT:]
                  for name in s.region}
        wanted = lambda touch: not {(name, touch.signs.get(name)) for name in touch.region} & recent  # noqa: E731
        what = f"a direction none of the last {RECENT} experiments took"
    if wanted is None:
        return pool[0], reasons
    fitting = [c for c in pool if wanted(touches[id(c)])]
    if fitting:
        return fitting[0], [*reasons, f"Mode {turn.mode}: {what}."]
    return pool[0], [*reasons, f"Mode {turn.mode}: nothing fits ({what}), so the best candidate overall."]
