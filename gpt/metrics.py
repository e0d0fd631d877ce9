"""A training run's machine-readable output: the LOOPDECK_METRICS JSON-lines stream and autoresearch's summary block."""

from __future__ import annotations

import json
import math
import os
from typing import IO, Any

# autoresearch's summary: `---`, then these keys in this order, each with its number format.
SUMMARY_FORMATS = {
    "val_bpb": ".6f",
    "training_seconds": ".1f",
    "total_seconds": ".1f",
    "peak_vram_mb": ".1f",
    "mfu_percent": ".2f",
    "total_tokens_M": ".1f",
    "num_steps": "d",
    "num_params_M": ".1f",
    "depth": "d",
}


class MetricsLog:
    """Appends one JSON object per line to a file and flushes each, so a reader can follow the run live."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self._file: IO[str] | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def write(self, kind: str, **fields: Any) -> None:
        if self._file is None:
            return
        record = {"type": kind, **{key: _finite_or_none(value) for key, value in fields.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def start(self, **fields: Any) -> None:
        self.write("start", **fields)

    def step(self, **fields: Any) -> None:
        self.write("step", **fields)

    def end(self, summary: dict[str, Any]) -> None:
        self.write("end", **summary)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def open_metrics() -> MetricsLog:
    """The stream named by LOOPDECK_METRICS, or one that writes nothing when it is unset."""
    return MetricsLog(os.environ.get("LOOPDECK_METRICS") or None)


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN or Infinity; a reader in another language would choke on Python's extensions.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def format_summary(summary: dict[str, Any]) -> str:
    """The summary block: `---` then `key: value` lines, values aligned; a missing figure (None) prints as 0."""
    width = max(map(len, SUMMARY_FORMATS)) + 2
    lines = ["---"]
    for key, spec in SUMMARY_FORMATS.items():
        value = summary[key]
        lines.append(f"{key + ':':<{width}}{format(value if value is not None else 0, spec)}")
    return "\n".join(lines)


def parse_summary(text: str) -> dict[str, float]:
    """The `key: value` lines after the last `---` line of a run's output, as numbers (non-numbers skipped)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    result: dict[str, float] = {}
    for line in lines[starts[-1] + 1:] if starts else []:
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            result[key.strip()] = float(value)
        except ValueError:
            continue
    return result
