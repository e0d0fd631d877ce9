"""The Ray executor: each experiment a Ray actor that Ray places (num_cpus / num_gpus), run there by the local runner.

`RayExecutor` implements the executor boundary (engine/run/executor.py). Every `start` creates one actor with the
configured resources, so Ray decides where it runs and which GPU it gets (it sets CUDA_VISIBLE_DEVICES in the
actor, which the run inherits); loopdeck never picks a device. On the worker, the run is `runner.run_experiment`,
the same process-group machinery as on this machine. Its log lines and metrics records are buffered in the actor
and polled by the driver, which hands them to the run's sink and tells the actor to cancel when the sink says so.

A worker on another node checks the experiment's commit out of a git bundle shipped through Ray's object store
(`pack`, given by the session) into a scratch directory, and sends the run's files back when it ends; they land
in the run's directory here. A worker or node that dies ends the run with `RunResult.lost` set (status
`interrupted`), and the run's process group on that node, if it survived its actor, is killed by a small task
placed there. `address=""` starts a local Ray instance for the session and `close` stops it; "auto" or
"ray://host:port" joins a running cluster, which is left running.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.executor import ExperimentSpec, RunResult, RunSink
from loopdeck.engine.run.processes import kill_group
from loopdeck.engine.run.runner import run_experiment

INSTALL_HINT = "pip install 'loopdeck[ray]'"
_POLL_SECONDS = 0.1
# What Ray raises when the actor, its worker process or its node is gone.
_LOST_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
                "OutOfMemoryError", "ObjectLostError")

Pack = Callable[[ExperimentSpec], bytes]  # the spec's commit as a git bundle, for a node without this disk


def import_ray() -> Any:
    """The ray module, or a LoopdeckError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LoopdeckError(f'[workers] backend = "ray" needs Ray, which is not installed: {INSTALL_HINT}') from None
    return ray


class RayExecutor:
    """Runs each experiment as a Ray actor; owns the local Ray instance when it started one."""

    def __init__(self, *, address: str = "", cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                 num_cpus: int | None = None, pack: Pack | None = None, ship: bool | None = None,
                 grace_seconds: float = 3.0) -> None:
        """`num_cpus`: the local instance's CPUs (None: Ray counts them); `ship`: True sends every run's commit as
        a bundle (None: only to runs placed on another node)."""
        self.ray = import_ray()
        self._owns = not self.ray.is_initialized() and not address
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address or None, num_cpus=None if address else num_cpus,
                              include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise LoopdeckError(f"cannot join the Ray cluster at {address!r}: {exc}. Start it (`ray start "
                                    "--head`) or fix [workers] address") from None
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self._pack, self._ship = pack, ship
        self.grace_seconds = grace_seconds
        self.driver_node = self.ray.get_runtime_context().get_node_id()
        self._actor = self.ray.remote(_Worker)
        self.kill_task = self.ray.remote(num_cpus=0)(kill_group)
        self._idle: list[Any] = []  # actors whose run ended cleanly, reused: a new one costs a process start
        self._idle_lock = threading.Lock()

    def resources(self) -> dict[str, float]:
        """The cluster's total resources ("CPU", "GPU", …)."""
        return dict(self.ray.cluster_resources())

    def start(self, spec: ExperimentSpec, sink: RunSink) -> RayRun:
        ship = self._ship if self._ship is not None else len([n for n in self.ray.nodes() if n["Alive"]]) > 1
        bundle = self.ray.put(self._pack(spec)) if ship and self._pack is not None else None
        with self._idle_lock:
            actor = self._idle.pop() if self._idle else None
        if actor is None:
            actor = self._actor.options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                        max_concurrency=4).remote()
        return RayRun(self, actor, spec, sink, bundle)

    def release(self, actor: Any, healthy: bool) -> None:
        """An actor whose run has ended: kept for the next run, or (its run was lost) killed."""
        if healthy:
            with self._idle_lock:
                self._idle.append(actor)
        else:
            self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """Release the actors, and stop the local Ray instance if this executor started it."""
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for actor in idle:
            self.ray.kill(actor, no_restart=True)
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


class RayRun:
    """One experiment in flight on a Ray actor (a RunHandle)."""

    def __init__(self, executor: RayExecutor, actor: Any, spec: ExperimentSpec, sink: RunSink, bundle: Any) -> None:
        self._executor, self._actor, self._spec, self._sink = executor, actor, spec, sink
        self._cancel = threading.Event()
        self._ref = actor.run.remote(_spec_fields(spec), bundle, executor.grace_seconds)
        self._placed: dict[str, Any] = {}  # node id, pid and its create time, once the actor has started the run

    def cancel(self) -> None:
        self._cancel.set()

    def wait(self) -> RunResult:
        healthy = False
        try:
            result = self._follow(self._executor.ray)
            healthy = True
            return result
        except Exception as exc:
            if type(exc).__name__ not in _LOST_ERRORS:
                raise
            self._kill_leftovers()
            return _lost(self._spec, f"its Ray worker died ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                         self._where())
        finally:
            self._executor.release(self._actor, healthy)

    def _follow(self, ray: Any) -> RunResult:
        cancelled = False
        while True:
            ready, _ = ray.wait([self._ref], timeout=_POLL_SECONDS)
            self._forward(ray.get(self._actor.poll.remote()))
            if not cancelled and (self._cancel.is_set() or self._sink.cancelled()):
                cancelled = True
                self._actor.cancel.remote()
            if ready:
                break
        fields = ray.get(self._ref)
        for name, data in fields.pop("files").items():  # from a node that does not share this disk
            target = self._spec.run_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return RunResult(**fields, log_path=self._spec.log_path, worker=self._where())

    def _forward(self, polled: dict[str, Any]) -> None:
        if polled["pid"] and not self._placed:
            self._placed = {key: polled[key] for key in ("node", "pid", "create_time")}
            if polled["node"] == self._executor.driver_node:
                self._sink.started(polled["pid"])  # a pid of this machine: telemetry and orphan notes use it
        for line in polled["lines"]:
            self._sink.line(line)
        for record in polled["records"]:
            self._sink.record(record)

    def _where(self) -> str:
        node = self._placed.get("node", "")
        return f"ray node {node[:12]}" if node else "ray"

    def _kill_leftovers(self) -> None:
        """The run's process group may outlive its dead actor: kill it on its node (gone with a dead node)."""
        placed = self._placed
        if not placed:
            return
        scheduling = self._executor.ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            placed["node"], soft=False)
        try:
            self._executor.ray.get(self._executor.kill_task.options(scheduling_strategy=scheduling).remote(
                placed["pid"], placed["create_time"]), timeout=30)
        except Exception:  # the node is gone, and its processes with it
            return


