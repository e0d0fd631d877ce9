"""Research efficiency on the embedded default: what the built-in offline agent reaches in N experiments.

A fresh workspace from `loopdeck init` (the real gpt template, the embedded corpus), the offline agent with seed
0, no approval gate, N experiments of a fixed budget: the baseline val_bpb, the best val_bpb after N, the number of
the first experiment that beat the baseline, and how many were kept. Full: 60 s budget, N = 10 (about 15 minutes
on 2 CPU cores); --quick: 10 s, N = 4. The same session from the command line:

    loopdeck init /tmp/ws --budget 60 --agent offline
    loopdeck run /tmp/ws --headless --autonomous --max-experiments 10

Run: python -m bench research_efficiency [--quick]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import Figure, load, standalone
from loopdeck.engine.events import Event, ExperimentFinished, SessionFinished
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.workspace import init_workspace


def research(budget: float, experiments: int) -> tuple[SessionFinished, list[ExperimentFinished], float]:
    events: list[Event] = []
    with tempfile.TemporaryDirectory(prefix="loopdeck-bench-") as folder:
        workspace = init_workspace(Path(folder) / "ws", budget=budget, agent="offline", approval="auto")
        began = time.monotonic()
        finished = Session(workspace, RunOptions(max_experiments=experiments), on_event=events.append).run()
        wall = time.monotonic() - began
    return finished, [e for e in events if isinstance(e, ExperimentFinished)], wall


def run(quick: bool) -> list[Figure]:
    budget, experiments = (10.0, 4) if quick else (60.0, 10)
    finished, outcomes, wall = research(budget, experiments)
    now = load()
    baseline = finished.baseline_metric
    kept = [f"#{e.experiment} {e.description}" for e in outcomes if e.experiment > 0 and e.status == "keep"]
    first_beat = next((e.experiment for e in outcomes if e.experiment > 0 and e.status == "keep"), None)
    command = (f"loopdeck init /tmp/ws --budget {budget:g} --agent offline && "
               f"loopdeck run /tmp/ws --headless --autonomous --max-experiments {experiments}")
    setting = f"budget {budget:g} s, {experiments} experiments, offline agent seed 0; session {wall / 60:.1f} min"
    return [
        Figure("research", "baseline val_bpb", f"{baseline:.4f}" if baseline is not None else "n/a", load=now,
               note=setting),
        Figure("research", f"best val_bpb after {experiments}",
               f"{finished.best_metric:.4f}" if finished.best_metric is not None else "n/a", load=now,
               note=f"{finished.kept} kept ({'; '.join(kept) or 'none'}); ended: {finished.reason}"),
        Figure("research", "experiments to first beat the baseline", str(first_beat or "not within N"), load=now,
               note=f"reproduce: {command}"),
    ]


if __name__ == "__main__":
    standalone(run)
