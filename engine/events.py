"""Typed, frozen events: the one stream of truth about a research session.

The engine emits them to an in-process callback and appends them to `.loopdeck/events.jsonl`; the console renders
them and `loopdeck watch` replays them. Every event serialises to one flat JSON object with a `kind` field, and
`event_from_dict` turns such an object back into the same event. Every kind lives here (over 400 lines): the
journal's format has one owner.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

EngineState = Literal[
    "starting", "proposing", "awaiting_approval", "committing", "training", "evaluating", "paused", "stopping",
    "stopped",
]
# Final status of an experiment. results.tsv maps keep→keep, discard→discard and every failure to crash.
ExperimentStatus = Literal[
    "running", "keep", "discard", "crash", "timeout", "nan", "rejected", "vetoed", "interrupted", "aborted",
]
# What a research turn sets out to do (engine/research/planner.py chooses; "auto" lets it choose).
ResearchMode = Literal["explore", "exploit", "combine", "ablate"]
RESEARCH_MODES: tuple[str, ...] = typing.get_args(ResearchMode)

_REGISTRY: dict[str, type[Event]] = {}


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event. `ts` is wall-clock seconds since the epoch when the event was made."""

    kind: ClassVar[str] = "event"
    # High-rate events may be coalesced by a renderer (a newer one replaces an unhandled older one).
    high_rate: ClassVar[bool] = False
    ts: float = field(default_factory=time.time)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must define a `kind`")
        _REGISTRY[cls.kind] = cls

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


# --- session lifecycle -------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SessionStarted(Event):
    kind: ClassVar[str] = "session_started"
    workspace: str
    branch: str
    agent: str  # "offline" | "claude" | …
    approval: str  # "ask" | "auto"
    budget_seconds: float
    metric_name: str
    metric_direction: str  # "minimize" | "maximize"
    resumed: bool = False
    editable: tuple[str, ...] = ()
    self_reported: bool = True  # True when the metric is the number the training file prints
    workers: int = 1  # experiments that may be in flight at once ([workers] count)
    budget_clock: str = "wall"  # what times the budget: "process" (CPU or GPU work) | "wall"


@dataclass(frozen=True, kw_only=True)
class SessionFinished(Event):
    kind: ClassVar[str] = "session_finished"
    # "max_experiments" | "time_limit" | "stopped" | "aborted" | "crash_limit" | "refusal_limit" | "budget" | "error"
    reason: str
    experiments: int
    kept: int
    baseline_metric: float | None
    best_metric: float | None


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    kind: ClassVar[str] = "state_changed"
    state: EngineState
    experiment: int | None = None
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class ApprovalPolicyChanged(Event):
    kind: ClassVar[str] = "approval_policy_changed"
    approval: str  # "ask" | "auto"


@dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """Something a person should read: level "info", "warning" or "error"."""

    kind: ClassVar[str] = "notice"
    level: Literal["info", "warning", "error"]
    message: str
    experiment: int | None = None
    # What it is about when a notifier or renderer may act on it: "agent_outage" (a turn lost to the agent's
    # service being unreachable), "agent_refusal" (the agent declined a turn), "" otherwise.
    topic: str = ""


# --- agent -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AgentThinkingDelta(Event):
    kind: ClassVar[str] = "agent_thinking"
    high_rate: ClassVar[bool] = True
    experiment: int
    text: str


@dataclass(frozen=True, kw_only=True)
class AgentTextDelta(Event):
    kind: ClassVar[str] = "agent_text"
    high_rate: ClassVar[bool] = True
    experiment: int
    text: str


@dataclass(frozen=True, kw_only=True)
class AgentToolCall(Event):
    kind: ClassVar[str] = "agent_tool_call"
    experiment: int
    tool: str
    summary: str  # one line, e.g. 'read_file train.py'


@dataclass(frozen=True, kw_only=True)
class AgentToolResult(Event):
    kind: ClassVar[str] = "agent_tool_result"
    experiment: int
    tool: str
    ok: bool
    summary: str


@dataclass(frozen=True, kw_only=True)
class AgentUsage(Event):
    """Token usage of one agent turn, plus the session's running totals."""

    kind: ClassVar[str] = "agent_usage"
    experiment: int
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    session_tokens: int = 0
    session_cost_usd: float = 0.0


@dataclass(frozen=True, kw_only=True)
class NoteDelivered(Event):
    """A human note reached the agent (it is part of the agent's next turn)."""

    kind: ClassVar[str] = "note_delivered"
    experiment: int
    text: str


