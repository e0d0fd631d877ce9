"""A training run's machine-readable output, read in one place: the metrics stream and the summary block.

The metrics stream (LOOPDECK_METRICS) is JSON lines, one object each: a "start" record (environment, model), then
"step" records (elapsed training seconds, smoothed loss, progress, throughput), then an "end" record. The summary
block is autoresearch's: a `---` line, then `key: value` lines. Both come from code we do not trust (the agent
edits it): a torn, foreign or malformed line or record is skipped, never an error. The workspace's `harness.py`
(gpt/harness.py) writes them; every reader in the engine and the benchmarks uses this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from loopdeck.engine.events import TrainStep

CURVE_POINTS = 200  # the incumbent curve sent with ExperimentStarted
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.-]*):\s*(.*?)\s*$")


# --- the metrics stream ------------------------------------------------------------------------------------------


def parse_record(line: str | bytes) -> dict[str, Any] | None:
    """One line of the stream as a record; None for a torn or foreign line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every record of a finished run's stream, in order; nothing when the file cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()
    except OSError:
        return
    for line in lines:
        record = parse_record(line)
        if record is not None:
            yield record


def end_record(path: Path) -> dict[str, Any]:
    """The last "end" record of a finished run's stream ({} when it wrote none)."""
    return next((r for r in reversed(list(read_records(path))) if r.get("type") == "end"), {})


def parse_step(record: Mapping[str, Any], experiment: int = 0) -> TrainStep | None:
    """The TrainStep of a "step" record (for `experiment`); None for another kind or a malformed one."""
    if record.get("type") != "step":
        return None
    step, elapsed, loss = record.get("step"), _finite(record.get("elapsed_seconds")), record.get("loss")
    if not isinstance(step, int) or elapsed is None or isinstance(loss, bool) or not isinstance(loss, int | float):
        return None
    return TrainStep(experiment=experiment, step=step, elapsed_seconds=elapsed, loss=float(loss),
                     progress=_finite(record.get("progress")) or 0.0,
                     tokens_per_second=_finite(record.get("tokens_per_second")) or 0.0,
                     mfu_percent=_finite(record.get("mfu_percent")))


def read_steps(path: Path, experiment: int = 0) -> list[TrainStep]:
    """The well-formed step records of a finished run's stream."""
    return [step for record in read_records(path) if (step := parse_step(record, experiment)) is not None]


def incumbent_curve(path: Path, points: int | None = CURVE_POINTS) -> tuple[tuple[float, float], ...]:
    """(elapsed, loss) of a finished run's steps with a finite loss, downsampled to at most `points` (the last
    one kept; None: all of them)."""
    curve = [(step.elapsed_seconds, step.loss) for step in read_steps(path) if math.isfinite(step.loss)]
    if points is not None and len(curve) > points:
        stride = math.ceil(len(curve) / points)
        curve = curve[:-1:stride][: points - 1] + [curve[-1]]
    return tuple(curve)


# --- the summary block and the printed metric --------------------------------------------------------------------


def parse_summary(text: str) -> dict[str, str]:
    """`key: value` lines after the last `---` line of a run's output."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    return summary_fields(lines[starts[-1] + 1:]) if starts else {}


def summary_fields(lines: Iterable[str]) -> dict[str, str]:
    """The `key: value` pairs among the lines that follow a `---` line (for a reader that split them already)."""
    return {match[1]: match[2] for line in lines if (match := _SUMMARY_LINE.match(line.strip()))}


def summary_numbers(summary: Mapping[str, str]) -> dict[str, float]:
    """The summary's finite numeric values."""
    return {key: number for key, value in summary.items() if (number := _finite(value)) is not None}


def metric_from_log(pattern: str, text: str) -> float | None:
    """The last match of pattern (multiline) as a float; nan/inf parse as such; None when never printed."""
    for match in reversed(list(re.finditer(pattern, text, re.MULTILINE))):
        try:
            return float(match.group(1) if match.re.groups else match.group(0))
        except (TypeError, ValueError):
            continue
    return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
