"""The warm runner (engine/run/warm.py, zygote.py): runs forked from a zygote keep every isolation property of a
fresh process group — own session, scrubbed environment, sandbox limits, timeout and cancel that kill the whole
group, no orphans — and fall back to a fresh process where forking does not apply."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from fault_support import gone

from loopdeck.engine.config import SandboxSettings
from loopdeck.engine.run.environment import scrubbed_env
from loopdeck.engine.run.executor import ExperimentSpec, RunResult, classify
from loopdeck.engine.run.sandbox import _probe_namespaces, sandboxed_argv
from loopdeck.engine.run.warm import WarmExecutor

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm runner forks on Linux only")]

HARNESS = '"""A stand-in harness: the zygote preloads it (and torch)."""\nLOADED_AT = __import__("time").time()\n'
SECRET = "sk-ant-warm-runner-leak-check"


class Sink:
    def __init__(self, stop: threading.Event | None = None) -> None:
        self.lines: list[str] = []
        self.records: list[dict] = []
        self.pids: list[int] = []
        self._stop = stop or threading.Event()

    def line(self, text: str) -> None:
        self.lines.append(text)

    def record(self, record: dict) -> None:
        self.records.append(record)

    def started(self, pid: int) -> None:
        self.pids.append(pid)

    def cancelled(self) -> bool:
        return self._stop.is_set()


@pytest.fixture(scope="module")
def executor():
    warm = WarmExecutor(grace_seconds=0.5)
    yield warm
    warm.close()


@pytest.fixture
def workspace(tmp_path: Path, executor: WarmExecutor) -> Path:
    """A workspace with a harness, its zygote started (so that a test's timings are a warm run's)."""
    (tmp_path / "harness.py").write_text(HARNESS)
    run(executor, tmp_path, "pass\n")
    return tmp_path


def run(executor: WarmExecutor, workspace: Path, body: str, *, argv: tuple[str, ...] | None = None,
        timeout: float = 60, sandbox: SandboxSettings | None = None, sink: Sink | None = None,
        cancel_when: Path | None = None) -> tuple[RunResult, Sink]:
    (workspace / "train.py").write_text(textwrap.dedent(body))
    run_dir = workspace / "run"
    command = list(argv or (sys.executable, "train.py"))
    spec = ExperimentSpec(number=1, commit="", checkout=workspace,
                          argv=tuple(sandboxed_argv(command, sandbox or SandboxSettings())),
                          env=scrubbed_env(os.environ, extra={"LOOPDECK_METRICS": str(run_dir / "metrics.jsonl")}),
                          run_dir=run_dir, budget_seconds=1, timeout=timeout)
    sink = sink or Sink()
    handle = executor.start(spec, sink)
    if cancel_when is not None:  # once the run has written this file
        deadline = time.monotonic() + 30
        while not cancel_when.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        handle.cancel()
    return handle.wait(), sink


def test_a_forked_run_behaves_like_a_fresh_one_and_starts_in_milliseconds(executor, workspace):
    body = """
        import json, os, sys
        import harness  # the zygote's preloaded copy
        print("argv", sys.argv[1:], "cwd", os.getcwd(), "group", os.getpgid(0) == os.getpid() == os.getsid(0))
        print("harness preloaded", "LOADED_AT" in vars(harness), "parent", os.getppid())
        with open(os.environ["LOOPDECK_METRICS"], "a") as stream:
            stream.write(json.dumps({"type": "step", "step": 1, "elapsed_seconds": 0.1, "loss": 2.0}) + "\\n")
        print("---")
        print("val_bpb: 1.250000")
        sys.exit(0)
    """
    run(executor, workspace, body)  # the first run waits for the zygote to start
    started = time.monotonic()
    result, sink = run(executor, workspace, body, argv=(sys.executable, "train.py", "--flag"))
    assert time.monotonic() - started < 1.0  # no interpreter or torch start-up
    assert sink.lines[0].startswith("loopdeck: warm runner: forked by zygote ")
    zygote = int(sink.lines[0].split("zygote ")[1].split()[0])
    assert sink.lines[1:3] == [f"argv ['--flag'] cwd {workspace} group True", f"harness preloaded True parent {zygote}"]
    assert classify(result, 1.25) == ("ok", "") and result.summary["val_bpb"] == "1.250000"
    assert [r["step"] for r in sink.records] == [1] and sink.pids == [result.pid]


def test_a_credential_in_the_engines_environment_never_reaches_a_forked_run(executor, workspace, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    result, sink = run(executor, workspace, """
        import os
        print("in os.environ:", any("sk-ant-warm" in v for v in os.environ.values()))
        print("in /proc/self/environ:", b"sk-ant-warm" in open("/proc/self/environ", "rb").read())
        print("in the zygote's:", b"sk-ant-warm" in open(f"/proc/{os.getppid()}/environ", "rb").read())
    """)
    assert sink.lines[0].startswith("loopdeck: warm runner")
    assert sink.lines[1:] == ["in os.environ: False", "in /proc/self/environ: False", "in the zygote's: False"]
    assert SECRET not in result.read_log()


def test_the_timeout_kills_the_whole_group_and_what_escaped_it(executor, workspace):
    pids = workspace / "pids"
    result, sink = run(executor, workspace, f"""
        import os, signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        child = subprocess.Popen([sys.executable, "-c", stubborn])
        escaper = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}} {{escaper.pid}}")
        print("hanging", flush=True)
        time.sleep(600)
    """, timeout=6.0)
    assert sink.lines[0].startswith("loopdeck: warm runner")
    # SIGKILL after the grace period; SIGTERM when a loaded machine had not yet run the script's first line.
    assert result.timed_out and result.returncode in (-9, -15)
    assert gone([int(pid) for pid in pids.read_text().split()])


def test_a_cancelled_run_leaves_no_orphan(executor, workspace):
    pids = workspace / "pids"
    result, sink = run(executor, workspace, f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
    """, cancel_when=pids)
    assert sink.lines[0].startswith("loopdeck: warm runner")
    assert result.aborted and classify(result, None)[0] == "aborted"
    assert gone([int(pid) for pid in pids.read_text().split()])