@dataclass(frozen=True, kw_only=True)
class PlanChosen(Event):
    """The research planner's mode for the next turn and why (`forced`: a person chose it)."""

    kind: ClassVar[str] = "plan_chosen"
    experiment: int
    mode: ResearchMode
    reason: str
    forced: bool = False


# --- proposal and review -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ChangeProposed(Event):
    kind: ClassVar[str] = "change_proposed"
    experiment: int
    description: str
    rationale: str
    diff: str  # unified diff against the incumbent
    files: tuple[str, ...]
    added: int
    removed: int


@dataclass(frozen=True, kw_only=True)
class ChangeRejected(Event):
    """The guard refused a proposal; the reason goes back to the agent."""

    kind: ClassVar[str] = "change_rejected"
    experiment: int
    reason: str


@dataclass(frozen=True, kw_only=True)
class ApprovalRequested(Event):
    kind: ClassVar[str] = "approval_requested"
    experiment: int
    description: str


@dataclass(frozen=True, kw_only=True)
class DecisionMade(Event):
    kind: ClassVar[str] = "decision_made"
    experiment: int
    approved: bool
    note: str = ""
    by: Literal["auto", "human"] = "human"
    client: str = ""  # the console that decided (user@host:pid); "" for `loopdeck ctl` or automatic


# --- experiments -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ExperimentStarted(Event):
    kind: ClassVar[str] = "experiment_started"
    experiment: int
    commit: str
    parent_commit: str
    description: str
    budget_seconds: float
    baseline: bool = False
    # The incumbent's training curve as (elapsed training seconds, loss) pairs, so a renderer can draw this run
    # against it without having seen the incumbent run (e.g. after a resume).
    incumbent_curve: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, kw_only=True)
class LogLine(Event):
    kind: ClassVar[str] = "log_line"
    high_rate: ClassVar[bool] = True
    experiment: int
    line: str


@dataclass(frozen=True, kw_only=True)
class TrainStep(Event):
    """One record of the training process's metrics stream."""

    kind: ClassVar[str] = "train_step"
    high_rate: ClassVar[bool] = True
    experiment: int
    step: int
    elapsed_seconds: float  # training seconds, excluding warm-up
    loss: float
    progress: float = 0.0  # fraction of the time budget, 0..1
    tokens_per_second: float = 0.0
    mfu_percent: float | None = None


@dataclass(frozen=True, kw_only=True)
class ExperimentFinished(Event):
    kind: ClassVar[str] = "experiment_finished"
    experiment: int
    status: ExperimentStatus
    metric: float | None
    delta: float | None  # metric - incumbent metric (negative is better when minimising)
    incumbent_metric: float | None
    commit: str
    description: str
    training_seconds: float | None = None
    wall_seconds: float | None = None
    peak_memory_mb: float | None = None
    reason: str = ""  # why it crashed / was discarded, one line
    log_tail: str = ""
    reported_metric: float | None = None  # what the training file printed (trusted mode: shown, never decisive)
    noise: float | None = None  # ± band of `delta` (one standard error) when the run-to-run noise is known
    evaluation: str = ""  # "trusted" | "self_reported" ("" when nothing was scored)
    worker: str = ""  # where it ran, with several workers


@dataclass(frozen=True, kw_only=True)
class ExperimentKept(Event):
    kind: ClassVar[str] = "experiment_kept"
    experiment: int
    commit: str
    metric: float
    previous_metric: float | None


@dataclass(frozen=True, kw_only=True)
class ExperimentReverted(Event):
    kind: ClassVar[str] = "experiment_reverted"
    experiment: int
    to_commit: str
    reason: str


# --- research integrity ------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NoiseEstimated(Event):
    """The run-to-run spread of the metric, measured on the baseline run with several seeds."""

    kind: ClassVar[str] = "noise_estimated"
    std: float  # sample standard deviation of one run's metric
    n: int
    values: tuple[float, ...] = ()
    mean: float | None = None


@dataclass(frozen=True, kw_only=True)
class RunRepeatStarted(Event):
    """An extra run of an experiment begins (see RunRepeated, which ends it); its TrainStep and LogLine events
    carry the experiment's number, like its first run's."""

    kind: ClassVar[str] = "run_repeat_started"
    experiment: int
    role: str  # as in RunRepeated
    label: str  # what a person reads after the experiment's number: "baseline seed 2/3", "confirmation run 1/2"
    seed: int
    budget_seconds: float


