"""Braille charts: the running experiment's loss over the incumbent's, and the metric of every experiment."""

from __future__ import annotations

from collections.abc import Sequence

from textual.content import Content
from textual.widget import Widget

from loopdeck.console import format as fmt
from loopdeck.console.plot import BrailleCanvas, Point, Scale, data_range, nice_label
from loopdeck.console.state import SessionView
from loopdeck.themes import STATUS_LOOK


def canvas_content(canvas: BrailleCanvas, styles: Sequence[str]) -> list[Content]:
    """Rows of the canvas as Content, each run of cells coloured by the series that drew it."""
    lines = []
    for row in canvas.rows():
        parts: list[tuple[str, str]] = []
        for char, owner in row:
            style = styles[owner] if owner >= 0 else ""
            if parts and parts[-1][1] == style:
                parts[-1] = (parts[-1][0] + char, style)
            else:
                parts.append((char, style))
        lines.append(Content.assemble(*parts))
    return lines


def framed_plot(canvas: BrailleCanvas, styles: Sequence[str], y_range: tuple[float, float],
                x_labels: tuple[str, str], label_width: int) -> Content:
    """Canvas with y labels on the left (top, middle, bottom) and the x range underneath."""
    lo, hi = y_range
    span = hi - lo
    labels = {0: nice_label(hi, span), canvas.height - 1: nice_label(lo, span)}
    if canvas.height >= 5:
        labels[(canvas.height - 1) // 2] = nice_label((lo + hi) / 2, span)
    rows = []
    for y, line in enumerate(canvas_content(canvas, styles)):
        label = labels.get(y, "").rjust(label_width - 1)
        rows.append(Content.assemble((label, "$text-muted"), ("┤" if y in labels else "│", "$text-muted 50%"), line))
    left, right = x_labels
    gap = max(1, canvas.width - len(left) - len(right))
    rows.append(Content.styled(" " * label_width + left + " " * gap + right, "$text-muted"))
    return Content("\n").join(rows)


def loss_y_range(series: Sequence[Sequence[Point]], x_max: float) -> tuple[float, float] | None:
    """Bottom at the lowest loss; top ignores the first tenth of training, whose huge initial losses would squash
    the part of the curve where runs actually differ."""
    values = [y for points in series for _, y in points]
    full = data_range(values)
    if full is None:
        return None
    settled = data_range([y for points in series for x, y in points if x >= 0.1 * x_max])
    return (full[0], settled[1]) if settled and settled[1] > full[0] else full


class ChartWidget(Widget):
    """A chart that redraws from the latest view whenever it is shown or resized."""

    DEFAULT_CSS = """
    ChartWidget { height: 1fr; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._view: SessionView | None = None

    def show(self, view: SessionView) -> None:
        self._view = view
        self.refresh()

    def render(self) -> Content:
        width, height = self.content_size
        if self._view is None or width < 12 or height < 3:
            return Content("")
        return self.draw(self._view, width, height)

    def draw(self, view: SessionView, width: int, height: int) -> Content:
        raise NotImplementedError


class LossCurve(ChartWidget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "Loss"

    def show(self, view: SessionView) -> None:
        current = view.curve_experiment
        title = "Loss" if current is None else f"Loss · #{current}"
        self.border_title = title
        incumbent = view.incumbent_id
        if view.repeat is not None:
            self.border_title = f"Loss · #{view.repeat.experiment} {view.repeat.label}"
            legend = f"[$accent]━[/] this run  [$secondary]━[/] #{view.repeat.experiment}'s first run"
        elif current is not None and current == incumbent:
            legend = f"[$accent]━[/] #{current}, now the incumbent"
        else:
            legend = "[$accent]━[/] this run" + (f"  [$text-muted]━[/] {len(view.flight_curves) - 1} more running"
                                                  if len(view.flight_curves) > 1 else "")
            if len(view.incumbent_curve) and incumbent is not None:
                legend += f"  [$secondary]━[/] incumbent #{incumbent}"
        self.border_subtitle = legend
        super().show(view)

    def draw(self, view: SessionView, width: int, height: int) -> Content:
        current = view.curve.points
        same_run = view.curve_experiment is not None and view.curve_experiment == view.incumbent_id
        incumbent = [] if same_run else view.incumbent_curve.points
        others = [curve.points for number, curve in view.flight_curves.items() if number != view.curve_experiment]
        row = view.experiments.get(view.curve_experiment) if view.curve_experiment is not None else None
        budget = (row.budget_seconds if row else 0.0) or view.budget_seconds
        if view.repeat is not None:  # an extra run, over its experiment's first run
            current, incumbent = view.repeat.curve.points, view.repeat.first_run.points
            budget = view.repeat.budget_seconds or budget
        if not current and not incumbent:
            return Content.styled("waiting for the first training step…", "$text-muted")
        x_max = max([budget] + [x for points in (current, incumbent, *others) for x, _ in points[-1:]]) or 1.0
        y_range = loss_y_range((current, incumbent, *others), x_max)
        assert y_range is not None
        label_width = max(len(nice_label(v, y_range[1] - y_range[0])) for v in y_range) + 1
        canvas = BrailleCanvas(width - label_width, height - 1)
        scale = Scale(canvas, (0.0, x_max), y_range)
        for points in others:  # the other runs in flight, behind the focused one
            scale.polyline(points, 2)
        scale.polyline(incumbent, 0)
        scale.polyline(current, 1)
        return framed_plot(canvas, ("$secondary", "$accent", "$text-muted"), (scale.y0, scale.y1),
                           ("0s", fmt.duration(x_max)), label_width)


class MetricChart(ChartWidget):
    """Every experiment's metric (kept ones in the success colour) and the running best as a staircase."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.border_title = "Metric per experiment"

    def show(self, view: SessionView) -> None:
        self.border_title = f"{view.metric_name} per experiment"
        self.border_subtitle = "[$success]●[/] kept  [$warning]●[/] not  [$primary]━[/] best"
        super().show(view)

    def draw(self, view: SessionView, width: int, height: int) -> Content:
        scored = [row for row in view.rows() if row.metric is not None and row.finished]
        if not scored:
            return Content.styled("no finished experiment yet", "$text-muted")
        best: list[Point] = []
        for row in scored:
            if row.status == "keep":
                better = not best or (row.metric < best[-1][1] if view.direction == "minimize"
                                      else row.metric > best[-1][1])
                if better:
                    best.append((row.id, row.metric))
        y_range = metric_y_range([r.metric for r in scored], [y for _, y in best], view.direction)
        label_width = max(len(nice_label(v, y_range[1] - y_range[0])) for v in y_range) + 1
        canvas = BrailleCanvas(width - label_width, height - 1)
        x_max = max(row.id for row in view.rows())
        scale = Scale(canvas, (min(r.id for r in scored), max(x_max, scored[0].id + 1)), y_range)
        if best:
            scale.step(best + [(x_max, best[-1][1])], 0)
        for row in scored:
            kept = row.status == "keep"
            scale.marker(row.id, row.metric, 2 if kept else 1, size=2 if kept else 1)
        styles = ("$primary", "$" + STATUS_LOOK["discard"][1], "$" + STATUS_LOOK["keep"][1])
        return framed_plot(canvas, styles, (scale.y0, scale.y1),
                           (f"#{scored[0].id}", f"#{x_max}"), label_width)


def metric_y_range(metrics: Sequence[float], best: Sequence[float], direction: str) -> tuple[float, float]:
    """The best values are always in range; a far-off bad run is pinned to the edge rather than flattening the
    rest (the range stops at 3× the spread of the best line beyond its worst point)."""
    full = data_range(metrics)
    assert full is not None
    if len(best) < 2:
        return full
    lo, hi = min(best), max(best)
    spread = max(hi - lo, 1e-9)
    if direction == "minimize":
        return full[0], min(full[1], hi + 3 * spread)
    return max(full[0], lo - 3 * spread), full[1]
