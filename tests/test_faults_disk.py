"""Fault injection: a full disk or a read-only ledger while the engine records. The session stops cleanly with a
message that says what to do, the CLI exits 2 without a traceback, the ledger passes SQLite's integrity check,
and once the fault is gone the next session resumes.

No test here fills a real disk. The faults are real errors from the kernel or SQLite, provoked by stand-ins:
/dev/full (every write fails with ENOSPC), RLIMIT_FSIZE (a file cannot grow past N bytes: EFBIG, exactly where a
full disk would fail, for every file the engine writes), SQLite's max_page_count (SQLITE_FULL, SQLite's own
"database or disk is full"), and a read-only SQLite connection (SQLITE_READONLY), because root, which runs these
tests, ignores file permissions.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Recorded, ledger_rows
from fake_targets import ScriptedAgent, change, fake_train_source
from fault_support import REPO, assert_consistent, assert_no_leftovers, integrity

from loopdeck.cli.main import main
from loopdeck.engine.events import Event, ExperimentStarted
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.journal import JournalWriter

pytestmark = pytest.mark.timeout(120)


def run_with_fault(workspace: Path, fault: Callable[[Session], None]) -> tuple[Session, Recorded]:
    """A session (scripted agent, auto approval) that suffers `fault` as experiment #1 starts."""
    recorded = Recorded()
    holder: list[Session] = []

    def on_event(event: Event) -> None:
        recorded(event)
        if isinstance(event, ExperimentStarted) and event.experiment == 1:
            fault(holder[0])

    agent = ScriptedAgent([change("LR", 0.3), change("LR", 0.25)])
    session = Session(workspace, RunOptions(approval="auto"), on_event=on_event, agent=agent)
    holder.append(session)
    session.run()
    return session, recorded


def resume_after(workspace: Path, run_session) -> list:
    """The fault is gone: the next session recovers and goes on."""
    _, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.21)]), max_experiments=1, approval="auto")
    assert recorded.finished.reason == "max_experiments"
    rows = assert_consistent(workspace)
    assert rows[-1].status == "keep" and rows[-1].description == "LR 0.21"
    return rows


def full_journal(session: Session) -> None:
    session._journal = JournalWriter(Path("/dev/full"))


def full_ledger(session: Session) -> None:
    conn = session.ledger._conn
    conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")


def read_only_ledger(session: Session) -> None:
    session.ledger._conn = sqlite3.connect(f"file:{session.ledger.path}?mode=ro", uri=True, isolation_level=None,
                                           check_same_thread=False)


def full_results_tsv(session: Session) -> None:
    # The ledger writes results.tsv through this temporary name, then renames it.
    os.symlink("/dev/full", session.state_dir / f".results.tsv.{os.getpid()}.tmp")


FAULTS = [
    ("journal: ENOSPC from /dev/full", full_journal, "events journal /dev/full: [Errno 28] No space left on device"),
    ("ledger: SQLITE_FULL from max_page_count", full_ledger, "database or disk is full"),
    ("ledger: SQLITE_READONLY from a read-only connection", read_only_ledger, "attempt to write a readonly database"),
    ("results.tsv: ENOSPC from /dev/full", full_results_tsv, "results.tsv: [Errno 28] No space left on device"),
]


@pytest.mark.parametrize("what, fault, message", FAULTS, ids=[f[0] for f in FAULTS])
def test_a_store_that_cannot_be_written_stops_the_session_cleanly(make_workspace, run_session, what, fault,
                                                                  message):
    workspace = make_workspace()
    session, recorded = run_with_fault(workspace, fault)
    assert recorded.finished.reason == "error"
    assert message in session.error, session.error
    assert "run again" in session.error  # …and what to do about it
    session.ledger.close()
    assert integrity(workspace) == "ok"
    rows = ledger_rows(workspace)
    assert rows[0].status == "keep" and "running" not in [row.status for row in rows[:-1]]
    assert_no_leftovers(workspace)
    resumed = resume_after(workspace, run_session)
    # What was recorded stays as it was; the experiment cut off by the fault, if any, is now interrupted.
    assert [row.status for row in resumed[:len(rows)]] == [
        "interrupted" if row.status == "running" else row.status for row in rows]


def test_a_full_disk_at_start_is_one_clear_line_from_the_cli(make_workspace, run_session, capsys):
    workspace = make_workspace()
    (workspace / ".loopdeck").mkdir()
    os.symlink("/dev/full", workspace / ".loopdeck/events.jsonl")
    code = main(["run", str(workspace), "--headless", "--agent", "offline", "--max-experiments", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("loopdeck: error: cannot write the events journal ")
    assert "No space left on device" in err and "Free disk space" in err and "Traceback" not in err
    assert integrity(workspace) == "ok"
    (workspace / ".loopdeck/events.jsonl").unlink()
    resume_after(workspace, run_session)


@pytest.mark.parametrize("limit, mode, message", [
    (40_000, "ok", "ledger.sqlite: disk I/O error. Is the disk full"),  # the ledger's WAL reaches it first
    (100_000, "chatty", "runs/0/log.txt: File too large. Free disk space"),  # a run's log does
], ids=["ledger first", "run log first"])
def test_the_disk_filling_up_under_a_headless_run(make_workspace, run_session, limit, mode, message):
    """RLIMIT_FSIZE on the whole engine process: whichever file reaches the limit first fails, as on a full disk."""
    workspace = make_workspace(fake_train_source(mode=mode))
    engine = subprocess.run(
        [sys.executable, "-m", "loopdeck.cli", "run", str(workspace), "--headless", "--agent", "offline",
         "--max-experiments", "4"], cwd=REPO, capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert engine.returncode == 2, engine.stdout + engine.stderr
    assert engine.stderr.startswith("loopdeck: error: ") and message in engine.stderr, engine.stderr
    assert "Traceback" not in engine.stderr + engine.stdout
    assert integrity(workspace) == "ok"
    assert_no_leftovers(workspace)
    resume_after(workspace, run_session)
