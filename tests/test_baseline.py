"""One definition of the baseline: after a failed first baseline (#0) the kept #1 is the baseline everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopdeck.cli.status_table import format_status_table
from loopdeck.console.state import SessionView
from loopdeck.engine import events as ev
from loopdeck.engine.agents.base import AgentTurn
from loopdeck.engine.agents.claude.context import history_overview
from loopdeck.engine.agents.offline.agent import OfflineAgent
from loopdeck.engine.research.history import agent_history
from loopdeck.engine.research.report import write_report
from loopdeck.engine.store.journal import JournalWriter, read_events
from loopdeck.engine.store.ledger import ExperimentRow, Ledger

TRAIN = '"""A training file reduced to its hyperparameters."""\nMATRIX_LR = 0.04\nDEPTH = 8\n'
# id, status, metric, delta, description, baseline
ROWS = (
    (0, "crash", None, None, "baseline", True),
    (1, "keep", 2.0, None, "baseline", True),
    (2, "keep", 1.9, -0.1, "MATRIX_LR 0.04 -> 0.06", False),
    (3, "discard", 1.95, 0.05, "DEPTH 8 -> 9", False),
)


@pytest.fixture
def rows(tmp_path: Path) -> list[ExperimentRow]:
    with Ledger(tmp_path / ".loopdeck") as ledger:
        for id, status, metric, delta, description, baseline in ROWS:
            ledger.begin(ExperimentRow(id=id, status="running", commit=f"{id:040d}", description=description,
                                       meta={"baseline": True} if baseline else {}))
            ledger.finish(id, status, metric=metric, delta=delta,
                          reason="the baseline run failed: no val_bpb in the log" if status == "crash" else "")
        return ledger.rows()


def test_report_counts_two_experiments_after_the_kept_baseline(rows: list[ExperimentRow], tmp_path: Path) -> None:
    _, summary = write_report(rows, tmp_path / "report")
    text = summary.read_text()
    assert "| baseline | 2.000000 (#1) |" in text
    assert "| kept | 1/2 experiments (baseline not counted) |" in text
    assert "| crashed | 0 |" in text
    assert "| improvement | 0.100000 (5.00%) |" in text


def test_status_table_footer_counts_two_experiments(rows: list[ExperimentRow]) -> None:
    footer = format_status_table(rows).splitlines()[-1]
    assert footer == "baseline 2.000000 · best 1.900000 (#2), -0.100000 (-5.00%) vs baseline · kept 1/2 experiments"


def test_agents_see_both_baselines_marked(rows: list[ExperimentRow], tmp_path: Path) -> None:
    history = agent_history(rows)
    assert [summary.baseline for summary in history] == [True, True, False, False]
    incumbent = history[2]
    turn = AgentTurn(experiment=4, workspace=tmp_path, files={"train.py": TRAIN}, editable=("train.py",),
                     protected=(), program="", metric_name="val_bpb", direction="minimize", history=history,
                     incumbent=incumbent)
    proposal = OfflineAgent().propose(turn)
    assert "Incumbent val_bpb 1.9000 (baseline 2.0000); 1 of 2 experiments kept so far." in proposal.rationale

    overview = history_overview(history, incumbent, "minimize")
    assert "Baseline #1: 2.000000" in overview
    assert "Experiments after the baseline: 2 (discard 1, keep 1)" in overview


def test_console_footer_after_a_replayed_journal(tmp_path: Path) -> None:
    started = {"workspace": "w", "branch": "loopdeck/t", "agent": "offline", "approval": "auto",
               "budget_seconds": 10.0, "metric_name": "val_bpb", "metric_direction": "minimize"}
    events: list[ev.Event] = [ev.SessionStarted(**started)]
    for id, status, metric, delta, description, baseline in ROWS:
        events.append(ev.ExperimentStarted(experiment=id, commit=f"{id:07d}", parent_commit="",
                                           description=description, budget_seconds=10.0, baseline=baseline))
        events.append(ev.ExperimentFinished(experiment=id, status=status, metric=metric, delta=delta,
                                            incumbent_metric=None, commit=f"{id:07d}", description=description))
        if status == "keep":
            events.append(ev.ExperimentKept(experiment=id, commit=f"{id:07d}", metric=metric,
                                            previous_metric=None if baseline else 2.0))
        if id == 0:  # the failed baseline ends the first session; the second starts with a new one
            events += [ev.SessionFinished(reason="error", experiments=0, kept=0, baseline_metric=None,
                                          best_metric=None), ev.SessionStarted(**started, resumed=True)]
    journal = tmp_path / "events.jsonl"
    with JournalWriter(journal) as writer:
        for event in events:
            writer.append(event)
    view = SessionView(watch=True)
    for event in read_events(journal):
        view.apply(event)
    assert view.kept_and_total() == (1, 2)
    assert view.baseline_metric == 2.0 and view.incumbent_id == 2