def test_the_sandbox_limits_apply_in_a_forked_run(executor, workspace):
    result, sink = run(executor, workspace, """
        import resource
        print("limits", resource.getrlimit(resource.RLIMIT_DATA)[0] // 2**20, resource.getrlimit(resource.RLIMIT_CPU))
        blocks = [bytearray(256 * 2**20) for _ in range(8)]  # 2 GB, over the cap
    """, sandbox=SandboxSettings(memory_mb=1024, cpu_seconds=60))
    assert sink.lines[0].startswith("loopdeck: warm runner")
    assert sink.lines[1] == "limits 1024 (60, 62)"
    assert classify(result, None) == ("crash", "MemoryError")

    result, _ = run(executor, workspace, "while True:\n    pass\n", sandbox=SandboxSettings(cpu_seconds=1))
    assert classify(result, None) == ("crash", "killed by SIGXCPU")


@pytest.mark.skipif(_probe_namespaces(network=True) != "", reason="no user+network namespaces here")
def test_network_false_cuts_a_forked_run_off_even_from_the_hosts_loopback(executor, workspace):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result, sink = run(executor, workspace, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
                print("network: connected")
            except OSError as exc:
                print(f"network: {{exc}}")
        """, sandbox=SandboxSettings(network=False))
    assert sink.lines[0].startswith("loopdeck: warm runner")
    assert sink.lines[1:] == ["network: [Errno 101] Network is unreachable"] and result.returncode == 0


def test_a_changed_harness_gets_a_new_zygote(executor, workspace):
    body = "print('ran')\n"
    _, first = run(executor, workspace, body)
    (workspace / "harness.py").write_text(HARNESS + "CHANGED = True\n")
    _, second = run(executor, workspace, body)
    assert first.lines[0].startswith("loopdeck: warm runner") and second.lines[0].startswith("loopdeck: warm runner")
    assert first.lines[0] != second.lines[0]  # another zygote, another harness sha256
    assert second.lines[1] == "ran"


@pytest.mark.parametrize(("argv", "harness", "why"), [
    (("env", "python3", "train.py"), True, "the command does not run loopdeck's Python"),
    ((sys.executable, "-u", "train.py"), True, "the command is not `python SCRIPT.py`"),
    ((sys.executable, "train.py"), False, "the workspace has no loopdeck harness.py"),
])
def test_other_commands_and_foreign_repositories_start_fresh_and_say_so(executor, workspace, argv, harness, why):
    if not harness:
        (workspace / "harness.py").unlink()
    body = f"import os\nprint('parent is the engine', os.getppid() == {os.getpid()})\n"
    result, sink = run(executor, workspace, body, argv=argv)
    assert sink.lines[0].startswith(f"loopdeck: fresh process: {why}"), sink.lines[0]
    assert sink.lines[1] == "parent is the engine True" and result.returncode == 0


def test_warm_runner_off_starts_every_run_fresh_without_a_note(workspace):
    result, sink = run(WarmExecutor(enabled=False), workspace, "print('plain')\n")
    assert sink.lines == ["plain"] and result.returncode == 0


@pytest.mark.slow
def test_a_session_on_the_real_gpt_target_forks_training_noise_runs_and_trusted_evaluation(make_workspace,
                                                                                          run_session):
    support = pytest.importorskip("support_gpt")
    from loopdeck.engine.run.metrics import end_record
    from loopdeck.engine.store.ledger import Ledger
    from loopdeck.gpt.harness import TAMPER_EVAL_TOKENS

    workspace = make_workspace(support.tiny_train_source(), timeout=120, env={"LOOPDECK_EVAL_TOKENS": "32768"},
                               extra_files=support.harness_files(), protected=("harness.py",),
                               evaluation={"baseline_seeds": 2})
    session, _ = run_session(workspace, None, agent="offline", budget_seconds=1.0, max_experiments=1)
    assert session.finished.reason == "max_experiments", session.error
    runs = session.state_dir / "runs"
    for log in (runs / "0/log.txt", runs / "0/eval-val/log.txt", runs / "0/noise-1/log.txt", runs / "1/log.txt"):
        assert log.read_text().startswith("loopdeck: warm runner: forked by zygote "), log
    # Evaluate once: the run scored itself on the subset, which the trusted evaluator scored too and agrees with.
    assert end_record(runs / "0/metrics.jsonl")["eval_tokens"] == TAMPER_EVAL_TOKENS
    assert "loopdeck scores the weights in full" in (runs / "0/log.txt").read_text()
    with Ledger(session.state_dir) as ledger:
        baseline = ledger.rows()[0]
        (noise,) = [run for run in ledger.runs() if run.experiment == 0 and run.role == "noise"]  # the baseline's
    assert not baseline.metric_mismatch and baseline.reported_metric is not None
    assert noise.reported_metric is not None and noise.metric is not None
    zygotes = [p for p in psutil.process_iter(["cmdline"]) if "loopdeck.engine.run.zygote" in (p.info["cmdline"] or [])
               and workspace.resolve() in {Path(arg).resolve() for arg in p.info["cmdline"]}]
    assert not zygotes  # the session stopped its zygote


ENGINE = '''\
import os, sys, time
from pathlib import Path
from loopdeck.engine.run.environment import scrubbed_env
from loopdeck.engine.run.executor import ExperimentSpec
from loopdeck.engine.run.warm import WarmExecutor
from test_warm_runner import Sink

workspace = Path(sys.argv[1])
spec = ExperimentSpec(number=1, commit="", checkout=workspace, argv=(sys.executable, "train.py"),
                      env=scrubbed_env(os.environ), run_dir=workspace / "run", budget_seconds=1, timeout=600)
WarmExecutor().start(spec, Sink())
time.sleep(600)
'''


def test_an_engine_killed_mid_run_leaves_neither_its_zygote_nor_the_run_behind(tmp_path):
    (tmp_path / "harness.py").write_text(HARNESS)
    pids = tmp_path / "pids"
    (tmp_path / "train.py").write_text(f"import os, time\nopen({str(pids)!r}, 'w').write(f'{{os.getpid()}} "
                                       "{os.getppid()}')\ntime.sleep(600)\n")
    engine = subprocess.Popen([sys.executable, "-c", ENGINE, str(tmp_path)], env={**os.environ, "PYTHONPATH": str(
        Path(__file__).parent)})
    deadline = time.monotonic() + 60
    while (not pids.exists() or len(pids.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    run_pid, zygote_pid = (int(pid) for pid in pids.read_text().split())
    engine.kill()
    engine.wait()
    deadline = time.monotonic() + 10
    while not gone([run_pid, zygote_pid]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone([run_pid, zygote_pid])
