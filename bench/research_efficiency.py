"""Research efficiency on the embedded default: what the offline agent gains in N experiments, planner vs greedy.

A fresh workspace from `loopdeck init` (the real gpt template, the embedded corpus), the offline agent with seed
0, no approval gate, N experiments of a fixed budget, once with the research planner (the default) and once as the
plain greedy loop (`[research] planner = false`). The two sessions run at the same time, each pinned to its own
core, so that both see the same machine: on a shared machine two sessions run one after the other measured the
same baseline 0.05 val_bpb apart, more than any gain they found. Each session's gain is measured against its own
baseline (the mean of its 3 seeded runs), and set beside its own noise σ. Figures: each session's baseline, best
val_bpb after N, gain over its baseline, the first experiment that beat the baseline, and how many were kept.
Full: 30 s budget, N = 30 (32 minutes on 2 CPU cores); --quick: 5 s, N = 3. One session from the command line:

    loopdeck init /tmp/ws --budget 30 --agent offline
    loopdeck run /tmp/ws --headless --autonomous --max-experiments 30
    (greedy: set `planner = false` under [research] in /tmp/ws/loopdeck.toml and commit it first)

Run: python -m bench research_efficiency [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.common import Figure, load, standalone
from loopdeck.engine.events import Event, ExperimentFinished
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.ledger import Ledger
from loopdeck.engine.store.workspace import STATE_DIR, init_workspace


def research(budget: float, experiments: int, planner: bool, core: int | None) -> dict:
    """One session, on `core` alone when given: its baseline, best, noise σ, keeps and wall time."""
    if core is not None:
        os.sched_setaffinity(0, {core})  # the runs it starts inherit the core, and train.py sizes its threads by it
    events: list[Event] = []
    with tempfile.TemporaryDirectory(prefix="loopdeck-bench-") as folder:
        workspace = init_workspace(Path(folder) / "ws", budget=budget, agent="offline", approval="auto")
        if not planner:
            toml = workspace / "loopdeck.toml"
            toml.write_text(toml.read_text().replace("\nplanner = true", "\nplanner = false", 1))
            subprocess.run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
                            "greedy"], cwd=workspace, check=True, capture_output=True)
        began = time.monotonic()
        finished = Session(workspace, RunOptions(max_experiments=experiments), on_event=events.append).run()
        wall = time.monotonic() - began
        baseline = next((row for row in Ledger(workspace / STATE_DIR, create=False).rows() if row.is_baseline), None)
    outcomes = [e for e in events if isinstance(e, ExperimentFinished) and e.experiment > 0]
    return {"core": core, "baseline": finished.baseline_metric, "best": finished.best_metric, "reason": finished.reason,
            "noise": baseline.noise_std if baseline is not None else None, "wall": wall, "load": load(),
            "kept": [f"#{e.experiment} {e.description}" for e in outcomes if e.status == "keep"],
            "first_beat": next((e.experiment for e in outcomes if e.status == "keep"), None)}


def run(quick: bool) -> list[Figure]:
    budget, experiments = (5.0, 3) if quick else (30.0, 30)
    cores = sorted(os.sched_getaffinity(0))
    pinned = len(cores) >= 2
    with ProcessPoolExecutor(2 if pinned else 1, mp_context=multiprocessing.get_context("spawn")) as pool:
        sessions = {planner: pool.submit(research, budget, experiments, planner, cores[index] if pinned else None)
                    for index, planner in enumerate((True, False))}
        results = {planner: future.result() for planner, future in sessions.items()}
    command = (f"loopdeck init /tmp/ws --budget {budget:g} --agent offline && "
               f"loopdeck run /tmp/ws --headless --autonomous --max-experiments {experiments}")
    figures = []
    for planner, result in results.items():
        label, now = ("planner" if planner else "greedy"), result["load"]
        baseline, best, noise = result["baseline"], result["best"], result["noise"]
        where = f"core {result['core']} of {len(cores)}" if result["core"] is not None else "one after the other"
        setting = (f"budget {budget:g} s, {experiments} experiments, offline agent seed 0, {label}, {where}; "
                   f"session {result['wall'] / 60:.1f} min")
        gain = baseline - best if baseline is not None and best is not None else None
        figures += [
            Figure("research", f"{label}: baseline val_bpb (mean of its seeds)",
                   f"{baseline:.4f}" if baseline is not None else "n/a", load=now,
                   note=f"{setting}; noise σ {noise:.4f}" if noise is not None else setting),
            Figure("research", f"{label}: best val_bpb after {experiments}",
                   f"{best:.4f}" if best is not None else "n/a", load=now,
                   note=f"{len(result['kept'])} kept ({'; '.join(result['kept']) or 'none'}); "
                   f"ended: {result['reason']}"),
            Figure("research", f"{label}: gain over its own baseline", f"{gain:.4f}" if gain is not None else "n/a",
                   load=now, note=f"{gain / noise:.1f} σ" if gain is not None and noise else ""),
            Figure("research", f"{label}: experiments to first beat the baseline",
                   str(result["first_beat"] or "not within N"), load=now, note=f"reproduce: {command}"),
        ]
    return figures


if __name__ == "__main__":
    standalone(run)
