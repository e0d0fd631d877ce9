"""Integrity in the console's view and the config: the noise band, self-reported marking, [evaluation] errors."""

from __future__ import annotations

import pytest

from loopdeck.console import format as fmt
from loopdeck.console.screens.experiment import facts
from loopdeck.console.state import SessionView
from loopdeck.console.widgets.status import status_segments
from loopdeck.engine import events as ev
from loopdeck.engine.config import parse_config
from loopdeck.engine.errors import LoopdeckError


def view_of(*events: ev.Event) -> SessionView:
    view = SessionView()
    for event in events:
        view.apply(event)
    return view


def started(self_reported: bool) -> ev.SessionStarted:
    return ev.SessionStarted(workspace="/w", branch="loopdeck/t", agent="offline", approval="auto",
                             budget_seconds=60.0, metric_name="val_bpb", metric_direction="minimize",
                             self_reported=self_reported)


def finished(n: int, evaluation: str, **fields: object) -> ev.ExperimentFinished:
    return ev.ExperimentFinished(experiment=n, status="discard", metric=1.02, delta=-0.0042, incumbent_metric=1.0242,
                                 commit="abc", description="try", evaluation=evaluation, **fields)


def line(view: SessionView) -> str:
    return " │ ".join(content.plain for _, content in status_segments(view, now=0.0))


def test_the_delta_carries_its_noise_band_and_the_status_line_the_noise():
    view = view_of(started(False), ev.NoiseEstimated(std=0.0011, n=3, values=(1.0, 1.001, 1.002), mean=1.001),
                   finished(1, "trusted", noise=0.0011, reported_metric=0.1))
    assert fmt.delta(-0.0042, band=0.0011) == "−0.0042±0.0011" and fmt.delta(-0.0042) == "−0.0042"
    assert "noise σ 0.0011" in line(view) and "self-reported" not in line(view)
    shown = dict(facts(view.experiments[1], view))
    assert shown["Δ vs incumbent"] == "−0.004200±0.001100"
    assert shown["scored"] == "trusted: weights scored by the protected harness · the run printed 0.100000"


def test_a_self_reported_session_says_so():
    view = view_of(started(True), finished(1, "self_reported"))
    assert "self-reported" in line(view) and "noise σ" not in line(view)
    assert dict(facts(view.experiments[1], view))["scored"] == "self-reported: the number the run printed"


@pytest.mark.parametrize(("text", "message"), [
    ("[evaluation]\nbaseline_seeds = 0\n", "evaluation.baseline_seeds: must be >= 1, got 0"),
    ("[evaluation]\nmode = \"always\"\n", "evaluation.mode: must be one of"),
    ("[evaluation]\nabort_after_fraction = 1.5\n", "evaluation.abort_after_fraction"),
    ("[evaluation]\nearly_abort = \"no\"\n", "evaluation.early_abort: expected true or false"),
    ("[evaluation]\nholdout = 5\n", "evaluation.holdout: unknown setting; allowed here: mode,"),
])
def test_evaluation_settings_are_validated(text, message):
    with pytest.raises(LoopdeckError, match=message.replace("(", r"\(")):
        parse_config(text)


def test_evaluation_defaults():
    settings = parse_config("").evaluation
    assert (settings.mode, settings.baseline_seeds, settings.confirm_multiple, settings.confirm_runs) == (
        "auto", 3, 2.0, 2)
    assert (settings.early_abort, settings.abort_after_fraction, settings.abort_margin) == (True, 0.5, 0.1)
    assert (settings.startup_allowance_seconds, settings.holdout_every, settings.paired) == (60.0, 5, False)
