"""The main screen: reasoning, the change under review, loss, experiments, hardware, status — laid out side by side
on a wide terminal and as tabs at 80×24. Layout state lives in CSS classes (`-compact`, `-tab-*`, `-watch`…)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Header, Tab, Tabs

from loopdeck.console import state as st
from loopdeck.console.state import SessionView
from loopdeck.console.widgets.charts import LossCurve, MetricChart
from loopdeck.console.widgets.diff import DiffPane
from loopdeck.console.widgets.experiments import ExperimentsTable
from loopdeck.console.widgets.hardware import HardwarePane
from loopdeck.console.widgets.reasoning import ReasoningPane
from loopdeck.console.widgets.status import Banner, StatusLine

PANES = ("agent", "diff", "run", "experiments")
TAB_LABELS = {"agent": "Agent", "diff": "Change", "run": "Run", "experiments": "Experiments"}
# Below this the panes become tabs.
WIDE_MIN_WIDTH = 110
WIDE_MIN_HEIGHT = 30

# Which view topics each widget draws.
TOPICS: dict[str, frozenset[str]] = {
    "agent-pane": frozenset({st.REASONING}),
    "diff-pane": frozenset({st.DIFF, st.APPROVAL}),
    "loss-pane": frozenset({st.CURVE}),
    "metric-pane": frozenset({st.TABLE}),
    "experiments-pane": frozenset({st.TABLE, st.STATUS}),
    "hardware-pane": frozenset({st.HARDWARE}),
}


def shown(widget: Widget) -> bool:
    """Displayed, and so are all its ancestors: hidden panes skip their redraws until they come back."""
    node: Widget | None = widget
    while isinstance(node, Widget):
        if not node.display:
            return False
        node = node.parent if isinstance(node.parent, Widget) else None
    return True


class MainScreen(Screen):
    def __init__(self, view: SessionView, workspace_hint: str) -> None:
        super().__init__(id="main")
        self.view = view
        self.workspace_hint = workspace_hint
        self.pane = "agent"
        self._stale: set[str] = set(TOPICS)  # widgets with changes they have not drawn yet
        self._brought_forward: int | None = None
        self.ready = False  # composed and mounted: until then events only fold into the view  # the pending change the Change tab was last switched to

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False, icon="◆")
        yield Banner(id="banner")
        yield Tabs(*(Tab(TAB_LABELS[p], id=f"tab-{p}") for p in PANES), id="pane-tabs")
        with Vertical(id="panes"):
            with Horizontal(id="top"):
                yield ReasoningPane(id="agent-pane", classes="pane")
                yield DiffPane(id="diff-pane", classes="pane")
                yield HardwarePane(id="hardware-pane", classes="pane")
            with Horizontal(id="bottom"):
                yield ExperimentsTable(id="experiments-pane", classes="pane")
                with Vertical(id="charts"):
                    yield LossCurve(id="loss-pane", classes="pane")
                    yield MetricChart(id="metric-pane", classes="pane")
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.ready = True
        self.set_class(True, f"-tab-{self.pane}")
        self._fit(self.size.width, self.size.height)

    def on_resize(self, event) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        compact = width < WIDE_MIN_WIDTH or height < WIDE_MIN_HEIGHT
        if compact != self.has_class("-compact"):
            self.set_class(compact, "-compact")
            self.query_one(Footer).compact = compact
            self._stale |= set(TOPICS)
            self.call_after_refresh(self._redraw_stale)

    @property
    def compact(self) -> bool:
        return self.has_class("-compact")

    def show_pane(self, pane: str) -> None:
        """Tabs at 80×24; on a wide screen every pane is visible, so the key focuses it instead."""
        if self.compact:
            self.query_one(Tabs).active = f"tab-{pane}"
        else:
            target = {"agent": "#agent-pane", "diff": "#diff-pane", "run": "#loss-pane",
                      "experiments": "#experiments-pane"}[pane]
            widget = self.query_one(target)
            if widget.can_focus:
                widget.focus()

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        pane = (event.tab.id or "tab-agent").removeprefix("tab-")
        if pane == self.pane:
            return
        self.set_class(False, f"-tab-{self.pane}")
        self.pane = pane
        self.set_class(True, f"-tab-{pane}")
        self.call_after_refresh(self._redraw_stale)

    async def _redraw_stale(self) -> None:
        await self.render_view(set(), self.app.clock())

    async def render_view(self, dirty: set[str], now: float) -> None:
        """Draw what changed. Clock-driven parts (elapsed times) are cheap and always redrawn."""
        view = self.view
        for widget_id, topics in TOPICS.items():
            if topics & dirty:
                self._stale.add(widget_id)
        self.set_class(view.pending is not None, "-pending")
        for mode in ("supervised", "autonomous", "watch"):
            self.set_class(view.mode == mode, f"-{mode}")
        self.query_one(Banner).show(view, now, self.workspace_hint)
        self.query_one(StatusLine).show(view, now)
        for widget_id in sorted(self._stale):
            # Absent while the layout is being built or torn down: it stays stale, like a widget off-screen.
            widget = next(iter(self.query(f"#{widget_id}")), None)
            if widget is None or not shown(widget):
                continue
            self._stale.discard(widget_id)
            if isinstance(widget, ReasoningPane):
                await widget.show(view)
            elif isinstance(widget, ExperimentsTable):
                widget.show(view, now)
            elif isinstance(widget, LossCurve | MetricChart | HardwarePane | DiffPane):
                widget.show(view)
        if view.pending is not None and view.pending != self._brought_forward:
            # A decision is wanted: show the change once; the user may switch away again.
            self._brought_forward = view.pending
            if self.compact:
                self.show_pane("diff")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.action_show_experiment(int(event.row_key.value))

    def theme_changed(self) -> None:
        for table in self.query(ExperimentsTable):  # none yet while the app is still starting
            table.forget_cells()
            self._stale.add("experiments-pane")
            self.call_after_refresh(self._redraw_stale)
