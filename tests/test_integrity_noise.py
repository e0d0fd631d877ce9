"""Noise-aware keep: the baseline's seeds measure σ; a candidate within the noise is re-run before it can be kept."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, set_constant

from loopdeck.engine.agents.base import AgentTurn, Proposal
from loopdeck.engine.events import ExperimentFinished, NoiseEstimated, RunRepeated, RunRepeatStarted
from loopdeck.engine.research.noise import (
    confirm,
    confirmation_seeds,
    delta_band,
    needs_confirmation,
    run_std,
)
from loopdeck.engine.store.ledger import Ledger

# A target whose metric is a known value plus Gaussian noise of known σ, seeded from LOOPDECK_SEED and from the
# code (LABEL): like real training, a changed file follows another random trajectory even with the same seed.
NOISY_TRAIN = '''\
"""Noisy fake target: val_bpb = VALUE + SIGMA * N(0, 1), the draw seeded by LOOPDECK_SEED and LABEL."""

import os
import random

VALUE = {value!r}
SIGMA = {sigma!r}
LABEL = {label!r}


def main():
    seed = int(os.environ.get("LOOPDECK_SEED", "0"))
    val_bpb = VALUE + SIGMA * random.Random(f"{{seed}}:{{LABEL}}").gauss(0.0, 1.0)
    print("---")
    print(f"val_bpb:          {{val_bpb:.6f}}")
    print("training_seconds: 0.1")


if __name__ == "__main__":
    main()
'''
SIGMA = 0.01
BASE = 1.0


def noisy_metric(value: float, label: str, seed: int) -> float:
    return round(value + SIGMA * random.Random(f"{seed}:{label}").gauss(0.0, 1.0), 6)


def baseline_estimate() -> tuple[float, float]:
    values = [noisy_metric(BASE, "base", seed) for seed in (0, 1, 2)]
    return statistics.fmean(values), statistics.stdev(values)


def lucky_label(value: float, low: float, high: float) -> str:
    """A LABEL whose first run (seed 0) improves on the baseline's mean by between low·σ̂ and high·σ̂."""
    mean, std = baseline_estimate()
    for i in range(1000):
        label = f"try{i}"
        if low * std < mean - noisy_metric(value, label, 0) <= high * std:
            return label
    raise AssertionError("no such label")


def test_noise_arithmetic():
    assert run_std([1.0]) is None and run_std([1.0, 1.0, 1.0]) == 0.0
    assert delta_band(0.01, 1, 1) == pytest.approx(0.01 * 2**0.5)
    assert delta_band(None, 1, 3) is None
    assert needs_confirmation(0.015, 0.01, 2.0, 0.0) and not needs_confirmation(0.025, 0.01, 2.0, 0.0)
    assert not needs_confirmation(-0.001, 0.01, 2.0, 0.0) and not needs_confirmation(0.01, 0.0, 2.0, 0.0)
    assert confirmation_seeds(7, 2) == [7001, 7002]
    noise_only = confirm([0.99, 1.004, 1.006], 1.0, 3, std=0.01, direction="minimize", min_improvement=0.0)
    assert not noise_only.keep and "not confirmed" in noise_only.reason and noise_only.runs == 3
    real = confirm([0.97, 0.975, 0.968], 1.0, 3, std=0.01, direction="minimize", min_improvement=0.0)
    assert real.keep and real.improvement == pytest.approx(1.0 - statistics.fmean([0.97, 0.975, 0.968]))
    paired = confirm([0.99, 1.0, 1.01], 1.0, 3, std=0.01, direction="minimize", min_improvement=0.0,
                     paired=[1.02, 1.03])
    assert paired.keep and paired.improvement == pytest.approx(0.02) and "paired" in paired.reason


