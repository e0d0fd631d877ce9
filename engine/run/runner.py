"""The local executor: each experiment a process group on this machine, with live output, timeout and no orphans.

`LocalExecutor` implements the executor boundary (engine/run/executor.py) with `run_experiment`, one run per
thread. The training command runs in a new session (its own process group). Its merged stdout/stderr goes to the
log file and, split into lines (at `\\n` or `\\r`, so in-place progress lines count), to `on_line` from a reader
thread; the JSON-lines metrics file is followed from the supervising thread and each record goes to `on_metrics`.
A timeout or a set `stop_event` sends SIGTERM to the whole group, then SIGKILL after a grace period. When the main
process has exited, every process the run left behind is killed (engine/run/processes.py).
"""

from __future__ import annotations

import codecs
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.executor import ExperimentSpec, RunResult, RunSink
from loopdeck.engine.run.metrics import parse_record, summary_fields
from loopdeck.engine.run.processes import RUN_MARK_VAR, ProcessTree, has_exited

TAIL_LINES = 40
_SAMPLE_INTERVAL = 0.25  # seconds between process-tree scans (descendants and RSS)
_POLL_INTERVAL = 0.05  # seconds between checks for exit, timeout, abort and new metrics


# --- the executor --------------------------------------------------------------------------------------------------


class LocalExecutor:
    """Runs each experiment as a process group on this machine, each in its own supervising thread."""

    def __init__(self, grace_seconds: float = 3.0) -> None:
        self.grace_seconds = grace_seconds

    def start(self, spec: ExperimentSpec, sink: RunSink) -> LocalRun:
        return LocalRun(spec, sink, self.grace_seconds)


class _Stop(threading.Event):
    """Set by `cancel`, or by the sink's own reason to stop (polled with the event)."""

    def __init__(self, sink: RunSink) -> None:
        super().__init__()
        self._sink = sink

    def is_set(self) -> bool:
        return super().is_set() or self._sink.cancelled()


class LocalRun:
    """One experiment in flight on this machine (a RunHandle)."""

    def __init__(self, spec: ExperimentSpec, sink: RunSink, grace_seconds: float, launch: Launch | None = None
                 ) -> None:
        """`launch` as for `run_experiment` (the warm runner passes its own)."""
        self._stop = _Stop(sink)
        self._result: RunResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(spec, sink, grace_seconds, launch or Spawned),
                                        daemon=True, name=f"loopdeck-run-{spec.number}")
        self._thread.start()

    def _run(self, spec: ExperimentSpec, sink: RunSink, grace_seconds: float, launch: Launch) -> None:
        try:
            self._result = run_experiment(
                spec.argv, cwd=spec.checkout, env=spec.env, log_path=spec.log_path, metrics_path=spec.metrics_path,
                timeout=spec.timeout, on_line=sink.line, on_metrics=sink.record, stop_event=self._stop,
                grace_seconds=grace_seconds, on_start=sink.started, launch=launch)
        except BaseException as exc:  # handed to the thread that waits, after the run is cleaned up
            self._error = exc

    def cancel(self) -> None:
        self._stop.set()

    def wait(self) -> RunResult:
        try:
            self._thread.join()
        except BaseException:  # Ctrl-C while waiting: the run must not outlive its supervisor
            self.cancel()
            self._thread.join()
            raise
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


# --- output ------------------------------------------------------------------------------------------------------


class _Output:
    """Turns the child's byte stream into the log file, lines for `on_line`, and what `classify` needs."""

    def __init__(self, log: Any, on_line: Callable[[str], None]) -> None:
        self._log = log
        self._on_line = on_line
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._after_cr = False
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.summary_lines: list[str] | None = None
        self.saw_fail = False
        self.has_traceback = False
        self.error_line = ""
        self._in_traceback = False
        self.callback_error: BaseException | None = None
        self.log_error: OSError | None = None

    def feed(self, data: bytes) -> None:
        if self.log_error is None:
            try:
                self._log.write(data)
            except OSError as exc:  # disk full: keep draining the pipe (a run blocked on it would hang)
                self.log_error = exc
        text = self._decoder.decode(data)
        if self._after_cr and text.startswith("\n"):
            text = text[1:]  # the second half of a "\r\n" split across two reads
        if text:
            self._after_cr = text.endswith("\r")
        *pieces, self._pending = re.split(r"(\r\n|\r|\n)", self._pending + text)
        for line, end in zip(pieces[0::2], pieces[1::2], strict=True):
            if line or end != "\r":  # "\rstep 5" redraws a line in place: no empty line before it
                self._line(line)

    def close(self) -> None:
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        if rest:
            self._line(rest)

    def _line(self, line: str) -> None:
        self.tail.append(line)
        stripped = line.strip()
        if stripped == "FAIL":
            self.saw_fail = True
        if stripped == "---":
            self.summary_lines = []
        elif self.summary_lines is not None:
            self.summary_lines.append(line)
        if line.startswith("Traceback (most recent call last):"):
            self.has_traceback = self._in_traceback = True
        elif self._in_traceback and stripped and not line[0].isspace():
            self.error_line, self._in_traceback = stripped, False
        try:
            self._on_line(line)
        except Exception as exc:  # a broken consumer must not stop the capture or leave the run unsupervised
            self.callback_error = self.callback_error or exc


