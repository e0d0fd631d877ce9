"""The engine's channel in one process: replay then live, commands with replies, a change decided exactly once,
who may connect (socket mode, peer uid), the short-path fallback, and a long night's replay (every experiment,
bounded high-rate events)."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from loopdeck.engine.channel import protocol
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.channel.replay import RECENT_EXPERIMENTS, STREAM_LIMIT, ReplayLog
from loopdeck.engine.channel.server import ChannelServer
from loopdeck.engine.control import Controller, make_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import DecisionMade, Event, Notice, StateChanged
from loopdeck.engine.store.journal import JournalWriter, read_events, scan_journal


class Listener:
    """A client following the channel in a thread, recording events and replies."""

    def __init__(self, path: Path, name: str, role: str = "control", after: float | None = None) -> None:
        self.client = ChannelClient(path, role=role, name=name)
        self.hello = self.client.connect(after=after)
        self.events: list[Event] = []
        self.replies: list[dict] = []
        self.thread = threading.Thread(target=self.client.follow, args=(self.events.extend, self.replies.append),
                                       daemon=True)
        self.thread.start()

    def wait_for(self, condition, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, (self.events[-5:], self.replies)
            time.sleep(0.01)


@pytest.fixture
def served(tmp_path: Path):
    """A controller behind a channel server; yields (server, controller, emitted events)."""
    emitted: list[Event] = []
    servers: list[ChannelServer] = []

    def emit(event: Event) -> None:
        emitted.append(event)
        servers[0].publish(event)

    controller = Controller("ask", emit)
    history = [StateChanged(state="training", experiment=n, ts=float(n)) for n in range(1, 6)]
    server = ChannelServer(tmp_path / "engine.sock", controller.put, lambda: {"pid": os.getpid()},
                           ReplayLog(history))
    servers.append(server)
    server.start()
    yield server, controller, emitted
    server.close()


def test_replay_then_live_and_a_reattach_replays_only_what_it_missed(served) -> None:
    server, controller, _ = served
    first = Listener(server.path, "ann@a:1")
    assert first.hello["replay"] == 5
    first.wait_for(lambda: first.client.live)
    server.publish(Notice(level="info", message="live one"))
    first.wait_for(lambda: len(first.events) == 6)
    assert [e.experiment for e in first.events[:5]] == [1, 2, 3, 4, 5]
    assert first.events[5].message == "live one"

    again = Listener(server.path, "ann@a:2", after=first.events[4].ts)
    again.wait_for(lambda: again.client.live and len(again.events) == 1)
    assert again.events[0].message == "live one"


def test_a_change_is_decided_once_and_everyone_sees_who_decided(served) -> None:
    server, controller, emitted = served
    ann, bob = Listener(server.path, "ann@a:1"), Listener(server.path, "bob@b:2")
    decision: list = []
    waiter = threading.Thread(target=lambda: decision.append(controller.wait_decision(7)), daemon=True)
    waiter.start()
    time.sleep(0.05)
    started = time.monotonic()
    ann.client.send(make_command("decide", approve=True, experiment=7))
    waiter.join(5)
    assert time.monotonic() - started < 1.0  # no polling on the way in
    bob.client.send(make_command("decide", approve=False, note="no", experiment=7))
    ann.wait_for(lambda: len(ann.replies) == 1)
    bob.wait_for(lambda: len(bob.replies) == 1)
    assert decision[0].approved and decision[0].client == "ann@a:1"
    assert ann.replies[0]["ok"] is True
    assert bob.replies[0]["ok"] is False
    assert bob.replies[0]["message"] == "decision from bob@b:2 on #7 ignored: already approved by ann@a:1"
    # The refusal is a notice for every console too.
    ann.wait_for(lambda: any(isinstance(e, Notice) and "already approved by ann@a:1" in e.message
                             for e in ann.events))
    # The gate's DecisionMade carries the client (engine/research/gate.py); here, the event as a console gets it.
    server.publish(DecisionMade(experiment=7, approved=True, client=decision[0].client))
    bob.wait_for(lambda: any(isinstance(e, DecisionMade) and e.client == "ann@a:1" for e in bob.events))


def test_a_watcher_cannot_send_commands(served) -> None:
    server, controller, _ = served
    watcher = Listener(server.path, "eve@e:3", role="watch")
    watcher.client.send(make_command("pause"))
    watcher.wait_for(lambda: watcher.replies)
    assert watcher.replies[0]["ok"] is False and "read-only" in watcher.replies[0]["message"]
    assert controller.paused is False


def test_the_socket_admits_only_its_owner(served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server, controller, _ = served
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    server._uid_of = lambda sock: os.getuid() + 1  # noqa: SLF001 - a peer of another user, without switching users
    with pytest.raises(LoopdeckError, match="another user"):
        ChannelClient(server.path, name="mallory@m:4").connect()
    assert server.refused == 1 and server.clients == []


def test_a_console_refuses_a_socket_of_another_user(served, monkeypatch: pytest.MonkeyPatch) -> None:
    server, _, _ = served
    monkeypatch.setattr(os, "getuid", lambda: os.stat(server.path).st_uid + 1)
    with pytest.raises(LoopdeckError, match="belongs to another user"):
        ChannelClient(server.path, name="ann@a:1").connect()


def test_the_peer_uid_is_read_from_the_kernel(served) -> None:
    import socket

    server, _, _ = served
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.path))
    try:
        assert protocol.peer_uid(sock) == os.getuid()
    finally:
        sock.close()


def test_a_long_workspace_path_gets_a_short_socket_and_a_pointer(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    short_state = tmp_path / "s"
    short_state.mkdir()
    assert protocol.socket_path_for(short_state) == short_state.resolve() / protocol.SOCKET_FILE
    deep = tmp_path / ("d" * 60) / ("e" * 60) / ".loopdeck"
    deep.mkdir(parents=True)
    path = protocol.socket_path_for(deep)
    assert len(os.fsencode(path)) <= protocol.MAX_SOCKET_PATH
    assert protocol.find_socket(deep) == path
    server = ChannelServer(path, lambda command: "", lambda: {}, pointer=deep / protocol.POINTER_FILE)
    server.start()
    try:
        assert ChannelClient(protocol.find_socket(deep), name="a@b:1").connect()["t"] == "hello"
    finally:
        server.close()
    assert not (deep / protocol.POINTER_FILE).exists()


def test_scan_journal_forwards_decodable_lines_and_skips_damage(tmp_path: Path) -> None:
    journal = tmp_path / "events.jsonl"
    with JournalWriter(journal) as writer:
        for n in range(300):
            writer.append(StateChanged(state="training", experiment=n))
    with open(journal, "ab") as handle:
        handle.write(b'not json\n{"kind": "from_the_future", "ts": 1}\n{"kind": "state_ch')  # damage, torn end
    found = list(scan_journal(journal, block=1000))  # lines straddle blocks
    assert [data["experiment"] for data, _ in found] == list(range(300))
    assert all(line == journal.read_bytes().split(b"\n")[n] for n, (_, line) in enumerate(found))
    assert list(scan_journal(tmp_path / "missing.jsonl")) == []


def fold(events: list[Event]):
    from loopdeck.console.state import SessionView

    view = SessionView()
    for event in events:
        view.apply(event)
    return view


def test_a_late_attach_after_a_long_night_sees_every_experiment(tmp_path: Path) -> None:
    """300 experiments and 100,000 training steps: the replay is a fraction of the journal, yet the console folds
    the same experiments table, incumbent and live curve as from the whole journal."""
    from bench.channel_latency import night, write_journal

    journal = tmp_path / "events.jsonl"
    write_journal(journal, night(300, 334))
    server = ChannelServer(tmp_path / "engine.sock", lambda command: "", lambda: {},
                           ReplayLog.from_journal(journal))
    server.start()
    try:
        late = Listener(server.path, "ann@a:1")
        late.wait_for(lambda: late.client.live, timeout=30)
        replayed, full = fold(late.events), fold(read_events(journal))
        assert late.hello["replay"] == len(late.events) < 30_000
        assert sorted(replayed.experiments) == list(range(300))
        assert (replayed.incumbent_id, replayed.incumbent_metric, replayed.baseline_metric) == \
               (full.incumbent_id, full.incumbent_metric, full.baseline_metric) == (294, full.incumbent_metric, 1.49)
        for n, row in full.experiments.items():
            again = replayed.experiments[n]
            assert (again.status, again.metric, again.step, again.loss, again.description) == \
                   (row.status, row.metric, row.step, row.loss, row.description), n
        assert replayed.curve.points == full.curve.points and replayed.log == full.log
        assert replayed.kept_and_total() == full.kept_and_total()

        # A console that reattaches gets only what it has not seen.
        again = Listener(server.path, "ann@a:2", after=late.events[-1].ts)
        again.wait_for(lambda: again.client.live)
        assert again.hello["replay"] == 0
    finally:
        server.close()


def test_the_replay_keeps_high_rate_events_only_for_recent_experiments(tmp_path: Path) -> None:
    from loopdeck.engine.events import AgentTextDelta, TrainStep

    log = ReplayLog()
    for n in range(RECENT_EXPERIMENTS + 3):
        for step in range(5):
            log.add_event(event := TrainStep(experiment=n, step=step, elapsed_seconds=step, loss=1.0),
                          protocol.event_frame(event))
    for step in range(3 * STREAM_LIMIT):  # one very long run: its curve thins, its first and newest steps stay
        log.add_event(event := TrainStep(experiment=99, step=step, elapsed_seconds=step, loss=1.0),
                      protocol.event_frame(event))
    for n in range(2 * STREAM_LIMIT):
        log.add_event(event := AgentTextDelta(experiment=99, text=str(n)), protocol.event_frame(event))
    replay = [protocol.decode_event(protocol.decode(frame)["event"]) for frame in log.frames()]
    steps = [(e.experiment, e.step) for e in replay if isinstance(e, TrainStep)]
    old = range(RECENT_EXPERIMENTS + 3 - RECENT_EXPERIMENTS + 1)  # out of the window once 99 came
    assert [s for s in steps if s[0] in old] == [(n, 4) for n in old]  # only each one's last step
    long_run = [step for n, step in steps if n == 99]
    assert len(long_run) <= STREAM_LIMIT and long_run[0] == 0 and long_run[-1] == 3 * STREAM_LIMIT - 1
    assert long_run == sorted(long_run)
    text = [e.text for e in replay if isinstance(e, AgentTextDelta)]
    assert len(text) <= STREAM_LIMIT and text[-1] == str(2 * STREAM_LIMIT - 1)
