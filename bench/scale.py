"""Scale-out: experiments per hour with 1 and 2 workers, and the engine's overhead per experiment, local vs Ray.

The target sleeps exactly S seconds (no CPU contention, so the ratio measures the engine, not the machine); the
agent answers at once with a change that never beats the incumbent (only a `STEP` counter moves), so every
experiment is one run and no keep is rebased. Throughput: experiments finished per hour of wall time, from the
baseline's end to the last experiment's end. Overhead per experiment: that wall time × workers / experiments − S,
the time a worker spends on anything but training (worktree, commit, spawn, judge, record; Ray: an actor each).
Target: 2 workers ≥ 1.8× the experiments per hour of 1.

Run: python -m bench scale [--quick]   (Ray rows are skipped without `pip install 'loopdeck[ray]'`)
"""

from __future__ import annotations

import importlib.util
import re

from bench.common import Figure, load, loop_toml, scratch_workspace, sleeping_target, standalone
from loopdeck.engine.agents.base import AgentTurn, Proposal
from loopdeck.engine.events import Event, ExperimentFinished
from loopdeck.engine.session import RunOptions, Session

TARGET_RATIO = 1.8


class NeutralAgent:
    """Answers at once with a change that leaves the metric as it is (discarded: one run per experiment)."""

    name = "neutral"

    def propose(self, turn: AgentTurn) -> Proposal:
        source = re.sub(r"^STEP = .*$", f"STEP = {turn.experiment}", turn.files["train.py"], count=1, flags=re.M)
        return Proposal(description=f"step {turn.experiment}", rationale="benchmark", files={"train.py": source})

    def close(self) -> None:
        """Nothing to release."""


def measure(backend: str, workers: int, seconds: float, experiments: int) -> tuple[float, float]:
    """(experiments per hour, overhead seconds per experiment) of one session."""
    events: list[Event] = []
    toml = loop_toml(seconds).replace("baseline_seeds = 3", "baseline_seeds = 1")
    with scratch_workspace({"train.py": sleeping_target(), "loopdeck.toml": toml}) as workspace:
        session = Session(workspace, RunOptions(max_experiments=experiments, workers=workers, backend=backend),
                          on_event=events.append, agent=NeutralAgent())
        session.run()
    finished = [e for e in events if isinstance(e, ExperimentFinished)]
    baseline, rest = finished[0], finished[1:]
    assert len(rest) == experiments and all(e.status == "discard" for e in rest), [e.reason for e in rest]
    elapsed = rest[-1].ts - baseline.ts
    return experiments / elapsed * 3600, elapsed * workers / experiments - seconds


def run(quick: bool) -> list[Figure]:
    seconds, experiments = (0.5, 6) if quick else (2.0, 20)
    backends = ["local"] + (["ray"] if importlib.util.find_spec("ray") else [])
    figures = []
    for backend in backends:
        one, overhead_one = measure(backend, 1, seconds, experiments)
        two, overhead_two = measure(backend, 2, seconds, experiments)
        now = load()
        note = f"{experiments} experiments on a {seconds:g} s sleeping target"
        figures += [
            Figure("scale", f"{backend}: experiments/hour, 1 worker", f"{one:,.0f}", load=now, note=note),
            Figure("scale", f"{backend}: experiments/hour, 2 workers", f"{two:,.0f}", load=now, note=note),
            Figure("scale", f"{backend}: 2 workers / 1 worker", f"{two / one:.2f}×", f"≥ {TARGET_RATIO}×", now),
            Figure("scale", f"{backend}: overhead per experiment, 1 worker", f"{1000 * overhead_one:.0f} ms",
                   load=now),
            Figure("scale", f"{backend}: overhead per experiment, 2 workers", f"{1000 * overhead_two:.0f} ms",
                   load=now),
        ]
    return figures


if __name__ == "__main__":
    standalone(run)