class _MetricsFollower:
    """Reads the JSON-lines metrics file as it grows; a partial last line waits until it is complete."""

    def __init__(self, path: Path, on_metrics: Callable[[dict], None]) -> None:
        self._path = path
        self._on_metrics = on_metrics
        self._offset = 0
        self._buffer = b""
        self.callback_error: BaseException | None = None

    def poll(self, final: bool = False) -> None:
        try:
            with open(self._path, "rb") as stream:
                stream.seek(self._offset)
                data = stream.read()
        except OSError:
            return
        self._offset += len(data)
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if final and self._buffer:
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            record = parse_record(line)  # None: a torn or foreign line is not a record
            if record is not None:
                try:
                    self._on_metrics(record)
                except Exception as exc:
                    self.callback_error = self.callback_error or exc


# --- the process ---------------------------------------------------------------------------------------------------


class Launched(Protocol):
    """A run's main process as the supervisor sees it: a fresh child (`Spawned`) or one forked by the warm runner's
    zygote (engine/run/warm.py). Either leads its own session (process group = pid)."""

    pid: int
    stdout_fd: int  # the read end of its merged stdout/stderr
    how: str  # how it was started, for the log's first line ("" says nothing)

    def exited(self) -> bool:
        """True once it has exited; its pid (= the group id) stays reserved until `reap`."""

    def reap(self) -> tuple[int | None, int]:
        """(returncode, peak RSS in bytes or 0) once it has exited; frees the pid."""


# (argv, cwd, env) → the started process; OSError when it cannot be started.
Launch = Callable[[Sequence[str], Path, Mapping[str, str]], Launched]


