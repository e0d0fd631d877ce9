"""Search strategies on a synthetic objective: the offline agent's rules vs TPE, each with the planner and greedy.

The target (bench/common.py `SYNTHETIC_TARGET`) sleeps for its budget and prints a val_bpb that is a known
function of four of its constants, with an interaction (the best learning rate depends on the depth), a constant
that does nothing, and seeded noise (σ 0.002); its minimum is 1.0. Each strategy runs the real loop (offline
agent, autonomous, the noise measured from 3 baseline seeds) for N experiments per agent seed; the figures are the
best val_bpb after N (mean over seeds) and the experiments it took to reach the optimum region (val_bpb within
0.02 of the minimum; "—" when a seed never did). Full: N = 60, seeds 0-4, 0.1 s runs (about 10 minutes on 2
cores); --quick: N = 30, seeds 0-1, 0.05 s runs (two or three minutes).

Run: python -m bench search_strategies [--quick]
"""

from __future__ import annotations

import statistics
import time

from bench.common import SYNTHETIC_OPTIMUM, Figure, load, scratch_workspace, standalone, synthetic_target
from loopdeck.engine.events import Event, ExperimentFinished
from loopdeck.engine.session import RunOptions, Session

REGION = 0.02  # the optimum region: within this of the minimum
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


def session(budget: float, experiments: int, search: str, planner: bool, seed: int
            ) -> tuple[float | None, int | None]:
    """(best val_bpb after the experiments, the first experiment inside the optimum region)."""
    events: list[Event] = []
    files = {"train.py": synthetic_target(), "loopdeck.toml": strategy_toml(budget, search, planner, seed)}
    with scratch_workspace(files) as workspace:
        finished = Session(workspace, RunOptions(max_experiments=experiments), on_event=events.append).run()
    outcomes = [e for e in events if isinstance(e, ExperimentFinished) and e.experiment > 0]
    reached = next((e.experiment for e in outcomes
                    if e.metric is not None and e.metric <= SYNTHETIC_OPTIMUM + REGION), None)
    return finished.best_metric, reached


def run(quick: bool) -> list[Figure]:
    budget, experiments, seeds = (0.05, 30, (0, 1)) if quick else (0.1, 60, (0, 1, 2, 3, 4))
    figures = []
    for search, planner in STRATEGIES:
        began = time.monotonic()
        results = [session(budget, experiments, search, planner, seed) for seed in seeds]
        bests = [best for best, _ in results if best is not None]
        reached = [str(at) if at is not None else "—" for _, at in results]
        name = f"{search} + {'planner' if planner else 'greedy'}"
        now = load()
        figures.append(Figure("search", f"{name}: best val_bpb after {experiments}",
                              f"{statistics.mean(bests):.4f}" if bests else "n/a", load=now,
                              note=f"seeds {', '.join(map(str, seeds))}: "
                              f"{', '.join(f'{b:.4f}' for b in bests)}; {time.monotonic() - began:.0f} s"))
        figures.append(Figure("search", f"{name}: experiments to the optimum region", " / ".join(reached),
                              load=now, note=f"val_bpb <= {SYNTHETIC_OPTIMUM + REGION:g}, per seed"))
    return figures


if __name__ == "__main__":
    standalone(run)
