"""Pilot tests of the console app on synthetic event streams and a recording fake session."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from demo_session import T0, demo_session
from test_console_support import FakeSession, feed, footer_actions, make_app, run, screen_text, settle
from textual.color import Color
from textual.widgets import Input, Markdown

from loopdeck.console.actions import CONTROL_ACTIONS, DECISION_ACTIONS
from loopdeck.console.commands import ConsoleCommands
from loopdeck.console.dialogs.confirm import ChoiceDialog
from loopdeck.console.dialogs.note import NoteDialog
from loopdeck.console.messages import EventsPending
from loopdeck.console.screens.experiment import ExperimentScreen
from loopdeck.console.screens.help import HelpScreen
from loopdeck.console.widgets.experiments import ExperimentsTable
from loopdeck.engine import events as ev


def started(approval: str = "ask") -> ev.SessionStarted:
    return ev.SessionStarted(ts=T0, workspace="/w", branch="loopdeck/t", agent="offline", approval=approval,
                             budget_seconds=60.0, metric_name="val_bpb", metric_direction="minimize")


def proposal(n: int) -> list[ev.Event]:
    return [
        ev.ChangeProposed(ts=T0 + n, experiment=n, description=f"change {n}", rationale="because",
                          diff="--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-LR = 1\n+LR = 2\n",
                          files=("train.py",), added=1, removed=1),
        ev.ApprovalRequested(ts=T0 + n, experiment=n, description=f"change {n}"),
        ev.StateChanged(ts=T0 + n, state="awaiting_approval", experiment=n),
    ]


def test_synthetic_session_renders_rows_statuses_and_status_line(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await feed(app, pilot, demo_session())
            table = app.query_one(ExperimentsTable)
            assert table.row_count == 8
            statuses = [table.get_row(str(n))[1].plain for n in range(8)]
            assert statuses == ["baseline", "kept", "discarded", "kept", "crashed", "discarded", "kept", "awaiting"]
            success = Color.parse(app.theme_variables["success"]).rich_color
            error = Color.parse(app.theme_variables["error"]).rich_color
            assert table.get_row("1")[1].style.color == success
            assert table.get_row("4")[1].style.color == error
            assert [table.get_row(str(n))[2].plain for n in (1, 2, 4)] == ["1.9000", "1.9087", "—"]
            text = screen_text(app)
            assert "SUPERVISED" in text
            assert "val_bpb 1.8893 (−0.0230)" in text  # incumbent and its gain over the 1.9123 baseline
            assert "kept 3/6" in text
            assert "31.2k tok · ~$0.13" in text
            assert "waiting for your decision on #7" in text
            assert "Change #7 · train.py · +1 −1" in text

    run(scenario())


def test_decision_keys_are_enabled_only_while_a_decision_is_pending(tmp_path: Path) -> None:
    async def scenario() -> None:
        session = FakeSession()
        app = make_app(tmp_path, session=session)
        async with app.run_test() as pilot:
            await feed(app, pilot, [started()])
            for action in DECISION_ACTIONS:
                assert app.check_action(action, ()) is False
            assert not footer_actions(app) & DECISION_ACTIONS
            await pilot.press("a", "v")
            assert "decide" not in session.names()

            await feed(app, pilot, proposal(1))
            assert all(app.check_action(action, ()) for action in DECISION_ACTIONS)
            assert footer_actions(app) >= DECISION_ACTIONS
            await pilot.press("a")
            await settle(app, pilot)
            assert session.calls[-1] == ("decide", (True, ""), {"experiment": 1})
            # The decision is on its way: the keys go away at once, so a second press cannot decide twice.
            assert app.check_action("approve", ()) is False
            await pilot.press("a")
            assert session.names().count("decide") == 1

    run(scenario())


def test_veto_and_veto_with_a_note(tmp_path: Path) -> None:
    async def scenario() -> None:
        session = FakeSession()
        app = make_app(tmp_path, session=session)
        async with app.run_test() as pilot:
            await feed(app, pilot, [started(), *proposal(1)])
            await pilot.press("v")
            await settle(app, pilot)
            assert session.calls[-1] == ("decide", (False, ""), {"experiment": 1})

            await feed(app, pilot, [ev.DecisionMade(experiment=1, approved=False), *proposal(2)])
            await pilot.press("n")
            await pilot.pause()
            assert isinstance(app.screen, NoteDialog)
            await pilot.press(*"try a smaller lr")
            await pilot.press("enter")
            await settle(app, pilot)
            assert session.calls[-1] == ("decide", (False, "try a smaller lr"), {"experiment": 2})

    run(scenario())


def test_note_autonomous_toggle_pause_resume_stop_and_abort(tmp_path: Path) -> None:
    async def scenario() -> None:
        session = FakeSession()
        app = make_app(tmp_path, session=session)
        async with app.run_test() as pilot:
            await feed(app, pilot, [started()])
            await pilot.press("m")
            await pilot.pause()
            app.screen.query_one(Input).value = "focus on the optimizer"
            await pilot.press("enter")
            await settle(app, pilot)
            assert session.calls[-1] == ("send_note", ("focus on the optimizer",), {})

            await pilot.press("t")
            await settle(app, pilot)
            assert session.calls[-1] == ("set_approval", ("auto",), {})
            assert "AUTONOMOUS" in screen_text(app)
            await pilot.press("t")
            await settle(app, pilot)
            assert session.calls[-1] == ("set_approval", ("ask",), {})

            await pilot.press("p")
            await settle(app, pilot)
            assert session.calls[-1][0] == "pause"
            assert "resume" in footer_actions(app) and "pause" not in footer_actions(app)
            await pilot.press("p")
            await settle(app, pilot)
            assert session.calls[-1][0] == "resume"

            await pilot.press("s")
            await pilot.pause()
            assert isinstance(app.screen, ChoiceDialog)  # stopping the research is confirmed first
            await pilot.press("escape")
            await pilot.pause()
            assert "stop_after_current" not in session.names()
            await pilot.press("s")
            await pilot.pause()
            await pilot.click("#choice-stop_after_current")
            await settle(app, pilot)
            assert session.calls[-1][0] == "stop_after_current"
            assert app.check_action("stop_after_current", ()) is False

            await pilot.press("x")
            await pilot.pause()
            assert isinstance(app.screen, ChoiceDialog)
            await pilot.press("escape")  # cancelling the confirmation aborts nothing
            await pilot.pause()
            assert "abort" not in session.names()
            await pilot.press("x")
            await pilot.pause()
            await pilot.click("#choice-abort")
            await settle(app, pilot)
            assert session.calls[-1][0] == "abort"

    run(scenario())


def test_watch_only_offers_no_control(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path, watch=True)
        async with app.run_test() as pilot:
            await feed(app, pilot, [started(), *proposal(1)])
            assert app.view.pending == 1
            for action in CONTROL_ACTIONS:
                assert app.check_action(action, ()) is False
            assert not footer_actions(app) & CONTROL_ACTIONS
            provider = ConsoleCommands(app.screen)
            offered = [hit.text async for hit in provider.discover()]
            assert offered and not {"Approve the proposed change", "Abort the session now", "Pause the loop"} & set(
                offered)
            await pilot.press("a", "v", "n", "m", "t", "p", "s", "x")
            assert app.screen is app.main  # no dialog opened
            text = screen_text(app)
            assert "WATCH" in text
            assert "loopdeck ctl /home/ada/research approve|veto" in text

    run(scenario())


def test_reasoning_pane_receives_streamed_deltas_in_order(tmp_path: Path) -> None:
    """A thread streams deltas as fast as it can; nothing is dropped or reordered, and far fewer wake-ups than
    events reach the app (the bridge coalesces)."""
    wakeups: list[EventsPending] = []

    async def scenario() -> None:
        app = make_app(tmp_path)
        chunks = [f"w{i} " for i in range(1500)]

        def produce() -> None:
            for i, chunk in enumerate(chunks):
                cls = ev.AgentThinkingDelta if i < 1000 else ev.AgentTextDelta
                app.bridge(cls(experiment=3, text=chunk))

        async with app.run_test(message_hook=lambda m: wakeups.append(m) if isinstance(m, EventsPending)
                                else None) as pilot:
            thread = threading.Thread(target=produce)
            thread.start()
            while thread.is_alive():
                await pilot.pause(0.01)
            thread.join()
            await settle(app, pilot)
            thinking = "".join(chunks[:1000])
            text = "".join(chunks[1000:])
            blocks = app.view.reasoning
            assert [(b.kind, b.text) for b in blocks] == [("thinking", thinking), ("text", text)]
            source = app.main.query_one(Markdown).source
            assert source == "> " + thinking + "\n\n" + text
            assert 0 < len(wakeups) < len(chunks) / 5

    run(scenario())


def test_theme_switch_is_remembered(tmp_path: Path) -> None:
    settings = tmp_path / "config" / "console.json"

    async def first() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            assert app.theme == "loopdeck-dark"
            assert {"loopdeck-dark", "loopdeck-light", "textual-dark", "nord"} <= set(app.available_themes)
            await feed(app, pilot, demo_session())
            app.theme = "loopdeck-light"
            await settle(app, pilot)
            # Table colours are Rich styles baked from the theme: they must follow the switch.
            success = Color.parse(app.theme_variables["success"]).rich_color
            assert app.query_one(ExperimentsTable).get_row("1")[1].style.color == success

    async def second() -> None:
        app = make_app(tmp_path)
        async with app.run_test() as pilot:
            await pilot.pause()
            assert app.theme == "loopdeck-light"
            app.theme = "nord"
            await pilot.pause()

    run(first())
    assert json.loads(settings.read_text())["theme"] == "loopdeck-light"
    run(second())
    assert json.loads(settings.read_text())["theme"] == "nord"


def test_palette_lists_enabled_actions_and_help_lists_keys(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await feed(app, pilot, [started(), *proposal(1)])
            provider = ConsoleCommands(app.screen)
            offered = {hit.text async for hit in provider.discover()}
            assert {"Approve the proposed change", "Veto the proposed change", "Send a note to the agent",
                    "Pause the loop", "Abort the session now", "Help: keys"} <= offered
            assert "Resume the loop" not in offered
            hits = [hit async for hit in provider.search("veto")]
            assert max(hits, key=lambda hit: hit.score).text.startswith("Veto the proposed change")
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            text = screen_text(app)
            for words in ("Approve", "Veto + note", "Autonomous", "Stop after", "Abort", "ctrl+p"):
                assert words in text
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is app.main

    run(scenario())


def test_selecting_a_row_shows_that_experiments_details(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            await feed(app, pilot, demo_session())
            table = app.query_one(ExperimentsTable)
            table.focus()
            table.move_cursor(row=4)
            await pilot.press("enter")
            await settle(app, pilot)
            assert isinstance(app.screen, ExperimentScreen)
            text = screen_text(app)
            assert "#4 crashed" in text
            assert "loss exploded to NaN at step 100" in text
            assert "FAIL" in text  # the log tail
            assert "EMBEDDING_LR = 1.2" in text  # the diff
            await pilot.press("escape")
            await pilot.pause()
            assert app.screen is app.main

    run(scenario())


def test_quitting_a_supervised_session_asks_and_waits_for_the_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        session = FakeSession()
        app = make_app(tmp_path, session=session)
        async with app.run_test() as pilot:
            await feed(app, pilot, [started()])
            await pilot.press("q")
            await pilot.pause()
            assert isinstance(app.screen, ChoiceDialog)
            await pilot.click("#choice-abort")
            await settle(app, pilot)
            assert session.names()[-1] == "abort"
            assert app.is_running  # still up until the engine has recorded everything
            assert "stopping the loop" in screen_text(app)
            session.finish()
            for _ in range(100):
                if not app.is_running:
                    break
                await pilot.pause(0.02)
            assert not app.is_running

    run(scenario())


def test_a_failing_worker_is_one_visible_error_not_a_dead_ui(tmp_path: Path) -> None:
    async def scenario() -> None:
        journal = tmp_path / "events.jsonl"
        journal.mkdir()  # opening it fails in the follower thread
        app = make_app(tmp_path, watch=True, journal=journal)
        async with app.run_test() as pilot:
            for _ in range(100):
                await pilot.pause(0.02)
                if app.view.failure:
                    break
            await settle(app, pilot)
            assert "following the journal failed: IsADirectoryError" in screen_text(app)
            await feed(app, pilot, [started()])  # and the console keeps working
            await pilot.press("f1")
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)

    run(scenario())


def test_compact_layout_uses_tabs_and_skips_hidden_panes(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            await feed(app, pilot, [started()])
            assert app.main.has_class("-compact") and app.main.pane == "agent"
            sample = demo_session(experiments=0, pending=False)
            await feed(app, pilot, [e for e in sample if isinstance(e, ev.TelemetrySample)])
            assert "hardware-pane" in app.main._stale  # hidden: not drawn
            await pilot.press("3")
            await settle(app, pilot)
            assert app.main.pane == "run"
            assert "hardware-pane" not in app.main._stale
            assert "GPU 0" in screen_text(app)
            await pilot.press("4")
            await settle(app, pilot)
            assert "Experiments" in screen_text(app)
            await pilot.resize_terminal(120, 40)
            await settle(app, pilot)
            assert not app.main.has_class("-compact")

    run(scenario())
