"""A background engine and the consoles that attach to it, as a user meets them: start, detach with q (the
research goes on), attach again and approve, two consoles at once, SIGHUP to a console, the engine SIGKILLed under
an attached console and restarted from it, start-up errors as one line, `loopdeck ls` and `loopdeck stop`, a
console on a headless session, and the engine's start-up notes shown once.

Every engine a test starts is SIGKILLed at its end (the `engines` fixture), so no daemon outlives the suite.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_targets import fake_train_source
from test_console_support import run, screen_text

from loopdeck.cli.daemon import engine_argv, find_engine, start_engine
from loopdeck.cli.main import main
from loopdeck.console.app import LoopdeckApp
from loopdeck.console.bridge import EventBridge
from loopdeck.console.dialogs.confirm import ChoiceDialog
from loopdeck.console.remote import RemoteSession
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.channel.registry import EngineRecord, last_record, running_engines
from loopdeck.engine.channel.server import ChannelServer
from loopdeck.engine.control import make_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import DecisionMade
from loopdeck.engine.session import RunOptions
from loopdeck.engine.store.journal import read_events

pytestmark = pytest.mark.slow
TRAIN = fake_train_source(steps=8, step_seconds=0.15)  # ~1.2 s a run: long enough to be caught training


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def engines(make_workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], tuple]]:
    """engines() -> (workspace, record of its running engine); every engine started is killed afterwards."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    workspaces: list[Path] = []

    def start(**options: object) -> tuple[Path, EngineRecord]:
        # A draft reviewed while the previous experiment trains may turn out a repeat of it and be refused
        # unrun; these tests are about consoles and decisions, not about repeats.
        workspace = make_workspace(TRAIN, approval="ask", timeout=30.0, research={"skip_repeats": False})
        workspaces.append(workspace)
        return workspace, start_engine(workspace, engine_argv(workspace, RunOptions(**options)))  # type: ignore[arg-type]

    yield start
    for workspace in workspaces:
        record = last_record(workspace / ".loopdeck")
        while record is not None and alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)
            time.sleep(0.05)
            record = last_record(workspace / ".loopdeck")


def console(workspace: Path, record: EngineRecord, tmp_path: Path, restart=None) -> LoopdeckApp:
    bridge = EventBridge()
    session = RemoteSession(Path(record.socket), bridge, restart=restart)
    return LoopdeckApp(bridge=bridge, session=session, workspace=str(workspace), settings_file=tmp_path / "c.json")


async def until(pilot, condition: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the console"
        await pilot.pause(0.05)


def wait_until(condition: Callable[[], bool], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_detach_with_q_then_attach_again_and_approve(engines, tmp_path: Path) -> None:
    from conftest import ledger_rows

    workspace, record = engines()
    first = console(workspace, record, tmp_path)

    async def detach() -> None:
        async with first.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: first.view.pending == 1)
            await pilot.press("t")  # autonomous: the loop goes on by itself once we are gone
            await until(pilot, lambda: first.view.approval == "auto")
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(first.screen, ChoiceDialog)
            assert "Detach from the session?" in screen_text(first) and "research goes on" in screen_text(first)
            await pilot.press("enter")  # Detach is focused
            await pilot.pause()
            assert not first.is_running

    run(detach())
    detached = len(ledger_rows(workspace))
    wait_until(lambda: len(ledger_rows(workspace)) >= detached + 2)  # it keeps training with no console
    assert find_engine(workspace) is not None and alive(record.pid)

    second = console(workspace, record, tmp_path)

    async def approve() -> None:
        async with second.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: second.view.events_applied > 0 and second.view.approval == "auto")
            await pilot.press("t")  # supervised again: the next change waits for this console
            await until(pilot, lambda: second.view.pending is not None)
            pending = second.view.pending
            await pilot.press("a")
            # The decision is what this test is about: it reaches the engine, and the run it approved is recorded
            # whatever its outcome (a first run on a cold machine may take a while).
            await until(pilot, lambda: any(isinstance(e, DecisionMade) and e.experiment == pending
                                           for e in read_events(workspace / ".loopdeck/events.jsonl")), timeout=90.0)
            decisions = [e for e in read_events(workspace / ".loopdeck/events.jsonl")
                         if isinstance(e, DecisionMade) and e.experiment == pending]
            assert decisions[-1].approved and decisions[-1].client == second.remote.name  # type: ignore[union-attr]
            await until(pilot, lambda: second.view.experiments[pending].status not in ("awaiting", "running"),
                        timeout=90.0)

    run(approve())


