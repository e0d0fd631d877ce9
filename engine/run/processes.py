"""A local run's processes: the tree it grows, killing what it leaves behind, and orphans of a dead engine.

A run carries a marker variable in its environment, so that a grandchild that called setsid and was reparented
before it was seen is still found. Its main process is noted in `runs/<n>/pid` while it runs, so that an engine
started after a killed one can kill the process group the dead engine left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil

RUN_MARK_VAR = "LOOPDECK_RUN_MARK"


class ProcessTree:
    """The run's processes: descendants seen while it runs (kept even after they leave the group) and peak RSS."""

    def __init__(self, pid: int, mark: str, started_at: float) -> None:
        self.pid = pid
        self._mark = mark
        self._started_at = started_at
        self.seen: dict[int, psutil.Process] = {}
        self.peak_rss = 0
        try:
            self._root: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    def sample(self) -> None:
        if self._root is None:
            return
        try:
            members = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for process in members:
            if process.pid != self.pid:
                self.seen.setdefault(process.pid, process)
            try:
                rss += process.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def signal_all(self, signum: int) -> None:
        """Signal the process group and every descendant seen, even ones that moved to another group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)
        for process in self.seen.values():
            try:
                process.send_signal(signum)  # psutil refuses if the pid now belongs to another process
            except psutil.Error:
                continue

    def kill_leftovers(self) -> None:
        """SIGKILL everything the run left behind and wait (briefly) until it is gone."""
        self.signal_all(signal.SIGKILL)
        marked = self._marked()
        for process in marked:
            try:
                process.kill()
            except psutil.Error:
                continue
        deadline = time.monotonic() + 2.0
        remaining = [*self.seen.values(), *marked]
        while remaining and time.monotonic() < deadline:
            remaining = [p for p in remaining if _alive(p)]
            if remaining:
                time.sleep(0.01)

    def _marked(self) -> list[psutil.Process]:
        """Processes started since the run began whose environment carries this run's mark."""
        found = []
        for process in psutil.process_iter(["create_time"]):
            if process.pid in (self.pid, os.getpid()) or (process.info["create_time"] or 0) < self._started_at - 1:
                continue
            try:
                if process.environ().get(RUN_MARK_VAR) == self._mark:
                    found.append(process)
            except psutil.Error:
                continue
        return found


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def has_exited(pid: int) -> bool:
    """True once the main process has exited, without reaping it: its pid (= the group id) stays reserved."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


class PidNote:
    """Notes a run's main process in `<run_dir>/pid` (with its start time, so a recycled pid is never taken for it)
    and tells `track` about it (telemetry follows that process)."""

    def __init__(self, run_dir: Path, track: Callable[[int | None], None]) -> None:
        self._path = run_dir / "pid"
        self._track = track

    def started(self, pid: int) -> None:
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self._path.write_text(json.dumps({"pid": pid, "create_time": created}))
        self._track(pid)

    def done(self) -> None:
        self._track(None)
        self._path.unlink(missing_ok=True)


def kill_orphan(run_dir: Path) -> None:
    """Kill the process group of a run left behind by a killed engine (if it is still the same process)."""
    try:
        noted = json.loads((run_dir / "pid").read_text())
        kill_group(int(noted["pid"]), float(noted["create_time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return
    finally:
        (run_dir / "pid").unlink(missing_ok=True)


def kill_group(pid: int, create_time: float) -> None:
    """SIGKILL the process group led by `pid`, if `pid` is still the process created at `create_time`."""
    try:
        process = psutil.Process(pid)
        # Only the very process we started (not a recycled pid), and only if it leads its own process group.
        if abs(process.create_time() - create_time) > 0.01 or os.getpgid(process.pid) != process.pid:
            return
        os.killpg(process.pid, signal.SIGKILL)
    except (OSError, psutil.Error):
        return
