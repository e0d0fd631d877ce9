"""The offline agent's other search: Optuna's TPE over the same numeric knobs, one proposal per trial (ask/tell).

Stateless between turns, like the rules search: each turn rebuilds an in-memory study from the history. Every
offline proposal records its whole configuration (`meta["params"]`) and the search space it was drawn from
(`meta["space"]`, fixed at the first TPE turn around the incumbent's values then, and `meta["space_origin"]`,
that incumbent's number); each such experiment, and the origin at the space's centre, is told to the study with
its measured metric (a crash as a failed trial), and the study asks for the next configuration. Knobs enter the
space as log-uniform ranges around their value (integers: half to double; a beta by its distance from 1, so it
never reaches 1); batch sizes (tied by micro-batch arithmetic) and window patterns stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from loopdeck.engine.agents.base import AgentError, ExperimentSummary
from loopdeck.engine.agents.offline.constants import Knob, Value
from loopdeck.engine.agents.offline.memory import FAILED

INSTALL = "pip install 'loopdeck[optuna]'"
STARTUP_TRIALS = 5  # random configurations before TPE models the history (Optuna's default is 10)
_FLOAT_SPAN = 3.0  # a float knob ranges over [value / span, value * span]
_FIXED_KINDS = frozenset({"batch", "window"})


def optuna_module() -> Any:
    """Optuna, or an AgentError naming the install command (an optional extra)."""
    try:
        import optuna
    except ImportError:
        raise AgentError(f"[agent.offline] search = \"tpe\" needs Optuna: {INSTALL}", fatal=True,
                         stop_reason="error") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def space_of(knobs: Sequence[Knob], history: Sequence[ExperimentSummary], incumbent: int | None
             ) -> tuple[dict[str, list], int | None]:
    """(knob key -> [kind ("int" | "float"), low, high, centre], the experiment at the centre): the space the
    first TPE turn fixed, else one around these knobs' values (the incumbent's)."""
    for summary in history:
        recorded = summary.meta.get("space")
        if isinstance(recorded, Mapping) and recorded:
            return {key: list(bounds) for key, bounds in recorded.items()}, summary.meta.get("space_origin")
    space: dict[str, list] = {}
    for knob in knobs:
        value = knob.value
        if knob.kind in _FIXED_KINDS or isinstance(value, (str, bool)) or value <= 0:
            continue
        if isinstance(value, int):
            space[knob.key] = ["int", max(1, value // 2), max(value * 2, value + 2), value]
        elif knob.kind == "beta" and value < 1:
            low = max(value / _FLOAT_SPAN, 1 - (1 - value) * _FLOAT_SPAN)  # log-uniform needs a low above 0
            space[knob.key] = ["float", low, 1 - (1 - value) / _FLOAT_SPAN, value]
        else:
            high = min(1.0, value * _FLOAT_SPAN) if knob.kind == "fraction" else value * _FLOAT_SPAN
            if high > value / _FLOAT_SPAN:
                space[knob.key] = ["float", value / _FLOAT_SPAN, high, value]
    return space, incumbent


def ask(space: Mapping[str, list], origin: int | None, history: Sequence[ExperimentSummary], direction: str,
        seed: int, count: int = 1) -> list[dict[str, Value]]:
    """The next `count` configurations TPE asks for, best guess first, given every earlier experiment it can place
    in `space` (more than one lets the agent pass over a repeat)."""
    optuna = optuna_module()
    distributions = {key: _distribution(optuna, bounds) for key, bounds in space.items()}
    sampler = optuna.samplers.TPESampler(seed=seed + len(history), n_startup_trials=STARTUP_TRIALS,
                                         multivariate=True)
    study = optuna.create_study(direction=direction, sampler=sampler)
    for summary in history:
        params = _params(summary, space, origin)
        if params is None:
            continue
        failed = summary.status in FAILED or summary.metric is None or not math.isfinite(summary.metric)
        if summary.status not in ("keep", "discard", "aborted") and not failed:
            continue  # rejected, vetoed or interrupted: never measured
        state = optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, state=state,
                                                  value=None if failed else summary.metric))
    return [dict(study.ask(distributions).params) for _ in range(count)]


def _distribution(optuna: Any, bounds: Sequence[Any]) -> Any:
    kind, low, high = bounds[0], bounds[1], bounds[2]
    if kind == "int":
        return optuna.distributions.IntDistribution(int(low), int(high), log=True)
    return optuna.distributions.FloatDistribution(float(low), float(high), log=True)


def _params(summary: ExperimentSummary, space: Mapping[str, list], origin: int | None) -> dict[str, Value] | None:
    """The configuration an experiment ran, when it lies inside `space` (the origin: the space's centre)."""
    if summary.id == origin:
        return {key: bounds[3] for key, bounds in space.items()}
    params = summary.meta.get("params")
    if not isinstance(params, Mapping) or any(key not in params for key in space):
        return None
    values = {key: params[key] for key in space}
    inside = all(isinstance(v, (int, float)) and space[k][1] <= v <= space[k][2] for k, v in values.items())
    return values if inside else None
