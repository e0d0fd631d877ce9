"""One experiment in full: outcome and metrics, the rationale, the diff and the tail of its log."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from loopdeck.console import format as fmt
from loopdeck.console.state import SessionView
from loopdeck.console.views import ExperimentView
from loopdeck.console.widgets.diff import render_diff
from loopdeck.themes import STATUS_LOOK


def facts(row: ExperimentView, view: SessionView) -> list[tuple[str, str]]:
    pairs = [
        (view.metric_name, fmt.metric(row.metric, 6)),
        ("Δ vs incumbent", fmt.delta(row.delta, 6, band=row.noise)),
        ("incumbent", fmt.metric(row.incumbent_metric, 6)),
        ("training", fmt.duration(row.training_seconds)),
        ("wall", fmt.duration(row.wall_seconds)),
        ("peak memory", fmt.megabytes(row.peak_memory_mb)),
        ("commit", row.commit[:10] or "—"),
    ]
    if row.evaluation == "trusted":
        printed = f" · the run printed {fmt.metric(row.reported_metric, 6)}" if row.reported_metric is not None else ""
        pairs.append(("scored", f"trusted: weights scored by the protected harness{printed}"))
    elif row.evaluation == "self_reported":
        pairs.append(("scored", "self-reported: the number the run printed"))
    if row.agent_tokens:
        pairs.append(("agent", f"{fmt.count(row.agent_tokens)} tokens · ~{fmt.usd(row.agent_cost_usd)}"))
    if row.status == "running":
        pairs.append(("progress", f"step {row.step} · {row.progress:.0%} · loss {fmt.metric(row.loss)}"))
    return pairs


def experiment_content(row: ExperimentView, view: SessionView, live_log: list[str]) -> Content:
    label, variable = STATUS_LOOK.get(row.status, (row.status, "text"))
    parts: list[Content] = [
        Content.assemble((f"#{row.id} ", "bold"), (label, f"bold ${variable}"), "  ", (row.description, "bold")),
        Content(""),
    ]
    for name, value in facts(row, view):
        parts.append(Content.assemble((name.rjust(15), "$text-muted"), "  ", value))
    if row.mode:
        parts.append(Content.assemble(("research mode".rjust(15), "$text-muted"), "  ",
                                      f"{row.mode} — {row.mode_reason}" if row.mode_reason else row.mode))
    for name, text in (("reason", row.reason), ("your note", row.note)):
        if text:
            parts.append(Content.assemble((name.rjust(15), "$text-muted"), "  ", (text, "$text-warning")))
    if row.rationale:
        parts += [Content(""), Content.styled("Rationale", "bold"), Content.styled(row.rationale, "italic")]
    if row.diff:
        parts += [Content(""), Content.styled("Diff", "bold"), render_diff(row.diff)]
    log = row.log_tail if row.log_tail else "\n".join(live_log)
    if log:
        parts += [Content(""), Content.styled("Log tail" if row.log_tail else "Log (live)", "bold"),
                  Content.styled(log, "$text-muted")]
    return Content("\n").join(parts)


class ExperimentScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    ExperimentScreen { align: center middle; }
    ExperimentScreen VerticalScroll { height: 1fr; }
    """
    BINDINGS = [Binding("escape,q", "close", "Close", id="experiment.close", tooltip="Back to the console")]

    def __init__(self, experiment_id: int) -> None:
        super().__init__()
        self.experiment_id = experiment_id

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"), VerticalScroll():
            yield Static(id="experiment-body")

    def show(self, view: SessionView) -> None:
        row = view.experiments.get(self.experiment_id)
        if row is None:
            return
        live = list(view.log) if view.running == row.id else []
        self.query_one("#experiment-body", Static).update(experiment_content(row, view, live))

    def action_close(self) -> None:
        self.dismiss(None)