def test_two_consoles_one_approves_the_other_sees_it(engines, tmp_path: Path) -> None:
    workspace, record = engines()
    app = console(workspace, record, tmp_path)
    shown: list[str] = []
    notify = app.notify
    app.notify = lambda message, **options: (shown.append(message), notify(message, **options))[1]  # type: ignore[method-assign]
    other = ChannelClient(Path(record.socket), name="bob@elsewhere:42")
    other.connect()

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.pending == 1)
            started = time.monotonic()
            assert other.request(make_command("decide", approve=True, experiment=1)) == ""
            await until(pilot, lambda: app.view.pending is None)
            assert time.monotonic() - started < 5
            await until(pilot, lambda: "#1 approved by bob@elsewhere:42" in shown)
            # This console's late decision is refused by the engine, saying who decided first.
            app.remote.decide(False, experiment=1)  # type: ignore[union-attr]
            await until(pilot, lambda: any("already approved by bob@elsewhere:42" in m for m in shown))

    try:
        run(scenario())
    finally:
        other.close()


def test_engine_killed_under_a_console_says_so_and_restarts_from_it(engines, tmp_path: Path) -> None:
    workspace, record = engines(approval="auto")
    restarts: list[EngineRecord] = []

    def restart() -> Path:
        restarts.append(start_engine(workspace, last_record(workspace / ".loopdeck").argv))  # type: ignore[union-attr]
        return Path(restarts[-1].socket)

    app = console(workspace, record, tmp_path, restart=restart)

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.experiments.get(1) is not None
                        and app.view.experiments[1].status == "running")
            os.kill(record.pid, signal.SIGKILL)
            await until(pilot, lambda: "is gone" in app.view.failure)
            assert app.check_action("restart_engine", ()) is True
            assert app.check_action("approve", ()) is False
            await pilot.press("r")
            await until(pilot, lambda: restarts and app.view.failure == "")
            assert restarts[0].pid != record.pid
            await until(pilot, lambda: any(row.status in ("keep", "discard") for n, row in
                                           app.view.experiments.items() if n >= 1))

    run(scenario())
    from conftest import ledger_rows

    rows = ledger_rows(workspace)
    assert rows[0].status == "keep"  # the baseline survived the kill
    assert any(row.status == "interrupted" for row in rows), [row.status for row in rows]


