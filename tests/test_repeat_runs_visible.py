"""Waiting made visible: extra runs (baseline seeds, confirmations, incumbent re-runs) announce themselves, stream
their training steps, and the console, `loopdeck watch` and the headless printer show which run trains and its time
left instead of a frozen "1m00s/1m00s"."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, fake_train_source
from test_console_support import make_app, run, screen_text, settle

from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.console.state import SessionView
from loopdeck.console.widgets.status import run_progress
from loopdeck.engine import events as ev
from loopdeck.engine.research.integrity import repeat_label
from loopdeck.engine.store.journal import read_journal

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0


def test_labels_say_which_run_of_which_series():
    assert repeat_label("noise", 2, 3) == "baseline seed 2/3"
    assert repeat_label("confirm", 2, 3) == "confirmation run 1/2"  # index 1 of the series is the first run
    assert repeat_label("incumbent", 1, 2) == "incumbent re-run 1/2"


def test_the_baseline_noise_runs_stream_their_steps_between_start_and_finish(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(steps=4, step_seconds=0.05), evaluation={"baseline_seeds": 3})
    session, recorded = run_session(workspace, ScriptedAgent([]), max_experiments=0)

    events = recorded.events
    starts = recorded.of(ev.RunRepeatStarted)
    assert [(e.experiment, e.role, e.label, e.budget_seconds) for e in starts] == [
        (0, "noise", "baseline seed 2/3", session.config.experiment.budget_seconds),
        (0, "noise", "baseline seed 3/3", session.config.experiment.budget_seconds)]
    for start in starts:
        at = events.index(start)
        end = next(i for i, e in enumerate(events) if isinstance(e, ev.RunRepeated) and i > at)
        steps = [e for e in events[at:end] if isinstance(e, ev.TrainStep)]
        assert [s.step for s in steps] == [0, 1, 2, 3] and all(s.experiment == 0 for s in steps)
        assert events[end].label == start.label and events[end].status == "ok"
    assert ledger_rows(workspace)[0].metric_runs == 3

    # `loopdeck watch` folds the same journal: mid-way through a noise run it names the run and its time left.
    journal = read_journal(workspace / ".loopdeck" / "events.jsonl").events
    view = SessionView(watch=True)
    second = next(i for i, e in enumerate(journal) if isinstance(e, ev.RunRepeatStarted))
    steps = [i for i, e in enumerate(journal) if isinstance(e, ev.TrainStep) and i > second]
    for event in journal[: steps[1] + 1]:  # up to its second step
        view.apply(event)
    shown = run_progress(view, now=journal[second].ts)
    assert shown.startswith("#0 baseline seed 2/3 · ") and shown.endswith(" left")

    printed = io.StringIO()
    printer = HeadlessPrinter(workspace, out=printed)
    for event in journal:
        printer(event)
    lines = printed.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines if "baseline seed" in line] == [
        "#0 baseline seed 2/3", "#0 baseline seed 3/3"]


def test_a_confirmation_run_replaces_the_frozen_progress_and_ends_cleanly():
    view = SessionView()
    finished = ev.RunRepeated(ts=T0 + 140, experiment=7, role="confirm", index=2, of=3, seed=7001, status="ok",
                              metric=1.1, label="confirmation run 1/2")
    for event in [*session_events(), *(step(T0 + 80 + n, n, 10.0 * n) for n in range(6)), finished]:
        view.apply(event)
    assert view.repeat is None
    assert run_progress(view, T0 + 140) == "#7 1m00s/1m00s"  # the first run's progress again
    assert view.experiments[7].step == 2  # the extra run's six steps never overwrote the first run's


def session_events() -> list[ev.Event]:
    """Experiment #7 trains to the end of its 60 s budget, then its first confirmation run starts and trains."""
    events: list[ev.Event] = [
        ev.SessionStarted(ts=T0, workspace="/w", branch="loopdeck/t", agent="offline", approval="auto",
                          budget_seconds=60.0, metric_name="val_bpb", metric_direction="minimize"),
        ev.ExperimentStarted(ts=T0 + 1, experiment=7, commit="abc", parent_commit="def", description="LR 0.3",
                             budget_seconds=60.0),
    ]
    events += [ev.TrainStep(ts=T0 + 2 + i, experiment=7, step=i, elapsed_seconds=20.0 * (i + 1), loss=3.0 - i * 0.5)
               for i in range(3)]
    events += [ev.StateChanged(ts=T0 + 70, state="training", experiment=7, detail="confirmation run 1/2, seed 7001"),
               ev.RunRepeatStarted(ts=T0 + 70, experiment=7, role="confirm", label="confirmation run 1/2",
                                   seed=7001, budget_seconds=60.0)]
    return events


