"""An experiment's final ledger record: its status and fields written, `ExperimentFinished` told, failures counted.

An approved change gets its ledger row (status `running`, with its diff) *before* anything is committed, and its
commit sha right after (engine/research/loop.py), so an engine killed at any point leaves a row that the next start
marks `interrupted` — never a lost or a duplicated one. Proposals that never run (rejected by the guard, vetoed)
get a row born with that final status (`not_run`).
"""

from __future__ import annotations

from loopdeck.engine.events import ExperimentFinished
from loopdeck.engine.research.context import LoopContext, Tally
from loopdeck.engine.store.ledger import ExperimentRow

FAILURES = frozenset({"crash", "timeout", "nan", "rejected"})  # what counts towards the crash limit


class Recorder:
    def __init__(self, ctx: LoopContext, tally: Tally) -> None:
        self.ctx = ctx
        self.tally = tally

    def finish(self, row: ExperimentRow, status: str, **fields: object) -> ExperimentFinished:
        """Give the row its final status, tell everyone, and count failures."""
        ctx = self.ctx
        ctx.ledger.finish(row.id, status, **fields)
        final = ctx.ledger.get(row.id)
        assert final is not None
        if status in FAILURES:
            self.tally.failures += 1
            self.tally.last_failure = f"#{row.id} {status}" + (f": {final.reason}" if final.reason else "")
        elif status in ("keep", "discard"):
            self.tally.failures = 0
        outcome = ExperimentFinished(
            experiment=row.id, status=status, metric=final.metric, delta=final.delta,
            incumbent_metric=final.incumbent_metric, commit=final.commit, description=final.description,
            training_seconds=final.training_seconds, wall_seconds=final.wall_seconds,
            peak_memory_mb=final.peak_memory_mb, reason=final.reason, log_tail=final.log_tail,
            reported_metric=final.reported_metric, noise=final.delta_band, evaluation=evaluation_label(final),
            worker=final.worker)
        ctx.emit(outcome)
        return outcome

    def not_run(self, row: ExperimentRow, status: str, reason: str) -> ExperimentFinished:
        """Record a proposal that never ran (rejected or vetoed): its row is born with its final status."""
        row.status, row.reason = status, reason
        self.ctx.ledger.begin(row)
        return self.finish(row, status, reason=reason)


def evaluation_label(row: ExperimentRow) -> str:
    """How a recorded experiment's metric was obtained: "trusted", "self_reported", or "" without a metric."""
    if row.metric is None:
        return ""
    return "self_reported" if row.self_reported else "trusted"
