"""Benchmark of the console under load: events/s handled, event-to-screen latency, input latency, start-up time.

Drives the real app headless (`App.run_test`, 120×40, every pane visible) while a thread plays a synthetic engine
at increasing rates (a realistic mix: streamed agent text, training steps, log lines, telemetry, lifecycle events).
For each rate it prints the events the UI folded per second, the worst and 99th-percentile time from an event's
emission to the end of the redraw that showed it, and the worst delay of a message posted from another thread
(what a key press waits). Start-up to first paint is measured twice: in-process (app constructed → first frame
composed) and as a person sees it (`loopdeck watch` spawned in a pseudo-terminal → first frame on the terminal).

Run: python bench/console_events.py [--seconds 2] [--rates 100,300,1000,3000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from textual.message import Message

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the console's scripted demo session is test data

from demo_session import demo_session, telemetry  # noqa: E402

from loopdeck.console.app import LoopdeckApp  # noqa: E402
from loopdeck.console.bridge import EventBridge  # noqa: E402
from loopdeck.engine import events as ev  # noqa: E402
from loopdeck.engine.store.journal import JournalWriter  # noqa: E402


class NoEngine:
    """The control surface with nothing behind it: the benchmark measures the console only."""

    approval = "ask"

    def start(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool:
        time.sleep(timeout or 0)
        return False

    def decide(self, *args, **kwargs) -> None: ...
    def send_note(self, text: str) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop_after_current(self) -> None: ...
    def abort(self) -> None: ...
    def set_approval(self, policy: str) -> None: ...


class Ping(Message):
    def __init__(self, sent: float) -> None:
        super().__init__()
        self.sent = sent


class MeasuredApp(LoopdeckApp):
    """Records when each event was folded and when the redraw that showed it finished."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.applied = 0
        self.unrendered: list[float] = []  # emission times of events folded since the last redraw
        self.latencies: list[float] = []
        self.ping_delays: list[float] = []

    def _pump(self, limit: int) -> tuple[bool, bool]:
        before = self.view.events_applied
        result = super()._pump(limit)
        self.applied += self.view.events_applied - before
        return result

    async def _render(self) -> None:
        await super()._render()
        now = time.time()
        self.latencies += [now - ts for ts in self.unrendered]
        self.unrendered.clear()

    def on_ping(self, message: Ping) -> None:
        self.ping_delays.append(time.perf_counter() - message.sent)


def event_mix(i: int) -> ev.Event:
    """Event i of a busy session, cycling through an agent turn (a long thinking stream, tool calls, a text
    stream) and a training run (start, steps, log lines, telemetry, finish) — both phases at full speed."""
    experiment, k = divmod(i, 600)
    experiment += 1
    if k < 250:
        return ev.AgentThinkingDelta(experiment=experiment, text=f"think{k} ")
    if k in (250, 252):
        return ev.AgentToolCall(experiment=experiment, tool="read_file", summary=f"read_file train.py #{k}")
    if k in (251, 253):
        return ev.AgentToolResult(experiment=experiment, tool="read_file", ok=True, summary="412 lines")
    if k < 400:
        return ev.AgentTextDelta(experiment=experiment, text=f"token{k} ")
    if k == 400:
        return ev.ExperimentStarted(experiment=experiment, commit="c0ffee0", parent_commit="", budget_seconds=20.0,
                                    description=f"bench change {experiment}")
    if k == 599:
        return ev.ExperimentFinished(experiment=experiment, status="discard", metric=1.9, delta=0.001,
                                     incumbent_metric=1.899, commit="c0ffee0", description=f"bench change "
                                     f"{experiment}", training_seconds=20.0, wall_seconds=25.0)
    if k % 100 == 0:
        return telemetry(time.time(), i, True, True)
    if k % 2:
        return ev.TrainStep(experiment=experiment, step=k, elapsed_seconds=(k - 400) / 10, loss=3.0 - k / 1000)
    return ev.LogLine(experiment=experiment, line=f"step {k:06d} | loss {3.0 - k / 1000:.4f}")


def produce(app: MeasuredApp, rate: float, seconds: float, stop: threading.Event) -> int:
    """Emit at `rate` events/s (0 = as fast as possible) for `seconds`; returns how many were emitted."""
    start = time.perf_counter()
    i = 0
    next_ping = start
    while not stop.is_set():
        now = time.perf_counter()
        if now - start >= seconds:
            break
        if now >= next_ping:
            app.post_message(Ping(now))
            next_ping += 0.05
        if rate:
            due = int((now - start) * rate)
            if i >= due:
                time.sleep(min(0.002, (i + 1) / rate - (now - start)))
                continue
        batch = []
        for _ in range(max(1, min(200, (int((now - start) * rate) - i) if rate else 200))):
            event = event_mix(i)
            object.__setattr__(event, "ts", time.time())
            batch.append(event)
            i += 1
        for event in batch:
            app.bridge(event)
    return i


