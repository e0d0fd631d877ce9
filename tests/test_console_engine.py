"""The console against the real engine: a supervised cycle in-process, and watch-only on a headless subprocess."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_targets import ScriptedAgent, change
from test_console_support import make_app, run, screen_text, settle

from loopdeck.console.app import LoopdeckApp
from loopdeck.console.bridge import EventBridge
from loopdeck.console.widgets.experiments import ExperimentsTable
from loopdeck.engine.events import SessionFinished
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.journal import read_events
from loopdeck.engine.store.ledger import Ledger

REPO = Path(__file__).resolve().parents[1]


def git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workspace, check=True, capture_output=True, text=True).stdout.strip()


async def until(pilot, condition: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out waiting for the console"
        await pilot.pause(0.05)


@pytest.mark.slow
def test_supervised_cycle_against_the_real_engine(make_workspace, tmp_path: Path) -> None:
    """Diff appears; approve → committed and run; veto with a note → the agent gets the note, nothing committed."""
    workspace = make_workspace(approval="ask")
    agent = ScriptedAgent([change("LR", 0.3, "lower LR to 0.3"), change("LR", 0.9, "raise LR to 0.9")])
    bridge = EventBridge()
    session = Session(workspace, RunOptions(), on_event=bridge, agent=agent)
    app = LoopdeckApp(bridge=bridge, session=session, workspace=str(workspace),
                      settings_file=tmp_path / "console.json")

    async def scenario() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.pending == 1)
            await settle(app, pilot)
            screen = screen_text(app)
            assert "Change #1 · train.py · +1 −1" in screen and "+ LR = 0.3" in screen
            commits_before = git(workspace, "rev-list", "--count", "HEAD")
            await pilot.press("a")
            await until(pilot, lambda: app.view.pending == 2)
            assert app.view.experiments[1].status == "keep"
            assert "LR = 0.3" in git(workspace, "show", "HEAD:train.py")
            assert int(git(workspace, "rev-list", "--count", "HEAD")) == int(commits_before) + 1

            await pilot.press("n")
            await pilot.pause()
            await pilot.press(*"too high, stay near 0.3", "enter")
            await until(pilot, lambda: app.view.finished is not None)
            await settle(app, pilot)
            assert app.view.experiments[2].status == "vetoed"
            assert "LR = 0.3" in git(workspace, "show", "HEAD:train.py")  # the vetoed change was never committed
            assert int(git(workspace, "rev-list", "--count", "HEAD")) == int(commits_before) + 1
            table = app.query_one(ExperimentsTable)
            assert [table.get_row(str(n))[1].plain for n in range(3)] == ["baseline", "kept", "vetoed"]
            await pilot.press("q")  # the session is over: no question, the console just closes
            await pilot.pause()

    run(scenario())
    assert session.wait(timeout=10)
    third_turn = agent.turns[-1]
    assert "too high, stay near 0.3" in " ".join(third_turn.notes) + third_turn.feedback


@pytest.mark.slow
def test_watch_only_follows_a_headless_engine_process(make_workspace, tmp_path: Path) -> None:
    workspace = make_workspace()
    journal = workspace / ".loopdeck" / "events.jsonl"
    engine = subprocess.Popen(
        [sys.executable, "-m", "loopdeck.cli", "run", str(workspace), "--headless", "--agent", "offline",
         "--max-experiments", "3"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    async def attach_then_leave() -> None:
        app = make_app(tmp_path, watch=True, journal=journal)
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.view.started)
            assert all(not app.check_action(name, ()) for name in ("approve", "abort", "pause", "send_note"))
        # Closing the watcher mid-run must not touch the run.

    async def replay_everything() -> list[tuple[int, str]]:
        app = make_app(tmp_path, watch=True, journal=journal)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.view.finished is not None)
            await settle(app, pilot)
            assert "session finished" in screen_text(app)
            return [(row.id, row.status) for row in app.view.rows()]

    try:
        run(attach_then_leave())
        output, _ = engine.communicate(timeout=120)
    finally:
        engine.kill()
    assert engine.returncode == 0, output
    assert any(isinstance(e, SessionFinished) for e in read_events(journal))
    shown = run(replay_everything())
    ledger = Ledger(workspace / ".loopdeck")
    try:
        recorded = [(row.id, row.status) for row in ledger.rows()]
    finally:
        ledger.close()
    assert shown == recorded and len(recorded) == 4
