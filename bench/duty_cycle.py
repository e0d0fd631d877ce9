"""Duty cycle: the share of a session's wall time during which a training process runs, with and without pipelining.

The agent is the real Claude agent (anthropic SDK) talking to the local fake Messages API of the tests, which
answers every request after a fixed latency with one streamed reply that edits train.py and proposes (one request
per turn). The target sleeps for its budget; every proposal moves LR away from its optimum, so every experiment
is reverted (the common case). Full: 30 s per turn against a 60 s budget; --quick: 1.5 s against 3 s. Training
time is the time the loop spends in its `training` state (spawn to exit of every training process, the
baseline's noise runs included), from the StateChanged events it journals; session time runs from SessionStarted
to SessionFinished.

Run: python -m bench duty_cycle [--quick]
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any

from bench.common import ROOT, Figure, load, loop_toml, scratch_workspace, sleeping_target, standalone
from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings
from loopdeck.engine.events import Event, SessionFinished, SessionStarted, StateChanged
from loopdeck.engine.session import RunOptions, Session

sys.path.insert(0, str(ROOT / "tests"))
from fake_anthropic import FakeAnthropic, HttpError, Reply, reply, text, tool_use  # noqa: E402

TARGET_PERCENT = 95.0


class SlowAnthropic(FakeAnthropic):
    """The fake Messages API with a fixed latency per request; each reply edits LR and proposes at once."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self._values = itertools.count(1)

    def _next(self) -> Reply | HttpError:
        time.sleep(self.latency)
        lr = 0.2 + 0.01 * next(self._values)
        return reply(text(f"Trying LR {lr:.2f}."),
                     tool_use("edit_file", path="train.py", old_string="LR = 0.2\n", new_string=f"LR = {lr:.2f}\n"),
                     tool_use("propose_experiment", description=f"LR {lr:.2f}", rationale="benchmark turn"))


def session_duty(latency: float, budget: float, experiments: int, pipeline: str) -> dict[str, Any]:
    events: list[Event] = []
    files = {"train.py": sleeping_target(lr=0.2), "loopdeck.toml": loop_toml(budget, pipeline)}
    with scratch_workspace(files) as workspace, SlowAnthropic(latency) as api:
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key="sk-ant-bench-not-a-real-key")
        Session(workspace, RunOptions(max_experiments=experiments), on_event=events.append, agent=agent).run()
    started = next(e for e in events if isinstance(e, SessionStarted)).ts
    ended = next(e for e in events if isinstance(e, SessionFinished)).ts
    states = [e for e in events if isinstance(e, StateChanged)]
    training = sum(after.ts - e.ts for e, after in zip(states, states[1:], strict=False) if e.state == "training")
    return {"duty": 100 * training / (ended - started), "wall": ended - started, "load": load()}


def run(quick: bool) -> list[Figure]:
    latency, budget, experiments = (1.5, 3.0, 4) if quick else (30.0, 60.0, 3)
    setting = f"{latency:g} s per agent turn, {budget:g} s budget, baseline + {experiments} experiments"
    figures = []
    for pipeline, target in (("on", f">= {TARGET_PERCENT:.0f} %"), ("off", "")):
        result = session_duty(latency, budget, experiments, pipeline)
        figures.append(Figure("duty_cycle", f"pipeline {pipeline}", f"{result['duty']:.1f} %", target, result["load"],
                              f"{setting}; session {result['wall']:.1f} s"))
    return figures


if __name__ == "__main__":
    standalone(run)
