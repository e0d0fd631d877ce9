"""Soak: 200 sub-second experiments in one session (bench/soak.py; `python -m bench.soak --count 500` for more).

Thresholds, and why:
- open files and threads: the same after the last experiment as after the warm-up (a thread may be drafting the
  next proposal at either reading, hence one of slack). A leaked log handle or reader thread per run shows at once.
- live Python objects: under 20 more per experiment. The loop keeps nothing per experiment (its history is in
  SQLite); one leaked ledger row or run result would be dozens of objects per experiment.
- RSS: under 8 MB of growth over 170 experiments after the warm-up. Measured: 2-3 MB (and 6.5 MB over 470 in
  bench/soak.py), about 14 KB per experiment while the live objects stay flat. Two causes, both bounded or by
  design: each agent turn materialises the whole history from the ledger, so the transient peak that RSS keeps
  grows with the rows (about half: without it the growth is 1.5 MB), and SQLite's page cache fills as the ledger
  grows (capped at 2 MB). A leak of a run's log, metrics or process handles would be far more.
- the console's state, fed the whole journal: under 4 KB per experiment. It keeps one table row per experiment by
  design (the diff and log tail it shows); every live history (log, curve, reasoning, telemetry) is bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fault_support import REPO

from bench.soak import WARMUP, SoakReport

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
COUNT = 200


def test_a_long_session_keeps_memory_flat_and_the_records_complete():
    # In a process of its own: this one's memory carries every other test's leftovers.
    soaked = subprocess.run([sys.executable, "-m", "bench.soak", "--count", str(COUNT), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert soaked.returncode == 0, soaked.stdout + soaked.stderr
    fields = json.loads(soaked.stdout)
    report = SoakReport(**{name: tuple(value) if isinstance(value, list) and name != "journal_problems" else value
                           for name, value in fields.items()})
    print("\n".join(report.lines()))
    assert report.experiments == COUNT + 1
    assert report.statuses == {"keep": 51, "discard": 50, "rejected": 50, "crash": 50}  # every path, many times
    assert report.ledger_ok
    assert report.journal_problems == []
    assert report.fds[1] == report.fds[0]
    assert report.threads[1] <= report.threads[0] + 1
    assert report.blocks_per_experiment < 20
    assert report.rss_growth_mb < 8.0
    after_warmup, after_all = report.view_mb
    assert (after_all - after_warmup) * 2**20 / (COUNT - WARMUP) < 4096
