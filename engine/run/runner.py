"""Runs one training experiment: own process group, scrubbed env, live log/metrics, timeout, no orphans.

The training command runs in a new session (its own process group). Its merged stdout/stderr goes to the log file
and, split into lines (at `\\n` or `\\r`, so in-place progress lines count), to `on_line` from a reader thread; the
JSON-lines metrics file is followed from the calling thread and each record goes to `on_metrics`. A timeout or a
set `stop_event` sends SIGTERM to the whole group, then SIGKILL after a grace period. When the main process has
exited, every process the run left behind is killed: its process group, the descendants seen while it ran, and
any process that carries this run's marker variable in its environment (which catches a grandchild that called
setsid and was reparented before it was seen).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import math
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from loopdeck.engine.errors import LoopdeckError

if TYPE_CHECKING:
    from loopdeck.engine.config import Config

RUN_MARK_VAR = "LOOPDECK_RUN_MARK"
TAIL_LINES = 40
_SAMPLE_INTERVAL = 0.25  # seconds between process-tree scans (descendants and RSS)
_POLL_INTERVAL = 0.05  # seconds between checks for exit, timeout, abort and new metrics
_SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL", "AUTH", "COOKIE",
                 "PRIVATE")
_CLOUD_PREFIXES = ("AWS_", "AZURE_", "GOOGLE_", "GCLOUD_", "CLOUDSDK_")
_SUMMARY_LINE = re.compile(r"^([A-Za-z_][\w.-]*):\s*(.*?)\s*$")


@dataclass
class RunResult:
    """What one run did; `classify` turns it (plus the metric read from the log) into a status."""

    returncode: int | None  # negative: killed by that signal; 127: the command could not be started
    timed_out: bool
    aborted: bool
    wall_seconds: float
    peak_rss_mb: float | None  # the process tree's peak resident memory
    log_tail: str  # last ~40 lines
    summary: dict[str, str] = field(default_factory=dict)  # `key: value` lines after the last `---`
    saw_fail: bool = False  # a line that is exactly FAIL
    has_traceback: bool = False
    error_line: str = ""  # last line of the last traceback ("ValueError: …"), or why the command did not start
    log_path: Path | None = None
    timeout_seconds: float | None = None
    pid: int | None = None

    def read_log(self) -> str:
        """The whole captured output."""
        if self.log_path is None:
            return ""
        return self.log_path.read_bytes().decode("utf-8", errors="replace")


# --- output parsing ------------------------------------------------------------------------------------------------


def parse_summary(text: str) -> dict[str, str]:
    """`key: value` lines after the last `---` line."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    return _summary(lines[starts[-1] + 1:]) if starts else {}


def _summary(lines: Iterable[str]) -> dict[str, str]:
    return {match[1]: match[2] for line in lines if (match := _SUMMARY_LINE.match(line.strip()))}


def metric_from_log(pattern: str, text: str) -> float | None:
    """The last match of pattern (multiline) as a float; nan/inf parse as such; None when never printed."""
    for match in reversed(list(re.finditer(pattern, text, re.MULTILINE))):
        try:
            return float(match.group(1) if match.re.groups else match.group(0))
        except (TypeError, ValueError):
            continue
    return None


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
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn or foreign line is not a record
            if isinstance(record, dict):
                try:
                    self._on_metrics(record)
                except Exception as exc:
                    self.callback_error = self.callback_error or exc


# --- processes -----------------------------------------------------------------------------------------------------


class _ProcessTree:
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


