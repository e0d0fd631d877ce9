"""The Ray executor: each experiment a Ray actor that Ray places (num_cpus / num_gpus), run there by the local runner.

`RayExecutor` implements the executor boundary (engine/run/executor.py). Every `start` creates one actor with the
configured resources, so Ray decides where it runs and which GPU it gets (it sets CUDA_VISIBLE_DEVICES in the
actor, which the run inherits); loopdeck never picks a device. On the worker, the run is `runner.run_experiment`,
the same process-group machinery as on this machine. Its log lines and metrics records are buffered in the actor
and polled by the driver, which hands them to the run's sink and tells the actor to cancel when the sink says so.

A worker on another node checks the experiment's commit out of a git bundle shipped through Ray's object store
(`pack`, given by the session) into a scratch directory (engine/run/ray_worker.py), and sends the run's files back
when it ends; they land in the run's directory here, where its log has grown line by line meanwhile (what is left
of a run whose node is lost). The actor keeps that scratch directory while it is idle, so a run that reads an
earlier run's files (`ExperimentSpec.inputs_from`: the trusted evaluation of its weights) goes to the actor that
holds them and runs beside them, on the node that trained them; if that actor was given to another run meanwhile,
the files are shipped with it instead. An actor on another node also samples its node's hardware
(engine/run/telemetry.py: NVML where present, CPU and RAM) with each poll, and the driver emits it tagged with the
node (`TelemetrySample.node`). A worker or node that dies ends the run with `RunResult.lost` set (status
`interrupted`), and the run's process group on that node, if it survived its actor, is killed by a small task
placed there. `address=""` starts a local Ray instance for the session and `close` stops it; "auto" or
"ray://host:port" joins a running cluster, which is left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import TelemetrySample
from loopdeck.engine.run.executor import ExperimentSpec, RunResult, RunSink
from loopdeck.engine.run.processes import kill_group
from loopdeck.engine.run.ray_worker import RunActor, run_files

INSTALL_HINT = "pip install 'loopdeck[ray]'"
_POLL_SECONDS = 0.1
# What Ray raises when the actor, its worker process or its node is gone.
_LOST_ERRORS = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
                "OutOfMemoryError", "ObjectLostError")

Pack = Callable[[ExperimentSpec], bytes]  # the spec's commit as a git bundle, for a node without this disk
OnTelemetry = Callable[[TelemetrySample], None]  # a remote node's hardware sample, tagged with the node


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
                 resources: Mapping[str, float] | None = None, num_cpus: int | None = None,
                 pack: Pack | None = None, ship: bool | None = None, on_telemetry: OnTelemetry | None = None,
                 grace_seconds: float = 3.0) -> None:
        """`resources`: custom Ray resources each run asks for (runs go only to nodes that have them);
        `num_cpus`: the local instance's CPUs (None: Ray counts them); `ship`: True sends every run's commit as
        a bundle (None: only when the cluster has several nodes); `on_telemetry`: where remote samples go."""
        self.ray = import_ray()
        self._owns = not self.ray.is_initialized() and not address
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address or None, num_cpus=None if address else num_cpus,
                              include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise LoopdeckError(f"cannot join the Ray cluster at {address!r}: {exc}. Start it (`ray start "
                                    "--head`) or fix [workers] address") from None
        self.cpus, self.gpus, self.custom = cpus_per_worker, gpus_per_worker, dict(resources or {})
        self._pack, self._ship = pack, ship
        self.on_telemetry = on_telemetry
        self.grace_seconds = grace_seconds
        self.driver_node = self.ray.get_runtime_context().get_node_id()
        self._actor = self.ray.remote(RunActor)
        self.kill_task = self.ray.remote(num_cpus=0)(kill_group)
        self._lock = threading.Lock()
        # Actors (and their nodes) whose run ended cleanly, reused: a new one costs a process start.
        self._idle: list[tuple[Any, str]] = []
        self._holding: dict[Path, Any] = {}  # run directory here → the idle actor that still has its files
        # New actors Ray has not placed yet: an idle actor may hold the resources one waits for, so none is kept.
        self._unplaced = 0

    def resources(self) -> dict[str, float]:
        """The cluster's total resources ("CPU", "GPU", …)."""
        return dict(self.ray.cluster_resources())

    def start(self, spec: ExperimentSpec, sink: RunSink) -> RayRun:
        alive = {node["NodeID"] for node in self.ray.nodes() if node["Alive"]}
        ship = self._ship if self._ship is not None else len(alive) > 1
        actor, beside = self._take(spec.inputs_from if ship else None, alive)
        bundle = inputs = None
        if ship and not beside:
            bundle = self.ray.put(self._pack(spec)) if self._pack is not None else None
            if spec.inputs_from is not None:  # the actor that had them was given to another run
                inputs = self.ray.put(run_files(spec.inputs_from, nested=False))
        placed = actor is not None
        if actor is None:
            actor = self._actor.options(num_cpus=self.cpus, num_gpus=self.gpus, resources=self.custom,
                                        max_restarts=0, max_concurrency=4).remote()
            with self._lock:
                self._unplaced += 1
        holds = (spec.inputs_from or spec.run_dir) if bundle is not None or beside else None
        return RayRun(self, actor, spec, sink, _Shipment(bundle, inputs, beside), holds, placed)

    def _take(self, inputs_from: Path | None, alive: set[str]) -> tuple[Any, bool]:
        """An idle actor for a run, and whether it holds the files of `inputs_from`: that one if it is idle, else
        one that holds nothing still wanted, else the one idle longest (its files are dropped). Actors of nodes
        that are gone are forgotten (a run given to one would be lost before it began)."""
        with self._lock:
            self._idle = [(actor, node) for actor, node in self._idle if node in alive]
            self._holding = {path: actor for path, actor in self._holding.items()
                             if any(actor is idle for idle, _ in self._idle)}
            holder = self._holding.pop(inputs_from, None) if inputs_from is not None else None
            if holder is not None:
                self._idle = [(actor, node) for actor, node in self._idle if actor is not holder]
                return holder, True
            if not self._idle:
                return None, False
            held = list(self._holding.values())
            free = [actor for actor, _ in self._idle if not any(actor is other for other in held)]
            actor = (free or [actor for actor, _ in self._idle])[0]
            self._idle = [(other, node) for other, node in self._idle if other is not actor]
            self._holding = {path: other for path, other in self._holding.items() if other is not actor}
            return actor, False

    def placed(self) -> None:
        """A new actor has started: Ray placed it."""
        with self._lock:
            self._unplaced -= 1

    def release(self, actor: Any, node: str, healthy: bool, holds: Path | None = None) -> None:
        """An actor (on `node`) whose run has ended: kept for the next run (with the files of the run directory
        `holds`), or (its run was lost, or a new actor waits for room) ended."""
        with self._lock:
            if healthy and not self._unplaced:
                self._idle.append((actor, node))
                if holds is not None:
                    self._holding[holds] = actor
                return
        self._end(actor, healthy)

    def _end(self, actor: Any, healthy: bool) -> None:
        if healthy:  # it clears its scratch directory first (a killed process cannot)
            with contextlib.suppress(Exception):  # gone meanwhile: nothing left to clear
                self.ray.get(actor.drop.remote(), timeout=30)
        self.ray.kill(actor, no_restart=True)

    def close(self) -> None:
        """End the idle actors, and stop the local Ray instance if this executor started it."""
        with self._lock:
            idle, self._idle, self._holding = self._idle, [], {}
        for actor, _ in idle:
            self._end(actor, True)
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()


