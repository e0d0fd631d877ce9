"""The warm runner: an executor that forks each run from a per-workspace zygote instead of starting Python afresh.

`WarmExecutor` is the local executor (engine/run/runner.py: same supervision, timeout, cancel, cleanup of the
whole group, pid notes) with another way to start the run's main process. A run whose command is this Python
running a script of a workspace with a loopdeck harness (`python train.py`), or the trusted evaluator
(`python -P -m loopdeck.gpt.evaluate …`), is forked from that workspace's zygote (engine/run/zygote.py), which has
imported torch, the pinned harness and the data already: start-up drops from seconds to milliseconds. Everything
else — another interpreter, `uv run train.py`, a foreign autoresearch repository (no harness.py), anything not on
Linux, or a zygote that cannot start or refuses (CUDA initialised in it) — starts as a fresh process. The run's
log says which, on its first line.

A zygote serves one (workspace, harness sha256, environment) — the environment without the per-run variables,
since the harness reads some settings (the budget, the evaluation size) when it is imported. When any of them
changes, the old zygote is stopped and a new one started: a changed harness is never served by a stale copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from loopdeck.engine.config import Config
from loopdeck.engine.run.executor import ExperimentSpec, RunSink
from loopdeck.engine.run.processes import RUN_MARK_VAR
from loopdeck.engine.run.runner import Launched, LocalRun, Spawned
from loopdeck.engine.run.sandbox import Limits, unwrap
from loopdeck.engine.run.zygote import MAX_MESSAGE
from loopdeck.gpt import HARNESS_FILE

EVALUATOR = ("-P", "-m", "loopdeck.gpt.evaluate")
# Read by the harness when called, not when imported: they may differ from run to run of one zygote.
PER_RUN_VARS = frozenset({"LOOPDECK_METRICS", "LOOPDECK_RUN_DIR", "LOOPDECK_SEED", "LOOPDECK_TRUSTED_EVAL",
                          RUN_MARK_VAR})
READY_TIMEOUT = 120.0  # seconds a zygote may take to import torch and load the data
REPLY_TIMEOUT = 30.0  # seconds for the zygote to answer a request


class ZygoteUnavailable(Exception):
    """No zygote can fork this run; the message says why (the run starts fresh)."""


def make_executor(config: Config) -> WarmExecutor:
    """The executor `[experiment] warm_runner` asks for: forking where safe ("auto"), or fresh processes ("off")."""
    return WarmExecutor(enabled=config.experiment.warm_runner == "auto")


def fork_plan(spec: ExperimentSpec) -> tuple[list[str], Limits] | str:
    """(the command's arguments after the interpreter, its sandbox limits) when the run can be forked from a
    zygote; else why it cannot."""
    if not sys.platform.startswith("linux"):
        return f"the warm runner forks on Linux only (this is {sys.platform})"
    argv, limits = unwrap(spec.argv)
    if not argv or os.path.realpath(argv[0]) != os.path.realpath(sys.executable):
        return f"the command does not run loopdeck's Python ({' '.join(argv[:3])})"
    rest = argv[1:]
    if tuple(rest[:3]) == EVALUATOR:
        return rest, limits
    if not rest or not rest[0].endswith(".py"):
        return f"the command is not `python SCRIPT.py` ({' '.join(argv[:3])})"
    if not (spec.checkout / HARNESS_FILE).is_file():
        return f"the workspace has no loopdeck {HARNESS_FILE} to preload"
    return rest, limits


class WarmExecutor:
    """Runs each experiment like LocalExecutor, forked from its workspace's zygote where that is safe (and
    `enabled`: off, every run starts fresh, exactly as with LocalExecutor)."""

    def __init__(self, grace_seconds: float = 3.0, enabled: bool = True) -> None:
        self.grace_seconds = grace_seconds
        self.enabled = enabled
        self._lock = threading.Lock()
        self._zygotes: dict[Path, tuple[tuple, _Zygote]] = {}
        self._failed: dict[tuple, str] = {}  # zygotes that would not start: not retried for every run

    def start(self, spec: ExperimentSpec, sink: RunSink) -> LocalRun:
        if not self.enabled:
            return LocalRun(spec, sink, self.grace_seconds)
        plan = fork_plan(spec)

        def launch(argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> Launched:
            if isinstance(plan, str):
                return _fresh(argv, cwd, env, plan)
            try:
                return _Forked(self._zygote(spec.checkout, env), plan[0], cwd, env, plan[1])
            except ZygoteUnavailable as exc:
                return _fresh(argv, cwd, env, str(exc))

        return LocalRun(spec, sink, self.grace_seconds, launch=launch)

    def close(self) -> None:
        """Stop every zygote (their runs have ended: the session is over)."""
        with self._lock:
            zygotes, self._zygotes = [z for _, z in self._zygotes.values()], {}
        for zygote in zygotes:
            zygote.close()

    def _zygote(self, checkout: Path, env: Mapping[str, str]) -> _Zygote:
        """The zygote for this workspace, harness and environment: started (or restarted) when needed."""
        try:
            harness_sha = hashlib.sha256((checkout / HARNESS_FILE).read_bytes()).hexdigest()
        except OSError as exc:
            raise ZygoteUnavailable(f"cannot read {HARNESS_FILE}: {exc.strerror or exc}") from None
        shared = {name: value for name, value in env.items() if name not in PER_RUN_VARS}
        key = (str(checkout.resolve()), harness_sha, tuple(sorted(shared.items())))
        with self._lock:
            if key in self._failed:
                raise ZygoteUnavailable(self._failed[key])
            held = self._zygotes.get(checkout)
            if held is not None and held[0] == key and held[1].alive():
                return held[1]
            if held is not None:
                held[1].close()
                del self._zygotes[checkout]
            try:
                zygote = _Zygote(checkout, harness_sha, shared)
            except ZygoteUnavailable as exc:
                self._failed[key] = str(exc)
                raise
            self._zygotes[checkout] = (key, zygote)
            return zygote


def _fresh(argv: Sequence[str], cwd: Path, env: Mapping[str, str], why: str) -> Spawned:
    process = Spawned(argv, cwd, env)
    process.how = f"fresh process: {why}"
    return process


class _Zygote:
    """A running zygote process and the socket it listens on."""

    def __init__(self, checkout: Path, harness_sha: str, env: Mapping[str, str]) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="loopdeck-zygote-"))
        self.socket_path = str(self.folder / "socket")
        self.harness_sha = harness_sha
        with open(self.folder / "log.txt", "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-P", "-m", "loopdeck.engine.run.zygote", self.socket_path, str(checkout),
                 harness_sha], cwd=checkout, env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, start_new_session=True)
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], READY_TIMEOUT)
        if not ready or self._process.stdout.readline().strip() != b"ready":
            self.close()
            raise ZygoteUnavailable(f"the zygote did not start ({self._problem()})")

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def _problem(self) -> str:
        try:
            lines = (self.folder / "log.txt").read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        return lines[-1] if lines else f"exit code {self._process.poll()}"

    def close(self) -> None:
        """Close its stdin: it kills any run still in flight and exits."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class _Forked:
    """A run forked by a zygote (a Launched): exit status and peak memory come over its connection."""

    def __init__(self, zygote: _Zygote, argv: list[str], cwd: Path, env: Mapping[str, str], limits: Limits) -> None:
        request = {"argv": argv, "cwd": str(cwd), "env": dict(env), "limits": asdict(limits)}
        read_fd, write_fd = os.pipe()
        self._connection = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._connection.settimeout(REPLY_TIMEOUT)
            self._connection.connect(zygote.socket_path)
            socket.send_fds(self._connection, [json.dumps(request).encode()], [write_fd])
            reply = json.loads(self._connection.recv(MAX_MESSAGE) or b"{}")
        except (OSError, ValueError) as exc:
            reply = {"error": f"the zygote did not answer ({exc})"}
        finally:
            os.close(write_fd)
        if "pid" not in reply:
            os.close(read_fd)
            self._connection.close()
            raise ZygoteUnavailable(reply.get("error") or "the zygote refused the run")
        self.pid: int = reply["pid"]
        self.stdout_fd = read_fd
        self.how = f"warm runner: forked by zygote {zygote.pid} (harness sha256 {zygote.harness_sha[:12]})"
        self._returncode: int | None = None
        self._ended = False
        self._connection.setblocking(False)

    def exited(self) -> bool:
        if not self._ended:
            try:
                message = self._connection.recv(MAX_MESSAGE)
            except BlockingIOError:
                return False
            except OSError:
                message = b""
            self._ended = True  # an exit report, or the zygote is gone (the group is killed all the same)
            self._returncode = json.loads(message).get("exit") if message else None
        return True

    def reap(self) -> tuple[int | None, int]:
        os.close(self.stdout_fd)
        maxrss = 0
        try:
            self._connection.setblocking(True)
            self._connection.settimeout(REPLY_TIMEOUT)
            self._connection.send(b"release")
            message = self._connection.recv(MAX_MESSAGE)
            maxrss = int(json.loads(message).get("maxrss", 0)) if message else 0
        except (OSError, ValueError):
            pass
        finally:
            self._connection.close()
        return self._returncode, maxrss