class Spawned:
    """A fresh process in a new session: the local executor's way, and the warm runner's fallback."""

    how = ""

    def __init__(self, argv: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
        self._process = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self._process.pid
        assert self._process.stdout is not None
        self.stdout_fd = self._process.stdout.fileno()

    def exited(self) -> bool:
        return has_exited(self.pid)

    def reap(self) -> tuple[int | None, int]:
        """The exit status and the exact peak RSS (ru_maxrss: KiB on Linux, bytes on macOS)."""
        assert self._process.stdout is not None
        self._process.stdout.close()
        try:
            _, status, rusage = os.wait4(self.pid, 0)
        except ChildProcessError:
            return self._process.wait(), 0
        self._process.returncode = os.waitstatus_to_exitcode(status)
        return self._process.returncode, rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


# --- the run -------------------------------------------------------------------------------------------------------


def run_experiment(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path, metrics_path: Path,
                   timeout: float | None, on_line: Callable[[str], None], on_metrics: Callable[[dict], None],
                   stop_event: threading.Event | None = None, grace_seconds: float = 3.0,
                   on_start: Callable[[int], None] | None = None, launch: Launch = Spawned) -> RunResult:
    """Run argv to completion, timeout or abort; on_line from a reader thread, on_metrics from the caller's,
    on_start(pid) once the process exists. `launch` starts it (a fresh process by default); how it did, when it
    says, is the log's first line.

    The log file is (re)written from the start; a stale metrics file is removed first, so that only this run's
    records are followed. Raises the first exception a callback raised, after the run is fully cleaned up, and
    LoopdeckError when the log cannot be written (disk full): the run's output is still drained, so it never blocks.
    """
    log = _open_log(log_path)
    metrics_path.unlink(missing_ok=True)
    mark = uuid.uuid4().hex
    started_wall, started = time.time(), time.monotonic()
    with log:
        output = _Output(log, on_line)
        try:
            process = launch(argv, cwd, {**env, RUN_MARK_VAR: mark})
        except OSError as exc:
            return _not_started(argv, exc, output, log_path, timeout)
        if process.how:
            output.feed(f"loopdeck: {process.how}\n".encode())
        tree = ProcessTree(process.pid, mark, started_wall)
        if on_start is not None:
            try:
                on_start(process.pid)
            except BaseException:
                _terminate(process, tree, grace_seconds)
                raise
        follower = _MetricsFollower(metrics_path, on_metrics)
        stop_reading, closed = threading.Event(), threading.Event()
        reader = threading.Thread(target=_read_output, args=(process.stdout_fd, output, stop_reading, closed),
                                  name=f"run-output-{process.pid}", daemon=True)
        reader.start()
        timed_out = aborted = False
        try:
            ended_by = _supervise(process, tree, follower, closed, started, timeout, stop_event, grace_seconds)
            timed_out, aborted = ended_by == "timeout", ended_by == "abort"
        except BaseException:
            # Ctrl-C or a bug in the engine: the run must not outlive its supervisor.
            _terminate(process, tree, grace_seconds)
            raise
        finally:
            wall_seconds = time.monotonic() - started
            tree.kill_leftovers()
            if not closed.wait(1.0):
                stop_reading.set()  # something we could not find still holds the pipe open
            reader.join()
            returncode, peak_rss = process.reap()
            follower.poll(final=True)
    for error in (output.callback_error, follower.callback_error):
        if error is not None:
            raise error
    if output.log_error is not None:
        raise LoopdeckError(_log_problem(log_path, output.log_error))
    peak = max(tree.peak_rss, peak_rss)
    return RunResult(returncode=returncode, timed_out=timed_out, aborted=aborted, wall_seconds=wall_seconds,
                     peak_rss_mb=peak / 2**20 if peak else None, log_tail="\n".join(output.tail),
                     summary=summary_fields(output.summary_lines) if output.summary_lines is not None else {},
                     saw_fail=output.saw_fail, has_traceback=output.has_traceback, error_line=output.error_line,
                     log_path=log_path, timeout_seconds=timeout, pid=process.pid)


def _open_log(log_path: Path) -> Any:
    """The run's log file, opened for writing from the start; LoopdeckError when it cannot be."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: every chunk is on disk at once, and a failed write leaves nothing to fail again on close.
        return open(log_path, "wb", buffering=0)  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise LoopdeckError(_log_problem(log_path, exc)) from None


def _not_started(argv: Sequence[str], exc: OSError, output: _Output, log_path: Path, timeout: float | None
                 ) -> RunResult:
    message = f"loopdeck: cannot start {argv[0]!r}: {exc.strerror or exc}"
    output.feed(message.encode("utf-8") + b"\n")
    return RunResult(returncode=127, timed_out=False, aborted=False, wall_seconds=0.0, peak_rss_mb=None,
                     log_tail=message, error_line=message.removeprefix("loopdeck: "), log_path=log_path,
                     timeout_seconds=timeout)


def _log_problem(log_path: Path, exc: OSError) -> str:
    return (f"cannot write the run log {log_path}: {exc.strerror or exc}. Free disk space (or make the directory "
            "writable) and run again: the session resumes where it stopped")


def _supervise(process: Launched, tree: ProcessTree, follower: _MetricsFollower, closed: threading.Event, started: float,
               timeout: float | None, stop_event: threading.Event | None, grace_seconds: float) -> str:
    """Watch the run until its main process exits; returns "timeout", "abort" or "" (it ended by itself)."""
    reason, kill_at, killed, next_sample = "", None, False, 0.0
    while not process.exited():
        now = time.monotonic()
        if now >= next_sample:
            tree.sample()
            next_sample = now + _SAMPLE_INTERVAL
        follower.poll()
        if not reason and timeout is not None and now - started >= timeout:
            reason = "timeout"
        if not reason and stop_event is not None and stop_event.is_set():
            reason = "abort"
        if reason and kill_at is None:
            tree.signal_all(signal.SIGTERM)
            kill_at = now + grace_seconds
        elif kill_at is not None and now >= kill_at and not killed:
            tree.signal_all(signal.SIGKILL)
            killed = True
        # Output closing usually means the process is exiting: wake at once instead of at the next tick.
        if closed.is_set():
            time.sleep(_POLL_INTERVAL / 5)
        else:
            closed.wait(_POLL_INTERVAL)
    return reason


def _terminate(process: Launched, tree: ProcessTree, grace_seconds: float) -> None:
    tree.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and not process.exited():
        time.sleep(0.02)
    tree.signal_all(signal.SIGKILL)


def _read_output(fd: int, output: _Output, stop: threading.Event, closed: threading.Event) -> None:
    try:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if not data:
                break
            output.feed(data)
    finally:
        output.close()
        closed.set()
