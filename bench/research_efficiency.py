"""Research efficiency on the embedded default: what the offline agent reaches in N experiments, planner vs greedy.

A fresh workspace from `loopdeck init` (the real gpt template, the embedded corpus), the offline agent with seed
0, no approval gate, N experiments of a fixed budget, once with the research planner (the default) and once as the
plain greedy loop (`[research] planner = false`): the baseline val_bpb, the best val_bpb after N, the number of
the first experiment that beat the baseline, and how many were kept. Full: 30 s budget, N = 30 (about an hour on 2
CPU cores); --quick: 5 s, N = 3 (both sessions, about 8 minutes on 2 loaded cores). The same sessions from the
command line:

    loopdeck init /tmp/ws --budget 30 --agent offline
    loopdeck run /tmp/ws --headless --autonomous --max-experiments 30
    (greedy: set `planner = false` under [research] in /tmp/ws/loopdeck.toml and commit it first)

Run: python -m bench research_efficiency [--quick]
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Figure, load, standalone
from loopdeck.engine.events import Event, ExperimentFinished, SessionFinished
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.workspace import init_workspace


def research(budget: float, experiments: int, planner: bool = True
             ) -> tuple[SessionFinished, list[ExperimentFinished], float]:
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
    return finished, [e for e in events if isinstance(e, ExperimentFinished)], wall


def run(quick: bool) -> list[Figure]:
    budget, experiments = (5.0, 3) if quick else (30.0, 30)
    figures = []
    for planner in (True, False):
        finished, outcomes, wall = research(budget, experiments, planner)
        now = load()
        label = "planner" if planner else "greedy"
        baseline = finished.baseline_metric
        kept = [f"#{e.experiment} {e.description}" for e in outcomes if e.experiment > 0 and e.status == "keep"]
        first_beat = next((e.experiment for e in outcomes if e.experiment > 0 and e.status == "keep"), None)
        command = (f"loopdeck init /tmp/ws --budget {budget:g} --agent offline && "
                   f"loopdeck run /tmp/ws --headless --autonomous --max-experiments {experiments}")
        setting = (f"budget {budget:g} s, {experiments} experiments, offline agent seed 0, {label}; session "
                   f"{wall / 60:.1f} min")
        figures += [
            Figure("research", f"{label}: baseline val_bpb", f"{baseline:.4f}" if baseline is not None else "n/a",
                   load=now, note=setting),
            Figure("research", f"{label}: best val_bpb after {experiments}",
                   f"{finished.best_metric:.4f}" if finished.best_metric is not None else "n/a", load=now,
                   note=f"{finished.kept} kept ({'; '.join(kept) or 'none'}); ended: {finished.reason}"),
            Figure("research", f"{label}: experiments to first beat the baseline", str(first_beat or "not within N"),
                   load=now, note=f"reproduce: {command}"),
        ]
    return figures


if __name__ == "__main__":
    standalone(run)
