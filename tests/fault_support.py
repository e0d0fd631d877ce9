"""What every fault-injection test checks after the fault: the workspace is consistent and nothing is left running."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
from conftest import git, ledger_rows

from loopdeck.engine.store.journal import JournalRead, read_journal

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
DRIVER = TESTS / "fault_driver.py"
RAN = {"keep", "discard", "aborted", "crash", "timeout", "nan", "interrupted"}  # the statuses results.tsv lists


def amend_config(workspace: Path, append: str = "", replace: tuple[str, str] | None = None) -> None:
    """Change a test workspace's loopdeck.toml (append a section, replace a line) and commit it."""
    path = workspace / "loopdeck.toml"
    text = path.read_text()
    if replace is not None:
        assert replace[0] in text
        text = text.replace(*replace)
    path.write_text(text + append)
    git(workspace, "commit", "-qam", "amend loopdeck.toml")


def run_driver(workspace: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), str(workspace), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def start_driver(workspace: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(DRIVER), str(workspace), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_cli(workspace: Path, *args: str) -> subprocess.Popen:
    """`loopdeck run WORKSPACE --headless …` in its own process (leading its own process group, as a shell job
    does), output captured."""
    return subprocess.Popen([sys.executable, "-m", "loopdeck.cli", "run", str(workspace), "--headless", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def journal_lines(workspace: Path) -> list[str]:
    path = workspace / ".loopdeck/events.jsonl"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def wait_for_line(workspace: Path, predicate: Callable[[str], bool], process: subprocess.Popen | None = None,
                  timeout: float = 30) -> str:
    """Poll the events journal until a line satisfies predicate (failing early if `process` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in journal_lines(workspace):
            if predicate(line):
                return line
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the engine exited ({process.returncode}) first:\n{process.communicate()}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for a journal line")


def gone(pids: list[int]) -> bool:
    """True when none of these processes is left (a zombie awaiting its reaper counts as gone)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def leftover_processes(workspace: Path) -> list[psutil.Process]:
    """Live processes (not zombies) working inside the workspace: a training run or anything it started.

    GitPython's persistent `git cat-file` readers of an engine running in this very process are not counted:
    they belong to its repository object and end with it."""
    root = str(workspace.resolve())
    me = os.getpid()
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == me or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.ppid() == me and process.cmdline()[:2] == ["git", "cat-file"]:
                continue
            if process.cwd() == root or process.cwd().startswith(root + "/"):
                found.append(process)
        except psutil.Error:
            continue
    return found


def assert_no_leftovers(workspace: Path, pids: list[int] = (), wait: float = 3.0) -> None:
    """Nothing runs in the workspace, and none of `pids` is alive (killed processes may take a moment to go)."""
    deadline = time.monotonic() + wait
    while True:
        alive = [pid for pid in pids if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
        left = leftover_processes(workspace)
        if not alive and not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left behind: {alive} {[(p.pid, p.cmdline()) for p in left]}")
        time.sleep(0.05)


def integrity(workspace: Path) -> str:
    with sqlite3.connect(workspace / ".loopdeck/ledger.sqlite") as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def assert_consistent(workspace: Path, damaged_lines: int = 0) -> list:
    """The invariants a restart must restore: ledger rows 0..n-1 each once and none in flight, results.tsv lists
    exactly the rows that ran, the tree is clean at the incumbent's commit, the journal decodes (at most
    `damaged_lines` lines torn by a kill), and the ledger passes SQLite's integrity check."""
    rows = ledger_rows(workspace)
    assert [row.id for row in rows] == list(range(len(rows))), [row.id for row in rows]
    assert not [row.id for row in rows if row.status == "running"]
    tsv = (workspace / ".loopdeck/results.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[0] for line in tsv] == [row.commit[:7] for row in rows
                                                     if row.status in RAN and row.commit]
    kept = [row for row in rows if row.status == "keep"]
    assert git(workspace, "status", "--porcelain") == ""
    if kept:
        assert git(workspace, "rev-parse", "HEAD") == kept[-1].commit
    read: JournalRead = read_journal(workspace / ".loopdeck/events.jsonl")
    assert len(read.bad_lines) <= damaged_lines and not read.unknown_kinds and not read.torn_tail, read.describe()
    assert integrity(workspace) == "ok"
    return rows
