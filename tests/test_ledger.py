"""Ledger: rows recorded, updated and finished; results.tsv byte for byte; durability and corruption handling."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from loopdeck.cli.status_table import format_status_table
from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.research.history import SUMMARY_DIFF_CHARS, SUMMARY_LOG_LINES, agent_history
from loopdeck.engine.store.ledger import (
    SCHEMA_VERSION,
    ExperimentRow,
    Ledger,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger(tmp_path / ".loopdeck") as opened:
        yield opened


def test_begin_update_finish_get(ledger: Ledger) -> None:
    assert ledger.next_id() == 0
    assert ledger.incumbent() is None
    ledger.begin(ExperimentRow(id=0, status="running", description="baseline", parent_commit="a" * 40,
                               env={"python": "3.11.9", "device": "cpu", "hashes": {"train.py": "ab12"}}))
    assert ledger.next_id() == 1
    ledger.update(0, commit="b" * 40, input_tokens=12, self_reported=False)
    ledger.finish(0, "keep", metric=1.5, peak_memory_mb=2048.0, training_seconds=2.0, meta={"knob": "LR"})

    row = ledger.get(0)
    assert row is not None
    assert (row.status, row.metric, row.commit, row.input_tokens, row.self_reported) == (
        "keep", 1.5, "b" * 40, 12, False)
    assert row.env == {"python": "3.11.9", "device": "cpu", "hashes": {"train.py": "ab12"}}
    assert row.meta == {"knob": "LR"}
    assert row.started_at > 0 and row.finished_at is not None and row.finished_at >= row.started_at
    assert ledger.get(7) is None


def test_incumbent_is_latest_keep_and_unfinished_lists_running(ledger: Ledger) -> None:
    for id, status, metric in [(0, "keep", 2.0), (1, "discard", 2.1), (2, "keep", 1.9), (3, "crash", None)]:
        ledger.begin(ExperimentRow(id=id, status="running", commit=f"{id:07d}"))
        ledger.finish(id, status, metric=metric)
    ledger.begin(ExperimentRow(id=4, status="running", commit="0000004"))
    incumbent = ledger.incumbent()
    assert incumbent is not None and incumbent.id == 2 and incumbent.metric == 1.9
    assert [row.id for row in ledger.unfinished()] == [4]
    assert [row.id for row in ledger.rows()] == [0, 1, 2, 3, 4]


def test_misuse_is_refused(ledger: Ledger) -> None:
    ledger.begin(ExperimentRow(id=0, status="running"))
    with pytest.raises(ValueError, match="already"):
        ledger.begin(ExperimentRow(id=0, status="running"))
    with pytest.raises(KeyError):
        ledger.update(5, metric=1.0)
    with pytest.raises(TypeError, match="bogus"):
        ledger.update(0, bogus=1)
    with pytest.raises(ValueError, match="final"):
        ledger.finish(0, "running")
    assert len(ledger.rows()) == 1


def test_summaries_are_compact_agent_history(ledger: Ledger) -> None:
    long_diff = "+x = 1\n" * 2000
    log = "".join(f"line {i}\n" for i in range(500))
    ledger.begin(ExperimentRow(id=0, status="running", description="baseline"))
    ledger.finish(0, "keep", metric=1.0)
    ledger.begin(ExperimentRow(id=1, status="running", description="huge change", diff=long_diff,
                               meta={"knobs": ["LR"]}))
    ledger.finish(1, "crash", reason="Traceback: boom", log_tail=log)
    ledger.begin(ExperimentRow(id=2, status="running", description="in flight"))

    summaries = agent_history(ledger.rows())
    assert [s.id for s in summaries] == [0, 1]  # the experiment in flight is not history yet
    assert all(isinstance(s, ExperimentSummary) for s in summaries)
    crash = summaries[1]
    assert (crash.status, crash.reason, crash.description, dict(crash.meta)) == (
        "crash", "Traceback: boom", "huge change", {"knobs": ["LR"]})
    assert long_diff.startswith(crash.diff.split("\n…")[0]) and len(crash.diff) < SUMMARY_DIFF_CHARS + 100
    assert crash.log_tail.splitlines() == [f"line {i}" for i in range(500 - SUMMARY_LOG_LINES, 500)]


def test_wal_mode_and_schema_version(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_reopen_keeps_rows_and_refuses_newer_schema(tmp_path: Path) -> None:
    state = tmp_path / ".loopdeck"
    with Ledger(state) as ledger:
        ledger.begin(ExperimentRow(id=0, status="running", description="baseline"))
    with Ledger(state) as ledger:
        assert [(r.id, r.status, r.description) for r in ledger.rows()] == [(0, "running", "baseline")]
    conn = sqlite3.connect(state / "ledger.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(LoopdeckError, match="newer loopdeck"):
        Ledger(state)


def test_create_false_needs_an_existing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LoopdeckError, match="loopdeck run"):
        Ledger(tmp_path / ".loopdeck", create=False)
    assert not (tmp_path / ".loopdeck").exists()


def test_results_tsv_byte_for_byte(ledger: Ledger) -> None:
    sequence = [
        # id, status, commit, metric, peak MB, description
        (0, "keep", "a1b2c3d4e5f6", 0.9979, 45060.2, "baseline"),
        (1, "discard", "b2c3d4e5f6a7", 1.005, 45100.0, "switch to GeLU activation"),
        (2, "crash", "c3d4e5f6a7b8", None, None, "double model width (OOM)"),
        (3, "keep", "d4e5f6a7b8c9", 0.9932, 45260.8, "increase LR\tto 0.04\nand warmup"),
        (4, "vetoed", "", None, None, "delete the evaluation"),
        (5, "timeout", "e5f6a7b8c9d0", 0.95, 1000.0, "sleep forever"),
        (6, "aborted", "f6a7b8c9d0e1", None, 3000.0, "tiny batch, behind incumbent"),
    ]
    for id, status, commit, metric, peak, description in sequence:
        ledger.begin(ExperimentRow(id=id, status="running", commit=commit, description=description))
        ledger.finish(id, status, metric=metric, peak_memory_mb=peak)
    expected = (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
        "b2c3d4e\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
        "c3d4e5f\t0.000000\t0.0\tcrash\tdouble model width (OOM)\n"
        "d4e5f6a\t0.993200\t44.2\tkeep\tincrease LR to 0.04 and warmup\n"
        "e5f6a7b\t0.000000\t0.0\tcrash\tsleep forever\n"
        "f6a7b8c\t0.000000\t2.9\tdiscard\ttiny batch, behind incumbent\n"
    )
    assert ledger.results_path.read_bytes() == expected.encode()
    assert not [p for p in ledger.state_dir.iterdir() if p.name.endswith(".tmp")]


def test_results_tsv_resynced_on_open(tmp_path: Path) -> None:
    state = tmp_path / ".loopdeck"
    with Ledger(state) as ledger:
        ledger.begin(ExperimentRow(id=0, status="running", commit="1234567890", description="baseline"))
        ledger.finish(0, "keep", metric=1.25)
    (state / "results.tsv").write_text("stale\n")
    Ledger(state).close()
    assert (state / "results.tsv").read_text() == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n1234567\t1.250000\t0.0\tkeep\tbaseline\n")


def test_rows_survive_sigkill_right_after_finish(tmp_path: Path) -> None:
    state = tmp_path / ".loopdeck"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from loopdeck.engine.store.ledger import ExperimentRow, Ledger
        ledger = Ledger(Path({str(state)!r}))
        for i in range(3):
            ledger.begin(ExperimentRow(id=i, status="running", commit=f"c{{i:06d}}", description=f"exp {{i}}"))
            ledger.finish(i, "keep" if i != 1 else "discard", metric=1.0 - i / 10)
        ledger.begin(ExperimentRow(id=3, status="running", description="in flight"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert (state / "ledger.sqlite-wal").exists()  # the kill left the WAL un-checkpointed
    with Ledger(state) as ledger:
        assert [(r.id, r.status, r.metric) for r in ledger.rows()] == [
            (0, "keep", 1.0), (1, "discard", 0.9), (2, "keep", 0.8), (3, "running", None)]
        assert [r.id for r in ledger.unfinished()] == [3]
    assert (state / "results.tsv").read_text().count("\n") == 4


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / ".loopdeck"
    state.mkdir()
    (state / "ledger.sqlite").write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(LoopdeckError, match=r"corrupt.*move ledger\.sqlite"):
        Ledger(state)


def test_truncated_database_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / ".loopdeck"
    with Ledger(state) as ledger:
        for i in range(60):
            ledger.begin(ExperimentRow(id=i, status="running", diff=f"+{i}\n" * 400))
    db = state / "ledger.sqlite"
    assert not (state / "ledger.sqlite-wal").exists()  # closing checkpointed everything into the main file
    size = db.stat().st_size
    with open(db, "r+b") as damaged:
        damaged.truncate(size // 2)
    with pytest.raises(LoopdeckError, match="corrupt"):
        Ledger(state)


def test_read_only_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    state = tmp_path / ".loopdeck"
    state.mkdir()
    state.chmod(0o500)
    try:
        with pytest.raises(LoopdeckError, match="ledger"):
            Ledger(state)
    finally:
        state.chmod(0o700)


def test_reader_thread_while_loop_thread_writes(ledger: Ledger) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                ledger.rows()
                ledger.incumbent()
        except BaseException as exc:  # surfaced below: a thread's exception would otherwise vanish
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(40):
        ledger.begin(ExperimentRow(id=i, status="running", commit=f"{i:07d}"))
        ledger.finish(i, "discard" if i else "keep", metric=1.0)
    done.set()
    reader.join()
    assert not errors
    assert len(ledger.rows()) == 40


def test_status_table_fits_and_has_footer() -> None:
    rows = [
        ExperimentRow(id=0, status="keep", commit="a", metric=2.0, peak_memory_mb=512.0, training_seconds=3.04,
                      description="baseline", meta={"baseline": True}),
        ExperimentRow(id=1, status="discard", metric=2.01, delta=0.01, training_seconds=3.0,
                      description="raise the matrix learning rate " * 5),
        ExperimentRow(id=2, status="interrupted", description="engine killed"),
        ExperimentRow(id=3, status="keep", metric=1.9, delta=-0.1, description="depth 3"),
    ]
    table = format_status_table(rows)
    lines = table.splitlines()
    assert all(len(line) <= 100 for line in lines)
    assert lines[0].split() == ["id", "status", "metric", "delta", "mem", "GB", "train", "s", "description"]
    assert "2.010000" in table and "+0.010000" in table and "0.5" in table and "3.0" in table
    assert lines[3].endswith("…")
    assert lines[-1] == "baseline 2.000000 · best 1.900000 (#3), -0.100000 (-5.00%) vs baseline · kept 1/3 experiments"
    assert format_status_table([]) == "no experiments yet"


def test_full_disk_while_recording_is_a_clear_error_and_leaves_the_ledger_intact(ledger: Ledger) -> None:
    ledger.begin(ExperimentRow(id=0, status="running", commit="0000000"))
    ledger.finish(0, "keep", metric=1.0)
    # SQLite reports a page limit exactly as it reports a full disk (SQLITE_FULL).
    (pages,) = ledger._conn.execute("PRAGMA page_count").fetchone()
    ledger._conn.execute(f"PRAGMA max_page_count = {pages + 1}")
    with pytest.raises(LoopdeckError, match="could not record experiment 1.*full"):
        ledger.begin(ExperimentRow(id=1, status="running", diff="+x\n" * 50_000))
    assert [r.id for r in ledger.rows()] == [0]
    conn = sqlite3.connect(ledger.path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
