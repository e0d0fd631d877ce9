"""Plain tests of the console's core: the event reducer, the bridge, plotting and formatting (no app running)."""

from __future__ import annotations

import dataclasses
import threading

from demo_session import demo_session

from loopdeck.console import format as fmt
from loopdeck.console.bridge import EventBridge
from loopdeck.console.messages import EventsPending
from loopdeck.console.plot import BrailleCanvas, Scale, bar, sparkline
from loopdeck.console.state import REASONING_CHARS, SessionView
from loopdeck.console.views import CURVE_POINTS, TELEMETRY_POINTS, Curve
from loopdeck.console.widgets.diff import split_files
from loopdeck.console.widgets.hardware import hardware_lines
from loopdeck.console.widgets.reasoning import reasoning_markdown
from loopdeck.engine import events as ev


def folded(events) -> SessionView:
    view = SessionView()
    for event in events:
        view.apply(event)
    return view


def test_demo_session_folds_into_rows_incumbent_and_totals() -> None:
    view = folded(demo_session())
    assert [row.status for row in view.rows()] == ["keep", "keep", "discard", "keep", "crash", "discard", "keep",
                                                   "awaiting"]
    assert view.rows()[0].baseline
    assert view.baseline_metric == 1.9123
    assert abs(view.incumbent_metric - 1.8893) < 1e-9 and view.incumbent_id == 6
    assert abs(view.improvement() + 0.0230) < 1e-9
    assert view.kept_and_total() == (3, 6)
    assert view.pending == 7 and view.engine_state == "awaiting_approval"
    assert view.session_tokens == 6 * 5200


def test_pending_decision_clears_on_decision_start_or_finish() -> None:
    view = SessionView()
    view.apply(ev.ApprovalRequested(ts=10.0, experiment=3, description="x"))
    assert (view.pending, view.pending_since) == (3, 10.0)
    view.apply(ev.DecisionMade(experiment=3, approved=False, note="no"))
    assert view.pending is None and view.experiments[3].status == "vetoed" and view.experiments[3].note == "no"
    view.apply(ev.ApprovalRequested(experiment=4, description="y"))
    view.apply(ev.StateChanged(state="paused", experiment=4))  # pausing keeps the question open
    assert view.pending == 4
    view.apply(ev.StateChanged(state="training", experiment=4))
    assert view.pending is None


def test_a_pipelined_gate_stays_open_while_the_previous_experiment_trains() -> None:
    view = SessionView()
    view.apply(ev.StateChanged(state="training", experiment=4))
    view.apply(ev.ApprovalRequested(experiment=5, description="drafted while #4 trains"))
    view.apply(ev.StateChanged(state="evaluating", experiment=4))
    assert view.pending == 5
    view.apply(ev.StateChanged(state="committing", experiment=5))
    assert view.pending is None


def test_pause_intent_holds_until_the_engine_catches_up() -> None:
    view = SessionView()
    view.apply(ev.StateChanged(state="training", experiment=1))
    view.request_pause(True)
    assert view.pausing_or_paused
    view.apply(ev.StateChanged(state="evaluating", experiment=1))
    assert view.pausing_or_paused and view.pause_intent  # still waiting for the pause to take effect
    view.apply(ev.StateChanged(state="paused", experiment=1))
    assert view.paused and view.pause_intent is None


def test_incumbent_curve_follows_the_kept_run() -> None:
    view = SessionView()
    view.apply(ev.ExperimentStarted(experiment=0, commit="a", parent_commit="", description="", budget_seconds=10,
                                    baseline=True))
    for t in range(5):
        view.apply(ev.TrainStep(experiment=0, step=t, elapsed_seconds=float(t), loss=5.0 - t))
    view.apply(ev.ExperimentFinished(experiment=0, status="keep", metric=2.0, delta=None, incumbent_metric=None,
                                     commit="a", description=""))
    view.apply(ev.ExperimentStarted(experiment=1, commit="b", parent_commit="a", description="", budget_seconds=10))
    assert view.curve.points == [] and len(view.incumbent_curve) == 5
    view.apply(ev.TrainStep(experiment=1, step=1, elapsed_seconds=1.0, loss=4.5))
    view.apply(ev.TrainStep(experiment=0, step=9, elapsed_seconds=9.0, loss=1.0))  # a straggler of another run
    assert view.curve.points == [(1.0, 4.5)]


def test_histories_are_bounded() -> None:
    curve = Curve(capacity=100)
    for i in range(100_000):
        curve.add(float(i), 1.0)
    assert 50 <= len(curve) <= 100
    assert curve.points[0] == (0.0, 1.0) and curve.points[-1][0] > 90_000  # thinned, not truncated
    view = SessionView()
    for i in range(5 * TELEMETRY_POINTS):
        view.apply(ev.TelemetrySample(cpu_percent=float(i), memory_used_mb=1, memory_total_mb=2))
    assert len(view.telemetry.cpu) == TELEMETRY_POINTS
    for _ in range(3000):
        view.apply(ev.AgentTextDelta(experiment=1, text="x" * 50))
    assert sum(len(b.text) for b in view.reasoning) <= REASONING_CHARS
    assert len(view.curve) <= CURVE_POINTS