def read_some(fd: int) -> bytes:
    """What the terminal has for us within 0.1 s (b"" when nothing, or when the console has gone)."""
    if not select.select([fd], [], [], 0.1)[0]:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def test_sighup_to_an_attached_console_leaves_the_engine_running(engines) -> None:
    workspace, record = engines()
    pid, fd = pty.fork()
    if pid == 0:  # the console, on a terminal of its own
        os.execvpe(sys.executable, [sys.executable, "-m", "loopdeck.cli.main", "attach", str(workspace)],
                   {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"})
    output = b""
    deadline = time.monotonic() + 30
    while b"loopdeck" not in output and time.monotonic() < deadline:
        output += read_some(fd)
    assert b"loopdeck" in output, output[-2000:]
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        read_some(fd)  # keep the terminal drained so the console never blocks writing to it
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the console did not close on SIGHUP")
    os.close(fd)
    assert alive(record.pid) and find_engine(workspace) is not None


def test_a_start_up_failure_is_one_line_and_leaves_no_engine(make_workspace, engines, capsys) -> None:
    workspace = make_workspace(TRAIN)
    (workspace / "train.py").write_text(TRAIN + "\n# an uncommitted edit\n")
    assert main(["run", str(workspace)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("loopdeck: error: ") and "\n" not in error and "Traceback" not in error
    assert "commit" in error or "uncommitted" in error or "clean" in error, error
    assert find_engine(workspace) is None
    with pytest.raises(LoopdeckError):
        start_engine(workspace, engine_argv(workspace, RunOptions()))


def test_ls_lists_running_engines_and_stop_ends_one(engines, capsys) -> None:
    workspace, record = engines()
    wait_until(lambda: (find_engine(workspace) or record).state == "awaiting_approval")
    assert main(["ls"]) == 0
    listing = capsys.readouterr().out
    assert "workspace" in listing.splitlines()[0] and str(workspace) in listing and str(record.pid) in listing
    assert "awaiting_approval" in listing and "#1" in listing
    assert main(["stop", str(workspace), "--now"]) == 0
    assert "abort now" in capsys.readouterr().out
    wait_until(lambda: not alive(record.pid) or find_engine(workspace) is None)
    assert running_engines() == []
    assert main(["ls"]) == 0
    assert "no loopdeck engine runs" in capsys.readouterr().out
    assert main(["stop", str(workspace)]) == 2


def test_run_on_a_running_engine_attaches_instead_of_starting_another(engines) -> None:
    workspace, record = engines()
    result = subprocess.run([sys.executable, "-m", "loopdeck.cli.main", "engine", str(workspace)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "another loopdeck engine" in result.stderr
    assert find_engine(workspace).pid == record.pid  # type: ignore[union-attr]


def test_watch_follows_a_background_engine_read_only(engines, tmp_path: Path) -> None:
    workspace, record = engines()
    bridge = EventBridge()
    session = RemoteSession(Path(record.socket), bridge, role="watch")
    app = LoopdeckApp(bridge=bridge, session=session, workspace=str(workspace), settings_file=tmp_path / "c.json")

    async def scenario() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.view.pending == 1)  # it sees the session…
            assert app.view.mode == "watch"
            assert not any(app.check_action(action, ()) for action in ("approve", "veto", "pause", "abort"))
            session.decide(True, experiment=1)  # …and the engine refuses a watcher's command even if sent
            await pilot.pause(0.5)
            assert app.view.pending == 1
            await pilot.press("q")  # nothing to ask: watching never stops anything
            await pilot.pause()
            assert not app.is_running

    run(scenario())
    assert alive(record.pid)


def test_attach_to_a_session_without_a_channel_says_what_works(make_workspace, capsys) -> None:
    from loopdeck.engine.store.lock import WorkspaceLock

    workspace = make_workspace(TRAIN)
    lock = WorkspaceLock(workspace / ".loopdeck")
    lock.acquire()  # as a headless session holds it
    try:
        assert main(["attach", str(workspace)]) == 2
    finally:
        lock.release()
    error = capsys.readouterr().err
    assert "runs without a channel" in error and f"loopdeck watch {workspace}" in error
    assert main(["attach", str(workspace)]) == 2
    assert "no engine runs on" in capsys.readouterr().err


def test_a_console_attaches_to_a_headless_session_and_approves(make_workspace, tmp_path: Path) -> None:
    """The overnight SSH case: `loopdeck run --headless` (supervised by loopdeck.toml), then a console attaches
    with full control and approves the pending change; the headless run prints the decision, `loopdeck ls` lists
    it and `loopdeck stop` ends it."""
    workspace = make_workspace(TRAIN, approval="ask", timeout=30.0)
    headless = subprocess.Popen([sys.executable, "-m", "loopdeck.cli.main", "run", str(workspace), "--headless"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: find_engine(workspace) is not None or headless.poll() is not None)
        record = find_engine(workspace)
        assert record is not None and record.pid == headless.pid, headless.communicate(timeout=5)
        app = console(workspace, record, tmp_path)

        async def approve() -> None:
            async with app.run_test(size=(80, 24)) as pilot:
                await until(pilot, lambda: app.view.pending == 1)
                await pilot.press("a")
                await until(pilot, lambda: app.view.experiments[1].status in ("keep", "discard"))

        run(approve())
        assert [record.pid for record in running_engines()] == [headless.pid]
        assert main(["stop", str(workspace), "--now"]) == 0
        out, err = headless.communicate(timeout=60)
    finally:
        if headless.poll() is None:
            headless.kill()
            headless.wait()
    assert headless.returncode == 0, err
    assert "#1 approved" in out and f"loopdeck attach {workspace}" in out
    decisions = [e for e in read_events(workspace / ".loopdeck/events.jsonl") if isinstance(e, DecisionMade)]
    assert decisions[-1].approved and decisions[-1].client == app.remote.name  # type: ignore[union-attr]
    assert find_engine(workspace) is None  # off `loopdeck ls` once it ends


@pytest.mark.parametrize(("age", "shown"), [(1.0, True), (3600.0, False)])
def test_the_engines_start_up_notes_are_news_once(tmp_path: Path, age: float, shown: bool) -> None:
    """A console attaching as the engine starts shows its notes; one attaching later does not toast them again."""
    server = ChannelServer(tmp_path / "engine.sock", lambda command: "",
                           lambda: {"approval": "ask", "notes": ["no sandbox on this machine"]})
    server.started -= age
    server.start()
    bridge = EventBridge()
    app = LoopdeckApp(bridge=bridge, session=RemoteSession(server.path, bridge), settings_file=tmp_path / "c.json")
    toasts: list[str] = []
    notify = app.notify
    app.notify = lambda message, **options: (toasts.append(message), notify(message, **options))[1]  # type: ignore[method-assign]

    async def attach() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()

    try:
        run(attach())
    finally:
        server.close()
    assert ("no sandbox on this machine" in toasts) is shown
