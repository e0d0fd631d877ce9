"""A session in its own process, for fault-injection tests: a scripted agent, and a SIGKILL at a chosen moment.

    python tests/fault_driver.py WORKSPACE [--edits "LR=0.3 LR=0.25,STEPS=40"] [--kill-on KIND[:FIELD=VALUE,…]]
                                 [--sleep-at N] [--max-experiments N] [--pipeline on|off|auto]
                                 [--workers N] [--backend local|ray]

`--edits`: one proposal per space-separated item, each setting constants of the fake train.py (fake_targets).

`--kill-on` SIGKILLs this process from inside the engine's event path the moment a matching event is emitted
(after the journal has it, before anything else happens): that pins a kill to an exact stage of an experiment
without any hook in the engine. `--sleep-at N` makes the agent announce itself (an AgentTextDelta) and then block
while drafting experiment N, for a test to kill it from outside.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_targets import ScriptedAgent, set_constant  # noqa: E402

from loopdeck.engine.agents.base import AgentTurn, Proposal  # noqa: E402
from loopdeck.engine.events import AgentTextDelta, Event  # noqa: E402
from loopdeck.engine.session import RunOptions, Session  # noqa: E402

DRAFTING = "drafting, and about to block"


class BlockingAgent(ScriptedAgent):
    """A ScriptedAgent that blocks (as a slow API call would) while drafting one chosen experiment."""

    def __init__(self, steps: list, sleep_at: int | None) -> None:
        super().__init__(steps)
        self.sleep_at = sleep_at

    def propose(self, turn: AgentTurn) -> Proposal:
        if turn.experiment == self.sleep_at:
            turn.emit(AgentTextDelta(experiment=turn.experiment, text=DRAFTING))
            time.sleep(600)
        return super().propose(turn)


def edit(assignments: str):
    """A script step setting NAME=VALUE constants (numbers, or strings for MODE) in the incumbent train.py."""
    pairs = [part.split("=", 1) for part in assignments.split(",")]

    def make(turn: AgentTurn) -> Proposal:
        source = turn.files["train.py"]
        for name, value in pairs:
            source = set_constant(source, name, value if name == "MODE" else float(value) if "." in value
                                  else int(value))
        return Proposal(description=assignments, rationale="fault driver", files={"train.py": source})

    return make


def killer(spec: str | None):
    """on_event: SIGKILL this process at the first event matching `KIND[:FIELD=VALUE,…]`."""
    kind, _, conditions = (spec or "").partition(":")
    wanted = dict(part.split("=", 1) for part in conditions.split(",") if part)

    def on_event(event: Event) -> None:
        if event.kind == kind and all(str(getattr(event, name, None)) == value for name, value in wanted.items()):
            os.kill(os.getpid(), signal.SIGKILL)

    return on_event


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workspace")
    parser.add_argument("--edits", default="")
    parser.add_argument("--kill-on")
    parser.add_argument("--sleep-at", type=int)
    parser.add_argument("--max-experiments", type=int)
    parser.add_argument("--pipeline")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--backend")
    args = parser.parse_args()
    steps = [edit(item) for item in args.edits.split()]
    options = RunOptions(approval="auto", max_experiments=args.max_experiments, pipeline=args.pipeline,
                         workers=args.workers, backend=args.backend)
    session = Session(args.workspace, options,
                      on_event=killer(args.kill_on), agent=BlockingAgent(steps, args.sleep_at))
    finished = session.run()
    print(f"finished: {finished.reason}: {session.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
