"""The console's view of a session, folded from engine events in one place (plain Python, no Textual).

`SessionView.apply(event)` is the only code that turns events into state (so this module is longer than most: one
reducer for every kind of event, kept in one place). Every history it keeps is bounded, so a night of experiments
costs the same memory as the first hour. `apply` records which parts of the screen changed
(`dirty` topics) so the UI redraws only those.
"""

from __future__ import annotations

from collections import deque

from loopdeck.console.views import Curve, ExperimentView, ReasoningBlock, RepeatRunView, StudyBoard, Telemetry
from loopdeck.engine import events as ev

LIVE_LOG_LINES = 200
REASONING_CHARS = 40_000
REASONING_BLOCKS = 80  # each block is a few widgets in the Markdown pane: their count, not just text, costs

# Engine states in which no decision can still be pending.
_NOT_WAITING = frozenset({"proposing", "committing", "training", "evaluating", "stopping", "stopped"})

# Topics: which widgets must redraw.
STATUS, TABLE, REASONING, DIFF, CURVE, HARDWARE, APPROVAL, LOG, STUDIES = (
    "status", "table", "reasoning", "diff", "curve", "hardware", "approval", "log", "studies",
)


class SessionView:
    """Everything the console shows, derived from the event stream."""

    def __init__(self, *, watch: bool = False, approval: str = "ask") -> None:
        self.watch = watch
        self.approval = approval
        self.agent = ""
        self.metric_name = "val_bpb"
        self.direction = "minimize"
        self.budget_seconds = 0.0
        self.self_reported = True
        self.noise_std: float | None = None  # run-to-run σ of the metric, from the baseline's seeds
        self.started = False
        self.engine_state = "starting"
        self.experiments: dict[int, ExperimentView] = {}
        self.current: int | None = None  # the experiment being proposed, reviewed or run
        self.running: int | None = None
        self.pending: int | None = None  # awaiting a human decision
        self.pending_since: float | None = None
        self.baseline_metric: float | None = None
        self.incumbent_id: int | None = None
        self.incumbent_metric: float | None = None
        self.session_tokens = 0
        self.session_cost_usd = 0.0
        self.curve = Curve()  # the running (or last run) experiment's loss against training seconds
        self.curve_experiment: int | None = None
        self.repeat: RepeatRunView | None = None  # an extra run of the running experiment, while it trains
        self.workers = 1  # experiments that may run at once
        self.flight_curves: dict[int, Curve] = {}  # every running experiment's curve (several with workers > 1)
        self.incumbent_curve = Curve()
        self._incumbent_curve_id: int | None = None
        self.reasoning_experiment: int | None = None
        self.reasoning: list[ReasoningBlock] = []
        self.reasoning_generation = 0  # bumped when blocks are dropped or reset (the pane must redraw fully)
        self.log: deque[str] = deque(maxlen=LIVE_LOG_LINES)
        self.telemetry = Telemetry()
        self.studies = StudyBoard()  # ablation and scale-transfer studies of the kept chain
        self.finished: ev.SessionFinished | None = None
        self.pause_intent: bool | None = None  # asked to pause (True) or resume (False), not yet in effect
        self.failure = ""  # a console-side failure (a worker died), shown until the session ends
        self.stopping = ""  # the console asked the engine to stop and waits for it
        self.research_mode = ""  # the planner's mode for the current turn ("" without a planner)
        self.research_forced = False  # a person chose it
        self.events_applied = 0
        self.dirty: set[str] = set()

    # --- derived -------------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self.watch:
            return "watch"
        return "supervised" if self.approval == "ask" else "autonomous"

    @property
    def active(self) -> bool:
        """The session can still change (controls make sense)."""
        return self.finished is None

    @property
    def paused(self) -> bool:
        return self.engine_state == "paused"

    @property
    def pausing_or_paused(self) -> bool:
        """What the pause key should offer to undo: a requested pause counts before the engine gets to it."""
        return self.paused if self.pause_intent is None else self.pause_intent

    def rows(self) -> list[ExperimentView]:
        return [self.experiments[k] for k in sorted(self.experiments)]

    def kept_and_total(self) -> tuple[int, int]:
        done = [x for x in self.experiments.values() if x.finished and not x.baseline]
        return sum(1 for x in done if x.status == "keep"), len(done)

    def improvement(self) -> float | None:
        if self.incumbent_metric is None or self.baseline_metric is None:
            return None
        return self.incumbent_metric - self.baseline_metric

    @property
    def busy_workers(self) -> int:
        """Experiments running now."""
        return len(self.flight_curves)

    def focus(self, experiment_id: int) -> None:
        """Show this running experiment's curve in front of the others (a person selected it)."""
        curve = self.flight_curves.get(experiment_id)
        if curve is not None and experiment_id != self.curve_experiment:
            self.curve, self.curve_experiment = curve, experiment_id
            self.dirty.add(CURVE)

    def take_dirty(self) -> set[str]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    # --- console-side changes (optimistic, confirmed later by events) ---------------------------------------

    def set_approval(self, policy: str) -> None:
        self.approval = policy
        self.dirty |= {STATUS, APPROVAL}

    def request_pause(self, pause: bool) -> None:
        self.pause_intent = pause
        self.dirty.add(STATUS)

    def decided(self) -> None:
        """A decision was sent: the keys go away at once, whatever the engine's latency."""
        self.pending = None
        self.pending_since = None
        self.dirty |= {APPROVAL, STATUS}

    def set_stopping(self, message: str) -> None:
        self.stopping = message
        self.dirty |= {APPROVAL, STATUS}

    def fail(self, message: str) -> None:
        self.failure = message
        self.dirty |= {APPROVAL, STATUS}

    def recover(self) -> None:
        """The failure is over (a restarted engine is back)."""
        self.fail("")

    # --- the reducer ---------------------------------------------------------------------------------------

    def apply(self, event: ev.Event) -> None:
        self.events_applied += 1
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _experiment(self, experiment_id: int) -> ExperimentView:
        row = self.experiments.get(experiment_id)
        if row is None:
            row = self.experiments[experiment_id] = ExperimentView(id=experiment_id)
        return row

    def _set_current(self, experiment_id: int | None) -> None:
        if experiment_id is not None and experiment_id != self.current:
            self.current = experiment_id
            self.dirty.add(STATUS)

    def _clear_pending(self) -> None:
        if self.pending is not None:
            self.pending = None
            self.pending_since = None
            self.dirty |= {APPROVAL, STATUS}

    def _on_session_started(self, e: ev.SessionStarted) -> None:
        self.started = True
        self.agent = e.agent
        self.approval = e.approval
        self.budget_seconds = e.budget_seconds
        self.metric_name, self.direction = e.metric_name, e.metric_direction
        self.self_reported = e.self_reported
        self.workers = e.workers
        self.finished = None
        self.dirty |= {STATUS, TABLE, APPROVAL}

    def _on_session_finished(self, e: ev.SessionFinished) -> None:
        self.finished = e
        self.engine_state = "stopped"
        self.pause_intent = None
        self.running = self.repeat = None
        if e.baseline_metric is not None:
            self.baseline_metric = e.baseline_metric
        self._clear_pending()
        self.dirty |= {STATUS, APPROVAL}

    def _on_state_changed(self, e: ev.StateChanged) -> None:
        self.engine_state = e.state
        if self.pause_intent is not None and self.pause_intent == (e.state == "paused"):
            self.pause_intent = None
        self._set_current(e.experiment)
        # With pipelined proposals the gate for n+1 is open while n trains: only the pending experiment's own
        # progress (or the session's end) closes it.
        if e.state in _NOT_WAITING and (e.experiment == self.pending or e.state in ("stopping", "stopped")):
            self._clear_pending()
        self.dirty |= {STATUS, APPROVAL}

    def _on_policy_changed(self, e: ev.ApprovalPolicyChanged) -> None:
        self.set_approval(e.approval)

    def _on_plan_chosen(self, e: ev.PlanChosen) -> None:
        row = self._experiment(e.experiment)
        row.mode, row.mode_reason = e.mode, e.reason
        self.research_mode, self.research_forced = e.mode, e.forced
        self.dirty |= {STATUS, TABLE}

    # agent ---------------------------------------------------------------------------------------------------

    def _reasoning_for(self, experiment_id: int) -> None:
        """Reasoning shows one experiment's turn: a new experiment starts a fresh page."""
        if experiment_id != self.reasoning_experiment:
            self.reasoning_experiment = experiment_id
            self.reasoning = []
            self.reasoning_generation += 1
        self._set_current(experiment_id)
        self.dirty.add(REASONING)

    def _add_block(self, kind: str, text: str, ok: bool = True, *, stream: bool = False) -> None:
        last = self.reasoning[-1] if self.reasoning else None
        if stream and last is not None and last.kind == kind:
            last.text += text
        else:
            self.reasoning.append(ReasoningBlock(kind, text, ok))
        self._bound_reasoning()

    def _bound_reasoning(self) -> None:
        total = sum(len(b.text) for b in self.reasoning)
        if total <= REASONING_CHARS and len(self.reasoning) <= REASONING_BLOCKS:
            return
        if len(self.reasoning) > REASONING_BLOCKS:
            # Drop a quarter at once: the pane redraws fully after a drop, so drops should be rare.
            dropped = self.reasoning[: REASONING_BLOCKS // 4]
            del self.reasoning[: REASONING_BLOCKS // 4]
            total -= sum(len(b.text) for b in dropped)
        while len(self.reasoning) > 1 and total > REASONING_CHARS:
            total -= len(self.reasoning.pop(0).text)
        if total > REASONING_CHARS:
            first = self.reasoning[0]
            first.text = "…" + first.text[-(REASONING_CHARS - 1):]
        self.reasoning_generation += 1

    def _on_thinking(self, e: ev.AgentThinkingDelta) -> None:
        self._reasoning_for(e.experiment)
        self._add_block("thinking", e.text, stream=True)

    def _on_text(self, e: ev.AgentTextDelta) -> None:
        self._reasoning_for(e.experiment)
        self._add_block("text", e.text, stream=True)

    def _on_tool_call(self, e: ev.AgentToolCall) -> None:
        self._reasoning_for(e.experiment)
        self._add_block("tool", e.summary or e.tool)

    def _on_tool_result(self, e: ev.AgentToolResult) -> None:
        self._reasoning_for(e.experiment)
        self._add_block("result", e.summary or e.tool, e.ok)

    def _on_usage(self, e: ev.AgentUsage) -> None:
        turn_tokens = e.input_tokens + e.output_tokens + e.cache_write_tokens + e.cache_read_tokens
        row = self._experiment(e.experiment)
        row.agent_tokens += turn_tokens
        row.agent_cost_usd += e.cost_usd
        # Prefer the engine's running totals; an agent that reports none still adds up per turn.
        if e.session_tokens or e.session_cost_usd:
            self.session_tokens, self.session_cost_usd = e.session_tokens, e.session_cost_usd
        else:
            self.session_tokens += turn_tokens
            self.session_cost_usd += e.cost_usd
        self.dirty.add(STATUS)

    def _on_note(self, e: ev.NoteDelivered) -> None:
        self._reasoning_for(e.experiment)
        self._add_block("note", e.text)

    # proposal and review -------------------------------------------------------------------------------------

    def _on_change_proposed(self, e: ev.ChangeProposed) -> None:
        row = self._experiment(e.experiment)
        row.description, row.rationale, row.diff = e.description, e.rationale, e.diff
        row.files, row.added, row.removed = e.files, e.added, e.removed
        if not row.finished:
            row.status = "proposed"
        self._reasoning_for(e.experiment)
        self._add_block("proposal", f"{e.description}\n\n{e.rationale}".strip())
        self.dirty |= {TABLE, DIFF, STATUS}

    def _on_change_rejected(self, e: ev.ChangeRejected) -> None:
        row = self._experiment(e.experiment)
        row.status, row.reason = "rejected", e.reason
        self._reasoning_for(e.experiment)
        self._add_block("rejected", e.reason, ok=False)
        self._clear_pending()
        self.dirty |= {TABLE, DIFF}

    def _on_approval_requested(self, e: ev.ApprovalRequested) -> None:
        row = self._experiment(e.experiment)
        row.description = row.description or e.description
        row.status = "awaiting"
        self.pending, self.pending_since = e.experiment, e.ts
        self._set_current(e.experiment)
        self.dirty |= {TABLE, APPROVAL, STATUS, DIFF}

    def _on_decision(self, e: ev.DecisionMade) -> None:
        row = self._experiment(e.experiment)
        if e.approved:
            if not row.finished:
                row.status = "approved"
        else:
            row.status, row.note = "vetoed", e.note
            vetoed = f"vetoed by {e.client}" if e.client else "vetoed"
            row.reason = row.reason or (f"{vetoed}: {e.note}" if e.note else vetoed)
        if self.pending == e.experiment:
            self._clear_pending()
        self.dirty |= {TABLE, APPROVAL, STATUS}

    # experiments -------------------------------------------------------------------------------------------

    def _on_experiment_started(self, e: ev.ExperimentStarted) -> None:
        row = self._experiment(e.experiment)
        row.status, row.commit, row.baseline = "running", e.commit, e.baseline
        row.description = row.description or e.description or ("baseline" if e.baseline else "")
        row.budget_seconds = e.budget_seconds
        row.started_ts = e.ts
        self.running = e.experiment
        self._set_current(e.experiment)
        if self.pending == e.experiment:
            self._clear_pending()
        self.curve, self.curve_experiment, self.repeat = Curve(), e.experiment, None
        self.flight_curves[e.experiment] = self.curve
        if e.incumbent_curve:
            self.incumbent_curve, self._incumbent_curve_id = Curve(points=e.incumbent_curve), self.incumbent_id
        elif self._incumbent_curve_id != self.incumbent_id:
            self.incumbent_curve = Curve()
        self.log.clear()
        self.dirty |= {TABLE, STATUS, CURVE, LOG, DIFF}

    def _on_log_line(self, e: ev.LogLine) -> None:
        if e.experiment == self.running:
            self.log.append(e.line)
            self.dirty.add(LOG)

    def _on_train_step(self, e: ev.TrainStep) -> None:
        if self.repeat is not None and e.experiment == self.repeat.experiment:
            self.repeat.add(e)
            self.dirty |= {CURVE, STATUS}
            return
        row = self._experiment(e.experiment)
        row.step, row.elapsed_seconds, row.progress = e.step, e.elapsed_seconds, e.progress
        row.loss = e.loss
        curve = self.flight_curves.get(e.experiment)
        if curve is None and e.experiment == self.curve_experiment:
            curve = self.curve
        if curve is not None:
            curve.add(e.elapsed_seconds, e.loss)
            self.dirty |= {CURVE, STATUS}

    def _on_experiment_finished(self, e: ev.ExperimentFinished) -> None:
        row = self._experiment(e.experiment)
        row.status, row.metric, row.delta = e.status, e.metric, e.delta
        row.incumbent_metric, row.commit = e.incumbent_metric, e.commit or row.commit
        row.description = e.description or row.description
        row.training_seconds, row.wall_seconds = e.training_seconds, e.wall_seconds
        row.peak_memory_mb = e.peak_memory_mb
        row.reason = e.reason or row.reason
        row.log_tail = e.log_tail
        row.noise, row.reported_metric, row.evaluation = e.noise, e.reported_metric, e.evaluation
        row.worker = e.worker or row.worker
        if row.baseline and e.metric is not None:
            self.baseline_metric = e.metric
        if e.status == "keep" and e.metric is not None:
            self._keep(e.experiment, e.metric)
        self.flight_curves.pop(e.experiment, None)
        if self.running == e.experiment:
            self.running = max(self.flight_curves, default=None)
        if self.repeat is not None and self.repeat.experiment == e.experiment:
            self.repeat = None
        if self.pending == e.experiment:
            self._clear_pending()
        self.dirty |= {TABLE, STATUS, CURVE}

    def _on_kept(self, e: ev.ExperimentKept) -> None:
        self._keep(e.experiment, e.metric)
        if self.baseline_metric is None and e.previous_metric is None:
            self.baseline_metric = e.metric
        self.dirty |= {STATUS, TABLE}

    def _keep(self, experiment_id: int, metric: float) -> None:
        self.incumbent_id, self.incumbent_metric = experiment_id, metric
        if self.curve_experiment == experiment_id and self._incumbent_curve_id != experiment_id:
            self.incumbent_curve = Curve(points=tuple(self.curve.points))
            self._incumbent_curve_id = experiment_id

    def _on_reverted(self, e: ev.ExperimentReverted) -> None:
        row = self._experiment(e.experiment)
        row.reason = row.reason or e.reason
        self.dirty.add(TABLE)

    def _on_repeat_started(self, e: ev.RunRepeatStarted) -> None:
        """The first run's curve stays as the reference of every extra run of the same experiment."""
        if self.repeat is not None and self.repeat.experiment == e.experiment:
            first = self.repeat.first_run
        else:
            first = Curve(points=tuple(self.curve.points)) if self.curve_experiment == e.experiment else Curve()
        self.repeat = RepeatRunView(e.experiment, e.label, e.budget_seconds, e.ts, first)
        self.log.clear()
        self.dirty |= {STATUS, CURVE, LOG}

    def _on_repeat_finished(self, e: ev.RunRepeated) -> None:
        if self.repeat is not None and self.repeat.experiment == e.experiment:
            self.repeat = None
            self.dirty |= {STATUS, CURVE}

    def _on_noise(self, e: ev.NoiseEstimated) -> None:
        self.noise_std = e.std
        self.dirty.add(STATUS)

    def _on_study(self, e: ev.StudyStarted | ev.StudyRun | ev.StudyFinished) -> None:
        self.studies.apply(e)
        self.dirty |= {STUDIES, STATUS}

    def _on_telemetry(self, e: ev.TelemetrySample) -> None:
        self.telemetry.add(e)
        self.dirty.add(HARDWARE)


_HANDLERS = {
    ev.SessionStarted: SessionView._on_session_started,
    ev.SessionFinished: SessionView._on_session_finished,
    ev.StateChanged: SessionView._on_state_changed,
    ev.ApprovalPolicyChanged: SessionView._on_policy_changed,
    ev.PlanChosen: SessionView._on_plan_chosen,
    ev.AgentThinkingDelta: SessionView._on_thinking,
    ev.AgentTextDelta: SessionView._on_text,
    ev.AgentToolCall: SessionView._on_tool_call,
    ev.AgentToolResult: SessionView._on_tool_result,
    ev.AgentUsage: SessionView._on_usage,
    ev.NoteDelivered: SessionView._on_note,
    ev.ChangeProposed: SessionView._on_change_proposed,
    ev.ChangeRejected: SessionView._on_change_rejected,
    ev.ApprovalRequested: SessionView._on_approval_requested,
    ev.DecisionMade: SessionView._on_decision,
    ev.ExperimentStarted: SessionView._on_experiment_started,
    ev.LogLine: SessionView._on_log_line,
    ev.TrainStep: SessionView._on_train_step,
    ev.ExperimentFinished: SessionView._on_experiment_finished,
    ev.ExperimentKept: SessionView._on_kept,
    ev.ExperimentReverted: SessionView._on_reverted,
    ev.TelemetrySample: SessionView._on_telemetry,
    ev.NoiseEstimated: SessionView._on_noise,
    ev.StudyStarted: SessionView._on_study,
    ev.StudyRun: SessionView._on_study,
    ev.StudyFinished: SessionView._on_study,
    ev.RunRepeatStarted: SessionView._on_repeat_started,
    ev.RunRepeated: SessionView._on_repeat_finished,
}


def next_research_mode(current: str, forced: bool) -> str:
    """The mode the console's research-mode key asks for next: the one after the current forced mode, or the
    first when the planner chooses; after the last, "auto"."""
    modes = (*ev.RESEARCH_MODES, "auto")
    if not forced or current not in modes:
        return modes[0]
    return modes[modes.index(current) + 1]