async def load_run(rate: float, seconds: float) -> dict[str, float]:
    bridge = EventBridge()
    app = MeasuredApp(bridge=bridge, session=NoEngine(), workspace="bench", settings_file=Path(tempfile.gettempdir())
                      / "loopdeck-bench-console.json")
    original_apply = app.view.apply

    def apply(event: ev.Event) -> None:
        original_apply(event)
        app.unrendered.append(event.ts)

    app.view.apply = apply  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)) as pilot:
        bridge.emit_many(demo_session())
        for _ in range(50):
            await pilot.pause(0.02)
            if not bridge.waiting:
                break
        await pilot.pause(0.5)  # the replayed session's first full redraw is start-up, not load
        app.applied, app.latencies, app.ping_delays = 0, [], []
        stop = threading.Event()
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.update(emitted=produce(app, rate, seconds, stop)))
        t0 = time.perf_counter()
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.05)
        elapsed_emit = time.perf_counter() - t0
        backlog_at_end = bridge.waiting
        while bridge.waiting or app.unrendered:  # let the UI finish what it was given
            await asyncio.sleep(0.02)
        drained = time.perf_counter() - t0
    latencies = sorted(app.latencies)
    return {
        "rate": rate, "emitted": result["emitted"], "emit_seconds": elapsed_emit, "drain_seconds": drained,
        "handled_per_s": app.applied / drained, "backlog": backlog_at_end,
        "worst_ms": 1000 * latencies[-1], "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "median_ms": 1000 * statistics.median(latencies),
        "input_worst_ms": 1000 * max(app.ping_delays, default=0.0),
    }


async def first_frame_in_process() -> float:
    """App constructed → the first frame of the main screen composed (headless, so no terminal writing)."""
    t0 = time.perf_counter()
    app = LoopdeckApp(bridge=EventBridge(), session=NoEngine(), workspace="bench",
                      settings_file=Path(tempfile.gettempdir()) / "loopdeck-bench-console.json")
    painted: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        app.call_after_refresh(lambda: painted.append(time.perf_counter()))
        while not painted:
            await pilot.pause(0.001)
    return painted[0] - t0


def first_paint_in_terminal(marker: bytes = b"Experiments", timeout: float = 30.0) -> float:
    """`loopdeck watch` in a 120×40 pseudo-terminal: process start → the main screen's text on the terminal."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / ".loopdeck"
        state.mkdir()
        writer = JournalWriter(state / "events.jsonl")
        for event in demo_session():
            writer.append(event)
        writer.close()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "LOOPDECK_CONFIG_DIR": tmp}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "loopdeck.cli", "watch", tmp], cwd=ROOT, stdin=slave,
                                stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        seen = b""
        try:
            while time.perf_counter() - t0 < timeout:
                ready, _, _ = select.select([master], [], [], 0.05)
                if ready:
                    try:
                        seen += os.read(master, 65536)
                    except OSError:
                        break
                    if marker in seen:
                        return time.perf_counter() - t0
            raise RuntimeError(f"no first paint within {timeout} s; output tail: {seen[-300:]!r}")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
            os.close(master)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each load step")
    parser.add_argument("--rates", default="100,300,1000,3000,10000,0",
                        help="events per second to emit, comma-separated (0 = as fast as possible)")
    args = parser.parse_args()

    print("start-up to first paint")
    print(f"  in-process (construct → first frame composed): {1000 * asyncio.run(first_frame_in_process()):.0f} ms")
    print(f"  loopdeck watch in a 120×40 pty (spawn → frame on the terminal): "
          f"{1000 * first_paint_in_terminal():.0f} ms")
    print()
    print(f"load: {args.seconds:g} s per step, 120×40, every pane visible (headless: widgets render, the terminal "
          "write is skipped)")
    print(f"{'target/s':>9} {'emitted':>8} {'handled/s':>10} {'backlog':>8} {'median ms':>10} {'p99 ms':>8} "
          f"{'worst ms':>9} {'input worst ms':>15}")
    for rate in (float(r) for r in args.rates.split(",")):
        r = asyncio.run(load_run(rate, args.seconds))
        label = "max" if rate == 0 else f"{rate:.0f}"
        print(f"{label:>9} {r['emitted']:>8} {r['handled_per_s']:>10.0f} {r['backlog']:>8} {r['median_ms']:>10.1f} "
              f"{r['p99_ms']:>8.1f} {r['worst_ms']:>9.1f} {r['input_worst_ms']:>15.1f}")


if __name__ == "__main__":
    main()
