"""The help screen: every key from the action registry, greyed out where it does nothing right now."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from loopdeck.console.actions import ACTIONS, action_name

INTRO = (
    "loopdeck runs the research loop: the agent proposes a change to the training code, loopdeck runs it for a "
    "fixed time budget, keeps it if the metric improved and reverts it otherwise."
)
WATCH_NOTE = (
    "Watch-only: nothing here changes the run, and closing the console never stops it. Control a headless run "
    "with `loopdeck ctl DIR approve|veto|note|pause|resume|stop|abort`."
)
EXTRA_KEYS = (
    ("ctrl+p", "Palette", "Every action, plus Theme: all built-in themes; your choice is remembered"),
    ("enter", "Details", "On an experiment row: its diff, log tail and metrics"),
)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen VerticalScroll { height: auto; max-height: 32; }
    HelpScreen Grid { grid-size: 3; grid-columns: 8 14 1fr; grid-gutter: 0 1; height: auto; margin-top: 1; }
    HelpScreen Grid Static { height: auto; }
    HelpScreen .key { text-align: right; color: $text-accent; text-style: bold; }
    HelpScreen .title { text-style: bold; }
    HelpScreen .-off { color: $text-muted; text-style: none; }
    HelpScreen #watch-note { color: $text-warning; margin-top: 1; }
    """
    BINDINGS = [
        Binding("escape,f1,question_mark,q", "close", "Close", id="help.close", tooltip="Back to the console"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static("Keys", classes="dialog-title")
            yield Static(Content.styled(INTRO, "$text-muted"))
            with VerticalScroll(), Grid():
                yield from self._rows()
            if getattr(self.app, "session", None) is None:
                yield Static(WATCH_NOTE, id="watch-note")

    def _rows(self) -> ComposeResult:
        seen: set[tuple[str, str]] = set()
        for action in ACTIONS:
            key = self.app.get_key_display(action.binding())
            if (key, action.title) in seen:
                continue
            seen.add((key, action.title))
            off = "" if self.app.check_action(action_name(action.action), ()) else " -off"
            yield Static(key, classes="key" + off)
            yield Static(action.title, classes="title" + off)
            yield Static(action.tooltip, classes=off.strip())
        for key, title, text in EXTRA_KEYS:
            yield Static(key, classes="key")
            yield Static(title, classes="title")
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)