class _Worker:
    """The Ray actor: runs one experiment with the local runner and buffers what it streams for the driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._records: list[dict] = []
        self._pid, self._create_time, self._node = 0, 0.0, ""
        self._stop = threading.Event()

    def run(self, fields: dict[str, Any], bundle: bytes | None, grace: float) -> dict[str, Any]:
        import ray

        with self._lock:  # a reused actor: nothing of its previous run carries over
            self._lines, self._records, self._pid, self._create_time = [], [], 0, 0.0
            self._stop.clear()
        node = ray.get_runtime_context().get_node_id()
        scratch = Path(tempfile.mkdtemp(prefix="loopdeck-worker-")) if bundle is not None else None
        try:
            spec = _local_spec(fields, scratch, bundle)
            # Ray chose this worker's GPUs: the run sees exactly those.
            env = {**spec.env, **{key: os.environ[key] for key in ("CUDA_VISIBLE_DEVICES",) if key in os.environ}}
            result = run_experiment(spec.argv, cwd=spec.checkout, env=env, log_path=spec.log_path,
                                    metrics_path=spec.metrics_path, timeout=spec.timeout, on_line=self._line,
                                    on_metrics=self._record, stop_event=self._stop, grace_seconds=grace,
                                    on_start=lambda pid: self._started(pid, node))
            fields_out = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                          if f.name not in ("log_path", "worker", "lost")}
            fields_out["files"] = _files(spec.run_dir) if scratch is not None else {}
            return fields_out
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)

    def _started(self, pid: int, node: str) -> None:
        import psutil

        with self._lock:
            self._pid, self._node = pid, node
            self._create_time = psutil.Process(pid).create_time()

    def _line(self, text: str) -> None:
        with self._lock:
            self._lines.append(text)

    def _record(self, record: dict) -> None:
        with self._lock:
            self._records.append(record)

    def poll(self) -> dict[str, Any]:
        """What the run streamed since the last poll, and where its process is."""
        with self._lock:
            lines, records = self._lines, self._records
            self._lines, self._records = [], []
            return {"lines": lines, "records": records, "pid": self._pid, "create_time": self._create_time,
                    "node": self._node}

    def cancel(self) -> None:
        self._stop.set()


def _spec_fields(spec: ExperimentSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(spec), "env": dict(spec.env)}


def _local_spec(fields: dict[str, Any], scratch: Path | None, bundle: bytes | None) -> ExperimentSpec:
    """The spec as this worker runs it: as sent, or (shipped) with its checkout and run directory moved to
    `scratch`, every path in its argv and environment rewritten to match."""
    spec = ExperimentSpec(**fields)
    if scratch is None or bundle is None:
        return spec
    checkout, run_dir = scratch / "checkout", scratch / "run"
    run_dir.mkdir(parents=True)
    _checkout_bundle(bundle, spec.commit, checkout)

    def moved(text: str) -> str:
        return text.replace(str(spec.run_dir), str(run_dir)).replace(str(spec.checkout), str(checkout))

    return dataclasses.replace(spec, checkout=checkout, run_dir=run_dir, argv=tuple(moved(a) for a in spec.argv),
                               env={key: moved(value) for key, value in spec.env.items()})


def _checkout_bundle(bundle: bytes, commit: str, into: Path) -> None:
    path = into.parent / "commit.bundle"
    path.write_bytes(bundle)
    into.mkdir()
    for args in (["init", "-q"], ["fetch", "-q", str(path), "+refs/*:refs/shipped/*"],
                 ["-c", "advice.detachedHead=false", "checkout", "-q", commit]):
        done = subprocess.run(["git", *args], cwd=into, capture_output=True)
        if done.returncode != 0:
            raise LoopdeckError(f"cannot check out {commit[:7]} on this node: {done.stderr.decode().strip()}")


def _files(run_dir: Path) -> dict[str, bytes]:
    return {str(path.relative_to(run_dir)): path.read_bytes() for path in run_dir.rglob("*") if path.is_file()}


def _lost(spec: ExperimentSpec, why: str, where: str) -> RunResult:
    return RunResult(returncode=None, timed_out=False, aborted=False, wall_seconds=0.0, peak_rss_mb=None,
                     log_tail=why, error_line=why, log_path=spec.log_path, timeout_seconds=spec.timeout,
                     worker=where, lost=why)

