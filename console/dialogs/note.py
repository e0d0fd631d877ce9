"""A modal input for a note to the agent (a free-standing note, or the reason for a veto)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class NoteDialog(ModalScreen[str | None]):
    DEFAULT_CSS = """
    NoteDialog { align: center middle; }
    NoteDialog Input { margin-top: 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel", tooltip="Close without sending")]

    def __init__(self, title: str, hint: str, action_label: str, *, allow_empty: bool = False) -> None:
        super().__init__()
        self._title = title
        self._hint = hint
        self._action_label = action_label
        self._allow_empty = allow_empty

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self._title, classes="dialog-title")
            yield Static(self._hint, classes="muted")
            yield Input(placeholder="e.g. try a lower learning rate before touching depth", id="note-input")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self._action_label, id="send", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def _submit(self) -> None:
        text = self.query_one(Input).value.strip()
        if text or self._allow_empty:
            self.dismiss(text)
        else:
            self.notify("Write a note first (or press Escape).", severity="warning")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            self._submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
