"""The experiments table: one row per experiment, status coloured from the theme, newest row followed."""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.color import Color
from textual.widgets import DataTable

from loopdeck.console import format as fmt
from loopdeck.console.state import SessionView
from loopdeck.console.views import ExperimentView
from loopdeck.themes import STATUS_LOOK

COLUMNS = (("id", "#"), ("status", "status"), ("metric", "metric"), ("delta", "Δ"), ("time", "time"),
           ("description", "description"))
_CELL_PADDING = 2  # DataTable pads each cell by one on both sides


def theme_style(variables: dict[str, str], name: str, **extra: bool) -> Style:
    """A Rich style for a theme variable (DataTable cells are Rich text, not Textual content)."""
    value = variables.get(name, "")
    try:
        color = Color.parse(value).rich_color
    except Exception:  # "auto 60%" and friends are not plain colours: fall back to dim text
        return Style(dim=True, **extra)
    return Style(color=color, **extra)


def duration_of(row: ExperimentView, now: float) -> float | None:
    if row.training_seconds is not None:
        return row.training_seconds
    if row.wall_seconds is not None:
        return row.wall_seconds
    if row.status == "running":
        return row.elapsed_seconds or (now - row.started_ts if row.started_ts else None)
    return None


def row_cells(row: ExperimentView, view: SessionView, variables: dict[str, str], now: float) -> list[Text]:
    label, variable = STATUS_LOOK.get(row.status, (row.status, "text"))
    if row.baseline:
        label = "baseline" if row.status == "keep" else label
    metric = Text(fmt.metric(row.metric), style=Style(bold=row.status == "keep"), justify="right")
    good = fmt.improved(row.delta, view.direction)
    delta_style = theme_style(variables, "success") if good else Style(dim=True)
    description = row.description or ("baseline" if row.baseline else "")
    if row.reason and row.status not in ("keep", "discard", "running"):
        description = f"{description} — {row.reason}" if description else row.reason
    if row.mode:
        description = f"[{row.mode}] {description}"
    if row.worker and view.workers > 1:  # which of the runs at once it was
        description = f"{description} [{row.worker}]"
    return [
        Text(str(row.id), justify="right", style=Style(dim=True)),
        Text(label, style=theme_style(variables, variable, bold=row.status in ("running", "awaiting"))),
        metric,
        Text(fmt.delta(row.delta, band=row.noise), style=delta_style, justify="right"),
        Text(fmt.duration(duration_of(row, now)), justify="right", style=Style(dim=True)),
        Text(description),
    ]


def fit_description(cells: list[list[Text]], width: int) -> None:
    """Cut descriptions so the table fits `width` cells without scrolling sideways."""
    fixed = sum(max([len(label)] + [c[i].cell_len for c in cells]) + _CELL_PADDING
                for i, (_, label) in enumerate(COLUMNS[:-1]))
    room = max(12, width - fixed - _CELL_PADDING)
    for c in cells:
        if c[-1].cell_len > room:
            c[-1] = Text(c[-1].plain[: room - 1] + "…")


class ExperimentsTable(DataTable):
    def __init__(self, **kwargs) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        self._cells: dict[int, tuple[str, ...]] = {}
        self._view: SessionView | None = None
        self._now = 0.0
        self.border_title = "Experiments"

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    def on_resize(self) -> None:
        if self._view is not None:
            self._cells.clear()  # descriptions are cut to the width
            self.show(self._view, self._now)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """A running experiment under the cursor gets the loss pane's focus (its curve in front)."""
        if self._view is not None and event.row_key.value is not None:
            self._view.focus(int(event.row_key.value))

    def forget_cells(self) -> None:
        """The theme changed: cell colours are baked into Rich text, so the next `show` redraws every row."""
        self._cells.clear()

    def show(self, view: SessionView, now: float) -> None:
        self._view, self._now = view, now
        kept, total = view.kept_and_total()
        self.border_title = f"Experiments · kept {kept}/{total}"
        variables = self.app.theme_variables
        rows = view.rows()
        all_cells = [row_cells(row, view, variables, now) for row in rows]
        fit_description(all_cells, self.content_size.width - 1)
        follow = self.row_count == 0 or self.cursor_row >= self.row_count - 1
        added = False
        for row, cells in zip(rows, all_cells, strict=True):
            plain = tuple(cell.plain + str(cell.style) for cell in cells)
            if self._cells.get(row.id) == plain:
                continue
            key = str(row.id)
            if row.id in self._cells or key in self.rows:
                # A row may first show with a short description (the planner's mode before the proposal) and
                # grow; `fit_description` already cut it to the room there is, so the column may widen to it.
                for (column, _), cell in zip(COLUMNS, cells, strict=True):
                    self.update_cell(key, column, cell, update_width=True)
            else:
                self.add_row(*cells, key=key)
                added = True
            self._cells[row.id] = plain
        if added and follow:
            self.move_cursor(row=self.row_count - 1, animate=False)
