"""The status line and the banner: one-line summaries of the session, drawn from the SessionView."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget

from loopdeck.console import format as fmt
from loopdeck.console.state import SessionView

_MODE_STYLE = {
    "supervised": "bold $text on $primary 35%",
    "autonomous": "bold $text on $warning 35%",
    "watch": "bold $text on $secondary 35%",
}
_STATE_STYLE = {
    "training": "$accent",
    "evaluating": "$accent",
    "awaiting_approval": "bold $warning",
    "paused": "bold $warning",
    "stopped": "$text-muted",
}
_SEPARATOR = ("  │  ", "$text-muted 50%")


def run_progress(view: SessionView, now: float) -> str:
    """'#7 23s/60s' while training (training seconds against the budget), '#7 starting 9.6s' before the first
    step (start-up and compilation are not training time), '#7' otherwise."""
    if view.repeat is not None:
        return repeat_progress(view, now)
    if view.current is None:
        return ""
    row = view.experiments.get(view.current)
    if row is not None and view.running == row.id:
        if not row.step and not row.elapsed_seconds:
            started = now - row.started_ts if row.started_ts is not None else None
            return f"#{row.id} starting {fmt.duration(started)}"
        budget = row.budget_seconds or view.budget_seconds
        return f"#{row.id} {fmt.duration(row.elapsed_seconds)}/{fmt.duration(budget)}"
    return f"#{view.current}"


def repeat_progress(view: SessionView, now: float) -> str:
    """'#0 baseline seed 2/3 · 23s/1m00s · 37s left' while an extra run trains ('… starting 4.2s' before its
    first step)."""
    repeat = view.repeat
    assert repeat is not None
    lead = f"#{repeat.experiment} {repeat.label}"
    if not repeat.step and not repeat.elapsed_seconds:
        return f"{lead} · starting {fmt.duration(now - repeat.started_ts)}"
    budget = repeat.budget_seconds or view.budget_seconds
    left = max(0.0, budget - repeat.elapsed_seconds)
    return f"{lead} · {fmt.duration(repeat.elapsed_seconds)}/{fmt.duration(budget)} · {fmt.duration(left)} left"


def status_segments(view: SessionView, now: float) -> list[tuple[int, Content]]:
    """(priority, segment) in display order; lower priority numbers survive a narrow terminal longer."""
    segments: list[tuple[int, Content]] = [
        (0, Content.styled(f" {view.mode.upper()} ", _MODE_STYLE[view.mode])),
    ]
    state = "pausing" if view.pause_intent and not view.paused else view.engine_state
    segments.append((1, Content.styled(state.replace("_", " "), _STATE_STYLE.get(state, "$text"))))
    progress = run_progress(view, now)
    if progress:
        segments.append((2, Content(progress)))
    if view.incumbent_metric is not None:
        best = Content.assemble((f"{view.metric_name} ", "$text-muted"), (fmt.metric(view.incumbent_metric), "bold"))
        gain = view.improvement()
        if gain is not None and gain != 0:
            good = fmt.improved(gain, view.direction)
            best = best.append(Content.styled(f" ({fmt.signed(gain)})", "$text-success" if good else "$text-error"))
        segments.append((3, best))
    study = view.studies.progress()
    if study:
        segments.append((2, Content.styled(study, "$text-accent")))
    if view.workers > 1:
        segments.append((2, Content(f"{view.busy_workers}/{view.workers} workers busy")))
    if view.research_mode:
        forced = " (forced)" if view.research_forced else ""
        segments.append((4, Content.assemble(("mode ", "$text-muted"), f"{view.research_mode}{forced}")))
    kept, total = view.kept_and_total()
    segments.append((4, Content.assemble(("kept ", "$text-muted"), f"{kept}/{total}")))
    if view.noise_std is not None:
        segments.append((5, Content.assemble(("noise σ ", "$text-muted"), fmt.metric(view.noise_std))))
    if view.started and view.self_reported:
        segments.append((6, Content.styled("self-reported", "$text-warning")))
    if view.session_tokens or view.session_cost_usd:
        usage = f"{fmt.count(view.session_tokens)} tok"
        if view.session_cost_usd:
            usage += f" · ~{fmt.usd(view.session_cost_usd)}"
        segments.append((5, Content.styled(usage, "$text-muted")))
    return segments


def fit_segments(segments: list[tuple[int, Content]], width: int) -> Content:
    """Join segments with separators, dropping the least important ones until the line fits."""
    kept = list(segments)
    sep = Content.styled(*_SEPARATOR)
    while True:
        line = sep.join([content for _, content in kept])
        if line.cell_length <= width or len(kept) <= 1:
            return line
        drop = max(range(len(kept)), key=lambda i: kept[i][0])
        kept.pop(drop)


class StatusLine(Widget):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._line = Content()

    def show(self, view: SessionView, now: float) -> None:
        line = fit_segments(status_segments(view, now), max(10, self.size.width - 2))
        if not line.is_same(self._line):
            self._line = line
            self.refresh()

    def render(self) -> Content:
        return self._line


def banner_text(view: SessionView, now: float, workspace_hint: str, width: int = 200) -> tuple[str, Content] | None:
    """(kind, text) for the banner, or None when there is nothing to say. Kinds are CSS classes."""
    if view.failure:
        return "error", Content.styled(f" ✖ {view.failure}", "bold")
    if view.stopping:
        return "finished", Content.styled(f" ■ {view.stopping}", "bold")
    if view.pending is not None:
        return "waiting", _waiting_text(view, now, workspace_hint, width)
    if view.finished is not None:
        f = view.finished
        text = f" ■ session finished ({f.reason.replace('_', ' ')}): {f.experiments} experiments, {f.kept} kept"
        if f.best_metric is not None:
            text += f" · best {view.metric_name} {fmt.metric(f.best_metric)}"
            if f.baseline_metric is not None:
                text += f" ({fmt.signed(f.best_metric - f.baseline_metric)} vs baseline)"
        return "finished", Content.styled(text, "bold")
    return None


def _waiting_text(view: SessionView, now: float, workspace_hint: str, width: int) -> Content:
    """The longest wording that fits: the change's description goes first when space is short."""
    assert view.pending is not None
    waited = fmt.duration(now - view.pending_since) if view.pending_since is not None else ""
    row = view.experiments.get(view.pending)
    described = f"#{view.pending}" + (f" “{row.description}”" if row and row.description else "")
    if view.watch:
        keys = Content.styled(f"loopdeck ctl {workspace_hint} approve|veto", "$text-muted")
        leads = [f" ⏸ the headless session waits for a decision on {described} · {waited}",
                 f" ⏸ waiting for a decision on #{view.pending} · {waited}", f" ⏸ #{view.pending} · {waited}"]
    else:
        keys = Content.assemble(("a", "bold $text-accent"), " approve · ", ("v", "bold $text-accent"), " veto · ",
                                ("n", "bold $text-accent"), " veto with a note")
        leads = [f" ⏸ waiting for your decision on {described} · {waited}",
                 f" ⏸ waiting for your decision on #{view.pending} · {waited}", f" ⏸ #{view.pending} · {waited}"]
    for lead in leads:
        text = Content.assemble((lead, "bold"), "   ", keys)
        if text.cell_length <= width:
            return text
    return text


class Banner(Widget):
    DEFAULT_CSS = """
    Banner { height: 1; display: none; padding: 0 1; }
    Banner.-waiting { display: block; background: $warning 30%; color: $text; }
    Banner.-error { display: block; background: $error 40%; color: $text; }
    Banner.-finished { display: block; background: $secondary 25%; color: $text; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._text = Content()
        self.kind = ""

    def show(self, view: SessionView, now: float, workspace_hint: str) -> None:
        result = banner_text(view, now, workspace_hint, max(20, self.size.width - 2))
        kind, text = result if result is not None else ("", Content())
        if kind != self.kind:
            for name in ("waiting", "error", "finished"):
                self.set_class(name == kind, f"-{name}")
            self.kind = kind
        if not text.is_same(self._text):
            self._text = text
            self.refresh()

    def render(self) -> Content:
        return self._text
