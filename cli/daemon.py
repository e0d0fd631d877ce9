"""Starting and finding a workspace's background engine, for `run`, `attach`, `watch`, `stop` and a restart.

`start_engine` launches `loopdeck engine DIR …` in its own session (no terminal: it outlives this one), its output
appended to `.loopdeck/engine.log`, and waits until its channel answers, or until it exits: then the reason,
which the engine printed as its last `loopdeck: error:` line, becomes this command's one-line error.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from loopdeck.cli.options import RUN_FLAGS
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.channel.registry import EngineRecord, running_record
from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.session import RunOptions

LOG_FILE = "engine.log"
START_TIMEOUT = 120.0  # seconds for a new engine to open its channel (preflight imports the training file)
ERROR_PREFIX = "loopdeck: error: "


def engine_argv(workspace: Path, options: RunOptions) -> list[str]:
    """The `loopdeck engine` arguments that run `workspace` with `options` (flags only where one was given)."""
    argv = ["engine", str(workspace.resolve())]  # absolute: a restart may come from another directory
    for option in fields(options):
        value = getattr(options, option.name)
        if value is not None:
            argv += [RUN_FLAGS[option.name], str(value)]
    return argv


def find_engine(workspace: Path) -> EngineRecord | None:
    """The engine running on `workspace` now, if any."""
    return running_record(workspace / STATE_DIR)


def start_engine(workspace: Path, argv: list[str], timeout: float = START_TIMEOUT) -> EngineRecord:
    """Launch a background engine and wait for its channel; a start-up failure raises its own one-line error."""
    state_dir = workspace / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE
    with open(log_path, "ab") as log:
        start = log.tell()
        process = subprocess.Popen([sys.executable, "-m", "loopdeck.cli.main", *argv], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    # Reap it when it ends, so that a finished engine does not linger as a zombie while this console runs.
    threading.Thread(target=process.wait, name="loopdeck-engine-reaper", daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = find_engine(workspace)
        if record is not None and record.pid == process.pid and _answers(Path(record.socket)):
            return record
        if process.poll() is not None:
            raise LoopdeckError(_failure(log_path, start, process.returncode))
        time.sleep(0.1)
    raise LoopdeckError(f"the engine (pid {process.pid}) did not open its channel within {timeout:g}s: see "
                        f"{log_path}; `loopdeck stop {workspace}` stops it")


def _answers(socket_path: Path) -> bool:
    client = ChannelClient(socket_path, role="watch")
    try:
        client.connect(timeout=2.0)
    except (OSError, LoopdeckError):
        return False
    client.close()
    return True


def _failure(log_path: Path, start: int, status: int) -> str:
    """Why the engine exited: its own one-line error if it printed one, else the end of its log."""
    try:
        with open(log_path, "rb") as log:
            log.seek(start)
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        lines = []
    errors = [line.removeprefix(ERROR_PREFIX) for line in lines if line.startswith(ERROR_PREFIX)]
    if errors:
        return errors[-1]
    tail = " | ".join(line.strip() for line in lines[-5:] if line.strip()) or "no output"
    return f"the engine exited (status {status}) before it was ready: {tail} (full log: {log_path})"
