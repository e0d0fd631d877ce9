"""What runs on a Ray worker for the Ray executor (engine/run/ray_executor.py): the actor that runs one experiment
at a time with the local runner, and the scratch checkout of a shipped commit it runs in.

The actor buffers the run's log lines and metrics records for the driver's polls, samples its node's hardware
(engine/run/telemetry.py) with them, and keeps a shipped run's scratch directory (checkout and run files) until its
next run, so that a run reading those files (the evaluation of its weights) can run beside them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.executor import ExperimentSpec
from loopdeck.engine.run.runner import run_experiment
from loopdeck.engine.run.telemetry import TelemetrySampler

TELEMETRY_SECONDS = 1.0  # a node's hardware sample at most this often (the local sampler's rate)


class RunActor:
    """The Ray actor: runs one experiment with the local runner, buffers what it streams for the driver, samples
    its node's hardware, and keeps a shipped run's scratch directory until its next run."""

    def __init__(self) -> None:
        import ray

        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._records: list[dict] = []
        self._pid, self._create_time = 0, 0.0
        self._node = ray.get_runtime_context().get_node_id()  # an actor never moves
        self._stop = threading.Event()
        self._scratch: Path | None = None
        self._sampler = TelemetrySampler(lambda sample: None)
        self._sampled_at = 0.0

    def run(self, fields: dict[str, Any], bundle: bytes | None, inputs: dict[str, bytes] | None, beside: bool,
            grace: float) -> dict[str, Any]:
        with self._lock:  # a reused actor: nothing of its previous run carries over
            self._lines, self._records, self._pid, self._create_time = [], [], 0, 0.0
            self._stop.clear()
        if not beside:
            self.drop()
            self._scratch = Path(tempfile.mkdtemp(prefix="loopdeck-worker-")) if bundle is not None else None
        try:
            spec = _local_spec(ExperimentSpec(**fields), self._scratch, bundle, inputs, beside)
            # Ray chose this worker's GPUs: the run sees exactly those.
            env = {**spec.env, **{key: os.environ[key] for key in ("CUDA_VISIBLE_DEVICES",) if key in os.environ}}
            result = run_experiment(spec.argv, cwd=spec.checkout, env=env, log_path=spec.log_path,
                                    metrics_path=spec.metrics_path, timeout=spec.timeout, on_line=self._line,
                                    on_metrics=self._record, stop_event=self._stop, grace_seconds=grace,
                                    on_start=self._started)
        except BaseException:
            self.drop()
            raise
        finally:
            self._sampler.track(None)
        fields_out = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                      if f.name not in ("log_path", "worker", "lost")}
        fields_out["files"] = run_files(spec.run_dir) if self._scratch is not None else {}
        return fields_out

    def drop(self) -> None:
        """Remove the scratch directory of the last shipped run (its checkout and files)."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def _started(self, pid: int) -> None:
        import psutil

        self._sampler.track(pid)
        with self._lock:
            self._pid = pid
            self._create_time = psutil.Process(pid).create_time()

    def _line(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def _record(self, record: dict) -> None:
        with self._lock:
            self._records.append(record)

    def poll(self) -> dict[str, Any]:
        """What the run streamed since the last poll, where its process is, and (once a second) this node's
        hardware."""
        sample = None
        if time.monotonic() - self._sampled_at >= TELEMETRY_SECONDS:
            self._sampled_at = time.monotonic()
            sample = self._sampler.sample()
        with self._lock:
            lines, records = self._lines, self._records
            self._lines, self._records = [], []
            return {"lines": lines, "records": records, "pid": self._pid, "create_time": self._create_time,
                    "node": self._node, "telemetry": sample}

    def cancel(self) -> None:
        self._stop.set()


def _local_spec(spec: ExperimentSpec, scratch: Path | None, bundle: bytes | None, inputs: dict[str, bytes] | None,
                beside: bool) -> ExperimentSpec:
    """The spec as this worker runs it: as sent, or (shipped) with its checkout and run directory moved to
    `scratch`, every path in its argv and environment rewritten to match. A run that reads an earlier run's files
    (`inputs_from`) finds them where that run left them (`beside`), or where the shipped copies are written."""
    if scratch is None:
        return spec
    checkout, base = scratch / "checkout", scratch / "run"
    shipped_from = spec.inputs_from or spec.run_dir  # the directory here that `base` stands for
    if beside:  # the earlier run may have changed its checkout: the commit's files are what is read now
        _git(checkout, spec.commit, ["checkout", "-q", "-f", spec.commit], ["clean", "-q", "-f", "-d", "-x"])
    else:
        base.mkdir(parents=True)
        _checkout_bundle(bundle, spec.commit, checkout)
        for name, data in (inputs or {}).items():
            (base / name).write_bytes(data)
    inside = spec.run_dir.is_relative_to(shipped_from)
    run_dir = base / spec.run_dir.relative_to(shipped_from) if inside else scratch / "out"
    run_dir.mkdir(parents=True, exist_ok=True)

    def moved(text: str) -> str:
        for here, there in ((spec.run_dir, run_dir), (shipped_from, base), (spec.checkout, checkout)):
            text = text.replace(str(here), str(there))
        return text

    return dataclasses.replace(spec, checkout=checkout, run_dir=run_dir, inputs_from=base if spec.inputs_from else None,
                               argv=tuple(moved(a) for a in spec.argv),
                               env={key: moved(value) for key, value in spec.env.items()})


def _checkout_bundle(bundle: bytes | None, commit: str, into: Path) -> None:
    if bundle is None:
        raise LoopdeckError(f"cannot check out {commit[:7]} on this node: no bundle was shipped")
    path = into.parent / "commit.bundle"
    path.write_bytes(bundle)
    into.mkdir()
    _git(into, commit, ["init", "-q"], ["fetch", "-q", str(path), "+refs/*:refs/shipped/*"],
         ["-c", "advice.detachedHead=false", "checkout", "-q", commit])


def _git(checkout: Path, commit: str, *commands: list[str]) -> None:
    for args in commands:
        done = subprocess.run(["git", *args], cwd=checkout, capture_output=True)
        if done.returncode != 0:
            raise LoopdeckError(f"cannot check out {commit[:7]} on this node: {done.stderr.decode().strip()}")


def run_files(run_dir: Path, nested: bool = True) -> dict[str, bytes]:
    """A run directory's files by relative path (`nested`: those of its subdirectories too)."""
    found = run_dir.rglob("*") if nested else run_dir.glob("*")
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in found if path.is_file()}
