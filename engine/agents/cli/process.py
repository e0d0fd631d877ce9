"""Run a CLI as its own process group: its stdout as lines while it runs, killed whole on timeout or cancel."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

POLL_SECONDS = 0.2
TERM_GRACE_SECONDS = 3.0  # between SIGTERM and SIGKILL of the group
STDERR_TAIL_CHARS = 2000


class ProcessTimeout(Exception):
    """The process ran past its deadline and was killed."""


class ProcessCancelled(Exception):
    """`cancelled()` turned true and the process was killed."""


class GroupProcess:
    """One CLI run: `lines()` yields its stdout lines; it is killed (with its children) when it overruns or the
    turn is cancelled, and always when the caller stops early."""

    def __init__(self, argv: list[str], cwd: Path, stdin_path: Path, stderr_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.stderr_path = stderr_path
        with stdin_path.open("rb") as stdin, stderr_path.open("wb") as stderr:
            # A new session: the CLI and whatever it starts (tools, shells) are one group, killed together.
            self.process = subprocess.Popen(argv, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr,
                                            start_new_session=True, env=env)
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="loopdeck-cli-agent", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def lines(self, timeout: float, cancelled: Callable[[], bool]) -> Iterator[str]:
        """Stdout lines until the process closes it; raises ProcessTimeout or ProcessCancelled after a kill."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if cancelled():
                    raise ProcessCancelled()
                if time.monotonic() > deadline:
                    raise ProcessTimeout()
                try:
                    line = self._lines.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if line is None:
                    return
                yield line.decode("utf-8", errors="replace")
        finally:
            if self.process.poll() is None and not self._reader.is_alive():
                # stdout closed: give the CLI a moment to exit by itself before the group is killed.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(TERM_GRACE_SECONDS)
            self.kill()

    def kill(self) -> None:
        """SIGTERM to the whole group, SIGKILL after a grace period; reaps the CLI. Idempotent."""
        pgid = self.process.pid
        for sig, wait in ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, None)):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait)
            if not _group_alive(pgid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(TERM_GRACE_SECONDS)
        # The reader ends at EOF once the group is gone (never closed under it: that would race its read).
        self._reader.join(TERM_GRACE_SECONDS)

    def stderr_tail(self) -> str:
        try:
            text = self.stderr_path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            return ""
        return text if len(text) <= STDERR_TAIL_CHARS else "…" + text[-STDERR_TAIL_CHARS:]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
