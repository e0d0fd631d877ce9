"""The executor boundary: run this experiment in this checkout, stream its output back, cancel it, return its result.

The research layer describes a run as an `ExperimentSpec` (small, frozen, passed by value), hands it to an
`Executor` with a `RunSink` for what the run streams back, and gets a `RunHandle`: `cancel()` stops the run,
`wait()` returns its `RunResult`. An executor keeps no global state and writes nothing to the ledger: results come
back, the research layer records them. Each `start` is independent of the others, so an executor may hold several
runs in flight, and where a run happens (a local process group — `runner.LocalExecutor` —, a worker of a cluster)
is the executor's business. `classify` turns a result into a status the same way for every executor.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

LOG_FILE = "log.txt"  # in a run's directory: everything the run printed
METRICS_FILE = "metrics.jsonl"  # in a run's directory: its metrics stream (engine/run/metrics.py)


@dataclass(frozen=True)
class ExperimentSpec:
    """One run of experiment `number`: `argv` with `env` in the `checkout` of `commit`, output under `run_dir`."""

    number: int
    commit: str  # what the checkout holds ("" for the tree as it is)
    checkout: Path
    argv: tuple[str, ...]
    env: Mapping[str, str]  # the whole environment of the run (already scrubbed of credentials)
    run_dir: Path
    budget_seconds: float
    timeout: float | None  # wall seconds before the run is killed
    seed: int | None = None  # LOOPDECK_SEED in env, when set
    # The run directory of an earlier run whose files this one reads (the trusted evaluation of its weights): an
    # executor with several places runs it where that run ran, or sends it those files.
    inputs_from: Path | None = None

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE


class RunSink(Protocol):
    """Where a run streams to while it runs; called from the executor's threads, so it must be thread-safe."""

    def line(self, text: str) -> None:
        """One line of the run's merged stdout/stderr."""

    def record(self, record: dict[str, Any]) -> None:
        """One record of the run's metrics stream, as written (engine/run/metrics.py reads it)."""

    def started(self, pid: int) -> None:
        """The run's process exists (a local process id; an executor without one never calls this)."""

    def cancelled(self) -> bool:
        """The caller's own reason to stop the run now (an early abort, a session abort); polled."""


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
    worker: str = ""  # where it ran, for an executor with several places ("node 10.0.0.2, worker 3f2a…")
    lost: str = ""  # why the worker or node running it died before it ended (status `interrupted`)

    def read_log(self) -> str:
        """The whole captured output."""
        if self.log_path is None:
            return ""
        return self.log_path.read_bytes().decode("utf-8", errors="replace")


class RunHandle(Protocol):
    """A run in flight."""

    def cancel(self) -> None:
        """Stop the run (terminate, then kill after a grace period); `wait` still returns its result."""

    def wait(self) -> RunResult:
        """Block until the run has ended and everything it started is gone; raise what its sink raised."""


class Executor(Protocol):
    def start(self, spec: ExperimentSpec, sink: RunSink) -> RunHandle:
        """Start `spec` and return at once."""


def classify(result: RunResult, metric: float | None) -> tuple[str, str]:
    """(status, reason): status is ok | crash | timeout | nan | aborted | interrupted (its worker died); "improved
    or not" is the loop's call."""
    if result.lost:
        return "interrupted", result.lost
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
