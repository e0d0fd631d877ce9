"""The runner: live output and metrics, verdicts, timeouts and aborts that leave no process behind, scrubbed env."""

from __future__ import annotations

import math
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest
from fault_support import gone

from loopdeck.engine.config import DEFAULT_PATTERN, Config
from loopdeck.engine.run.environment import scrubbed_env, training_env
from loopdeck.engine.run.executor import ExperimentSpec, RunResult, classify
from loopdeck.engine.run.metrics import metric_from_log, parse_summary
from loopdeck.engine.run.runner import LocalExecutor, run_experiment

SUMMARY = "print('---'); print('val_bpb:          1.234500'); print('training_seconds: 0.2'); print('depth: 2')"


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(body))
    return path


def _run(tmp_path: Path, body: str, *, timeout: float = 20, env: dict | None = None, grace: float = 3.0,
         stop_event: threading.Event | None = None, on_line=None, on_metrics=None) -> tuple[RunResult, list, list]:
    script = _script(tmp_path, body)
    lines: list[str] = []
    records: list[dict] = []
    metrics_path = tmp_path / "run" / "metrics.jsonl"
    base_env = scrubbed_env(__import__("os").environ, extra={"LOOPDECK_METRICS": str(metrics_path)})
    result = run_experiment([sys.executable, str(script)], cwd=tmp_path, env=env or base_env,
                            log_path=tmp_path / "run" / "log.txt", metrics_path=metrics_path, timeout=timeout,
                            on_line=on_line or lines.append, on_metrics=on_metrics or records.append,
                            stop_event=stop_event, grace_seconds=grace)
    return result, lines, records


def _pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


def test_a_normal_run_streams_output_and_metrics_live(tmp_path: Path) -> None:
    go = tmp_path / "go"

    def on_metrics(record: dict) -> None:
        records.append(record)
        go.write_text("seen")  # the script waits for this: proof that records arrive while it runs

    records: list[dict] = []
    result, lines, _ = _run(tmp_path, f"""
        import json, os, sys, time
        with open(os.environ["LOOPDECK_METRICS"], "a") as f:
            f.write(json.dumps({{"type": "step", "step": 1, "loss": 4.5}}) + "\\n")
            f.flush()
            f.write('{{"type": "step", "st')  # a torn line, completed below
            f.flush()
            deadline = time.time() + 10
            while not os.path.exists({str(go)!r}):
                if time.time() > deadline:
                    sys.exit("on_metrics was not called while the run was going")
                time.sleep(0.01)
            f.write('ep": 2}}\\n')
        for step in range(3):
            print(f"\\rstep {{step}}", end="", flush=True)
        print()
        print("to stderr", file=sys.stderr)
        {SUMMARY}
    """, on_metrics=on_metrics)
    assert result.returncode == 0 and not result.timed_out and not result.aborted
    assert records == [{"type": "step", "step": 1, "loss": 4.5}, {"type": "step", "step": 2}]
    assert lines[:4] == ["step 0", "step 1", "step 2", "to stderr"]
    assert result.summary == {"val_bpb": "1.234500", "training_seconds": "0.2", "depth": "2"}
    log = result.read_log()
    assert "to stderr" in log and "val_bpb:          1.234500" in log
    metric = metric_from_log(DEFAULT_PATTERN, log)
    assert metric == 1.2345
    assert classify(result, metric) == ("ok", "")
    assert result.peak_rss_mb is not None and result.peak_rss_mb > 1
    assert result.log_tail.splitlines()[-1] == "depth: 2"


def test_crash_with_traceback(tmp_path: Path) -> None:
    result, _, _ = _run(tmp_path, """
        print("step 1")
        def model():
            raise ValueError("shapes (3,) and (4,) do not match")
        model()
    """)
    assert result.returncode == 1 and result.has_traceback
    assert classify(result, None) == ("crash", "ValueError: shapes (3,) and (4,) do not match")
    assert "Traceback (most recent call last):" in result.log_tail