def test_reasoning_markdown_only_grows_while_streaming() -> None:
    view = SessionView()
    shown = ""
    for event in [ev.AgentThinkingDelta(experiment=1, text="plan a\nplan b"),
                  ev.AgentToolCall(experiment=1, tool="read_file", summary="read_file train.py"),
                  ev.AgentToolResult(experiment=1, tool="read_file", ok=False, summary="no such file"),
                  ev.AgentTextDelta(experiment=1, text="I will "), ev.AgentTextDelta(experiment=1, text="try x")]:
        view.apply(event)
        text = reasoning_markdown(view.reasoning)
        assert text.startswith(shown)
        shown = text
    assert shown == "> plan a\n> plan b\n\n- `read_file train.py`\n- ✗ no such file\n\nI will try x"
    generation = view.reasoning_generation
    view.apply(ev.AgentTextDelta(experiment=2, text="next"))
    assert view.reasoning_generation > generation and reasoning_markdown(view.reasoning) == "next"


def test_usage_prefers_engine_totals_and_adds_up_otherwise() -> None:
    view = SessionView()
    view.apply(ev.AgentUsage(experiment=1, input_tokens=10, output_tokens=5, cost_usd=0.5))
    view.apply(ev.AgentUsage(experiment=1, input_tokens=10, output_tokens=5, cost_usd=0.5))
    assert (view.session_tokens, view.session_cost_usd) == (30, 1.0)
    view.apply(ev.AgentUsage(experiment=2, input_tokens=1, session_tokens=1000, session_cost_usd=2.0))
    assert (view.session_tokens, view.session_cost_usd) == (1000, 2.0)


def test_cpu_only_hardware_is_a_plain_state() -> None:
    view = SessionView()
    view.apply(ev.TelemetrySample(gpu_status="no NVIDIA GPU — CPU only", cpu_percent=50.0, memory_used_mb=4096,
                                  memory_total_mb=8192, process_cpu_percent=99.0, process_rss_mb=512.0))
    text = "\n".join(line.plain for line in hardware_lines(view, 40))
    assert "no NVIDIA GPU — CPU only" in text
    assert "50%" in text and "4.0/8 GB" in text and "CPU 99% · RSS 512 MB" in text
    assert "GPU 0" not in text


def test_hardware_shows_one_group_per_remote_node_beside_this_machine() -> None:
    view = SessionView()
    gpu = ev.GpuSample(index=0, name="H100", utilization_percent=90.0, memory_used_mb=40_000,
                       memory_total_mb=80_000, power_watts=500.0, temperature_c=60.0, process_memory_mb=None)
    view.apply(ev.TelemetrySample(cpu_percent=10.0, memory_used_mb=1024, memory_total_mb=8192))
    for util in (20.0, 70.0):  # a worker's own telemetry from another node: its GPU, its CPU
        view.apply(ev.TelemetrySample(node="b2c4", gpus=(dataclasses.replace(gpu, utilization_percent=util),),
                                      cpu_percent=util, memory_used_mb=2048, memory_total_mb=4096,
                                      process_cpu_percent=100.0, process_rss_mb=300.0))
    view.apply(ev.TelemetrySample(node="a1f0", gpu_status="no NVIDIA GPU — CPU only", cpu_percent=55.0,
                                  memory_used_mb=512, memory_total_mb=1024))
    local, nodes = view.telemetry, view.telemetry.nodes
    assert local.latest is not None and local.latest.cpu_percent == 10.0 and list(local.cpu) == [10.0]
    assert sorted(nodes) == ["a1f0", "b2c4"] and list(nodes["b2c4"].cpu) == [20.0, 70.0]
    assert list(nodes["b2c4"].gpu[0]["util"]) == [20.0, 70.0] and local.gpu == {}
    text = "\n".join(line.plain for line in hardware_lines(view, 60))
    mine, first, second = text.split("\n\nnode ")[0], text.index("node a1f0"), text.index("node b2c4")
    assert mine.startswith("this machine") and "10%" in mine and "GPU 0" not in mine
    assert first < second and "GPU 0 H100" in text[second:] and "70%" in text[second:]
    assert "no NVIDIA GPU — CPU only" in text[first:second] and "55%" in text[first:second]


def test_with_several_workers_the_table_says_where_each_experiment_ran() -> None:
    from loopdeck.console.widgets.experiments import row_cells

    view = folded([ev.SessionStarted(workspace="w", branch="b", agent="offline", approval="auto", budget_seconds=1,
                                     metric_name="val_bpb", metric_direction="minimize", workers=2),
                   ev.ExperimentFinished(experiment=1, status="discard", metric=1.0, delta=0.1, incumbent_metric=0.9,
                                         commit="abc", description="try", worker="local:2")])
    (row,) = view.rows()
    assert row.worker == "local:2" and row_cells(row, view, {}, 0.0)[-1].plain == "try [local:2]"


