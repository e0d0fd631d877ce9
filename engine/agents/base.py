"""The agent interface: what the loop gives an agent each turn, and what an agent gives back.

Agents never write to disk. They receive the incumbent contents of the editable files and return the full new
contents of the files they changed; the engine guards, diffs, commits and runs the change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from loopdeck.engine.events import Event


@dataclass(frozen=True)
class ExperimentSummary:
    """One ledger row as an agent sees it: compact, structured, and enough to avoid repeating a dead end."""

    id: int
    status: str  # keep | discard | crash | timeout | nan | rejected | vetoed | interrupted | aborted
    metric: float | None
    delta: float | None  # metric - incumbent metric at the time
    description: str
    diff: str = ""
    reason: str = ""  # crash reason, guard rejection or veto note
    log_tail: str = ""  # last lines of the log of a failed run
    meta: Mapping[str, Any] = field(default_factory=dict)  # what the proposing agent attached (Proposal.meta)
    # A run of the unchanged incumbent that starts a research line, not an experiment. Usually #0, but a failed
    # first baseline makes the next one #1 (the ledger's `ExperimentRow.is_baseline` decides).
    baseline: bool = False
    # The research log (engine/agents/regions.py): the code it touched, which way each constant moved, the turn's
    # mode, the ± band of `delta`, and the earlier experiment it repeated.
    region: tuple[str, ...] = ()
    signs: Mapping[str, int | str] = field(default_factory=dict)
    mode: str = ""
    delta_band: float | None = None
    repeat_of: int | None = None


@dataclass(frozen=True)
class Proposal:
    description: str  # one line, becomes the commit subject and the results.tsv description
    rationale: str
    files: Mapping[str, str]  # editable path (relative, posix) -> full new content
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-serialisable; returned in later histories


@dataclass
class AgentTurn:
    """Everything an agent may know when it drafts experiment `experiment`."""

    experiment: int
    workspace: Path
    files: Mapping[str, str]  # editable path -> incumbent content
    editable: tuple[str, ...]
    protected: tuple[str, ...]
    program: str  # the workspace's program.md (research instructions)
    metric_name: str
    direction: str  # "minimize" | "maximize"
    history: tuple[ExperimentSummary, ...]  # every earlier experiment, oldest first, baselines marked
    incumbent: ExperimentSummary | None
    notes: tuple[str, ...] = ()  # human notes to deliver in this turn
    feedback: str = ""  # what happened to this agent's previous proposal, if anything new
    emit: Callable[[Event], None] = lambda event: None
    cancelled: Callable[[], bool] = lambda: False  # poll it in long work; return or raise AgentCancelled
    # Experiments in flight while this one is drafted (several workers): ideas already being tried, not to repeat.
    running: tuple[ExperimentSummary, ...] = ()
    # The research planner's plan for this turn (engine/research/planner.py): explore a new direction, exploit
    # the last gain, or combine near-misses (runs within the noise band that touch different code); for combine,
    # `combined` holds the near-misses' changes merged three-way onto the incumbent's files.
    mode: str = ""
    mode_reason: str = ""
    near_misses: tuple[ExperimentSummary, ...] = ()
    combined: Mapping[str, str] = field(default_factory=dict)
    # [research] skip_repeats: a repeat of an idea already tried against the incumbent is refused (else flagged).
    refuse_repeats: bool = True


class AgentError(Exception):
    """The agent could not produce a proposal. `fatal` stops the session cleanly with `str(self)` as reason."""

    def __init__(self, message: str, *, fatal: bool = False, stop_reason: str = "error") -> None:
        super().__init__(message)
        self.fatal = fatal
        self.stop_reason = stop_reason


class AgentCancelled(Exception):
    """Raised by an agent that noticed `turn.cancelled()` while it worked."""


class Agent(Protocol):
    """An agent. Optionally it also has `revise(draft: Proposal, turn: AgentTurn) -> Proposal`: with pipelining
    (engine/research/pipeline.py) a proposal is drafted while the previous experiment trains, and before it is committed
    the loop hands it back with a fresh turn (the previous outcome in `feedback` and `history`, notes sent since,
    the current incumbent's files; `draft.files` already rebased onto them). It returns the draft, or a better
    proposal; raising behaves as in `propose`, except that a non-fatal error keeps the draft. Without `revise`
    the draft runs as drafted.

    Optionally it also has `check() -> None`: one cheap request at session start, before the baseline trains,
    that raises `AgentError(fatal=True)` for what no turn can fix (an unreachable endpoint, a rejected key, an
    unknown model)."""

    name: str

    def propose(self, turn: AgentTurn) -> Proposal: ...

    def close(self) -> None: ...
