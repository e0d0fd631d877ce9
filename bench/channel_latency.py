"""Benchmark of the engine's channel: a decision's round trip from one console through the engine to every
attached console, and how soon an attaching console has its first event, its whole replay and its first paint
with a night's journal behind it (10,000 and 100,000 events, mostly training steps).

The engine side runs in its own process (`--serve`): the real `ChannelServer` and `Controller`, with a gate that
does what engine/research/gate.py does (emit ApprovalRequested, `wait_decision`, emit DecisionMade), and the replay
read from a journal as `Session.serve` reads it. The consoles are `ChannelClient`s in this process; one of them
decides each change. Attach is measured twice: to the client's first event and end of replay, and to a real
console (`LoopdeckApp` on a `RemoteSession`) having folded the replay and drawn it.

Run: python -m bench.channel_latency [--quick]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import Figure, load, standalone
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.channel.replay import ReplayLog
from loopdeck.engine.channel.server import ChannelServer
from loopdeck.engine.control import Controller, make_command
from loopdeck.engine.events import (
    AgentThinkingDelta,
    ApprovalRequested,
    ChangeProposed,
    DecisionMade,
    Event,
    ExperimentFinished,
    ExperimentKept,
    ExperimentReverted,
    ExperimentStarted,
    LogLine,
    SessionStarted,
    StateChanged,
    TelemetrySample,
    TrainStep,
)
from loopdeck.engine.store.journal import JournalWriter

STEPS = 275  # training steps per experiment: 30 experiments make ~10,000 events, 300 make ~100,000


def night(experiments: int, steps: int) -> Iterator[Event]:
    """A supervised night as the engine journals it: per experiment a proposal, a decision, `steps` training steps
    with log lines and telemetry, and its outcome (every seventh kept, improving); experiment 0 is the baseline."""
    ts, metric = 1_700_000_000.0, 1.5
    yield SessionStarted(workspace="/night", branch="loopdeck/night", agent="offline", approval="ask",
                         budget_seconds=300.0, metric_name="val_bpb", metric_direction="minimize", ts=ts)
    for n in range(experiments):
        ts += 1.0
        if n:
            yield StateChanged(state="proposing", experiment=n, ts=ts)
            for word in ("Try ", "a ", "wider ", "MLP ", "here."):
                yield AgentThinkingDelta(experiment=n, text=word, ts=ts)
            yield ChangeProposed(experiment=n, description=f"change {n}", rationale="why not", files=("train.py",),
                                 diff=f"-MLP = {n}\n+MLP = {n + 1}\n", added=1, removed=1, ts=ts)
            yield ApprovalRequested(experiment=n, description=f"change {n}", ts=ts)
            yield DecisionMade(experiment=n, approved=True, client="ann@night:1", ts=ts)
        yield StateChanged(state="training", experiment=n, ts=ts)
        yield ExperimentStarted(experiment=n, commit=f"c{n}", parent_commit="", description=f"change {n}",
                                budget_seconds=300.0, baseline=n == 0, ts=ts)
        for step in range(steps):
            ts += 0.01
            yield TrainStep(experiment=n, step=step, elapsed_seconds=step * 1.0, loss=3.0 - step / steps,
                            progress=step / steps, ts=ts)
            if step % 10 == 0:
                yield LogLine(experiment=n, line=f"step {step:05d} | loss: {3.0 - step / steps:.6f}", ts=ts)
            if step % 20 == 0:
                yield TelemetrySample(cpu_percent=50.0 + step % 50, ts=ts)
        kept = n % 7 == 0
        result = metric - 0.01 if kept else metric + 0.01
        yield ExperimentFinished(experiment=n, status="keep" if kept else "discard", metric=result,
                                 delta=result - metric, incumbent_metric=metric, commit=f"c{n}",
                                 description=f"change {n}", ts=ts)
        if kept:
            yield ExperimentKept(experiment=n, commit=f"c{n}", metric=result, previous_metric=metric if n else None,
                                 ts=ts)
            metric = result
        else:
            yield ExperimentReverted(experiment=n, to_commit="c0", reason="no better", ts=ts)


def write_journal(path: Path, events: Iterator[Event]) -> int:
    """Journal `events` as the engine does; returns how many."""
    count = 0
    with JournalWriter(path) as writer:
        for event in events:
            writer.append(event)
            count += 1
    return count


def serve(path: str, decisions: int, journal: str) -> None:
    """The engine side (its own process): replay `journal` ("" for none), ask for `decisions` decisions one after
    another, then hang up."""
    servers: list[ChannelServer] = []
    controller = Controller("ask", lambda event: servers[0].publish(event))
    replay = ReplayLog.from_journal(Path(journal)) if journal else None
    server = ChannelServer(Path(path), controller.put, lambda: {"pid": os.getpid()}, replay)
    servers.append(server)
    server.start()
    while len(server.clients) < int(os.environ.get("BENCH_CONSOLES", "1")):
        time.sleep(0.01)
    for experiment in range(1, decisions + 1):
        server.publish(ApprovalRequested(experiment=experiment, description="bench"))
        decision = controller.wait_decision(experiment)
        assert decision is not None
        server.publish(DecisionMade(experiment=experiment, approved=decision.approved, client=decision.client))
    time.sleep(0.5)
    server.close()


def _engine(path: Path, decisions: int, journal: str, consoles: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "bench.channel_latency", "--serve", str(path), str(decisions),
                                journal], env={**os.environ, "BENCH_CONSOLES": str(consoles)})
    while not path.exists():
        time.sleep(0.01)
    return process


def round_trips(decisions: int, consoles: int = 3) -> list[float]:
    """Seconds from a console sending a decision to the last console receiving its DecisionMade."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "engine.sock"
        engine = _engine(path, decisions, "", consoles)
        received: dict[int, list[float]] = {n: [] for n in range(1, decisions + 1)}
        asked = threading.Semaphore(0)
        clients = [ChannelClient(path, name=f"bench@{i}") for i in range(consoles)]

        def follow(index: int, client: ChannelClient) -> None:
            def on_events(events: list[Event]) -> None:
                for event in events:
                    if isinstance(event, DecisionMade):
                        received[event.experiment].append(time.perf_counter())
                    elif isinstance(event, ApprovalRequested) and index == 0:
                        asked.release()
            client.follow(on_events, lambda frame: None)

        for index, client in enumerate(clients):
            client.connect()
            threading.Thread(target=follow, args=(index, client), daemon=True).start()
        trips = []
        for experiment in range(1, decisions + 1):
            asked.acquire()
            sent = time.perf_counter()
            clients[0].send(make_command("decide", approve=True, experiment=experiment))
            while len(received[experiment]) < consoles:
                time.sleep(0.0005)
            trips.append(max(received[experiment]) - sent)
        engine.wait(10)
        for client in clients:
            client.close()
    return trips


