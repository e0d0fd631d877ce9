"""The loop on the real GPT target: a tiny model, a 2-second budget and the built-in offline agent."""

from __future__ import annotations

import pytest

from loopdeck.engine.events import ExperimentFinished, SessionStarted, TrainStep
from loopdeck.engine.store.ledger import Ledger


@pytest.mark.slow
def test_the_offline_agent_drives_the_real_gpt_target(make_workspace, run_session):
    support = pytest.importorskip("support_gpt", reason="tests/support_gpt.py (the GPT target's helpers) is missing")
    pytest.importorskip("loopdeck.engine.agents.offline.agent", reason="the offline agent is not there yet")
    # A small evaluation keeps each run to a few seconds ([experiment] env: the credential scrub would drop a
    # LOOPDECK_EVAL_TOKENS inherited from this process, its name containing TOKEN).
    workspace = make_workspace(support.tiny_train_source(), timeout=120, env={"LOOPDECK_EVAL_TOKENS": "8192"},
                               extra_files=support.harness_files(), protected=("harness.py",))
    session, recorded = run_session(workspace, None, agent="offline", budget_seconds=2.0, max_experiments=2)

    assert recorded.finished.reason == "max_experiments", session.error
    with Ledger(session.state_dir) as ledger:
        rows = ledger.rows()
    assert len(rows) == 3 and rows[0].status == "keep"
    assert all(row.status in ("keep", "discard") for row in rows[1:]), [(r.status, r.reason) for r in rows]
    baseline = rows[0]
    assert 0 < baseline.metric < 8.0  # better than a uniform byte model
    assert baseline.env["device"] == "cpu" and baseline.env["torch"].startswith("2.")
    assert baseline.env["corpus_fingerprint"] and baseline.env["config"]["experiment"]["env"]
    assert (session.state_dir / "runs/0/model.pt").exists()
    assert {event.experiment for event in recorded.of(TrainStep)} == {0, 1, 2}
    assert [event.experiment for event in recorded.of(ExperimentFinished)] == [0, 1, 2]
    assert all(row.agent == "offline" for row in rows[1:])
    # The harness reads LOOPDECK_BUDGET_CLOCK, so the default process clock applies and every run records it.
    assert session.config.experiment.budget_clock == "process"
    assert {row.budget_clock for row in rows} == {"process"}
    assert [event.budget_clock for event in recorded.of(SessionStarted)] == ["process"]