def test_a_candidate_within_the_noise_is_confirmed_and_discarded_and_a_real_gain_is_kept(make_workspace,
                                                                                           run_session):
    mean, std = baseline_estimate()
    # Truly half a σ worse, but its first run looks better than the baseline by 0.5–1.5 σ̂.
    noise_label = lucky_label(BASE + 0.5 * SIGMA, 0.5, 1.5)
    workspace = make_workspace(NOISY_TRAIN.format(value=BASE, sigma=SIGMA, label="base"),
                               evaluation={"baseline_seeds": 3})
    agent = ScriptedAgent([edit("lucky in disguise", VALUE=BASE + 0.5 * SIGMA, LABEL=noise_label),
                           edit("a real improvement", VALUE=BASE - 10 * SIGMA)])
    session, recorded = run_session(workspace, agent)

    assert recorded.finished.reason == "exhausted", session.error
    (noise,) = recorded.of(NoiseEstimated)
    assert noise.n == 3 and noise.std == pytest.approx(std, abs=1e-6) and noise.mean == pytest.approx(mean, abs=1e-6)
    baseline, lucky, real = ledger_rows(workspace)
    assert baseline.status == "keep" and baseline.metric_runs == 3 and baseline.metric == pytest.approx(mean, abs=1e-6)
    assert baseline.noise_std == pytest.approx(std, abs=1e-6)

    # The lucky candidate was re-run with two fresh seeds, and the mean of its three runs did not hold up.
    assert lucky.status == "discard" and lucky.reason.startswith("not confirmed"), lucky.reason
    assert lucky.metric_runs == 3 and lucky.delta_band == pytest.approx(std * (1 / 3 + 1 / 3) ** 0.5, rel=1e-6)
    confirms = [e for e in recorded.of(RunRepeated) if e.role == "confirm"]
    assert [(e.experiment, e.seed, e.status) for e in confirms] == [(1, 1001, "ok"), (1, 1002, "ok")]
    started = [(e.experiment, e.label) for e in recorded.of(RunRepeatStarted) if e.role == "confirm"]
    assert started == [(1, "confirmation run 1/2"), (1, "confirmation run 2/2")]  # what the console shows
    expected = [noisy_metric(BASE + 0.5 * SIGMA, noise_label, seed) for seed in (0, 1001, 1002)]
    assert lucky.metric == pytest.approx(statistics.fmean(expected), abs=1e-6)

    # The real improvement is far outside the noise: kept without re-runs.
    assert real.status == "keep" and real.metric_runs == 1 and "improved" in real.reason
    finished = {e.experiment: e for e in recorded.of(ExperimentFinished)}
    assert finished[1].noise == pytest.approx(lucky.delta_band) and finished[2].noise is not None

    # Every extra run is in the ledger's runs table; results.tsv keeps one line per experiment.
    with Ledger(session.state_dir) as ledger:
        runs = ledger.runs()
    assert [(r.experiment, r.role, r.seed) for r in runs] == [(0, "noise", 1), (0, "noise", 2), (1, "confirm", 1001),
                                                              (1, "confirm", 1002)]
    assert all(r.metric is not None and r.commit for r in runs)
    tsv = (session.state_dir / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "discard", "keep"]

    # A resumed session does not measure the noise again: it repeats what the ledger holds.
    _, resumed = run_session(workspace, ScriptedAgent([]))
    (again,) = resumed.of(NoiseEstimated)
    assert (again.std, again.n, len(again.values)) == (noise.std, 3, 2)
    assert not resumed.of(RunRepeated)


def test_a_small_real_gain_survives_confirmation_paired_with_incumbent_reruns(make_workspace, run_session):
    # Truly 3 σ better: its first run may land within 2 σ̂ (this label makes sure it does), the re-runs agree.
    label = lucky_label(BASE - 3 * SIGMA, 0.2, 2.0)
    workspace = make_workspace(NOISY_TRAIN.format(value=BASE, sigma=SIGMA, label="base"),
                               evaluation={"baseline_seeds": 3, "paired": True})
    agent = ScriptedAgent([edit("better", VALUE=BASE - 3 * SIGMA, LABEL=label)])
    session, recorded = run_session(workspace, agent)

    assert recorded.finished.reason == "exhausted", session.error
    row = ledger_rows(workspace)[1]
    assert row.status == "keep" and row.reason.startswith("confirmed") and "paired" in row.reason, row.reason
    roles = [(e.role, e.seed) for e in recorded.of(RunRepeated) if e.experiment == 1]
    assert roles == [("confirm", 1001), ("confirm", 1002), ("incumbent", 1001), ("incumbent", 1002)]
    with Ledger(session.state_dir) as ledger:
        reruns = [r for r in ledger.runs(1) if r.role == "incumbent"]
    baseline_commit = ledger_rows(workspace)[0].commit
    assert [r.commit for r in reruns] == [baseline_commit] * 2  # the incumbent's code, not the candidate's
    assert [r.metric for r in reruns] == [noisy_metric(BASE, "base", seed) for seed in (1001, 1002)]


