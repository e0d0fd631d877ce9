"""Fault injection: a corrupted or truncated ledger or events journal, found when a session starts. A damaged ledger
stops the start with a message that says how to recover, and following it works; a damaged journal is reported and
the session goes on. (Readers of a torn journal, `loopdeck watch` among them: tests/test_journal.py.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, change
from fault_support import assert_consistent

from loopdeck.cli.main import main
from loopdeck.engine.store.journal import read_journal

pytestmark = pytest.mark.timeout(120)


def first_session(workspace: Path, run_session) -> None:
    run_session(workspace, ScriptedAgent([change("LR", 0.3), change("LR", 0.9)]), max_experiments=2)


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database, it was overwritten" * 100)


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def zeroed_pages(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:8192] = bytes(4096)  # the table's first page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [garbage, truncated, zeroed_pages], ids=lambda f: f.__name__)
def test_a_corrupt_ledger_stops_the_start_and_the_documented_recovery_works(make_workspace, run_session, capsys,
                                                                             damage):
    workspace = make_workspace()
    first_session(workspace, run_session)
    state = workspace / ".loopdeck"
    history = (state / "results.tsv").read_text()
    for companion in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
        (state / companion).unlink(missing_ok=True)
    damage(state / "ledger.sqlite")

    code = main(["run", str(workspace), "--headless", "--agent", "offline", "--max-experiments", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.startswith(f"loopdeck: error: the experiment ledger {state / 'ledger.sqlite'} is corrupt (")
    assert "To recover: move ledger.sqlite (and any ledger.sqlite-wal / -shm beside it) and results.tsv out" in err

    # The recovery the message describes: move those files aside, keep the history, start a fresh ledger.
    aside = workspace.parent / "aside"
    aside.mkdir()
    for name in ("ledger.sqlite", "results.tsv"):
        shutil.move(state / name, aside / name)
    assert main(["run", str(workspace), "--headless", "--agent", "offline", "--max-experiments", "1"]) == 0
    assert (aside / "results.tsv").read_text() == history  # the old history, kept
    rows = assert_consistent(workspace)
    assert rows[0].description == "baseline" and len(rows) == 2


def test_a_damaged_journal_is_reported_at_start_and_the_session_goes_on(make_workspace, run_session, capsys):
    workspace = make_workspace()
    first_session(workspace, run_session)
    journal = workspace / ".loopdeck/events.jsonl"
    lines = journal.read_bytes().split(b"\n")
    lines[3] = b'{"kind": "state_changed", "ts": 1, "sta\xff\xfe garbage'  # bit rot in the middle
    journal.write_bytes(b"\n".join(lines[:-1]) + b"\n" + b'{"kind":"notice","ts":1.0,"lev')  # and a torn end
    before = len(lines) - 1

    assert main(["run", str(workspace), "--headless", "--agent", "offline", "--max-experiments", "1"]) == 0
    out = capsys.readouterr().out
    assert (f"loopdeck: {journal}: 1 damaged line(s) skipped (line 4); an incomplete last line skipped (a writer "
            "stopped mid-event). The ledger and results.tsv are not affected") in out
    assert "move events.jsonl aside" in out

    read = read_journal(journal)
    assert read.bad_lines == [4, before + 1] and not read.torn_tail  # the torn piece now ends a line of its own
    assert read.events[-1].kind == "session_finished" and read.events[-1].reason == "max_experiments"
    assert [row.status for row in ledger_rows(workspace)][-1] in ("keep", "discard")
    assert_consistent(workspace, damaged_lines=2)


def test_a_truncated_journal_start_reads_as_a_torn_event(make_workspace, run_session, capsys):
    workspace = make_workspace()
    first_session(workspace, run_session)
    journal = workspace / ".loopdeck/events.jsonl"
    data = journal.read_bytes()
    journal.write_bytes(data[: len(data) - 37])  # cut inside the last event, as a kill mid-write does
    assert main(["run", str(workspace), "--headless", "--agent", "offline", "--max-experiments", "1"]) == 0
    assert "an incomplete last line skipped" in capsys.readouterr().out
    assert_consistent(workspace, damaged_lines=1)