@dataclass(frozen=True, kw_only=True)
class RunRepeated(Event):
    """An extra run of an experiment (recorded in the ledger's runs table, never an experiment of its own): a
    baseline seed, a confirmation of a candidate within the noise, or the incumbent's paired re-run."""

    kind: ClassVar[str] = "run_repeated"
    experiment: int
    role: str  # "noise" | "confirm" | "incumbent"
    index: int  # 1-based, of `of`
    of: int
    seed: int
    status: str  # "ok" or what went wrong (crash, timeout, nan, rejected, …)
    metric: float | None = None
    reason: str = ""
    label: str = ""  # as in RunRepeatStarted


@dataclass(frozen=True, kw_only=True)
class HoldoutScored(Event):
    """The incumbent scored on the holdout split (never used to keep or discard), against the baseline."""

    kind: ClassVar[str] = "holdout_scored"
    experiment: int
    holdout_metric: float
    val_metric: float  # the same weights on the validation split
    baseline_holdout: float | None = None
    baseline_val: float | None = None
    transfer: float | None = None  # holdout gain / validation gain since the baseline (1 = gains transfer fully)


# --- studies of the kept chain (ablation, scale transfer) --------------------------------------------------------


StudyKind = Literal["ablation", "transfer"]


@dataclass(frozen=True, kw_only=True)
class StudyStarted(Event):
    """An ablation or transfer study began: `variants` each run once per seed, in scratch checkouts."""

    kind: ClassVar[str] = "study_started"
    study: int
    study_kind: StudyKind
    incumbent: int
    scale: float = 1.0
    variants: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class StudyRun(Event):
    """One run of a study's variant finished (never an experiment; the study's rows record it)."""

    kind: ClassVar[str] = "study_run"
    study: int
    variant: str
    index: int  # 1-based, of `of` runs in the whole study
    of: int
    seed: int
    status: str  # "ok" or what went wrong
    metric: float | None = None
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class StudyLine:
    """One line of a study's table: a kept change's contribution (ablation), or a gain at scale (transfer)."""

    label: str
    change: int | None = None
    description: str = ""
    gain: float | None = None  # at the study's scale
    band: float | None = None
    reference_gain: float | None = None  # transfer: the same gain at the loop's scale
    verdict: str = ""  # ablation: matters | nothing | hurts | conflict | failed; transfer: holds | shrinks | reverses
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class StudyFinished(Event):
    """A study's result: its table, what it offers (changes to remove) and what it did (a simpler incumbent)."""

    kind: ClassVar[str] = "study_finished"
    study: int
    study_kind: StudyKind
    incumbent: int
    scale: float = 1.0
    lines: tuple[StudyLine, ...] = ()
    removable: tuple[int, ...] = ()  # ablation: kept changes that contribute nothing (or hurt)
    applied: int | None = None  # ablation --apply: the experiment that made the simpler incumbent
    summary: str = ""


# --- telemetry ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GpuSample:
    index: int
    name: str
    utilization_percent: float | None
    memory_used_mb: float | None
    memory_total_mb: float | None
    power_watts: float | None
    temperature_c: float | None
    process_memory_mb: float | None  # memory of the training process tree on this GPU


@dataclass(frozen=True, kw_only=True)
class TelemetrySample(Event):
    kind: ClassVar[str] = "telemetry"
    high_rate: ClassVar[bool] = True
    gpus: tuple[GpuSample, ...] = ()
    gpu_status: str = ""  # "" when GPUs were read, else why not (e.g. "no NVIDIA GPU — CPU only")
    cpu_percent: float = 0.0
    memory_used_mb: float = 0.0
    memory_total_mb: float = 0.0
    process_cpu_percent: float | None = None  # training process tree; None when nothing trains
    process_rss_mb: float | None = None
    node: str = ""  # "" for the engine's machine; else the Ray node it was measured on (its worker's telemetry)


# --- (de)serialisation -------------------------------------------------------------------------------------------


def event_kinds() -> dict[str, type[Event]]:
    return dict(_REGISTRY)


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from `Event.to_dict()` output. Unknown fields are ignored so old readers survive new
    writers; an unknown kind raises `ValueError`."""
    kind = data.get("kind")
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event kind: {kind!r}")
    kwargs = {name: _decode(hint, data[name]) for name, hint in _field_hints(cls) if name in data}
    return cls(**kwargs)


@functools.cache
def _field_hints(cls: type[Event]) -> tuple[tuple[str, Any], ...]:
    """(field, type) of an event class, resolved once: `get_type_hints` costs more than decoding an event, and a
    console attaching to a long session decodes thousands."""
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _decode(hint: Any, value: Any) -> Any:
    """Turn JSON lists back into the tuples (of tuples / of GpuSample) that the frozen events hold."""
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=False))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _decode(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(hint)}
        return hint(**{k: v for k, v in value.items() if k in names})
    return value