def edit(description: str, **constants: object) -> Callable[[AgentTurn], Proposal]:
    """A script step setting several constants of the incumbent's train.py."""

    def make(turn: AgentTurn) -> Proposal:
        text = turn.files["train.py"]
        for name, value in constants.items():
            text = set_constant(text, name, value)
        return Proposal(description=description, rationale="test", files={"train.py": text})

    return make


def test_the_noise_is_paid_once_per_target_budget_and_machine_and_re_measured_when_they_move(
        make_workspace, run_session, monkeypatch):
    workspace = make_workspace(NOISY_TRAIN.format(value=BASE, sigma=SIGMA, label="base"),
                               evaluation={"baseline_seeds": 3, "noise_drift": 0.1})
    run_session(workspace, ScriptedAgent([]))  # the baseline and its two noise seeds
    with Ledger(workspace / ".loopdeck") as ledger:
        (estimate,) = ledger.noise_estimates()
    assert estimate.runs == 3 and estimate.experiment == 0 and "budget" in estimate.key and "threads" in estimate.key

    # A new session on the same target, budget and machine re-runs nothing.
    _, same = run_session(workspace, ScriptedAgent([]))
    assert not same.of(RunRepeated) and [e.n for e in same.of(NoiseEstimated)] == [3]

    # Another machine: the noise is re-measured on the incumbent, once, and stored beside the first estimate. The
    # incumbent's metric is a mean of 3 runs, not a sample of the noise: 3 fresh runs measure it.
    monkeypatch.setattr("loopdeck.engine.research.integrity.machine_id", lambda: "elsewhere · 64 threads")
    _, moved = run_session(workspace, ScriptedAgent([]))
    assert [(e.experiment, e.role, e.seed) for e in moved.of(RunRepeated)] == [(0, "noise", 1), (0, "noise", 2),
                                                                               (0, "noise", 3)]
    _, again = run_session(workspace, ScriptedAgent([]))
    assert not again.of(RunRepeated)

    # A keep far from where the noise was measured (20 % better, past noise_drift) re-measures it on the new
    # incumbent right away; a small keep would not.
    _, far = run_session(workspace, ScriptedAgent([edit("much better", VALUE=BASE * 0.8)]))
    assert [(e.experiment, e.role) for e in far.of(RunRepeated)] == [(1, "noise"), (1, "noise")]
    with Ledger(workspace / ".loopdeck") as ledger:
        assert len(ledger.noise_estimates()) == 3


def test_the_report_counts_what_confirmation_costs_per_kept_experiment(make_workspace, run_session, tmp_path):
    from loopdeck.engine.research.report import write_report

    label = lucky_label(BASE - 1.0 * SIGMA, 0.5, 1.5)  # a real but small gain: confirmed, then kept
    workspace = make_workspace(NOISY_TRAIN.format(value=BASE, sigma=SIGMA, label="base"),
                               evaluation={"baseline_seeds": 3})
    run_session(workspace, ScriptedAgent([edit("small", VALUE=BASE - 1.0 * SIGMA, LABEL=label)]))
    with Ledger(workspace / ".loopdeck") as ledger:
        rows, runs = ledger.rows(), ledger.runs()
    confirms = [r for r in runs if r.role == "confirm"]
    assert len(confirms) == 2
    _, summary = write_report(rows, tmp_path / "report", runs=runs)
    kept = sum(r.status == "keep" and not r.is_baseline for r in rows)
    seconds = sum(r.training_seconds for r in confirms)
    expected = "2 noise runs (0 s of training), 2 confirmation runs (0 s)"
    assert f"| integrity runs | {expected}" in summary.read_text()
    per_kept = f"confirmation per kept experiment: {seconds / kept:.0f} s" if kept else "per kept experiment"
    assert (per_kept in summary.read_text()) == bool(kept)
