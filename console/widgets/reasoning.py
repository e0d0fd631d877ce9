"""The agent's reasoning as it streams: thinking, text, tool calls, notes and the resulting proposal."""

from __future__ import annotations

from collections.abc import Sequence

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown

from loopdeck.console.state import SessionView
from loopdeck.console.views import ReasoningBlock

PLACEHOLDER = "*Waiting for the agent…*"


def _inline(text: str) -> str:
    """One line of tool chatter as a code span (backticks inside would end it early)."""
    return "`" + " ".join(text.split()).replace("`", "'") + "`"


def _quote(text: str) -> str:
    return "> " + text.replace("\n", "\n> ")


def block_markdown(block: ReasoningBlock) -> str:
    if block.kind == "thinking":
        return _quote(block.text)
    if block.kind == "tool":
        return f"- {_inline(block.text)}"
    if block.kind == "result":
        return f"- {'✓' if block.ok else '✗'} {' '.join(block.text.split())}"
    if block.kind == "note":
        return f"**✉ your note reached the agent:** {block.text}"
    if block.kind == "rejected":
        return f"**⛔ the guard rejected the change:** {block.text}"
    if block.kind == "proposal":
        title, _, rationale = block.text.partition("\n\n")
        return f"---\n\n**Proposal:** {title}" + (f"\n\n*{rationale.strip()}*" if rationale.strip() else "")
    return block.text


def reasoning_markdown(blocks: Sequence[ReasoningBlock]) -> str:
    """The page as Markdown. While text streams in, each new string extends the previous one, so the widget can
    append instead of re-rendering; tool lines that follow each other stay one list."""
    parts: list[str] = []
    previous = ""
    for block in blocks:
        if parts:
            listed = block.kind in ("tool", "result") and previous in ("tool", "result")
            parts.append("\n" if listed else "\n\n")
        parts.append(block_markdown(block))
        previous = block.kind
    return "".join(parts)


class ReasoningPane(VerticalScroll):
    """Follows the stream (anchored to the bottom) until the user scrolls up to read."""

    DEFAULT_CSS = """
    ReasoningPane Markdown { margin: 0; padding: 0; background: transparent; }
    ReasoningPane Markdown > MarkdownBlockQuote { color: $text-muted; border-left: outer $secondary 60%; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown = ""
        self._generation = -1
        self.border_title = "Agent"

    def compose(self) -> ComposeResult:
        yield Markdown(PLACEHOLDER)

    def on_mount(self) -> None:
        self.anchor()

    async def show(self, view: SessionView) -> None:
        text = reasoning_markdown(view.reasoning) or PLACEHOLDER
        if view.reasoning_experiment is not None:
            row = view.experiments.get(view.reasoning_experiment)
            title = f"Agent · #{view.reasoning_experiment}"
            if view.agent:
                title += f" · {view.agent}"
            if row is not None and row.description:
                title += f" · {row.description}"
            self.border_title = title
        markdown = self.query_one(Markdown)
        if view.reasoning_generation == self._generation and text.startswith(self._shown):
            if len(text) > len(self._shown):
                await markdown.append(text[len(self._shown):])
        else:
            await markdown.update(text)
        self._shown, self._generation = text, view.reasoning_generation
