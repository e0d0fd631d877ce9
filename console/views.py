"""Pieces of the console's session view: an experiment's row, a bounded curve, reasoning blocks, hardware history.

Plain Python, no Textual; `state.SessionView` owns them and folds events into them.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

from loopdeck.engine import events as ev

CURVE_POINTS = 1200  # per curve; older points are thinned, never the whole early part dropped
TELEMETRY_POINTS = 120

FINAL_STATUSES = frozenset(
    {"keep", "discard", "crash", "timeout", "nan", "rejected", "vetoed", "interrupted", "aborted"}
)


class Curve:
    """(x, y) points bounded by thinning: when full, every other point goes and the sampling stride doubles."""

    def __init__(self, capacity: int = CURVE_POINTS, points: tuple[tuple[float, float], ...] = ()) -> None:
        self.capacity = max(2, capacity)
        self.points: list[tuple[float, float]] = []
        self._stride = 1
        self._seen = 0
        for point in points:
            self.add(*point)

    def add(self, x: float, y: float) -> None:
        self._seen += 1
        if (self._seen - 1) % self._stride:
            return
        self.points.append((x, y))
        if len(self.points) > self.capacity:
            self.points = self.points[::2]
            self._stride *= 2

    def __len__(self) -> int:
        return len(self.points)


@dataclass
class ExperimentView:
    id: int
    status: str = "proposed"  # proposed | awaiting | approved | running | a final ExperimentStatus
    description: str = ""
    rationale: str = ""
    diff: str = ""
    files: tuple[str, ...] = ()
    added: int = 0
    removed: int = 0
    commit: str = ""
    baseline: bool = False
    metric: float | None = None
    delta: float | None = None
    incumbent_metric: float | None = None
    training_seconds: float | None = None
    wall_seconds: float | None = None
    peak_memory_mb: float | None = None
    reason: str = ""
    note: str = ""
    log_tail: str = ""
    budget_seconds: float = 0.0
    started_ts: float | None = None
    step: int = 0
    elapsed_seconds: float = 0.0
    progress: float = 0.0
    loss: float | None = None
    agent_tokens: int = 0
    agent_cost_usd: float = 0.0
    noise: float | None = None  # ± band of delta
    reported_metric: float | None = None  # what the training file printed
    evaluation: str = ""  # "trusted" | "self_reported" | ""
    mode: str = ""  # the research planner's mode for its turn
    mode_reason: str = ""
    worker: str = ""  # where it ran: "local:2", "ray node 3f2a…" (several workers)

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


@dataclass
class RepeatRunView:
    """An extra run in progress (a baseline seed, a confirmation, an incumbent re-run): shown instead of its
    experiment's finished first run, which stays drawn beneath it."""

    experiment: int
    label: str  # e.g. "baseline seed 2/3"
    budget_seconds: float
    started_ts: float
    first_run: Curve
    curve: Curve = field(default_factory=Curve)
    step: int = 0
    elapsed_seconds: float = 0.0

    def add(self, step: ev.TrainStep) -> None:
        self.step, self.elapsed_seconds = step.step, step.elapsed_seconds
        self.curve.add(step.elapsed_seconds, step.loss)


@dataclass
class ReasoningBlock:
    kind: str  # thinking | text | tool | result | note | proposal | rejected
    text: str
    ok: bool = True


@dataclass
class Telemetry:
    """Latest sample plus short histories for sparklines, of this machine; other nodes' in `nodes`, one each."""

    latest: ev.TelemetrySample | None = None
    gpu: dict[int, dict[str, deque[float]]] = field(default_factory=dict)
    cpu: deque[float] = field(default_factory=lambda: deque(maxlen=TELEMETRY_POINTS))
    ram: deque[float] = field(default_factory=lambda: deque(maxlen=TELEMETRY_POINTS))
    nodes: dict[str, Telemetry] = field(default_factory=dict)  # by Ray node (its workers' own telemetry)

    def add(self, sample: ev.TelemetrySample) -> None:
        if sample.node:
            self.nodes.setdefault(sample.node, Telemetry()).add(dataclasses.replace(sample, node=""))
            return
        self.latest = sample
        self.cpu.append(sample.cpu_percent)
        if sample.memory_total_mb:
            self.ram.append(100.0 * sample.memory_used_mb / sample.memory_total_mb)
        for gpu in sample.gpus:
            history = self.gpu.setdefault(
                gpu.index, {k: deque(maxlen=TELEMETRY_POINTS) for k in ("util", "mem", "power", "temp")}
            )
            mem = (100.0 * gpu.memory_used_mb / gpu.memory_total_mb
                   if gpu.memory_used_mb is not None and gpu.memory_total_mb else None)
            for key, value in (("util", gpu.utilization_percent), ("mem", mem),
                               ("power", gpu.power_watts), ("temp", gpu.temperature_c)):
                if value is not None:
                    history[key].append(value)


@dataclass
class StudyBoard:
    """The studies of the kept chain (ablation, scale transfer): the one running now, the latest result of each."""

    running: ev.StudyStarted | None = None
    last_run: ev.StudyRun | None = None
    results: dict[str, ev.StudyFinished] = field(default_factory=dict)  # by study kind: the latest

    def apply(self, event: ev.StudyStarted | ev.StudyRun | ev.StudyFinished) -> None:
        if isinstance(event, ev.StudyStarted):
            self.running, self.last_run = event, None
        elif isinstance(event, ev.StudyRun):
            self.last_run = event
        else:
            self.running, self.last_run = None, None
            self.results[event.study_kind] = event

    def progress(self) -> str:
        """One line on the running study ("" when none runs)."""
        if self.running is None:
            return ""
        at = f" at {self.running.scale:g}x" if self.running.scale != 1.0 else ""
        text = f"{self.running.study_kind} of #{self.running.incumbent}{at}"
        if self.last_run is not None:
            text += f": run {self.last_run.index}/{self.last_run.of} ({self.last_run.variant})"
        return text
