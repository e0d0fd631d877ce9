"""Trusted evaluation in a real session on the tiny GPT: a printed number is ignored, a peeking model is rejected,
the holdout split is scored and never decides anything; plus the ledger's migration and the transfer gap."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, write_files

from loopdeck.engine.events import (
    ExperimentFinished,
    HoldoutScored,
    Notice,
    SessionStarted,
)
from loopdeck.engine.research.report import write_report
from loopdeck.engine.store.ledger import MIGRATIONS, Ledger

PEEKING = ("is_causal=True", "is_causal=False")
FAKE_PRINT = ('"val_bpb": val_bpb,', '"val_bpb": 0.1,')


@pytest.mark.slow
def test_the_trusted_score_decides_and_the_holdout_never_does(make_workspace, run_session):
    support = pytest.importorskip("support_gpt")
    # A baseline whose LM head cannot learn (UNEMBEDDING_LR 0): letting it learn is a sure improvement.
    baseline = support.tiny_train_source(UNEMBEDDING_LR=0.0)
    frozen = support.tiny_train_source(UNEMBEDDING_LR=0.0, MATRIX_LR=0.0, EMBEDDING_LR=0.0, SCALAR_LR=0.0)
    workspace = make_workspace(baseline, timeout=120, env={"LOOPDECK_EVAL_TOKENS": "8192"},
                               evaluation={"holdout_every": 1}, extra_files=support.harness_files(),
                               protected=("harness.py",))
    agent = ScriptedAgent([
        write_files({"train.py": frozen.replace(*FAKE_PRINT)}, "learn nothing, print 0.1"),
        write_files({"train.py": support.tiny_train_source().replace(*PEEKING)}, "let attention see the future"),
        write_files({"train.py": support.tiny_train_source()}, "let the LM head learn"),
    ])
    session, recorded = run_session(workspace, agent, budget_seconds=1.0)

    assert recorded.finished.reason == "exhausted", session.error
    assert recorded.of(SessionStarted)[0].self_reported is False
    assert {Path(name).name for name in session.protected_hashes} >= {"harness.py", "evaluate.py"}
    base, fake, peek, better = ledger_rows(workspace)
    assert not base.self_reported and base.reported_metric == pytest.approx(base.metric, abs=1e-6)

    # The printed 0.1 is kept for the record, flagged, and plays no part: the true score is far worse.
    assert fake.status == "discard" and fake.reported_metric == 0.1 and fake.metric_mismatch
    assert fake.metric > base.metric > 1.0
    assert any("printed val_bpb 0.100000 but scores" in n.message for n in recorded.of(Notice) if n.experiment == 1)

    # The peeking model trains to a loss no honest model reaches, and is rejected before it is scored.
    assert peek.status == "rejected" and peek.reason.startswith("model looks ahead: logits at position "), peek.reason
    assert peek.metric is None and peek.reported_metric < base.metric

    assert better.status == "keep" and better.metric < base.metric and better.reason.startswith("improved")
    finished = {e.experiment: e for e in recorded.of(ExperimentFinished)}
    assert finished[3].evaluation == "trusted" and finished[2].evaluation == ""

    # Holdout: the baseline once, then the incumbent after its keep — after the keep was recorded.
    scored = recorded.of(HoldoutScored)
    assert [e.experiment for e in scored] == [0, 3]
    kinds = [(type(e).__name__, getattr(e, "experiment", None)) for e in recorded.events]
    assert kinds.index(("ExperimentFinished", 3)) < kinds.index(("HoldoutScored", 3))
    assert scored[1].baseline_holdout == pytest.approx(base.holdout_metric) and scored[1].transfer is not None
    rows = ledger_rows(workspace)
    assert rows[3].holdout_metric == pytest.approx(scored[1].holdout_metric)
    assert rows[3].holdout_val_metric == pytest.approx(better.metric, abs=1e-6)
    assert rows[0].holdout_metric is not None and rows[1].holdout_metric is None

    png, summary = write_report(rows, session.state_dir / "report")
    text = summary.read_text()
    assert "## Holdout" in text and "holdout.png" in text and (png.parent / "holdout.png").stat().st_size > 0


def test_an_old_ledger_gains_the_new_columns_and_runs_table(tmp_path):
    state = tmp_path / ".loopdeck"
    state.mkdir()
    conn = sqlite3.connect(state / "ledger.sqlite")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO experiments (id, status, \"commit\", metric) VALUES (0, 'keep', 'abc1234', 1.5)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with Ledger(state) as ledger:
        (row,) = ledger.rows()
        assert (row.metric, row.metric_runs, row.reported_metric, row.metric_mismatch) == (1.5, 1, None, False)
        ledger.update(0, metric_mismatch=True, noise_std=0.01, holdout_metric=1.6)
        assert ledger.get(0).metric_mismatch and ledger.runs() == []
