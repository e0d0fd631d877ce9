"""A budget that load cannot move: σ of val_bpb over seeds, alone and beside a CPU hog, for each budget clock.

The real GPT template trains on CPU for a fixed budget, once per seed, with LOOPDECK_BUDGET_CLOCK = wall and =
process, on a quiet machine and next to a hog: two busy-loop processes (one per core of a 2-core machine, not
niced by default: the harsher case; `--nice 19` gives the niced neighbour of issue 16). The figure that matters is
σ(hog) / σ(quiet) per clock (target: the process clock within 1.5×), with the steps each run took: under the
process clock the steps should not fall when the hog runs. Full: 60 s budget, 5 seeds (about 40 minutes);
--quick: 4 s, 3 seeds (a few minutes; too short for σ to mean much, it checks the benchmark works).

Run: python -m bench load_clock [--quick]   ·   python -m bench.load_clock [--quick] [--nice N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import Figure, load, standalone
from bench.train_throughput import measure
from loopdeck.engine.run.environment import budget_clock_env
from loopdeck.gpt import TRAIN_TEMPLATE

TARGET_RATIO = 1.5
CLOCKS = ("wall", "process")
_BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def cpu_hog(processes: int = 2, nice: int = 0) -> Iterator[None]:
    """`processes` busy loops (niced by `nice`) for as long as the block runs; each is killed by its own id."""
    hogs = [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP],
                             preexec_fn=(lambda: os.nice(nice)) if nice else None)  # noqa: PLW1509
            for _ in range(processes)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def seeded_runs(clock: str, budget: float, seeds: int, eval_tokens: int) -> list[dict[str, float]]:
    """One CPU training run per seed on `clock`: each run's summary (val_bpb, num_steps, training_seconds, …)."""
    source = TRAIN_TEMPLATE.read_text(encoding="utf-8")
    env = {**budget_clock_env(clock), "LOOPDECK_EVAL_TOKENS": str(eval_tokens)}  # as loopdeck runs it
    return [measure(source, budget, "cpu", env={**env, "LOOPDECK_SEED": str(seed)})[2] for seed in range(seeds)]


def spread(runs: list[dict[str, float]]) -> tuple[float, float, float]:
    """(σ of val_bpb, mean val_bpb, mean steps) of a set of runs."""
    scores = [run["val_bpb"] for run in runs]
    return statistics.stdev(scores), statistics.fmean(scores), statistics.fmean(run["num_steps"] for run in runs)


def run(quick: bool, nice: int = 0) -> list[Figure]:
    budget, seeds, eval_tokens = (4.0, 3, 16384) if quick else (60.0, 5, 131072)
    setting = f"{budget:g} s budget, {seeds} seeds, CPU, hog = 2 busy loops (nice {nice})"
    figures = []
    for clock in CLOCKS:
        quiet_load = load()
        quiet = spread(seeded_runs(clock, budget, seeds, eval_tokens))
        with cpu_hog(nice=nice):
            hog = spread(seeded_runs(clock, budget, seeds, eval_tokens))
        ratio = hog[0] / quiet[0] if quiet[0] > 0 else float("inf")
        target = f"<= {TARGET_RATIO:g}×" if clock == "process" else ""
        figures += [
            Figure("load_clock", f"{clock} clock σ(hog)/σ(quiet)", f"{ratio:.2f}×", target, load(), setting),
            Figure("load_clock", f"{clock} clock quiet", f"σ {quiet[0]:.4f}", load=quiet_load,
                   note=f"val_bpb {quiet[1]:.4f}, {quiet[2]:.0f} steps"),
            Figure("load_clock", f"{clock} clock beside hog", f"σ {hog[0]:.4f}", load=load(),
                   note=f"val_bpb {hog[1]:.4f}, {hog[2]:.0f} steps"),
        ]
    return figures


if __name__ == "__main__":
    niceness = int(sys.argv[sys.argv.index("--nice") + 1]) if "--nice" in sys.argv else 0
    standalone(lambda quick: run(quick, niceness))