def test_exit_code_without_traceback_and_missing_metric(tmp_path: Path) -> None:
    result, _, _ = _run(tmp_path, "import sys; print('oops'); sys.exit(3)")
    assert classify(result, None) == ("crash", "exit code 3")
    result, _, _ = _run(tmp_path, "print('trained, but forgot the summary')")
    assert classify(result, metric_from_log(DEFAULT_PATTERN, result.read_log())) == ("crash", "metric never printed")


def test_killed_by_a_signal_reads_as_such(tmp_path: Path) -> None:
    result, _, _ = _run(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert result.returncode == -9
    assert classify(result, None) == ("crash", "killed by SIGKILL (out of memory?)")


def test_fail_and_nan_metric_are_nan(tmp_path: Path) -> None:
    result, _, _ = _run(tmp_path, "import sys; print('step 3 loss nan'); print('FAIL'); sys.exit(1)")
    assert result.saw_fail
    assert classify(result, None)[0] == "nan"
    result, _, _ = _run(tmp_path, "print('---'); print('val_bpb: nan')")
    metric = metric_from_log(DEFAULT_PATTERN, result.read_log())
    assert metric is not None and math.isnan(metric)
    assert classify(result, metric) == ("nan", "metric is nan")


def test_hang_past_the_timeout_leaves_no_process(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    started = time.monotonic()
    result, _, _ = _run(tmp_path, f"""
        import os, signal, subprocess, sys, time
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        # a child that ignores SIGTERM, and a grandchild that escapes into its own session
        child = subprocess.Popen([sys.executable, "-c", stubborn])
        escaper = subprocess.Popen([sys.executable, "-c", "import os, time; os.setsid(); time.sleep(600)"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}} {{escaper.pid}}")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("hanging", flush=True)
        time.sleep(600)
    """, timeout=1.5, grace=0.5)
    elapsed = time.monotonic() - started
    assert result.timed_out and classify(result, None) == ("timeout", "killed after the 1.5 s timeout")
    assert result.returncode == -9
    assert elapsed < 6
    assert gone(_pids(pids))


def test_descendants_that_outlive_a_finished_run_are_killed(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    result, _, _ = _run(tmp_path, f"""
        import os, sys, time
        # double fork + setsid: the grandchild is reparented at once, before any scan can see it
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                with open({str(pids)!r}, "w") as f:
                    f.write(str(os.getpid()))
                os.closerange(0, 3)
                time.sleep(600)
            os._exit(0)
        os.wait()
        while not os.path.exists({str(pids)!r}):
            time.sleep(0.01)
        {SUMMARY}
    """)
    assert result.returncode == 0 and result.summary["val_bpb"] == "1.234500"
    assert gone(_pids(pids))


def test_abort_stops_the_run(tmp_path: Path) -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    result, _, _ = _run(tmp_path, "import time, os; print(os.getpid(), flush=True); time.sleep(600)", stop_event=stop)
    assert result.aborted and not result.timed_out
    assert classify(result, None) == ("aborted", "stopped on request")
    assert time.monotonic() - started < 4
    assert gone([result.pid])


def test_supervisor_interrupted_kills_the_run(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def on_metrics(record: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, f"""
            import json, os, time
            with open({str(pids)!r}, "w") as f:
                f.write(str(os.getpid()))
            with open(os.environ["LOOPDECK_METRICS"], "a") as f:
                f.write(json.dumps({{"type": "step"}}) + "\\n")
            time.sleep(600)
        """, on_metrics=on_metrics, grace=0.5)
    assert gone(_pids(pids))


def test_a_failing_callback_is_raised_after_cleanup(tmp_path: Path) -> None:
    def on_line(line: str) -> None:
        raise RuntimeError("consumer bug")

    with pytest.raises(RuntimeError, match="consumer bug"):
        _run(tmp_path, f"print('hello'); {SUMMARY}", on_line=on_line)


def test_a_command_that_cannot_start_is_a_crash(tmp_path: Path) -> None:
    result = run_experiment(["definitely-not-a-program-xyz"], cwd=tmp_path, env={}, log_path=tmp_path / "log.txt",
                            metrics_path=tmp_path / "m.jsonl", timeout=5, on_line=lambda _: None,
                            on_metrics=lambda _: None)
    status, reason = classify(result, None)
    assert status == "crash" and "cannot start 'definitely-not-a-program-xyz'" in reason
    assert "cannot start" in (tmp_path / "log.txt").read_text()


def test_peak_memory_is_measured(tmp_path: Path) -> None:
    result, _, _ = _run(tmp_path, "import time; block = bytearray(80 * 2**20); block[::4096] = b'x' * len(block[::4096]); time.sleep(0.4)")
    assert result.peak_rss_mb is not None and result.peak_rss_mb >= 80


def test_credentials_are_unreadable_inside_a_run(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ANTHROPIC_API_KEY": "sk-ant-secret-value",
            "FOO_TOKEN": "tok-123", "AWS_PROFILE": "prod", "db_password": "hunter2", "MY_ALLOWED_KEY": "visible",
            "CUDA_VISIBLE_DEVICES": "0"}
    env = scrubbed_env(base, allow=["MY_ALLOWED_KEY"], extra={"LOOPDECK_SEED": "3"})
    result, lines, _ = _run(tmp_path, """
        import os
        for name in ("ANTHROPIC_API_KEY", "FOO_TOKEN", "AWS_PROFILE", "db_password", "MY_ALLOWED_KEY",
                     "CUDA_VISIBLE_DEVICES", "LOOPDECK_SEED", "PYTHONUNBUFFERED"):
            print(f"{name}={os.environ.get(name)}")
        print("anything secret:", [v for v in os.environ.values() if "secret" in v or "hunter" in v or "tok-" in v])
    """, env=env)
    assert result.returncode == 0
    assert lines == ["ANTHROPIC_API_KEY=None", "FOO_TOKEN=None", "AWS_PROFILE=None", "db_password=None",
                     "MY_ALLOWED_KEY=visible", "CUDA_VISIBLE_DEVICES=0", "LOOPDECK_SEED=3", "PYTHONUNBUFFERED=1",
                     "anything secret: []"]
    assert "sk-ant" not in result.read_log()


def test_loopdeck_contract_variables_pass_the_scrub() -> None:
    env = scrubbed_env({"LOOPDECK_EVAL_TOKENS": "4096", "EVAL_TOKENS": "1"})
    assert env["LOOPDECK_EVAL_TOKENS"] == "4096"
    assert "EVAL_TOKENS" not in env


def test_on_start_gets_the_live_training_pid(tmp_path: Path) -> None:
    seen: list[tuple[int, bool]] = []
    script = _script(tmp_path, """
        import os, time
        print(f"pid={os.getpid()}")
        time.sleep(0.3)
    """)
    result = run_experiment([sys.executable, str(script)], cwd=tmp_path, env=scrubbed_env({"PATH": "/usr/bin:/bin"}),
                            log_path=tmp_path / "log.txt", metrics_path=tmp_path / "m.jsonl", timeout=20,
                            on_line=lambda line: None, on_metrics=lambda record: None,
                            on_start=lambda pid: seen.append((pid, psutil.pid_exists(pid))))
    assert result.returncode == 0
    assert seen == [(result.pid, True)]
    assert f"pid={result.pid}" in result.read_log()


def test_training_env_sets_the_contract_variables(tmp_path: Path) -> None:
    config = Config().updated(budget_seconds=2.5, data="corpus", env={"LOOPDECK_DEVICE": "cpu"},
                              env_allow=["HF_TOKEN"])
    env = training_env(config, metrics_path=tmp_path / "m.jsonl", run_dir=tmp_path, seed=4,
                       base={"HF_TOKEN": "x", "GITHUB_TOKEN": "y", "PATH": "/bin"})
    assert env == {"HF_TOKEN": "x", "PATH": "/bin", "LOOPDECK_DEVICE": "cpu", "LOOPDECK_TIME_BUDGET": "2.5",
                   "LOOPDECK_METRICS": str(tmp_path / "m.jsonl"), "LOOPDECK_RUN_DIR": str(tmp_path),
                   "LOOPDECK_DATA": "corpus", "LOOPDECK_SEED": "4", "PYTHONUNBUFFERED": "1",
                   "LOOPDECK_BUDGET_CLOCK": "process", "OMP_WAIT_POLICY": "PASSIVE"}


def test_parse_summary_and_metric_from_log() -> None:
    text = "---\nval_bpb: 9\nstep 5\n---\nval_bpb:   1.5\nnum_steps: 10\nnot a pair\n"
    assert parse_summary(text) == {"val_bpb": "1.5", "num_steps": "10"}
    assert parse_summary("no summary") == {}
    assert metric_from_log(DEFAULT_PATTERN, text) == 1.5
    assert metric_from_log(DEFAULT_PATTERN, "val_bpb: inf\n") == math.inf
    assert metric_from_log(DEFAULT_PATTERN, "val_bpb: 1.0\nval_bpb: 1.2.3\n") == 1.0
    assert metric_from_log(DEFAULT_PATTERN, "the val_bpb: 1.0 is indented\n") is None
    assert metric_from_log(r"^score=(\S+)", "score=-2e-3\n") == -0.002


# --- the executor boundary ---------------------------------------------------------------------------------------


class _Sink:
    """A RunSink that keeps what it is sent; `fail_on` raises on a line that contains it."""

    def __init__(self, fail_on: str = "") -> None:
        self.lines: list[str] = []
        self.records: list[dict] = []
        self.pids: list[int] = []
        self.fail_on = fail_on
        self.seen_line = threading.Event()

    def line(self, text: str) -> None:
        self.lines.append(text)
        self.seen_line.set()
        if self.fail_on and self.fail_on in text:
            raise RuntimeError(f"sink refused {text!r}")

    def record(self, record: dict) -> None:
        self.records.append(record)

    def started(self, pid: int) -> None:
        self.pids.append(pid)

    def cancelled(self) -> bool:
        return False


def _spec(tmp_path: Path, body: str, number: int = 3) -> ExperimentSpec:
    script = _script(tmp_path, body)
    run_dir = tmp_path / "runs" / str(number)
    env = scrubbed_env(__import__("os").environ, extra={"LOOPDECK_METRICS": str(run_dir / "metrics.jsonl")})
    return ExperimentSpec(number=number, commit="", checkout=tmp_path, argv=(sys.executable, str(script)), env=env,
                          run_dir=run_dir, budget_seconds=1.0, timeout=20)


def test_the_local_executor_streams_a_run_back_and_returns_its_result(tmp_path: Path) -> None:
    spec = _spec(tmp_path, f"""
        import json, os
        with open(os.environ["LOOPDECK_METRICS"], "a") as stream:
            stream.write(json.dumps({{"type": "step", "step": 0, "elapsed_seconds": 0.1, "loss": 2.0}}) + "\\n")
        print("hello")
        {SUMMARY}
    """)
    sink = _Sink()
    result = LocalExecutor().start(spec, sink).wait()
    assert result.returncode == 0 and result.summary["val_bpb"] == "1.234500"
    assert result.log_path == spec.log_path and "hello" in result.read_log()
    assert sink.lines[0] == "hello" and sink.records == [{"type": "step", "step": 0, "elapsed_seconds": 0.1,
                                                          "loss": 2.0}]
    assert sink.pids == [result.pid]


def test_a_cancelled_run_ends_aborted_and_leaves_no_process(tmp_path: Path) -> None:
    spec = _spec(tmp_path, """
        import time
        print("started", flush=True)
        time.sleep(60)
    """)
    sink = _Sink()
    began = time.monotonic()
    handle = LocalExecutor(grace_seconds=0.5).start(spec, sink)
    assert sink.seen_line.wait(10)
    handle.cancel()
    result = handle.wait()
    assert result.aborted and time.monotonic() - began < 10
    assert classify(result, None) == ("aborted", "stopped on request")
    assert gone(sink.pids)


def test_an_error_in_the_sink_is_raised_by_wait_once_the_run_has_ended(tmp_path: Path) -> None:
    spec = _spec(tmp_path, """
        import time
        print("boom", flush=True)
        time.sleep(0.3)
    """)
    sink = _Sink(fail_on="boom")
    handle = LocalExecutor(grace_seconds=0.5).start(spec, sink)
    with pytest.raises(RuntimeError, match="sink refused"):
        handle.wait()
    assert gone(sink.pids)