class Recorder:
    def __init__(self) -> None:
        self.messages: list[object] = []

    def post_message(self, message: object) -> bool:
        self.messages.append(message)
        return True


def test_bridge_keeps_order_across_threads_and_posts_one_wakeup_per_burst() -> None:
    bridge = EventBridge()
    target = Recorder()
    bridge(ev.Notice(level="info", message="before attach"))
    bridge.attach(target)  # type: ignore[arg-type]
    assert len(target.messages) == 1 and isinstance(target.messages[0], EventsPending)

    def produce(k: int) -> None:
        for i in range(2000):
            bridge(ev.LogLine(experiment=k, line=str(i)))

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    drained: list[ev.Event] = []
    while any(t.is_alive() for t in threads) or bridge.waiting:
        batch, _ = bridge.drain(500)
        drained += batch
    assert len(drained) == 1 + 8000 and bridge.emitted == 8001
    for k in range(4):
        assert [e.line for e in drained if isinstance(e, ev.LogLine) and e.experiment == k] == [
            str(i) for i in range(2000)]
    assert len(target.messages) < 8001 / 10
    before = len(target.messages)
    bridge(ev.Notice(level="info", message="after"))
    assert len(target.messages) == before + 1  # an empty buffer wakes the UI again


def test_plotting_primitives() -> None:
    canvas = BrailleCanvas(2, 1)
    canvas.dot(0, 0, 0)
    canvas.dot(3, 3, 1)
    assert canvas.rows() == [[("⠁", 0), ("⢀", 1)]]
    scale = Scale(BrailleCanvas(10, 2), (0.0, 1.0), (0.0, 1.0))
    assert scale.to_dots(0.0, 0.0) == (0, 7) and scale.to_dots(1.0, 1.0) == (19, 0)
    assert scale.to_dots(0.5, 99.0)[1] == 0  # off the range: pinned to the edge
    assert sparkline([0, 50, 100], 5, 0, 100) == "  ▁▅█"
    assert bar(0.5, 4) == ("██", 2) and bar(None, 3) == ("", 3)


def test_formatting_and_diff_split() -> None:
    assert fmt.signed(-0.0123) == "−0.0123" and fmt.signed(0.5, 1) == "+0.5"
    assert fmt.duration(72) == "1m12s" and fmt.duration(3.25) == "3.2s" and fmt.duration(7300) == "2h01m"
    assert fmt.count(31_200) == "31.2k" and fmt.improved(-0.1, "minimize") and fmt.improved(-0.1, "maximize") is False
    files = split_files("diff --git a/a.py b/a.py\n--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n x\n-y\n+z\n+w\n")
    assert [(f.path, f.added, f.removed) for f in files] == [("a.py", 2, 1)]


def test_the_console_never_imports_torch_or_gpt() -> None:
    """Checked in a fresh interpreter, through everything `loopdeck run` / `loopdeck watch` load. The gpt package's
    own `__init__` (file names only) may load; none of its modules (harness, train, evaluate) may."""
    import subprocess
    import sys

    code = ("import sys, loopdeck.console.app, loopdeck.cli.launch, loopdeck.engine.session, "
            "loopdeck.engine.store.journal; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('loopdeck.gpt.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_several_runs_in_flight_each_keep_a_curve_and_the_status_counts_busy_workers():
    from loopdeck.console.widgets.status import status_segments

    view = SessionView()
    view.apply(ev.SessionStarted(workspace="w", branch="b", agent="offline", approval="auto", budget_seconds=1.0,
                                 metric_name="val_bpb", metric_direction="minimize", workers=2))
    for number in (1, 2):
        view.apply(ev.ExperimentStarted(experiment=number, commit=f"c{number}", parent_commit="c0",
                                        description=f"#{number}", budget_seconds=1.0))
    for number, loss in ((1, 3.0), (2, 2.5), (1, 2.9)):
        view.apply(ev.TrainStep(experiment=number, step=0, elapsed_seconds=0.1, loss=loss, progress=0.1))
    assert [row.status for row in view.rows()] == ["running", "running"]
    assert view.curve_experiment == 2 and [y for _, y in view.curve.points] == [2.5]
    assert [y for _, y in view.flight_curves[1].points] == [3.0, 2.9]
    assert any("2/2 workers busy" in segment.plain for _, segment in status_segments(view, 0.0))
    view.focus(1)
    assert view.curve_experiment == 1 and [y for _, y in view.curve.points] == [3.0, 2.9]
    view.apply(ev.ExperimentFinished(experiment=1, status="discard", metric=1.5, delta=0.1, incumbent_metric=1.4,
                                     commit="c1", description="#1"))
    assert view.busy_workers == 1 and view.running == 2
    assert any("1/2 workers busy" in segment.plain for _, segment in status_segments(view, 0.0))
