"""Telemetry sampler: NVML readings through a fake that speaks pynvml's real API, CPU/RAM of a process tree, the
once-only CPU-only state, and the real pynvml on this GPU-less machine."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import psutil
import pynvml
import pytest

from loopdeck.engine.events import TelemetrySample, event_from_dict
from loopdeck.engine.run.telemetry import NO_GPU, TelemetrySampler

MIB = 1024 * 1024
UNSUPPORTED = pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # the real class picks NVMLError_NotSupported


class FakeNvml:
    """pynvml's functions over scripted boards. Return values are pynvml's own ctypes structs and friendly
    objects, errors are pynvml's own NVMLError with its codes; a board field holding an exception raises it."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, boards: list[dict], init_error: int | None = None) -> None:
        self.boards = boards
        self.init_error = init_error
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _board(self, handle: SimpleNamespace, field: str):
        value = self.boards[handle.index][field]
        if isinstance(value, Exception):
            raise value
        return value

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> SimpleNamespace:
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle):
        return self._board(handle, "name")

    def nvmlDeviceGetUtilizationRates(self, handle):
        gpu = self._board(handle, "util")
        return pynvml.c_nvmlUtilization_t(gpu=gpu, memory=gpu // 2)

    def nvmlDeviceGetMemoryInfo(self, handle):
        used, total = self._board(handle, "memory")
        return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetPowerUsage(self, handle) -> int:
        return self._board(handle, "power_mw")

    def nvmlDeviceGetTemperature(self, handle, sensor: int) -> int:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._board(handle, "temperature")

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        processes = self._board(handle, "processes")
        return [pynvml.nvmlStructToFriendlyObject(pynvml.c_nvmlProcessInfo_t(
            pid=pid, usedGpuMemory=used, gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF))
            for pid, used in processes]


@pytest.fixture
def process_tree():
    """A parent Python process with one child, like `uv run train.py`; both killed afterwards."""
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    yield parent.pid, child_pid
    for pid in (child_pid, parent.pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    parent.wait(timeout=10)
    parent.stdout.close()


def two_boards(parent: int, child: int) -> list[dict]:
    return [
        {"name": "NVIDIA H100 80GB HBM3", "util": 87, "memory": (30_000 * MIB, 81_559 * MIB), "power_mw": 412_345,
         "temperature": 61,
         "processes": [(parent, 3_000 * MIB), (child, 1_000 * MIB), (999_999, 5_000 * MIB)]},
        # An older board: no power reading, no process list, and a name the driver will not give.
        {"name": UNSUPPORTED, "util": 5, "memory": (500 * MIB, 16_384 * MIB), "power_mw": UNSUPPORTED,
         "temperature": 40, "processes": UNSUPPORTED},
    ]


def test_gpu_fields_and_process_tree_memory(process_tree):
    parent, child = process_tree
    fake = FakeNvml(two_boards(parent, child))
    sampler = TelemetrySampler(lambda sample: None, nvml=fake)
    sampler.track(parent)
    sample = sampler.sample()

    assert sample.gpu_status == ""
    first, second = sample.gpus
    assert (first.index, first.name) == (0, "NVIDIA H100 80GB HBM3")
    assert first.utilization_percent == 87.0
    assert first.memory_used_mb == pytest.approx(30_000) and first.memory_total_mb == pytest.approx(81_559)
    assert first.power_watts == pytest.approx(412.345)
    assert first.temperature_c == 61.0
    # parent + child, not the stranger's 5000 MiB
    assert first.process_memory_mb == pytest.approx(4_000)
    assert second.name == "GPU 1"
    assert second.power_watts is None and second.process_memory_mb is None
    assert second.utilization_percent == 5.0 and second.memory_total_mb == pytest.approx(16_384)
    assert sample.process_rss_mb is not None and sample.process_rss_mb > 1.0  # two live interpreters
    assert sample.process_cpu_percent is not None and sample.process_cpu_percent >= 0.0
    assert 0 < sample.memory_used_mb < sample.memory_total_mb
    assert fake.calls["nvmlInit"] == 1
    sampler.sample()
    assert fake.calls["nvmlInit"] == 1  # opened once, lazily


def test_nothing_tracked_reads_no_process_figures():
    fake = FakeNvml(two_boards(1, 2))
    sample = TelemetrySampler(lambda s: None, nvml=fake).sample()
    assert sample.process_cpu_percent is None and sample.process_rss_mb is None
    assert all(gpu.process_memory_mb is None for gpu in sample.gpus)


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_DRIVER_NOT_LOADED, pynvml.NVML_ERROR_LIBRARY_NOT_FOUND])
def test_no_driver_is_cpu_only_and_never_retried(code):
    fake = FakeNvml([], init_error=code)
    sampler = TelemetrySampler(lambda s: None, nvml=fake)
    samples = [sampler.sample() for _ in range(3)]
    assert fake.calls == {"nvmlInit": 1}
    for sample in samples:
        assert sample.gpu_status == NO_GPU and sample.gpus == ()
        assert sample.memory_total_mb > 0
    sampler.stop()
    assert "nvmlShutdown" not in fake.calls


def test_zero_devices_is_cpu_only_and_closes_nvml():
    fake = FakeNvml([])
    sample = TelemetrySampler(lambda s: None, nvml=fake).sample()
    assert sample.gpu_status == NO_GPU
    assert fake.calls == {"nvmlInit": 1, "nvmlShutdown": 1}


def test_whole_pass_failure_is_reported_not_raised():
    boards = two_boards(1, 2)
    boards[0]["temperature"] = RuntimeError("GPU fell off the bus")  # not an NVMLError: the pass fails
    fake = FakeNvml(boards)
    sample = TelemetrySampler(lambda s: None, nvml=fake).sample()
    assert sample.gpus == () and sample.gpu_status.startswith("NVML error")


def test_thread_samples_survives_a_bad_consumer_and_stops():
    fake = FakeNvml(two_boards(1, 2))
    received: list[TelemetrySample] = []
    enough = threading.Event()

    threads: set[threading.Thread] = set()

    def emit(sample: TelemetrySample) -> None:
        threads.add(threading.current_thread())
        received.append(sample)
        if len(received) == 1:
            raise ValueError("console hiccup")
        if len(received) >= 3:
            enough.set()

    sampler = TelemetrySampler(emit, interval=0.02, nvml=fake)
    sampler.start()
    assert enough.wait(5.0)
    sampler.stop()
    count = len(received)
    time.sleep(0.1)
    assert len(received) == count
    (thread,) = threads
    assert thread is not threading.current_thread() and thread.daemon and not thread.is_alive()
    assert fake.calls["nvmlShutdown"] == 1
    assert event_from_dict(received[-1].to_dict()) == received[-1]


def test_gone_process_is_ignored():
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    sampler = TelemetrySampler(lambda s: None, nvml=FakeNvml([], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED))
    sampler.track(int(finished.stdout))
    sample = sampler.sample()
    assert sample.process_cpu_percent is None and sample.process_rss_mb is None


def test_real_pynvml_without_driver_is_cpu_only(monkeypatch):
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    calls = []
    real_init = pynvml.nvmlInit
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: (calls.append(1), real_init())[1])
    received: list[TelemetrySample] = []
    sampler = TelemetrySampler(received.append, interval=0.02)
    sampler.start()
    deadline = time.monotonic() + 5.0
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    assert len(received) >= 3
    assert all(s.gpu_status == NO_GPU and s.gpus == () for s in received)
    assert all(s.memory_total_mb > 0 for s in received)
    assert len(calls) == 1
