"""The studies of the kept chain: the latest ablation (each change's contribution) and scale-transfer tables."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from loopdeck.console import format as fmt
from loopdeck.console.state import SessionView
from loopdeck.engine.events import StudyFinished

# Verdicts as theme colours: what holds is good news, what reverses or hurts is bad.
_VERDICT_STYLE = {"matters": "$text-success", "holds": "$text-success", "nothing": "$text-warning",
                  "shrinks": "$text-warning", "hurts": "$text-error", "reverses": "$text-error"}


def study_content(view: SessionView) -> Content:
    board = view.studies
    parts: list[Content] = []
    if board.running is not None:
        parts += [Content.styled(f"Running: {board.progress()}", "bold"), Content("")]
    for kind in ("ablation", "transfer"):
        result = board.results.get(kind)
        if result is not None:
            parts += [*_table(result), Content("")]
    if not parts:
        parts.append(Content.styled("No study yet: `loopdeck ablate DIR` measures what each kept change "
                                    "contributes; `loopdeck transfer DIR --scale 2x` whether the gains hold at a "
                                    "larger scale.", "$text-muted"))
    return Content("\n").join(parts)


def _table(result: StudyFinished) -> list[Content]:
    at = f" at {result.scale:g}x" if result.scale != 1.0 else ""
    title = "Ablation" if result.study_kind == "ablation" else "Scale transfer"
    rows = [Content.styled(f"{title} of #{result.incumbent}{at} (study {result.study})", "bold")]
    for line in result.lines:
        gain = fmt.delta(line.gain, 6, band=line.band)
        if line.reference_gain is not None:
            gain = f"{fmt.delta(line.reference_gain, 6)} → {gain}"
        rows.append(Content.assemble((line.label.rjust(10), "$text-muted"), "  ", gain, "  ",
                                     (line.verdict, _VERDICT_STYLE.get(line.verdict, "$text")), "  ",
                                     line.description))
    rows.append(Content.styled(result.summary, "italic"))
    return rows


class StudiesScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    StudiesScreen { align: center middle; }
    StudiesScreen VerticalScroll { height: 1fr; }
    """
    BINDINGS = [Binding("escape,q", "close", "Close", id="studies.close", tooltip="Back to the console")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"), VerticalScroll():
            yield Static(id="studies-body")

    def show(self, view: SessionView) -> None:
        self.query_one("#studies-body", Static).update(study_content(view))

    def action_close(self) -> None:
        self.dismiss(None)
