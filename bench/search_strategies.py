"""Search strategies on a synthetic objective: the offline agent's rules vs TPE, each with the planner and greedy.

The target (bench/common.py `SYNTHETIC_TARGET`) sleeps for its budget and prints a val_bpb that is a known
function of four of its constants, with an interaction (the best learning rate depends on the depth: a valley
across two knobs), a constant that does nothing, and seeded noise (σ 0.002); its minimum is 1.0. A problem is a
starting point: problem 0 is `SYNTHETIC_START`, the others are drawn around it (learning rate ×2^±1, depth 3-6,
weight decay ×10^±0.5, warm-up 0-0.5), and problem n runs the agent with seed n. Each strategy runs the real loop
(offline agent, autonomous, the noise measured from 3 baseline seeds) for N experiments on every problem; the
figures are the experiments it took to reach the optimum region (val_bpb within 0.02 of the minimum; a problem
never reached counts as N + 1), the best val_bpb after N, and, for the planner, on how many problems it got there
sooner than greedy. Full: N = 60, 16 problems, 0.05 s runs (about 15 minutes on 2 cores); --quick: N = 30, 4
problems (two or three minutes).

Run: python -m bench search_strategies [--quick]
"""

from __future__ import annotations

import random
import statistics
import time

from bench.common import SYNTHETIC_OPTIMUM, Figure, load, scratch_workspace, standalone, synthetic_target
from loopdeck.engine.events import Event, ExperimentFinished
from loopdeck.engine.session import RunOptions, Session

REGION = 0.02  # the optimum region: within this of the minimum
BUDGET = 0.05  # seconds per run: the metric does not depend on it
STRATEGIES = (("rules", True), ("rules", False), ("tpe", True), ("tpe", False))


def strategy_toml(budget: float, search: str, planner: bool, seed: int) -> str:
    return f"""\
[experiment]
editable = ["train.py"]
budget_seconds = {budget}
timeout_seconds = 30

[loop]
approval = "auto"
pipeline = "off"

[agent]
kind = "offline"
seed = {seed}

[agent.offline]
search = "{search}"

[research]
planner = {str(planner).lower()}
"""


def start(problem: int) -> dict[str, float]:
    """The starting constants of a problem (problem 0: the target's own)."""
    if problem == 0:
        return {}
    rng = random.Random(f"start:{problem}")
    return {"matrix_lr": round(0.02 * 2 ** rng.uniform(-1, 1), 4), "depth": rng.choice([3, 4, 5, 6]),
            "weight_decay": round(0.1 * 10 ** rng.uniform(-0.5, 0.5), 3),
            "warmup_ratio": rng.choice([0.0, 0.1, 0.2, 0.5])}


def session(experiments: int, search: str, planner: bool, problem: int) -> tuple[float | None, int | None]:
    """(best val_bpb after the experiments, the first experiment inside the optimum region)."""
    events: list[Event] = []
    files = {"train.py": synthetic_target(**start(problem)),
             "loopdeck.toml": strategy_toml(BUDGET, search, planner, problem)}
    with scratch_workspace(files) as workspace:
        finished = Session(workspace, RunOptions(max_experiments=experiments), on_event=events.append).run()
    outcomes = [e for e in events if isinstance(e, ExperimentFinished) and e.experiment > 0]
    reached = next((e.experiment for e in outcomes
                    if e.metric is not None and e.metric <= SYNTHETIC_OPTIMUM + REGION), None)
    return finished.best_metric, reached


def run(quick: bool) -> list[Figure]:
    experiments, problems = (30, range(4)) if quick else (60, range(16))
    figures, reached_by = [], {}
    for search, planner in STRATEGIES:
        began = time.monotonic()
        results = [session(experiments, search, planner, problem) for problem in problems]
        bests = [best for best, _ in results if best is not None]
        reached = [at if at is not None else experiments + 1 for _, at in results]
        reached_by[search, planner] = reached
        name = f"{search} + {'planner' if planner else 'greedy'}"
        now = load()
        figures.append(Figure("search", f"{name}: experiments to the optimum region, mean (median)",
                              f"{statistics.mean(reached):.1f} ({statistics.median(reached):g})", load=now,
                              note=f"val_bpb <= {SYNTHETIC_OPTIMUM + REGION:g}; per problem "
                              f"{' '.join(str(at) if at <= experiments else '—' for at in reached)}"))
        figures.append(Figure("search", f"{name}: best val_bpb after {experiments}, mean",
                              f"{statistics.mean(bests):.4f}" if bests else "n/a", load=now,
                              note=f"{len(problems)} problems; {time.monotonic() - began:.0f} s"))
    for search in ("rules", "tpe"):
        pairs = list(zip(reached_by[search, True], reached_by[search, False], strict=True))
        sooner, later = sum(p < g for p, g in pairs), sum(p > g for p, g in pairs)
        figures.append(Figure("search", f"{search}: planner reaches the region sooner than greedy",
                              f"{sooner} of {len(pairs)}", load=load(),
                              note=f"later on {later}, the same experiment on {len(pairs) - sooner - later}"))
    return figures


if __name__ == "__main__":
    standalone(run)