def attach_times(experiments: int) -> dict[str, float]:
    """For a journal of a night of `experiments`: its size, the engine's one pass over it, seconds from
    connecting to the first replayed event and to the end of the replay (client), and from a console's start to
    its first paint of the whole replay."""
    from loopdeck.console.app import LoopdeckApp
    from loopdeck.console.bridge import EventBridge
    from loopdeck.console.remote import RemoteSession

    with tempfile.TemporaryDirectory() as scratch:
        journal = Path(scratch) / "events.jsonl"
        events = write_journal(journal, night(experiments, STEPS))
        begin = time.perf_counter()
        ReplayLog.from_journal(journal)
        scanned = time.perf_counter() - begin
        path = Path(scratch) / "engine.sock"
        engine = _engine(path, 1, str(journal), 2)
        client = ChannelClient(path, role="watch")
        first: list[float] = []
        started = time.perf_counter()
        replay = int(client.connect()["replay"])

        def on_events(batch: list[Event]) -> None:
            if not first:
                first.append(time.perf_counter() - started)

        threading.Thread(target=client.follow, args=(on_events, lambda frame: None), daemon=True).start()
        deadline = started + 60
        while not client.live and time.perf_counter() < deadline:
            time.sleep(0.001)
        replayed = time.perf_counter() - started

        async def console() -> float:
            begin = time.perf_counter()
            bridge = EventBridge()
            app = LoopdeckApp(bridge=bridge, session=RemoteSession(path, bridge, role="watch"),
                              settings_file=Path(scratch) / "console.json")
            async with app.run_test(size=(120, 40)) as pilot:
                while app.view.events_applied < replay or app.view.dirty:  # folded, then drawn
                    await pilot.pause(0.005)
                return time.perf_counter() - begin

        painted = asyncio.run(console())
        engine.kill()
        engine.wait()
        client.close()
    return {"events": events, "replay": replay, "scan": scanned, "first_event": first[0] if first else float("nan"),
            "replayed": replayed, "console": painted}


def run(quick: bool) -> list[Figure]:
    decisions = 20 if quick else 200
    trips = sorted(round_trips(decisions))
    now = load()

    def ms(seconds: float) -> str:
        return f"{1000 * seconds:.1f} ms"

    p95 = trips[min(len(trips) - 1, int(0.95 * len(trips)))]
    figures = [Figure("channel", "decision round trip, 3 consoles (median)", ms(statistics.median(trips)),
                      "< 100 ms", now, f"p95 {ms(p95)}, worst {ms(trips[-1])}, {decisions} decisions")]
    for experiments in (30,) if quick else (30, 300):
        attach = attach_times(experiments)
        history = f"{attach['events']:,}-event journal ({experiments} experiments)"
        figures += [
            Figure("channel", f"engine start: replay read from a {history}", ms(attach["scan"]), load=load(),
                   note=f"one pass; {attach['replay']:,} events kept to replay"),
            Figure("channel", f"attach: first event, {history}", ms(attach["first_event"]), load=load(),
                   note=f"whole replay received in {ms(attach['replayed'])}"),
            Figure("channel", f"attach: console's first paint of the replay, {history}", ms(attach["console"]),
                   load=load(), note="LoopdeckApp on a RemoteSession, 120×40, from construction"),
        ]
    return figures


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        standalone(run)
