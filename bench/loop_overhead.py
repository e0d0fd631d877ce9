"""Loop overhead: the wall time each experiment costs beyond its training (git, guard, spawn, parse, evaluate, ledger).

The target sleeps exactly S seconds and the agent answers at once, alternating a change that is kept with one that
is reverted, so both paths count. Per experiment: the cycle (from the previous experiment's end to this one's) minus
S; split into the engine's own share (cycle minus the training process's lifetime, which the runner measures in the
same run, so load on the machine shows up mostly in the process's share) and the process's start-up and exit
(lifetime minus S). Per stage, from the StateChanged events the loop journals: proposing (agent and history),
committing (ledger row and git commit), training (spawn to exit), evaluating (parse, judge, revert, record).

Run: python -m bench loop_overhead [--quick]
"""

from __future__ import annotations

import re
import statistics

from bench.common import Figure, load, loop_toml, scratch_workspace, sleeping_target, standalone
from loopdeck.engine.agents.base import AgentTurn, Proposal
from loopdeck.engine.events import Event, ExperimentFinished, StateChanged
from loopdeck.engine.session import RunOptions, Session

TARGET_SECONDS = 0.5
STAGES = ("proposing", "committing", "training", "evaluating")


class InstantAgent:
    """Answers at once: odd proposals move LR closer to 0.2 (kept), even ones far from it (reverted)."""

    name = "instant"

    def __init__(self) -> None:
        self.count = 0

    def propose(self, turn: AgentTurn) -> Proposal:
        self.count += 1
        lr = 0.2 + 0.3 / (self.count + 1) if self.count % 2 else 0.9
        source = re.sub(r"^LR = .*$", f"LR = {lr!r}", turn.files["train.py"], count=1, flags=re.M)
        source = re.sub(r"^STEP = .*$", f"STEP = {self.count}", source, count=1, flags=re.M)
        return Proposal(description=f"LR {lr:.4f}", rationale="benchmark", files={"train.py": source})

    def close(self) -> None:
        """Nothing to release."""


def measure(seconds: float, experiments: int) -> dict[str, list[float]]:
    """Per-experiment overheads (seconds) of one session of `experiments` experiments on an S-second target."""
    events: list[Event] = []
    with scratch_workspace({"train.py": sleeping_target(), "loopdeck.toml": loop_toml(seconds)}) as workspace:
        session = Session(workspace, RunOptions(max_experiments=experiments), on_event=events.append,
                          agent=InstantAgent())
        session.run()
    finished = {e.experiment: e for e in events if isinstance(e, ExperimentFinished)}
    states = [e for e in events if isinstance(e, StateChanged)]
    stage: dict[tuple[str, int], float] = {}
    for current, following in zip(states, states[1:], strict=False):
        if current.experiment is not None and current.state in STAGES:
            key = (current.state, current.experiment)
            stage[key] = stage.get(key, 0.0) + following.ts - current.ts
    numbers = sorted(n for n in finished if n > 0)
    per: dict[str, list[float]] = {"cycle": [], "engine": [], "process": []}
    per.update({name: [] for name in STAGES})
    for n in numbers:
        cycle = finished[n].ts - finished[n - 1].ts
        lifetime = finished[n].wall_seconds or 0.0
        per["cycle"].append(cycle - seconds)
        per["engine"].append(cycle - lifetime)
        per["process"].append(lifetime - seconds)
        for name in STAGES:
            value = stage.get((name, n), 0.0)
            per[name].append(value - seconds if name == "training" else value)
    return per


def run(quick: bool) -> list[Figure]:
    seconds, experiments = (0.3, 8) if quick else (1.0, 20)
    per = measure(seconds, experiments)
    now = load()

    def ms(values: list[float]) -> str:
        return f"{1000 * statistics.median(values):.0f} ms"

    cycle = per["cycle"]
    return [
        Figure("loop_overhead", "per experiment (median)", ms(cycle), f"< {1000 * TARGET_SECONDS:.0f} ms", now,
               f"{experiments} experiments on a {seconds:g} s sleeping target; worst {1000 * max(cycle):.0f} ms"),
        Figure("loop_overhead", "engine share (cycle - process lifetime)", ms(per["engine"]), load=now),
        Figure("loop_overhead", "process start-up + exit (lifetime - S)", ms(per["process"]), load=now),
        *(Figure("loop_overhead", f"stage {name}" + (" - S" if name == "training" else ""), ms(per[name]), load=now)
          for name in STAGES),
    ]


if __name__ == "__main__":
    standalone(run)
