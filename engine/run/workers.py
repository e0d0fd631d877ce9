"""`[workers]` resolved here: which executor runs the experiments, how many run at once (`count = "auto"`), and
which local slot ran each (`local:1`, `local:2`, … in a run's `worker`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from loopdeck.engine.config import WorkersSettings
from loopdeck.engine.events import TelemetrySample
from loopdeck.engine.run.executor import Executor, ExperimentSpec, RunHandle, RunResult, RunSink
from loopdeck.engine.run.runner import LocalExecutor


@dataclass
class Workers:
    """The session's executor, how many experiments it keeps in flight, and how to release it at the end."""

    executor: Executor
    count: int
    close: Callable[[], None]


def open_workers(settings: WorkersSettings, pack: Callable | None = None,
                 on_telemetry: Callable[[TelemetrySample], None] | None = None,
                 serial: Executor | None = None) -> Workers:
    """The executor `settings` ask for (a Ray one starts or joins Ray now) and the worker count; `on_telemetry`
    gets the hardware samples of other nodes, which their workers measure; `serial` runs the experiments when the
    local backend runs one at a time (the warm runner; its owner closes it)."""
    if settings.backend == "local":
        # Local runs all see the same devices (loopdeck never hands out GPUs itself: Ray does), so on a GPU
        # machine "auto" is one run at a time; `backend = "ray"` uses every GPU.
        count = 1 if settings.count == "auto" and visible_gpus() else _count(settings, 0, float(os.cpu_count() or 1))
        # The warm runner keeps a zygote per checkout, and parallel runs each have their own worktree: a copy of
        # torch per experiment in flight would cost more than the start-up it saves, so they start fresh.
        executor = serial if serial is not None and count == 1 else LocalExecutor()
        return Workers(LocalSlots(executor), count, lambda: None)
    from loopdeck.engine.run.ray_executor import RayExecutor

    gpus_per_worker = settings.gpus_per_worker
    ray_executor = RayExecutor(address=settings.address, cpus_per_worker=settings.cpus_per_worker,
                               gpus_per_worker=max(gpus_per_worker, 0.0), resources=settings.resources, pack=pack,
                               on_telemetry=on_telemetry)
    resources = ray_executor.resources()
    gpus = int(resources.get("GPU", 0))
    if gpus_per_worker < 0:  # one GPU per experiment wherever the cluster has GPUs
        ray_executor.gpus = 1.0 if gpus else 0.0
    count = _count(settings, gpus, resources.get("CPU", 1.0))
    if settings.count == "auto" and settings.resources:  # no more runs than the nodes with those resources hold
        count = min(count, *(max(1, int(resources.get(name, 0.0) / amount))
                             for name, amount in settings.resources.items()))
    return Workers(ray_executor, count, ray_executor.close)


class LocalSlots:
    """An executor on this machine that names the slot each run takes (`worker` "local:1", "local:2", …): the
    lowest number free when it starts, so the ledger and the console say which of the runs at once it was."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._lock = threading.Lock()
        self._busy: set[int] = set()

    def start(self, spec: ExperimentSpec, sink: RunSink) -> RunHandle:
        with self._lock:
            slot = next(number for number in range(1, len(self._busy) + 2) if number not in self._busy)
            self._busy.add(slot)
        try:
            return _SlotRun(self._executor.start(spec, sink), slot, self._free)
        except BaseException:
            self._free(slot)
            raise

    def _free(self, slot: int) -> None:
        with self._lock:
            self._busy.discard(slot)


class _SlotRun:
    """A run in one local slot: its result names the slot, and the slot is free once it has ended."""

    def __init__(self, handle: RunHandle, slot: int, free: Callable[[int], None]) -> None:
        self._handle, self._slot, self._free = handle, slot, free

    def cancel(self) -> None:
        self._handle.cancel()

    def wait(self) -> RunResult:
        try:
            result = self._handle.wait()
        finally:
            self._free(self._slot)
        result.worker = result.worker or f"local:{self._slot}"
        return result


def _count(settings: WorkersSettings, gpus: int, cpus: float) -> int:
    """`count`, or for "auto" one per GPU (per `gpus_per_worker`), else cores / cpus_per_worker: never more runs
    than the machine has room for, since runs that share cores slow each other and change a timed metric."""
    if settings.count != "auto":
        return int(settings.count)
    if gpus:
        return max(1, int(gpus / (settings.gpus_per_worker if settings.gpus_per_worker > 0 else 1.0)))
    return max(1, int(cpus / settings.cpus_per_worker))


def visible_gpus() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what NVML counts (0 without a driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"])
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no pynvml, no driver, no GPU: a CPU machine
        return 0
