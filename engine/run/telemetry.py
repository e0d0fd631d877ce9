"""Hardware telemetry: a daemon thread samples NVIDIA GPUs through NVML and CPU/RAM through psutil, once a second.

Each pass collects every reading into one `TelemetrySample` event. NVML is initialised lazily under a lock, on the
first sample, and shut down by `stop()`; a field a board does not support reads as None; without a driver the
sampler says "no NVIDIA GPU — CPU only" in every sample's `gpu_status`, never touches NVML again, and keeps
sampling CPU and RAM. Nothing here raises into the caller or kills the thread.

The training process is followed as a tree (the command may be `uv run` or a shell that starts Python as a
child): its CPU % and RSS are summed over the tracked pid and all its descendants, and so is its GPU memory, from
NVML's list of compute processes. CPU % is per core, as in `top` (two busy cores read 200). Inside a container
NVML may report host pids, which then match nothing and read as 0.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import psutil

from loopdeck.engine.events import GpuSample, TelemetrySample

NO_GPU = "no NVIDIA GPU — CPU only"
_MIB = 1024 * 1024

log = logging.getLogger(__name__)


class TelemetrySampler:
    """Samples every `interval` seconds on a daemon thread between `start()` and `stop()`, handing each
    `TelemetrySample` to `emit`. `nvml` replaces the `pynvml` module (tests pass a fake with the same API)."""

    def __init__(self, emit: Callable[[TelemetrySample], None], interval: float = 1.0,
                 nvml: ModuleType | Any | None = None) -> None:
        self._emit = emit
        self.interval = interval
        self._gpus = _Gpus(nvml)
        self._tree = _ProcessTree()
        self._cpu = _SystemCpu()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="loopdeck-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 10.0)
        self._thread = None
        self._gpus.shutdown()

    def track(self, pid: int | None) -> None:
        """Follow this training process (and its children) from now on; None when nothing trains."""
        self._tree.track(pid)

    def sample(self) -> TelemetrySample:
        try:
            process_cpu, process_rss, pids = self._tree.read()
            gpus, gpu_status = self._gpus.read(pids)
            memory = psutil.virtual_memory()
            return TelemetrySample(
                gpus=gpus, gpu_status=gpu_status, cpu_percent=self._cpu.percent(),
                # "used" as total minus available: what a person means by memory in use, on every platform.
                memory_used_mb=(memory.total - memory.available) / _MIB, memory_total_mb=memory.total / _MIB,
                process_cpu_percent=process_cpu, process_rss_mb=process_rss,
            )
        except Exception as error:  # the sampler must never take the engine down with it
            log.warning("telemetry sample failed: %s", error)
            return TelemetrySample(gpu_status=f"telemetry error: {error}")

    def _run(self) -> None:
        while True:
            sample = self.sample()
            try:
                self._emit(sample)
            except Exception:
                log.exception("telemetry consumer failed")
            if self._stopping.wait(self.interval):
                return


class _Gpus:
    """NVML, opened on first use under a lock, read one field at a time so one unsupported field costs only
    itself; given up for good after an initialisation failure."""

    def __init__(self, module: ModuleType | Any | None) -> None:
        self._module = module
        self._lock = threading.Lock()
        self._nvml: Any = None
        self._handles: list[tuple[Any, str]] = []
        self._unavailable = ""  # why NVML is off for good; "" while it may still be tried or is open

    def read(self, pids: set[int]) -> tuple[tuple[GpuSample, ...], str]:
        with self._lock:
            if self._unavailable:
                return (), self._unavailable
            if self._nvml is None:
                self._open()
                if self._nvml is None:
                    return (), self._unavailable
            try:
                return tuple(self._read_gpu(i, handle, name, pids)
                             for i, (handle, name) in enumerate(self._handles)), ""
            except Exception as error:  # a whole-pass failure (GPU lost mid-read): report it, try next time
                return (), f"NVML error: {error}"

    def shutdown(self) -> None:
        # A driver call hung inside a sample holds the lock; stopping must not hang with it.
        if not self._lock.acquire(timeout=5.0):
            log.warning("NVML is busy; leaving it open")
            return
        try:
            if self._nvml is not None:
                _quiet_shutdown(self._nvml)
                self._nvml, self._handles = None, []
        finally:
            self._lock.release()

    def _open(self) -> None:
        try:
            nvml = self._module if self._module is not None else importlib.import_module("pynvml")
            nvml.nvmlInit()
        except Exception as error:  # NVMLError (no driver / library), ImportError, OSError
            self._give_up(NO_GPU, error)
            return
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            named = [(handle, _name(nvml, handle, index)) for index, handle in enumerate(handles)]
        except Exception as error:
            _quiet_shutdown(nvml)
            self._give_up(f"{NO_GPU} (NVML: {error})", error)
            return
        if not named:
            _quiet_shutdown(nvml)
            self._give_up(NO_GPU, "NVML sees no device")
            return
        self._nvml, self._handles = nvml, named

    def _give_up(self, status: str, why: object) -> None:
        self._unavailable = status
        log.info("GPU telemetry off: %s (%s)", status, why)

    def _read_gpu(self, index: int, handle: Any, name: str, pids: set[int]) -> GpuSample:
        nvml = self._nvml
        utilization = self._field(nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = self._field(nvml.nvmlDeviceGetMemoryInfo, handle)
        power = self._field(nvml.nvmlDeviceGetPowerUsage, handle)
        temperature = self._field(nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
        return GpuSample(
            index=index, name=name,
            utilization_percent=None if utilization is None else float(utilization.gpu),
            memory_used_mb=None if memory is None else memory.used / _MIB,
            memory_total_mb=None if memory is None else memory.total / _MIB,
            power_watts=None if power is None else power / 1000.0,  # NVML reports milliwatts
            temperature_c=None if temperature is None else float(temperature),
            process_memory_mb=self._process_memory(handle, pids),
        )

    def _process_memory(self, handle: Any, pids: set[int]) -> float | None:
        if not pids:
            return None
        processes = self._field(self._nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        if processes is None:
            return None
        ours = [p.usedGpuMemory for p in processes if p.pid in pids]
        known = [used for used in ours if used is not None]  # None: the driver cannot say (Windows WDDM)
        if ours and not known:
            return None
        return sum(known) / _MIB

    def _field(self, read: Callable[..., Any], *args: Any) -> Any:
        try:
            return read(*args)
        except self._nvml.NVMLError as error:
            log.debug("NVML %s: %s", getattr(read, "__name__", read), error)
            return None


def _name(nvml: Any, handle: Any, index: int) -> str:
    try:
        name = nvml.nvmlDeviceGetName(handle)
    except nvml.NVMLError:
        return f"GPU {index}"
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def _quiet_shutdown(nvml: Any) -> None:
    try:
        nvml.nvmlShutdown()
    except Exception as error:
        log.debug("nvmlShutdown failed: %s", error)


class _ProcessTree:
    """CPU % and RSS of a tracked process and all its descendants. psutil measures CPU % between two calls on
    the same Process object, so the objects are kept from one sample to the next."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._known: dict[int, psutil.Process] = {}

    def track(self, pid: int | None) -> None:
        with self._lock:
            self._pid, self._known = pid, {}

    def read(self) -> tuple[float | None, float | None, set[int]]:
        with self._lock:
            if self._pid is None:
                return None, None, set()
            try:
                root = psutil.Process(self._pid)
                members = [root, *root.children(recursive=True)]
            except psutil.Error:  # the training process is gone (or not ours to see)
                self._known = {}
                return None, None, set()
            cpu = rss = 0.0
            seen: dict[int, psutil.Process] = {}
            for member in members:
                process = self._known.get(member.pid)
                # psutil compares pid and creation time, so a recycled pid gets a fresh object.
                process = process if process is not None and process == member else member
                try:
                    with process.oneshot():
                        cpu += process.cpu_percent(None)
                        rss += process.memory_info().rss
                except psutil.Error:  # exited between listing and reading: not part of the tree any more
                    continue
                seen[process.pid] = process
            self._known = seen
            return cpu, rss / _MIB, set(seen)


class _SystemCpu:
    """System-wide CPU % since the previous call, from our own counters (psutil.cpu_percent(None) shares one
    global baseline with every other caller in the process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = _cpu_times()

    def percent(self) -> float:
        with self._lock:
            now = _cpu_times()
            total, idle = now[0] - self._last[0], now[1] - self._last[1]
            self._last = now
            return 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * (total - idle) / total))


def _cpu_times() -> tuple[float, float]:
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # guest time is already counted inside user time on Linux; leaving it out avoids counting it twice
    busy = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0) - idle
    return busy + idle, idle
