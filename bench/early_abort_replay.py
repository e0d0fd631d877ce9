"""Benchmark of the early-abort rule: replays recorded sessions to measure compute saved and false aborts.

For every experiment that ran to the end (kept or discarded), the run's recorded loss curve
(`.loopdeck/runs/<n>/metrics.jsonl`) is fed, record by record, to `loopdeck.engine.research.early_abort.EarlyAbort` against the curve
of the incumbent it was measured against (the kept experiment whose commit is its parent). Where the rule would have
stopped the run, the training seconds after that point are "saved"; a stopped run that was in fact kept is a false
abort. Runs that were aborted live have no full curve and are left out, so record sessions with
`[evaluation] early_abort = false` to replay them.

Run: python bench/early_abort_replay.py [WORKSPACE] [--margins 0.05,0.1,0.2] [--fractions 0.3,0.5,0.7]
Without WORKSPACE it first records one: the GPT template on the CPU with the offline agent
(--experiments 12 --budget 6: about four minutes on two cores), early abort off so every curve is complete;
--record DIR keeps it for later replays.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loopdeck.engine.config import default_toml  # noqa: E402
from loopdeck.engine.research.early_abort import AbortRule, EarlyAbort  # noqa: E402
from loopdeck.engine.run.executor import METRICS_FILE  # noqa: E402
from loopdeck.engine.run.metrics import incumbent_curve  # noqa: E402
from loopdeck.engine.session import RunOptions, Session  # noqa: E402
from loopdeck.engine.store.ledger import ExperimentRow, Ledger  # noqa: E402
from loopdeck.engine.store.workspace import init_workspace  # noqa: E402


@dataclass(frozen=True)
class Replay:
    experiment: int
    status: str
    trained: float  # training seconds the run used
    stopped_at: float | None  # where the rule would have stopped it


def replay(state_dir: Path, rows: list[ExperimentRow], rule: AbortRule) -> list[Replay]:
    kept = {row.commit: row for row in rows if row.status == "keep"}
    replays = []
    for row in rows:
        incumbent = kept.get(row.parent_commit)
        if row.is_baseline or row.status not in ("keep", "discard") or incumbent is None:
            continue
        curve, reference = (incumbent_curve(state_dir / "runs" / str(number) / METRICS_FILE, points=None)
                            for number in (row.id, incumbent.id))
        if not curve or not reference:
            continue
        budget = float(row.env.get("config", {}).get("experiment", {}).get("budget_seconds") or curve[-1][0])
        watch = EarlyAbort(reference, budget, rule)
        stopped = next((elapsed for elapsed, loss in curve if watch.observe(elapsed, loss)), None)
        replays.append(Replay(row.id, row.status, row.training_seconds or curve[-1][0], stopped))
    return replays


def record_session(directory: Path, experiments: int, budget: float) -> Path:
    """A fresh workspace on the GPT template, run headless with the offline agent, early abort off."""
    workspace = init_workspace(directory, budget=budget, agent="offline", approval="auto")
    toml = default_toml(budget_seconds=budget, kind="offline", approval="auto", early_abort=False, baseline_seeds=1,
                        holdout_every=0, env={"LOOPDECK_EVAL_TOKENS": "16384"})
    (workspace / "loopdeck.toml").write_text(toml, encoding="utf-8")
    subprocess.run(["git", "commit", "-qam", "bench: early abort off, small evaluation"], cwd=workspace, check=True)
    started = time.monotonic()
    finished = Session(workspace, RunOptions(max_experiments=experiments)).run()
    print(f"recorded {finished.experiments} experiments ({finished.kept} kept) in {time.monotonic() - started:.0f} s "
          f"in {workspace}")
    return workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", nargs="?", type=Path, help="a workspace with a recorded session")
    parser.add_argument("--experiments", type=int, default=12, help="experiments to record (no WORKSPACE)")
    parser.add_argument("--budget", type=float, default=6.0, help="training seconds per run (no WORKSPACE)")
    parser.add_argument("--record", type=Path, help="record into this new directory, kept for later replays")
    parser.add_argument("--margins", default="0.05,0.1,0.2", help="relative loss margins to try")
    parser.add_argument("--fractions", default="0.3,0.5,0.7", help="budget fractions after which the rule acts")
    parser.add_argument("--sustain", type=int, default=10, help="behind records in a row before a stop")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="loopdeck-replay-") as scratch:
        workspace = args.workspace or record_session(args.record or Path(scratch) / "ws", args.experiments,
                                                     args.budget)
        state_dir = workspace / ".loopdeck"
        with Ledger(state_dir, create=False) as ledger:
            rows = ledger.rows()
        print(f"\n{'margin':>6} {'after':>5}  {'replayed':>8} {'stopped':>7} {'saved s':>8} {'saved':>6} "
              f"{'false aborts':>12} {'false-abort rate':>16}")
        for fraction in (float(f) for f in args.fractions.split(",")):
            for margin in (float(m) for m in args.margins.split(",")):
                results = replay(state_dir, rows, AbortRule(fraction, margin, args.sustain))
                stopped = [r for r in results if r.stopped_at is not None]
                saved = sum(r.trained - r.stopped_at for r in stopped if r.stopped_at is not None)
                total = sum(r.trained for r in results) or 1.0
                false = [r for r in stopped if r.status == "keep"]
                kept = sum(r.status == "keep" for r in results)
                rate = f"{len(false)}/{len(stopped)} stops" if stopped else "-"
                marker = "  ← default" if (fraction, margin) == (0.5, 0.1) else ""
                print(f"{margin:>6.2f} {fraction:>5.1f}  {len(results):>8} {len(stopped):>7} {saved:>8.1f} "
                      f"{saved / total:>6.1%} {len(false):>5} of {kept:<3} kept {rate:>16}{marker}")


if __name__ == "__main__":
    main()
