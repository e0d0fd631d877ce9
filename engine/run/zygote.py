"""The warm runner's zygote: a process that has imported torch, the workspace's pinned harness and its data, and
forks each run from there.

Run by engine/run/warm.py as `python -P -m loopdeck.engine.run.zygote SOCKET WORKSPACE HARNESS_SHA256`, with the
scrubbed environment runs share (per-run variables come with each request). It prints `ready` once loaded, then
serves requests on a Unix SOCK_SEQPACKET socket, one connection per run:

  engine → zygote  {"argv": [...], "cwd": ..., "env": {...}, "limits": {...}} with the write end of the run's output
                   pipe passed as a file descriptor (socket.send_fds)
  zygote → engine  {"pid": N} once forked, or {"error": "..."}; then {"exit": RETURNCODE} when it has exited
  engine → zygote  "release" once the engine has killed what the run left behind
  zygote → engine  {"maxrss": BYTES}, and the connection closes

The child gets what a fresh process gets: a session of its own, stdin from /dev/null, stdout and stderr to the pipe,
the request's environment and working directory, the sandbox's limits (engine/run/sandbox.py), and the script run
as __main__ (or `-m module`) with its argv. A run's pid stays reserved (reaped only on "release"), so the engine
can signal its process group until it has cleaned up. When the engine goes away (its end of our stdin closes, or a
run's connection closes early), the zygote kills the runs it forked and exits: no orphans.

The zygote runs no experiment code itself: it only loads the hash-checked harness, so a forked child starts from
the same state a fresh process would reach, minus the seconds of imports. It refuses to fork once CUDA is
initialised in it (forking CUDA state is unsafe): the engine then starts a fresh process.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from loopdeck.engine.run.sandbox import EXIT_SANDBOX_FAILED, Limits, SandboxFailure, enter

MAX_MESSAGE = 1 << 20  # bytes of one request: the environment is the big part
_TICK = 0.02  # seconds between checks for exited runs


def preload(workspace: Path, harness_sha256: str) -> int:
    """Import torch and the workspace's harness (checked against its pin), and load its data into memory; returns
    torch's default thread count, which each child gets back."""
    import torch

    from loopdeck.gpt import HARNESS_FILE
    from loopdeck.gpt.evaluate import load_harness

    threads = torch.get_num_threads()
    # No OpenMP worker threads here: a forked child cannot use a pool its parent started (it hangs in the first
    # parallel op); with one thread none starts, and the child starts its own.
    torch.set_num_threads(1)
    harness = load_harness(workspace / HARNESS_FILE, harness_sha256)
    if callable(getattr(harness, "load_data", None)):
        harness.load_data()
    return threads


def cuda_initialised() -> bool:
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


def _exit_code(info: os.waitid_result) -> int:
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


class Zygote:
    """The serving loop: accept a run, fork it, report its exit, reap it on release."""

    def __init__(self, listener: socket.socket, threads: int) -> None:
        self._listener = listener
        self._threads = threads
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
        self._runs: dict[int, socket.socket] = {}  # pid → its connection
        self._exited: set[int] = set()

    def serve(self) -> None:
        while True:
            for key, _ in self._selector.select(_TICK):
                if key.data is None:
                    self._accept()
                elif key.data == "parent":
                    if not os.read(key.fd, 4096):  # the engine is gone
                        self._kill_all()
                        return
                else:
                    self._release(key.data)
            self._check_exits()

    def _accept(self) -> None:
        connection, _ = self._listener.accept()
        try:
            data, fds, _, _ = socket.recv_fds(connection, MAX_MESSAGE, 1)
            request = json.loads(data)
            if cuda_initialised():
                raise RuntimeError("CUDA is initialised in the zygote: forking it is unsafe")
            if len(fds) != 1:
                raise RuntimeError("the request carried no output pipe")
        except (OSError, ValueError, RuntimeError) as exc:
            connection.send(json.dumps({"error": str(exc)}).encode())
            connection.close()
            return
        pid = os.fork()
        if pid == 0:
            _child(request, fds[0], self._threads)
        os.close(fds[0])
        connection.send(json.dumps({"pid": pid}).encode())
        self._runs[pid] = connection
        self._selector.register(connection, selectors.EVENT_READ, pid)

    def _check_exits(self) -> None:
        for pid, connection in self._runs.items():
            if pid in self._exited:
                continue
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if info is not None:
                self._exited.add(pid)
                try:
                    connection.send(json.dumps({"exit": _exit_code(info)}).encode())
                except OSError:
                    continue  # the engine went away: _release reaps it

    def _release(self, pid: int) -> None:
        """The engine released the run (or went away): kill whatever is left of its group, reap it, close."""
        connection = self._runs.pop(pid)
        self._selector.unregister(connection)
        if pid not in self._exited:
            _kill_group(pid)
        self._exited.discard(pid)
        _, _, usage = os.wait4(pid, 0)
        with contextlib.suppress(OSError):
            connection.send(json.dumps({"maxrss": usage.ru_maxrss * 1024}).encode())
        connection.close()

    def _kill_all(self) -> None:
        for pid in list(self._runs):
            _kill_group(pid)
            os.waitpid(pid, 0)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# --- the forked child -----------------------------------------------------------------------------------------------


def _child(request: dict[str, Any], output_fd: int, threads: int) -> None:
    """Become the run: its own session, its output, environment, directory and limits; then its script. Never
    returns."""
    code = 1
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(output_fd, 1)
        os.dup2(output_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)  # the zygote's sockets
        for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        enter(Limits(**request["limits"]))
        sys.modules["torch"].set_num_threads(threads)  # what a fresh process would have
        code = _run_main(list(request["argv"]))
    except SandboxFailure as exc:
        print(f"loopdeck sandbox: {exc}", file=sys.stderr)
        code = EXIT_SANDBOX_FAILED
    except BaseException:  # noqa: BLE001 - the run's own error: its traceback goes to its log, as python would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _run_main(argv: list[str]) -> int:
    """Run `SCRIPT ARGS…` or `[-P] -m MODULE ARGS…` (the interpreter's own arguments) as __main__; its exit code."""
    try:
        if argv[:2] == ["-P", "-m"] or argv[:1] == ["-m"]:
            rest = argv[argv.index("-m") + 1:]
            sys.argv = ["-m", *rest[1:]]
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = argv
            sys.path.insert(0, os.path.dirname(script))
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0


def main() -> None:
    socket_path, workspace, harness_sha256 = sys.argv[1:4]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)
    listener.listen(64)
    threads = preload(Path(workspace), harness_sha256)
    print("ready", flush=True)
    Zygote(listener, threads).serve()


if __name__ == "__main__":
    main()
