"""One engine per workspace: an advisory `flock` on `.loopdeck/lock`, which records the holder's pid and start time.

The kernel drops a `flock` when its holder dies (even by SIGKILL), so a dead engine's stale pid never keeps the
workspace locked: whoever finds the lock free simply takes it and overwrites the record.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from loopdeck.engine.errors import LoopdeckError

LOCK_FILE = "lock"


def read_holder(path: Path) -> dict:
    """The pid/started record of the lock file, or {} if it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class WorkspaceLock:
    """The engine's exclusive hold on one workspace, taken by `acquire` and dropped by `release` (or its death)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LoopdeckError naming the engine that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            holder = read_holder(self.path)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise LoopdeckError(
                f"another loopdeck engine (pid {holder.get('pid', '?')}, started {since}) is running on this "
                "workspace; attach to it with `loopdeck attach DIR` (or `loopdeck watch DIR`), or stop it with "
                "`loopdeck stop DIR`"
            ) from None
        record = json.dumps({"pid": os.getpid(), "started": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


def _try_flock(fd: int, attempts: int = 5) -> bool:
    """Retry briefly: `is_locked` probes hold a shared lock for a moment, which must not look like an engine."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


def is_locked(state_dir: Path) -> dict | None:
    """The holder record if an engine holds the workspace's lock now, else None (probes without keeping it)."""
    path = Path(state_dir) / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(path) or {"pid": "?"}
    finally:
        os.close(fd)
    return None
