"""The loopdeck console app: themes, keys, the event pump, and the actions that talk to the engine.

The engine is either in this process (`loopdeck run --foreground`, tests) or a background process reached through
its channel (`RemoteSession`): then `q` detaches, and an engine that dies can be restarted from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

from textual.app import App
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.theme import Theme
from textual.worker import Worker, WorkerState, get_current_worker

from loopdeck.console import actions
from loopdeck.console import state as st
from loopdeck.console.bridge import EventBridge, follow_journal
from loopdeck.console.commands import ConsoleCommands
from loopdeck.console.dialogs.confirm import ChoiceDialog
from loopdeck.console.dialogs.leave import abort_dialog, detach_dialog, quit_foreground_dialog, stop_dialog
from loopdeck.console.dialogs.note import NoteDialog
from loopdeck.console.messages import EventsPending
from loopdeck.console.remote import RemoteSession
from loopdeck.console.screens.experiment import ExperimentScreen
from loopdeck.console.screens.help import HelpScreen
from loopdeck.console.screens.main import MainScreen
from loopdeck.console.screens.studies import StudiesScreen
from loopdeck.console.settings import load_settings, save_settings
from loopdeck.console.state import SessionView, next_research_mode
from loopdeck.engine import events as ev
from loopdeck.themes import DEFAULT_THEME, LOOPDECK_THEMES, STYLESHEET

RENDER_INTERVAL = 1 / 25  # redraws are batched to at most 25 per second, however fast events arrive
MAX_BATCH = 2000  # events folded per wake-up before yielding to input
NOTICE_MAX_AGE = 30.0  # older notices (a replayed journal) are history, not news


class SessionControls(Protocol):
    """What the console needs of `loopdeck.engine.session.Session` (tests pass a recording fake)."""

    approval: str

    def start(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def decide(self, approve: bool, note: str = "", experiment: int | None = None) -> None: ...
    def send_note(self, text: str) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop_after_current(self) -> None: ...
    def abort(self) -> None: ...
    def set_approval(self, policy: str) -> None: ...
    def set_mode(self, mode: str) -> None: ...


class LoopdeckApp(App[None]):
    TITLE = "loopdeck"
    CSS_PATH = [STYLESHEET, Path(__file__).with_name("console.tcss")]
    BINDINGS = actions.bindings()
    COMMANDS = App.COMMANDS | {ConsoleCommands}

    def __init__(
        self,
        *,
        bridge: EventBridge | None = None,
        session: SessionControls | None = None,
        journal: Path | None = None,
        workspace: str = ".",
        clock: Callable[[], float] = time.time,
        settings_file: Path | None = None,
        notes: Sequence[str] = (),
        start_session: bool = True,
    ) -> None:
        super().__init__()
        self.bridge = bridge or EventBridge()
        self.session = session
        self.journal = journal
        self.workspace = workspace
        self.clock = clock
        self.remote = session if isinstance(session, RemoteSession) else None
        read_only = session is None or (self.remote is not None and self.remote.read_only)
        self.view = SessionView(watch=read_only, approval=getattr(session, "approval", "ask"))
        self.sub_title = workspace
        self._settings_file = settings_file
        self._notes = tuple(notes)
        self._start_session = start_session
        self._saved_theme = ""
        self._stop_requested = False
        self._exit_when_engine_stops = False
        self._engine_lost = False  # a background engine hung up before its session finished
        self._last_second = -1
        for theme in LOOPDECK_THEMES:
            self.register_theme(theme)

    # --- lifecycle -----------------------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        self.main = MainScreen(self.view, self.workspace)
        return self.main

    def on_mount(self) -> None:
        saved = load_settings(self._settings_file).get("theme")
        self.theme = saved if isinstance(saved, str) and saved in self.available_themes else DEFAULT_THEME
        self._saved_theme = self.theme
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        for note in [*self._notes, *self._engine_news()]:
            self.notify(note, timeout=10)
        self.bridge.attach(self)
        self.set_interval(RENDER_INTERVAL, self._tick, name="render")
        if self.session is not None and self._start_session:
            self.session.start()
        if self.session is not None:
            self._watch_engine()
        if self.journal is not None:
            self.run_worker(self._follow_journal, thread=True, exit_on_error=False, name="journal")

    def _engine_news(self) -> list[str]:
        """A background engine's start-up notes, for a console attaching as it starts; later they are history, as
        old notices in a replay are (each attach would toast them again)."""
        if self.remote is None or self.clock() - self.remote.started >= NOTICE_MAX_AGE:
            return []
        return self.remote.notes

    def _watch_engine(self) -> None:
        self.run_worker(self._await_engine, thread=True, exit_on_error=False, name="engine")

    def _await_engine(self) -> None:
        worker = get_current_worker()
        assert self.session is not None
        while not self.session.wait(timeout=0.25):
            if worker.is_cancelled:
                return

    def _follow_journal(self) -> None:
        worker = get_current_worker()
        assert self.journal is not None
        follow_journal(self.journal, self.bridge.emit_many, lambda: worker.is_cancelled)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if not self.screen_stack:  # the app is closing (the engine may end just as the console leaves)
            return
        if event.state == WorkerState.ERROR:
            what = {"engine": "the engine", "journal": "following the journal",
                    "restart": "restarting the engine"}.get(worker.name, worker.name)
            message = f"{what} failed: {type(worker.error).__name__}: {worker.error}"
            self.view.fail(message)
            self.notify(message, severity="error", timeout=30)
            self.refresh_bindings()
        elif event.state == WorkerState.SUCCESS and worker.name == "engine":
            self._engine_returned()
        elif event.state == WorkerState.SUCCESS and worker.name == "restart":
            self._engine_lost = False
            self.view.recover()
            self.notify("The engine is back: the session resumes where it stopped.", timeout=8)
            self._watch_engine()
            self.refresh_bindings()

    def _engine_returned(self) -> None:
        self._pump_all()
        if self._exit_when_engine_stops:
            self.exit()
        elif self.view.finished is None and self.remote is not None:
            self._engine_lost = True
            pid = self.remote.engine_pid
            hint = "press r to restart it: it resumes where it stopped" if self.remote.can_restart else \
                "run `loopdeck run DIR` to restart it"
            self.view.fail(f"the engine (pid {pid}) is gone without finishing the session; {hint} "
                           "(its log: .loopdeck/engine.log)")
        elif self.view.finished is None:
            self.view.fail("the engine stopped without finishing the session; its logs are in .loopdeck/")
        self.refresh_bindings()

    # --- events --------------------------------------------------------------------------------------------

    async def on_events_pending(self, message: EventsPending) -> None:
        more, lifecycle = self._pump(MAX_BATCH)
        if more:
            self.post_message(EventsPending())
        if lifecycle:  # decisions and outcomes show at once; streams wait for the next frame
            await self._render()

    def _pump_all(self) -> None:
        while self._pump(MAX_BATCH)[0]:
            pass

    def _pump(self, limit: int) -> tuple[bool, bool]:
        """Fold waiting events into the view; returns (more waiting, any lifecycle event)."""
        batch, more = self.bridge.drain(limit)
        lifecycle = False
        notices: list[ev.Notice] = []
        for event in batch:
            try:
                self.view.apply(event)
            except Exception as exc:  # a malformed event must cost one message, not the console
                if not self.view.failure:
                    self.view.fail(f"could not show a {event.kind} event: {exc}")
                continue
            if not event.high_rate:
                lifecycle = True
            if isinstance(event, ev.Notice):
                notices.append(event)
            elif isinstance(event, ev.DecisionMade) and event.client:
                notices.append(self._decision_notice(event))
        now = self.clock()
        for notice in [n for n in notices if now - n.ts < NOTICE_MAX_AGE][-3:]:
            severity = {"info": "information"}.get(notice.level, notice.level)
            self.notify(notice.message, severity=severity, timeout=10 if notice.level == "info" else 20)  # type: ignore[arg-type]
        return more, lifecycle

    def _decision_notice(self, event: ev.DecisionMade) -> ev.Notice:
        """Who decided, for every attached console (this one's own decision included, as the engine saw it)."""
        who = "you" if self.remote is not None and event.client == self.remote.name else event.client
        verdict = "approved" if event.approved else "vetoed"
        note = f": {event.note}" if event.note else ""
        return ev.Notice(level="info", message=f"#{event.experiment} {verdict} by {who}{note}", ts=event.ts)

    async def _tick(self) -> None:
        second = int(self.clock())
        if self.view.dirty or second != self._last_second:
            self._last_second = second
            await self._render()

    async def _render(self) -> None:
        if not self.main.ready or not self.screen_stack:  # not built yet, or the app is closing
            return
        dirty = self.view.take_dirty()
        if dirty & {st.APPROVAL, st.STATUS}:
            self.refresh_bindings()
        with self.batch_update():
            try:
                await self.main.render_view(dirty, self.clock())
            except NoMatches:  # the app is closing: its widgets go before its render timer stops
                return
            top = self.screen_stack[-1] if self.screen_stack else None  # the app may have closed meanwhile
            if isinstance(top, ExperimentScreen) and dirty & {st.TABLE, st.LOG, st.CURVE}:
                top.show(self.view)
            if isinstance(top, StudiesScreen) and st.STUDIES in dirty:
                top.show(self.view)

    def _theme_changed(self, theme: Theme) -> None:
        if theme.name != self._saved_theme:
            self._saved_theme = theme.name
            save_settings({"theme": theme.name}, self._settings_file)
        self.main.theme_changed()

    # --- which actions make sense now ---------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "restart_engine":
            return self._engine_lost and self.remote is not None and self.remote.can_restart
        if action not in actions.CONTROL_ACTIONS:
            return True
        view = self.view
        if self.session is None or view.watch or not view.active or self._exit_when_engine_stops \
                or self._engine_lost:
            return False
        if action in actions.DECISION_ACTIONS:
            return view.pending is not None
        return {
            "go_autonomous": view.approval == "ask",
            "go_supervised": view.approval != "ask",
            "pause": not view.pausing_or_paused,
            "resume": view.pausing_or_paused,
            "stop_after_current": not self._stop_requested,
        }.get(action, True)

    # --- actions -------------------------------------------------------------------------------------------

    def _control(self) -> SessionControls:
        assert self.session is not None  # check_action keeps control actions away from watch mode
        return self.session

    async def _after_control(self) -> None:
        self.refresh_bindings()
        await self._render()

    async def _decide(self, approve: bool, note: str = "") -> None:
        experiment = self.view.pending
        if experiment is None:
            self.notify("No decision is pending any more.", severity="warning")
            return
        self._control().decide(approve, note, experiment=experiment)
        self.view.decided()
        verdict = "approved" if approve else "vetoed"
        self.notify(f"#{experiment} {verdict}" + (" — your note goes to the agent" if note else ""), timeout=4)
        await self._after_control()

    async def action_approve(self) -> None:
        await self._decide(True)

    async def action_veto(self) -> None:
        await self._decide(False)

    def action_veto_with_note(self) -> None:
        pending = self.view.pending
        self.push_screen(
            NoteDialog(f"Veto #{pending} with a note", "The change is reverted and the agent reads your note "
                       "before its next proposal.", "Veto"),
            callback=self._veto_note_given,
        )

    async def _veto_note_given(self, note: str | None) -> None:
        if note is not None:
            await self._decide(False, note)

    def action_send_note(self) -> None:
        self.push_screen(NoteDialog("Note to the agent", "Delivered with the agent's next turn.", "Send"),
                         callback=self._note_given)

    def _note_given(self, note: str | None) -> None:
        if note and self.check_action("send_note", ()):
            self._control().send_note(note)
            self.notify("Note queued for the agent's next turn.", timeout=4)

    async def _set_approval(self, policy: str) -> None:
        self._control().set_approval(policy)
        self.view.set_approval(policy)
        self.notify("Supervised: every change waits for your decision." if policy == "ask"
                    else "Autonomous: changes are committed and run without asking.", timeout=4)
        await self._after_control()

    async def action_go_autonomous(self) -> None:
        await self._set_approval("auto")

    async def action_go_supervised(self) -> None:
        await self._set_approval("ask")

    async def action_cycle_research_mode(self) -> None:
        mode = next_research_mode(self.view.research_mode, self.view.research_forced)
        self._control().set_mode(mode)
        self.notify(f"Research mode: {mode} from the next turn." if mode != "auto"
                    else "Research mode: the planner chooses again.", timeout=4)
        await self._after_control()

    async def action_pause(self) -> None:
        self._control().pause()
        self.view.request_pause(True)
        await self._after_control()

    async def action_resume(self) -> None:
        self._control().resume()
        self.view.request_pause(False)
        await self._after_control()

    def action_stop_after_current(self) -> None:
        self._confirm_then("stop_after_current", stop_dialog(),
                           "The session stops once the current experiment is recorded.")

    def action_abort(self) -> None:
        self._confirm_then("abort", abort_dialog(), "Aborting…")

    def _confirm_then(self, action: str, dialog: ChoiceDialog, done: str) -> None:
        """Ending the research is never one stray key: ask, then call the session's `action` if still sensible."""

        async def confirmed(choice: str | None) -> None:
            if choice == action and self.check_action(action, ()):
                getattr(self._control(), action)()
                self._stop_requested = True
                self.notify(done, timeout=6)
                await self._after_control()

        self.push_screen(dialog, callback=confirmed)

    def action_show_pane(self, pane: str) -> None:
        self.main.show_pane(pane)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_show_studies(self) -> None:
        if not isinstance(self.screen, StudiesScreen):
            screen = StudiesScreen()
            self.push_screen(screen)
            self.call_after_refresh(partial(screen.show, self.view))

    def action_show_experiment(self, experiment_id: int) -> None:
        screen = ExperimentScreen(experiment_id)
        self.push_screen(screen)
        self.call_after_refresh(partial(screen.show, self.view))

    def action_restart_engine(self) -> None:
        assert self.remote is not None  # check_action offers it only for a lost background engine
        self.view.fail("restarting the engine…")
        self.run_worker(self.remote.restart, thread=True, exit_on_error=False, name="restart")

    async def action_quit(self) -> None:
        """An attached console detaches (the engine goes on); an in-process one stops the loop, so it asks."""
        if self.session is None or self.view.watch or not self.view.active or self.view.failure \
                or self._exit_when_engine_stops:
            self.exit()
            return
        if self.remote is not None:
            self.push_screen(detach_dialog(self.remote.engine_pid, self.workspace), callback=self._detach_confirmed)
            return
        self.push_screen(quit_foreground_dialog(), callback=self._quit_confirmed)

    def _detach_confirmed(self, choice: str | None) -> None:
        if choice == "detach":
            self.exit()

    async def _quit_confirmed(self, choice: str | None) -> None:
        if choice is None:
            return
        if choice == "abort":
            self._control().abort()
        else:
            self._control().stop_after_current()
        self._exit_when_engine_stops = True
        self.view.set_stopping("stopping the loop… the console closes once the engine has recorded everything")
        await self._after_control()
