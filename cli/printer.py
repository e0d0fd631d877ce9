"""The headless printer: a session's events as terse lines of text (one per experiment, then a summary)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.events import (
    ApprovalRequested,
    DecisionMade,
    Event,
    ExperimentFinished,
    Notice,
    RunRepeated,
    SessionFinished,
    SessionStarted,
    StateChanged,
    StudyFinished,
    StudyRun,
    StudyStarted,
)


class HeadlessPrinter:
    """Terse text for a session: one line per experiment, a few state lines, then a summary."""

    def __init__(self, workspace: Path, out: TextIO | None = None) -> None:
        self.workspace = workspace
        self.out = out or sys.stdout
        self.metric_name = "metric"

    def __call__(self, event: Event) -> None:
        text = self.format(event)
        if text:
            print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        """A line from loopdeck itself rather than from the session (a created workspace, a config note)."""
        print(f"loopdeck: {text}", file=self.out, flush=True)

    def format(self, event: Event) -> str:
        if isinstance(event, SessionStarted):
            self.metric_name = event.metric_name
            text = (f"loopdeck: {'resumed' if event.resumed else 'started'} on {event.branch}: agent {event.agent}, "
                    f"approval {event.approval}, budget {event.budget_seconds:g} s per experiment ({event.budget_clock} "
                    "clock)")
            if event.approval == "ask":
                text += (f"\nloopdeck: each change waits for a decision: `loopdeck attach {self.workspace}` opens a "
                         f"console, or `loopdeck ctl {self.workspace} approve` / `loopdeck ctl {self.workspace} veto "
                         "\"why\"` (--approve auto runs unattended)")
            return text
        if isinstance(event, ExperimentFinished):
            return experiment_line(event)
        if isinstance(event, RunRepeated):
            return repeat_line(event)
        if isinstance(event, ApprovalRequested):
            return f"#{event.experiment} awaiting approval: {event.description}"
        if isinstance(event, DecisionMade) and event.by == "human" and event.approved:  # a veto is a result line
            return f"#{event.experiment} approved" + (f": {event.note}" if event.note else "")
        if isinstance(event, StateChanged) and event.state == "paused":
            return f"loopdeck: paused (`loopdeck ctl {self.workspace} resume` continues)"
        if isinstance(event, Notice) and event.level != "info":
            return f"loopdeck: {event.level}: {event.message}"
        if isinstance(event, SessionFinished):
            return self.summary(event)
        if isinstance(event, StudyStarted | StudyRun | StudyFinished):
            return study_line(event)
        return ""

    def summary(self, event: SessionFinished) -> str:
        text = f"loopdeck: finished ({event.reason}): {event.experiments} experiments, {event.kept} kept"
        if event.baseline_metric is not None and event.best_metric is not None:
            change = event.best_metric - event.baseline_metric
            text += (f"; {self.metric_name} {event.baseline_metric:.6f} (baseline) -> {event.best_metric:.6f} "
                     f"({change:+.4g})")
        return text + f"\nloopdeck: results in {self.workspace / STATE_DIR / 'results.tsv'}"


def experiment_line(event: ExperimentFinished) -> str:
    """`#3 keep 2.914321 (-0.0123) MATRIX_LR 0.04 -> 0.06`, with the reason for anything that did not run well."""
    status = "baseline" if event.status == "keep" and event.incumbent_metric is None else event.status
    parts = [f"#{event.experiment}", status]
    if event.metric is not None:
        parts.append(f"{event.metric:.6f}")
        if event.delta is not None:
            parts.append(f"({event.delta:+.4g})")
    if event.description != status:
        parts.append(event.description)
    if event.status not in ("keep", "discard") and event.reason:
        parts.append(f"— {event.reason}")
    return " ".join(parts)


def study_line(event: StudyStarted | StudyRun | StudyFinished) -> str:
    """A study's start, one line per run, and at the end its table (`loopdeck ablate`, `transfer`, the loop's
    automatic transfer check)."""
    if isinstance(event, StudyStarted):
        at = f" at {event.scale:g}x" if event.scale != 1.0 else ""
        return (f"loopdeck: {event.study_kind} study {event.study} of #{event.incumbent}{at}: "
                f"{len(event.variants)} variants × {len(event.seeds)} seeds")
    if isinstance(event, StudyRun):
        metric = f"{event.metric:.6f}" if event.metric is not None else f"{event.status} {event.reason}".strip()
        return f"[{event.index}/{event.of}] {event.variant}, seed {event.seed}: {metric}"
    return study_table(event)


def study_table(event: StudyFinished) -> str:
    """The study's result as aligned text: one line per change (or gain), then its summary."""
    transfer = event.study_kind == "transfer"
    head = f"{'change':<9} {'contribution':>14}"
    if transfer:
        head = f"{'':<9} {'gain (loop)':>14} {'at ' + format(event.scale, 'g') + 'x':>14}"
    lines = [f"{head} {'± band':>10}  {'verdict':<9} description"]
    for line in event.lines:
        gain = "-" if line.gain is None else f"{line.gain:+.6f}"
        band = "-" if line.band is None else f"{line.band:.6f}"
        what = line.description + (f" ({line.detail})" if line.detail else "")
        reference = "-" if line.reference_gain is None else f"{line.reference_gain:+.6f}"
        values = f"{reference:>14} {gain:>14}" if transfer else f"{gain:>14}"
        lines.append(f"{line.label:<9} {values} {band:>10}  {line.verdict:<9} {what}")
    return "\n".join([*lines, f"loopdeck: {event.summary}"])
def repeat_line(event: RunRepeated) -> str:
    """`#0 baseline seed 2/3: 2.915012`, or `#7 confirmation run 1/2: crash — why`."""
    label = event.label or f"{event.role} run {event.index}/{event.of}"
    if event.status == "ok" and event.metric is not None:
        return f"#{event.experiment} {label}: {event.metric:.6f}"
    return f"#{event.experiment} {label}: {event.status}" + (f" — {event.reason}" if event.reason else "")
