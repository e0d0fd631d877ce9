"""What every part of the research loop shares: the session's workspace parts, the session's tallies, a stop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loopdeck.engine.config import Config
from loopdeck.engine.control import Controller
from loopdeck.engine.events import EngineState, Event, StateChanged
from loopdeck.engine.run.executor import Executor
from loopdeck.engine.run.runner import LocalExecutor
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.ledger import ExperimentRow, Ledger


class LoopStopped(Exception):
    """Ends the session: `reason` becomes SessionFinished.reason, the message (if any) an error Notice."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.message = message


@dataclass
class LoopContext:
    """What a session hands its loop: the workspace's parts, already validated and opened."""

    workspace: Path
    state_dir: Path
    config: Config
    repo: ResearchRepo
    ledger: Ledger
    controller: Controller
    emit: Callable[[Event], None]
    branch: str
    protected_hashes: dict[str, str]
    track_pid: Callable[[int | None], None] = lambda pid: None
    resumed: bool = False
    agent_kind: str = ""
    executor: Executor = field(default_factory=LocalExecutor)  # where training and evaluation processes run

    def run_dir(self, number: int) -> Path:
        """Where experiment `number`'s runs keep their log, metrics and weights."""
        return self.state_dir / "runs" / str(number)

    def state(self, state: EngineState, experiment: int | None = None, detail: str = "") -> None:
        self.emit(StateChanged(state=state, experiment=experiment, detail=detail))

    def halt_if_requested(self) -> None:
        """Raise LoopStopped if a person asked to stop or abort."""
        ctl = self.controller
        if ctl.abort_event.is_set():
            raise LoopStopped(ctl.abort_reason)
        if ctl.stop_requested:
            raise LoopStopped("stopped")

    def incumbent_files(self, incumbent: ExperimentRow | None) -> dict[str, str]:
        """The editable files as the incumbent has them (the tree's HEAD without an incumbent)."""
        at = incumbent.commit if incumbent else None
        return self.repo.read_files(self.config.experiment.editable, at=at)


@dataclass
class Tally:
    """The session's counts that its stop conditions read."""

    numbers_used: int = 0  # experiment numbers given out in this session (rejected and vetoed ones too)
    failures: int = 0  # consecutive: crash, timeout, NaN, guard rejection, a failed agent turn
    last_failure: str = ""  # the latest of them, said when they end the session


def one_line(text: str) -> str:
    return " ".join(text.split()) or "(no description)"