@dataclasses.dataclass(frozen=True)
class _Shipment:
    """What a run takes to its actor: the commit's bundle and the files it reads (object refs), or neither because
    the actor already holds both (`beside`)."""

    bundle: Any
    inputs: Any
    beside: bool


class RayRun:
    """One experiment in flight on a Ray actor (a RunHandle)."""

    def __init__(self, executor: RayExecutor, actor: Any, spec: ExperimentSpec, sink: RunSink, shipment: _Shipment,
                 holds: Path | None, placed: bool) -> None:
        self._executor, self._actor, self._spec, self._sink = executor, actor, spec, sink
        self._holds, self._unplaced = holds, not placed
        self._cancel = threading.Event()
        # A shipped run's log as it streams, here: what remains of it if its node is lost (the run's own log
        # replaces it when it comes back).
        self._copy = _open_log(spec.log_path) if holds is not None else None
        self._ref = actor.run.remote(_spec_fields(spec), shipment.bundle, shipment.inputs, shipment.beside,
                                     executor.grace_seconds)
        self._placed: dict[str, Any] = {}  # node id, pid and its create time, once the actor has started the run
        self._node = ""  # the actor's node, from its first poll

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
            why = f"its Ray worker died ({type(exc).__name__}: {str(exc).splitlines()[0]})"
            self._close_copy(f"loopdeck: {why}")
            return _lost(self._spec, why, self._where())
        finally:
            self._close_copy()
            self._started()
            self._executor.release(self._actor, self._node, healthy, self._holds)

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
        self._close_copy()
        for name, data in fields.pop("files").items():  # from a node that does not share this disk
            target = self._spec.run_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return RunResult(**fields, log_path=self._spec.log_path, worker=self._where())

    def _close_copy(self, last_line: str = "") -> None:
        if self._copy is not None:
            if last_line:
                self._copy.write(last_line + "\n")
            self._copy.close()
            self._copy = None

    def _started(self) -> None:
        if self._unplaced:
            self._unplaced = False
            self._executor.placed()

    def _forward(self, polled: dict[str, Any]) -> None:
        self._started()
        self._node = polled["node"]
        if polled["pid"] and not self._placed:
            self._placed = {key: polled[key] for key in ("node", "pid", "create_time")}
            if polled["node"] == self._executor.driver_node:
                self._sink.started(polled["pid"])  # a pid of this machine: telemetry and orphan notes use it
        for line in polled["lines"]:
            self._sink.line(line)
        if self._copy is not None and polled["lines"]:
            self._copy.write("".join(f"{line}\n" for line in polled["lines"]))
            self._copy.flush()
        for record in polled["records"]:
            self._sink.record(record)
        sample, on_telemetry = polled["telemetry"], self._executor.on_telemetry
        # This machine's own sampler covers runs placed here (with NVML): only other nodes report their own.
        if sample is not None and on_telemetry is not None and polled["node"] != self._executor.driver_node:
            on_telemetry(dataclasses.replace(sample, node=node_label(polled["node"])))

    def _where(self) -> str:
        node = self._placed.get("node", "")
        return f"ray node {node_label(node)}" if node else "ray"

    def _kill_leftovers(self) -> None:
        """The run's process group may outlive its dead actor: kill it on its node (gone with a dead node)."""
        placed, ray = self._placed, self._executor.ray
        if not placed or not any(node["NodeID"] == placed["node"] and node["Alive"] for node in ray.nodes()):
            return
        scheduling = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(placed["node"], soft=False)
        try:
            ray.get(self._executor.kill_task.options(scheduling_strategy=scheduling).remote(
                placed["pid"], placed["create_time"]), timeout=30)
        except Exception:  # the node went meanwhile, and its processes with it
            return


def node_label(node_id: str) -> str:
    """How a Ray node is named to a person (a run's `worker`, a telemetry group): its id's first 12 digits."""
    return node_id[:12]


def _spec_fields(spec: ExperimentSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(spec), "env": dict(spec.env)}


def _open_log(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8", errors="replace")


def _lost(spec: ExperimentSpec, why: str, where: str) -> RunResult:
    return RunResult(returncode=None, timed_out=False, aborted=False, wall_seconds=0.0, peak_rss_mb=None,
                     log_tail=why, error_line=why, log_path=spec.log_path, timeout_seconds=spec.timeout,
                     worker=where, lost=why)

