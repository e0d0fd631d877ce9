"""The research history as an agent sees it: finished ledger rows, compact and bounded."""

from __future__ import annotations

from collections.abc import Iterable

from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.store.ledger import ExperimentRow

SUMMARY_DIFF_CHARS = 4000
SUMMARY_LOG_LINES = 40
SUMMARY_LOG_CHARS = 2500


def agent_history(rows: Iterable[ExperimentRow]) -> tuple[ExperimentSummary, ...]:
    """Every finished experiment as an agent sees it, oldest first (the one in flight is not history yet)."""
    return tuple(summary(row) for row in rows if row.status != "running")


def in_flight(rows: Iterable[ExperimentRow]) -> tuple[ExperimentSummary, ...]:
    """The experiments still running (several workers), as an agent sees them: ideas already being tried."""
    return tuple(summary(row) for row in rows if row.status == "running")


def summary(row: ExperimentRow) -> ExperimentSummary:
    """One ledger row as an agent sees it: long diffs cut at the head, long logs kept at the tail."""
    return ExperimentSummary(
        id=row.id, status=row.status, metric=row.metric, delta=row.delta, description=row.description,
        diff=_head(row.diff, SUMMARY_DIFF_CHARS), reason=row.reason,
        log_tail=_tail(row.log_tail, SUMMARY_LOG_LINES, SUMMARY_LOG_CHARS), meta=dict(row.meta),
        baseline=row.is_baseline, region=tuple(row.region.split()), signs=dict(row.signs), mode=row.mode,
        delta_band=row.delta_band, repeat_of=row.repeat_of,
    )


def _head(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n… ({len(text) - limit} more characters)"


def _tail(text: str, max_lines: int, max_chars: int) -> str:
    kept = "\n".join(text.rstrip("\n").splitlines()[-max_lines:])
    return kept[-max_chars:]
