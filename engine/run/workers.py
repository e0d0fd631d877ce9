"""`[workers]` resolved here: which executor runs the experiments, and how many run at once (`count = "auto"`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from loopdeck.engine.config import WorkersSettings
from loopdeck.engine.run.executor import Executor
from loopdeck.engine.run.runner import LocalExecutor


@dataclass
class Workers:
    """The session's executor, how many experiments it keeps in flight, and how to release it at the end."""

    executor: Executor
    count: int
    close: Callable[[], None]


def open_workers(settings: WorkersSettings, pack: Callable | None = None, serial: Executor | None = None) -> Workers:
    """The executor `settings` ask for (a Ray one starts or joins Ray now) and the worker count. `serial` runs the
    experiments when the local backend runs one at a time (the warm runner; its owner closes it)."""
    if settings.backend == "local":
        # Local runs all see the same devices (loopdeck never hands out GPUs itself: Ray does), so on a GPU
        # machine "auto" is one run at a time; `backend = "ray"` uses every GPU.
        count = 1 if settings.count == "auto" and visible_gpus() else _count(settings, 0, float(os.cpu_count() or 1))
        # The warm runner keeps a zygote per checkout, and parallel runs each have their own worktree: a copy of
        # torch per experiment in flight would cost more than the start-up it saves, so they start fresh.
        executor = serial if serial is not None and count == 1 else LocalExecutor()
        return Workers(executor, count, lambda: None)
    from loopdeck.engine.run.ray_executor import RayExecutor

    gpus_per_worker = settings.gpus_per_worker
    ray_executor = RayExecutor(address=settings.address, cpus_per_worker=settings.cpus_per_worker,
                               gpus_per_worker=max(gpus_per_worker, 0.0), pack=pack)
    resources = ray_executor.resources()
    gpus = int(resources.get("GPU", 0))
    if gpus_per_worker < 0:  # one GPU per experiment wherever the cluster has GPUs
        ray_executor.gpus = 1.0 if gpus else 0.0
    count = _count(settings, gpus, resources.get("CPU", 1.0))
    return Workers(ray_executor, count, ray_executor.close)


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