def step(ts: float, n: int, elapsed: float) -> ev.TrainStep:
    return ev.TrainStep(ts=ts, experiment=7, step=n, elapsed_seconds=elapsed, loss=3.2 - n * 0.4)


def test_pilot_shows_the_label_its_curve_and_a_moving_time_left(tmp_path: Path) -> None:
    async def scenario() -> None:
        app = make_app(tmp_path)
        async with app.run_test(size=(140, 40)) as pilot:
            app.bridge.emit_many(session_events())
            await settle(app, pilot)
            text = screen_text(app)
            assert "#7 confirmation run 1/2 · starting" in text
            assert "1m00s/1m00s" not in text  # the finished first run no longer stands for what trains
            app.bridge.emit_many([step(T0 + 80, 0, 10.0)])
            await settle(app, pilot)
            text = screen_text(app)
            assert "#7 confirmation run 1/2 · 10s/1m00s · 50s left" in text
            assert "Loss · #7 confirmation run 1/2" in text and "#7's first run" in text
            assert len(app.view.repeat.curve) == 1 and len(app.view.repeat.first_run) == 3
            app.bridge.emit_many([step(T0 + 95, 1, 25.0)])
            await settle(app, pilot)
            assert "#7 confirmation run 1/2 · 25s/1m00s · 35s left" in screen_text(app)

    run(scenario())


@pytest.mark.slow
def test_the_console_on_the_real_engine_names_the_noise_run_while_the_first_diff_waits(make_workspace,
                                                                                         tmp_path: Path) -> None:
    """A new user's first minutes: the baseline's seeds train with their label and a moving time left, and the
    first diff, drafted meanwhile, is already up for review."""
    from fake_targets import change
    from test_console_engine import until

    from loopdeck.console.app import LoopdeckApp
    from loopdeck.console.bridge import EventBridge
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(fake_train_source(steps=30, step_seconds=0.1), approval="ask",
                               evaluation={"baseline_seeds": 3})
    bridge = EventBridge()
    session = Session(workspace, RunOptions(max_experiments=1, budget_seconds=4.0), on_event=bridge,
                      agent=ScriptedAgent([change("LR", 0.3, "lower LR to 0.3")]))
    app = LoopdeckApp(bridge=bridge, session=session, workspace=str(workspace),
                      settings_file=tmp_path / "console.json")

    async def scenario() -> None:
        async with app.run_test(size=(160, 40)) as pilot:
            # Events keep coming while runs train, so the screen is drawn now rather than waited on to settle.
            await until(pilot, lambda: app.view.repeat is not None and app.view.repeat.step >= 2
                        and app.view.repeat.label == "baseline seed 2/3")
            await app._render()
            first = screen_text(app)
            assert "#0 baseline seed 2/3 · " in first and "Loss · #0 baseline seed 2/3" in first
            assert app.view.pending == 1 and "waiting for your decision on #1" in first  # drafted meanwhile
            shown = app.view.repeat.elapsed_seconds
            await until(pilot, lambda: app.view.repeat is not None and app.view.repeat.label == "baseline seed 2/3"
                        and app.view.repeat.elapsed_seconds > shown + 0.3)
            await app._render()
            later = screen_text(app)
            line = next(row for row in later.splitlines() if "#0 baseline seed" in row and " left" in row)
            assert line not in first.splitlines()  # the time left moved
            await pilot.press("a")
            await until(pilot, lambda: app.view.finished is not None, timeout=60)
            assert app.view.experiments[1].status == "keep"

    run(scenario())
    assert session.wait(10)
