"""autoresearch's results.tsv: its columns, how our statuses map onto its three, and its atomic rewrite.

The ledger is the record; results.tsv is a copy of it in autoresearch's format, rewritten whole after every
finished experiment (and on open, when an engine died between its commit and the rewrite).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from loopdeck.engine.errors import LoopdeckError

RESULTS_FILE = "results.tsv"
RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
# results.tsv knows three outcomes. Rows without a commit never ran (vetoed, or rejected by the guard) and are
# left out, like running rows; a run rejected after it ran (it broke its budget, its model looks ahead) or stopped
# before it finished is a crash. Extra runs (baseline seeds, confirmations) live in the runs table: results.tsv
# keeps one line per experiment.
TSV_STATUS = {
    "keep": "keep", "discard": "discard", "aborted": "discard",
    "crash": "crash", "timeout": "crash", "nan": "crash", "interrupted": "crash", "rejected": "crash",
}
# Runs that failed by themselves have no metric: 0.0, as autoresearch writes them. Rejected and interrupted runs are
# written as crashes too, but keep the metric they printed, and their real status goes into the description as a
# suffix a notebook can filter on (`df.description.str.contains(r"\[rejected")`).
_FAILED = frozenset({"crash", "timeout", "nan"})
_SUFFIXED = frozenset({"rejected", "interrupted"})
_SUFFIX_REASON_CHARS = 48


class ResultRow(Protocol):
    """The fields of an experiment results.tsv shows (a ledger `ExperimentRow` has them)."""

    status: str
    commit: str
    metric: float | None
    reported_metric: float | None
    peak_memory_mb: float | None
    description: str
    reason: str


def results_text(rows: Iterable[ResultRow]) -> str:
    """The whole file for these experiments, header first."""
    return RESULTS_HEADER + "".join(_results_line(row) for row in rows)


def shown_metric(row: ResultRow) -> float | None:
    """The metric to show for a row: its score, else (a rejected or interrupted run) the one it printed."""
    if row.metric is not None or row.status not in _SUFFIXED:
        return row.metric
    return row.reported_metric


def _status_suffix(row: ResultRow) -> str:
    """` [rejected: over budget]`, ` [interrupted: aborted by a person]`, or "" for the statuses autoresearch has."""
    if row.status not in _SUFFIXED:
        return ""
    head = re.split(r"[:;(]", " ".join(row.reason.split()), maxsplit=1)[0].strip()
    if len(head) > _SUFFIX_REASON_CHARS:
        head = head[: _SUFFIX_REASON_CHARS - 1] + "…"
    return f" [{row.status}: {head}]" if head else f" [{row.status}]"


def _results_line(row: ResultRow) -> str:
    """One results.tsv line, or "" for a row that never ran (no commit, or a status autoresearch has no word for)."""
    status = TSV_STATUS.get(row.status)
    if status is None or not row.commit:
        return ""
    failed = row.status in _FAILED
    metric = None if failed else shown_metric(row)
    memory_mb = None if failed else row.peak_memory_mb
    description = " ".join(row.description.split()) + _status_suffix(row)  # tabs or newlines would break the TSV
    return (f"{row.commit[:7]}\t{metric or 0.0:.6f}\t{(memory_mb or 0.0) / 1024:.1f}\t{status}\t"
            f"{description.strip()}\n")


def is_current(path: Path, text: str) -> bool:
    """Whether the file at `path` already holds exactly `text` (an unreadable file is not)."""
    try:
        return path.read_text(encoding="utf-8") == text
    except (OSError, UnicodeDecodeError):
        return False


def write_atomically(path: Path, text: str) -> None:
    """Replace the file with `text` in one rename, so a reader never sees half of it. Not safe against a second
    writer by itself: the ledger calls it inside its write transaction."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LoopdeckError(f"could not write {path}: {exc}. Is the disk full? Free space, then run again: the "
                            f"session resumes, and {path.name} is rewritten from the ledger") from exc
