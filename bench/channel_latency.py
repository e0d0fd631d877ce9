"""Benchmark of the engine's channel: a decision's round trip from one console through the engine to every
attached console, and how soon an attaching console has its first event (and its whole replay) with a 10,000-event
history.

The engine side runs in its own process (`--serve`): the real `ChannelServer` and `Controller`, with a gate that
does what engine/research/gate.py does (emit ApprovalRequested, `wait_decision`, emit DecisionMade). The consoles
are `ChannelClient`s in this process; one of them decides each change. Attach is measured twice: to the client's
first event and end of replay, and to a real console (`LoopdeckApp` on a `RemoteSession`) having folded the replay.

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
from pathlib import Path

from bench.common import Figure, load, standalone
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.channel.server import ChannelServer
from loopdeck.engine.control import Controller, make_command
from loopdeck.engine.events import ApprovalRequested, DecisionMade, Event, LogLine, TrainStep

HISTORY = 10_000


def history(count: int) -> list[Event]:
    """A training-heavy history like a night's journal: steps and log lines of many experiments."""
    events: list[Event] = []
    for n in range(count):
        experiment = n // 200
        if n % 2:
            events.append(LogLine(experiment=experiment, line=f"step {n:05d} | loss: {3.0 - n / count:.6f}"))
        else:
            events.append(TrainStep(experiment=experiment, step=n, elapsed_seconds=n * 0.01, loss=3.0 - n / count,
                                    progress=(n % 200) / 200))
    return events


def serve(path: str, decisions: int, history_size: int) -> None:
    """The engine side (its own process): ask for `decisions` decisions one after another, then hang up."""
    servers: list[ChannelServer] = []
    controller = Controller("ask", lambda event: servers[0].publish(event))
    server = ChannelServer(Path(path), controller.put, lambda: {"pid": os.getpid()}, history(history_size))
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


def _engine(path: Path, decisions: int, history_size: int, consoles: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "bench.channel_latency", "--serve", str(path), str(decisions),
                                str(history_size)], env={**os.environ, "BENCH_CONSOLES": str(consoles)})
    while not path.exists():
        time.sleep(0.01)
    return process


def round_trips(decisions: int, consoles: int = 3) -> list[float]:
    """Seconds from a console sending a decision to the last console receiving its DecisionMade."""
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "engine.sock"
        engine = _engine(path, decisions, 0, consoles)
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


def attach_times(history_size: int) -> dict[str, float]:
    """Seconds from connecting to the first replayed event and to the end of the replay (client), and from a
    console's start to its view holding the whole replay."""
    from loopdeck.console.app import LoopdeckApp
    from loopdeck.console.bridge import EventBridge
    from loopdeck.console.remote import RemoteSession

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "engine.sock"
        engine = _engine(path, 1, history_size, 2)
        client = ChannelClient(path, role="watch")
        first: list[float] = []
        started = time.perf_counter()
        client.connect()

        def on_events(events: list[Event]) -> None:
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
                while app.view.events_applied < history_size:
                    await pilot.pause(0.005)
                await pilot.pause()
                return time.perf_counter() - begin

        painted = asyncio.run(console())
        engine.kill()
        engine.wait()
        client.close()
    return {"first_event": first[0] if first else float("nan"), "replayed": replayed, "console": painted}


def run(quick: bool) -> list[Figure]:
    decisions = 20 if quick else 200
    trips = sorted(round_trips(decisions))
    attach = attach_times(HISTORY)
    now = load()

    def ms(seconds: float) -> str:
        return f"{1000 * seconds:.1f} ms"

    p95 = trips[min(len(trips) - 1, int(0.95 * len(trips)))]
    return [
        Figure("channel", "decision round trip, 3 consoles (median)", ms(statistics.median(trips)), "< 100 ms", now,
               f"p95 {ms(p95)}, worst {ms(trips[-1])}, {decisions} decisions"),
        Figure("channel", "attach: first event of a 10,000-event history", ms(attach["first_event"]), load=now,
               note=f"whole replay received in {ms(attach['replayed'])}"),
        Figure("channel", "attach: console holds the 10,000-event replay", ms(attach["console"]), load=now,
               note="LoopdeckApp on a RemoteSession, 120×40, from construction"),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        standalone(run)
