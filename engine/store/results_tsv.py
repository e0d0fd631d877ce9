"""autoresearch's results.tsv: its columns, how our statuses map onto its three, and its atomic rewrite.

The ledger is the record; results.tsv is a copy of it in autoresearch's format, rewritten whole after every
finished experiment (and on open, when an engine died between its commit and the rewrite).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from loopdeck.engine.errors import LoopdeckError

RESULTS_FILE = "results.tsv"
RESULTS_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
# results.tsv knows three outcomes. Rows without a commit never ran (vetoed, or rejected by the guard) and are
# left out, like running rows; a run rejected after it ran (it broke its budget, its model looks ahead) is a crash.
# Extra runs (baseline seeds, confirmations) live in the runs table: results.tsv keeps one line per experiment.
TSV_STATUS = {
    "keep": "keep", "discard": "discard", "aborted": "discard",
    "crash": "crash", "timeout": "crash", "nan": "crash", "interrupted": "crash", "rejected": "crash",
}


class ResultRow(Protocol):
    """The fields of an experiment results.tsv shows (a ledger `ExperimentRow` has them)."""

    status: str
    commit: str
    metric: float | None
    peak_memory_mb: float | None
    description: str


def results_text(rows: Iterable[ResultRow]) -> str:
    """The whole file for these experiments, header first."""
    return RESULTS_HEADER + "".join(_results_line(row) for row in rows)


def _results_line(row: ResultRow) -> str:
    """One results.tsv line, or "" for a row that never ran (no commit, or a status autoresearch has no word for)."""
    status = TSV_STATUS.get(row.status)
    if status is None or not row.commit:
        return ""
    crashed = status == "crash"
    metric = 0.0 if crashed or row.metric is None else row.metric
    memory_gb = 0.0 if crashed or row.peak_memory_mb is None else row.peak_memory_mb / 1024
    description = " ".join(row.description.split())  # tabs or newlines would break the TSV
    return f"{row.commit[:7]}\t{metric:.6f}\t{memory_gb:.1f}\t{status}\t{description}\n"


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
