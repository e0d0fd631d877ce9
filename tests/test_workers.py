"""[workers]: settings, how many run at once, a missing Ray, and a run shipped to a worker as a git bundle."""

from __future__ import annotations

import sys
import threading

import pytest
from conftest import git

from loopdeck.engine.config import WorkersSettings, validate
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.executor import ExperimentSpec, classify
from loopdeck.engine.run.workers import open_workers

pytestmark = pytest.mark.usefixtures("no_ray_left")


@pytest.mark.parametrize("workers, message", [
    ({"count": 0}, 'workers.count: must be >= 1 or "auto", got 0'),
    ({"count": "many"}, "workers.count"),
    ({"address": "auto"}, 'set backend = "ray" too'),
    ({"backend": "ray", "address": "head-node"}, 'address must be "", "auto" or "ray://host:port"'),
    ({"backend": "slurm"}, "workers.backend: must be one of 'local' or 'ray'"),
])
def test_bad_worker_settings_are_refused_in_one_line(workers, message):
    with pytest.raises(LoopdeckError) as caught:
        validate({"workers": workers}, "loopdeck.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_ray_cluster_addresses_are_accepted():
    for address in ("auto", "ray://10.0.0.2:10001", "head:6379"):
        assert validate({"workers": {"backend": "ray", "address": address}}, "x").workers.address == address


@pytest.mark.parametrize("settings, gpus, cores, expected", [
    ({"count": 3}, "", 2, 3),
    ({"count": "auto"}, "", 2, 2),  # one per core on a CPU machine
    ({"count": "auto", "cpus_per_worker": 2.0}, "", 2, 1),  # never oversubscribed
    ({"count": "auto", "cpus_per_worker": 4.0}, "", 2, 1),
    ({"count": "auto"}, "0,1,2,3", 16, 1),  # local runs would share one device: Ray places one per GPU
])
def test_local_auto_count_is_cores_per_cpus_per_worker_and_one_on_a_gpu_machine(monkeypatch, settings, gpus, cores, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert open_workers(WorkersSettings(**settings)).count == expected


def test_local_runs_name_the_slot_they_ran_in(workspace, tmp_path):
    executor = open_workers(WorkersSettings(count=2)).executor

    def start(number: int, seconds: float):
        run_dir = tmp_path / str(number)
        return executor.start(ExperimentSpec(
            number=number, commit="", checkout=workspace, argv=(sys.executable, "-c", f"import time; time.sleep({seconds})"),
            env={"PATH": "/usr/bin:/bin"}, run_dir=run_dir, budget_seconds=1.0, timeout=30.0), LineSink([]))

    first, second = start(1, 1.0), start(2, 0.1)
    assert second.wait().worker == "local:2"
    third = start(3, 0.1)  # slot 2 is free again, slot 1 is still busy
    assert third.wait().worker == "local:2" and first.wait().worker == "local:1"
    assert start(4, 0.0).wait().worker == "local:1"


def test_resources_must_be_positive_amounts():
    with pytest.raises(LoopdeckError, match="each resource needs an amount above 0, got A100 = 0"):
        validate({"workers": {"backend": "ray", "resources": {"A100": 0}}}, "loopdeck.toml")
    assert validate({"workers": {"resources": {"A100": 1}}}, "x").workers.resources == {"A100": 1.0}


def test_a_missing_ray_names_the_install_command(monkeypatch, workspace):
    from loopdeck.engine.session import RunOptions, Session

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(LoopdeckError, match=r"pip install 'loopdeck\[ray\]'"):
        Session(workspace, RunOptions(backend="ray", workers=2))


@pytest.mark.slow
def test_a_shipped_run_checks_its_commit_out_of_a_bundle_and_sends_its_files_back(workspace, tmp_path):
    pytest.importorskip("ray")
    from loopdeck.engine.run.ray_executor import RayExecutor
    from loopdeck.engine.store.worktrees import Worktrees

    commit = git(workspace, "rev-parse", "HEAD")
    run_dir = tmp_path / "runs" / "1"
    script = "import os, pathlib; print('cwd', os.getcwd()); pathlib.Path(os.environ['OUT'], 'model.pt').write_text('w')"
    spec = ExperimentSpec(number=1, commit=commit, checkout=workspace, argv=(sys.executable, "-c", script),
                          env={"OUT": str(run_dir), "PATH": "/usr/bin:/bin"}, run_dir=run_dir, budget_seconds=1.0,
                          timeout=60.0)
    lines: list[str] = []
    executor = RayExecutor(num_cpus=1, ship=True, pack=lambda s: Worktrees(workspace, "unused").bundle(s.commit))
    try:
        result = executor.start(spec, LineSink(lines)).wait()
    finally:
        executor.close()
    assert classify(result, 0.0) == ("ok", "")
    (cwd_line,) = [line for line in lines if line.startswith("cwd ")]
    assert str(workspace) not in cwd_line and "loopdeck-worker-" in cwd_line  # not the workspace: a checkout
    assert (run_dir / "model.pt").read_text() == "w" and "cwd" in (run_dir / "log.txt").read_text()
    assert result.worker.startswith("ray node")
    assert git(workspace, "for-each-ref", "refs/loopdeck") == ""  # the bundle's ref is gone
    import ray

    assert not ray.is_initialized()


class LineSink:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        self.lines.append(text)

    def record(self, record: dict) -> None:
        pass

    def started(self, pid: int) -> None:
        pass

    def cancelled(self) -> bool:
        return False