def _has_exited(pid: int) -> bool:
    """True once the main process has exited, without reaping it: its pid (= the group id) stays reserved."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


# --- the run -------------------------------------------------------------------------------------------------------


def run_experiment(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path, metrics_path: Path,
                   timeout: float | None, on_line: Callable[[str], None], on_metrics: Callable[[dict], None],
                   stop_event: threading.Event | None = None, grace_seconds: float = 3.0,
                   on_start: Callable[[int], None] | None = None) -> RunResult:
    """Run argv to completion, timeout or abort; on_line from a reader thread, on_metrics from the caller's,
    on_start(pid) once the process exists.

    The log file is (re)written from the start; a stale metrics file is removed first, so that only this run's
    records are followed. Raises the first exception a callback raised, after the run is fully cleaned up, and
    LoopdeckError when the log cannot be written (disk full): the run's output is still drained, so it never blocks.
    """
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: every chunk is on disk at once, and a failed write leaves nothing to fail again on close.
        log = open(log_path, "wb", buffering=0)  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise LoopdeckError(_log_problem(log_path, exc)) from None
    metrics_path.unlink(missing_ok=True)
    mark = uuid.uuid4().hex
    started_wall, started = time.time(), time.monotonic()
    with log:
        output = _Output(log, on_line)
        try:
            process = subprocess.Popen(list(argv), cwd=cwd, env={**env, RUN_MARK_VAR: mark},
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        except OSError as exc:
            message = f"loopdeck: cannot start {argv[0]!r}: {exc.strerror or exc}"
            output.feed(message.encode("utf-8") + b"\n")
            return RunResult(returncode=127, timed_out=False, aborted=False, wall_seconds=0.0, peak_rss_mb=None,
                             log_tail=message, error_line=message.removeprefix("loopdeck: "), log_path=log_path,
                             timeout_seconds=timeout)
        tree = _ProcessTree(process.pid, mark, started_wall)
        if on_start is not None:
            try:
                on_start(process.pid)
            except BaseException:
                _terminate(process.pid, tree, grace_seconds)
                raise
        follower = _MetricsFollower(metrics_path, on_metrics)
        assert process.stdout is not None
        stop_reading, closed = threading.Event(), threading.Event()
        reader = threading.Thread(target=_read_output, args=(process.stdout.fileno(), output, stop_reading, closed),
                                  name=f"run-output-{process.pid}", daemon=True)
        reader.start()
        timed_out = aborted = False
        try:
            ended_by = _supervise(process.pid, tree, follower, closed, started, timeout, stop_event, grace_seconds)
            timed_out, aborted = ended_by == "timeout", ended_by == "abort"
        except BaseException:
            # Ctrl-C or a bug in the engine: the run must not outlive its supervisor.
            _terminate(process.pid, tree, grace_seconds)
            raise
        finally:
            wall_seconds = time.monotonic() - started
            tree.kill_leftovers()
            if not closed.wait(1.0):
                stop_reading.set()  # something we could not find still holds the pipe open
            reader.join()
            process.stdout.close()
            rusage = _reap(process)
            follower.poll(final=True)
    for error in (output.callback_error, follower.callback_error):
        if error is not None:
            raise error
    if output.log_error is not None:
        raise LoopdeckError(_log_problem(log_path, output.log_error))
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = max(tree.peak_rss, (rusage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)) if rusage else 0)
    summary = _summary(output.summary_lines) if output.summary_lines is not None else {}
    return RunResult(returncode=process.returncode, timed_out=timed_out, aborted=aborted, wall_seconds=wall_seconds,
                     peak_rss_mb=peak / 2**20 if peak else None, log_tail="\n".join(output.tail), summary=summary,
                     saw_fail=output.saw_fail, has_traceback=output.has_traceback, error_line=output.error_line,
                     log_path=log_path, timeout_seconds=timeout, pid=process.pid)


def _log_problem(log_path: Path, exc: OSError) -> str:
    return (f"cannot write the run log {log_path}: {exc.strerror or exc}. Free disk space (or make the directory "
            "writable) and run again: the session resumes where it stopped")


def _supervise(pid: int, tree: _ProcessTree, follower: _MetricsFollower, closed: threading.Event, started: float,
               timeout: float | None, stop_event: threading.Event | None, grace_seconds: float) -> str:
    """Watch the run until its main process exits; returns "timeout", "abort" or "" (it ended by itself)."""
    reason, kill_at, killed, next_sample = "", None, False, 0.0
    while not _has_exited(pid):
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


def _terminate(pid: int, tree: _ProcessTree, grace_seconds: float) -> None:
    tree.signal_all(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and not _has_exited(pid):
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


def _reap(process: subprocess.Popen) -> Any:
    """Collect the main process's exit status and resource usage (its exact peak RSS)."""
    try:
        _, status, rusage = os.wait4(process.pid, 0)
    except ChildProcessError:
        process.wait()
        return None
    process.returncode = os.waitstatus_to_exitcode(status)
    return rusage


# --- verdict -------------------------------------------------------------------------------------------------------


def classify(result: RunResult, metric: float | None) -> tuple[str, str]:
    """(status, reason): status is ok | crash | timeout | nan | aborted; "improved or not" is the loop's call."""
    if result.aborted:
        return "aborted", "stopped on request"
    if result.timed_out:
        return "timeout", f"killed after the {result.timeout_seconds:g} s timeout"
    if result.saw_fail:
        return "nan", "training diverged (the run printed FAIL)"
    if result.returncode != 0:
        return "crash", result.error_line or _exit_text(result.returncode)
    if metric is None:
        return "crash", "metric never printed"
    if not math.isfinite(metric):
        return "nan", f"metric is {metric}"
    return "ok", ""


def _exit_text(returncode: int | None) -> str:
    if returncode is None or returncode >= 0:
        return f"exit code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


# --- environment ---------------------------------------------------------------------------------------------------


def _looks_secret(name: str) -> bool:
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS) or upper.startswith(_CLOUD_PREFIXES)


def scrubbed_env(base: Mapping[str, str], allow: Iterable[str] = (), extra: Mapping[str, str] | None = None
                 ) -> dict[str, str]:
    """base without credential-looking variables (except `allow`), plus extra, plus PYTHONUNBUFFERED=1.

    Removed: names containing KEY, TOKEN, SECRET, PASSWORD, PASSWD, PASSPHRASE, CREDENTIAL, AUTH, COOKIE or
    PRIVATE (any case), and cloud credential families AWS_*, AZURE_*, GOOGLE_*, GCLOUD_*, CLOUDSDK_*.
    """
    allowed = set(allow)
    # LOOPDECK_* is loopdeck's own training contract (e.g. LOOPDECK_EVAL_TOKENS), never a credential.
    env = {name: value for name, value in base.items()
           if name in allowed or name.startswith("LOOPDECK_") or not _looks_secret(name)}
    env.update(extra or {})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def training_env(config: Config, *, metrics_path: Path, run_dir: Path, seed: int | None = None,
                 base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The scrubbed environment for one run of `config`: LOOPDECK_TIME_BUDGET/METRICS/RUN_DIR/DATA(/SEED)."""
    experiment = config.experiment
    extra = {**experiment.env, "LOOPDECK_TIME_BUDGET": repr(experiment.budget_seconds),
             "LOOPDECK_METRICS": str(metrics_path), "LOOPDECK_RUN_DIR": str(run_dir),
             "LOOPDECK_DATA": experiment.data}
    if seed is not None:
        extra["LOOPDECK_SEED"] = str(seed)
    return scrubbed_env(os.environ if base is None else base, experiment.env_allow, extra)
