"""A modal question with a few labelled answers; dismisses with the chosen answer's key (None = cancelled)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static


class ChoiceDialog(ModalScreen[str | None]):
    DEFAULT_CSS = """
    ChoiceDialog { align: center middle; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel", tooltip="Close without doing anything")]

    def __init__(self, title: str, message: str, choices: list[tuple[str, str, str]]) -> None:
        """`choices`: (key, label, button variant); the first is focused."""
        super().__init__()
        self._title = title
        self._message = message
        self._choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self._title, classes="dialog-title")
            yield Static(self._message)
            with Horizontal(classes="dialog-buttons"):
                for key, label, variant in self._choices:
                    yield Button(label, id=f"choice-{key}", variant=variant)
                yield Button("Cancel", id="choice-cancel")

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        key = (event.button.id or "").removeprefix("choice-")
        self.dismiss(None if key == "cancel" else key)

    def action_cancel(self) -> None:
        self.dismiss(None)
