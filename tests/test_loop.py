"""The research loop end to end on a fake training target: keep, revert, every failure class, guard, limits."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import git, init_repo, ledger_rows
from fake_targets import (
    PREPARE_PY,
    ScriptedAgent,
    change,
    expected_metric,
    fake_train_source,
    write_autoresearch_repo,
    write_files,
)

from loopdeck.engine.agents.base import AgentError
from loopdeck.engine.events import (
    ChangeProposed,
    ChangeRejected,
    DecisionMade,
    ExperimentFinished,
    ExperimentKept,
    ExperimentReverted,
    ExperimentStarted,
    LogLine,
    Notice,
    SessionStarted,
    StateChanged,
    TrainStep,
)

pytestmark = pytest.mark.timeout(120)


def test_a_session_keeps_an_improvement_and_reverts_a_regression(workspace, run_session):
    agent = ScriptedAgent([change("LR", 0.3), change("LR", 0.6)])
    session, recorded = run_session(workspace, agent)

    assert recorded.finished.reason == "exhausted"
    rows = ledger_rows(workspace)
    assert [(r.id, r.status, r.metric) for r in rows] == [
        (0, "keep", expected_metric(0.5)), (1, "keep", expected_metric(0.3)), (2, "discard", expected_metric(0.6))]
    baseline, kept, discarded = rows
    assert baseline.meta == {"baseline": True} and baseline.commit == baseline.parent_commit
    assert kept.parent_commit == baseline.commit and kept.delta == pytest.approx(-0.2)
    assert discarded.parent_commit == kept.commit and discarded.delta == pytest.approx(0.3)
    assert "-LR = 0.5" in kept.diff and "+LR = 0.3" in kept.diff
    assert discarded.env["corpus_fingerprint"] == "fake-corpus-1" and "train.py" in discarded.env["files"]
    assert discarded.training_seconds is not None and discarded.wall_seconds > 0
    assert Path(discarded.log_path).read_text().count("step 0000") == 4

    # The branch holds the kept change only; the tree is clean and at the incumbent.
    assert git(workspace, "branch", "--show-current") == session.branch
    assert git(workspace, "rev-parse", "HEAD") == kept.commit
    assert "LR = 0.3" in (workspace / "train.py").read_text()
    assert git(workspace, "status", "--porcelain") == ""
    assert git(workspace, "rev-parse", "main") == baseline.commit  # the user's branch is untouched

    # Events: one session, each experiment's story in order, curves and steps on the way.
    assert len(recorded.of(SessionStarted)) == 1
    assert [e.experiment for e in recorded.of(ExperimentKept)] == [0, 1]
    assert [(e.experiment, e.to_commit) for e in recorded.of(ExperimentReverted)] == [(2, kept.commit)]
    started = recorded.of(ExperimentStarted)
    assert [e.baseline for e in started] == [True, False, False]
    assert started[0].incumbent_curve == () and len(started[2].incumbent_curve) == 4
    assert {e.experiment for e in recorded.of(TrainStep)} == {0, 1, 2}
    assert any("loss" in e.line for e in recorded.of(LogLine))
    assert [e.by for e in recorded.of(DecisionMade)] == ["auto", "auto"]
    states = [(e.state, e.experiment) for e in recorded.of(StateChanged)]
    assert states[:3] == [("training", 0), ("evaluating", 0), ("proposing", 1)]
    assert states[3:7] == [("committing", 1), ("training", 1), ("evaluating", 1), ("proposing", 2)]
    assert states[-1] == ("stopped", None)
    (proposed, _) = recorded.of(ChangeProposed)
    assert (proposed.added, proposed.removed, proposed.files) == (1, 1, ("train.py",))

    # The agent saw the incumbent's files, its history and what became of its last proposal.
    second, third = agent.turns[1], agent.turns[2]
    assert "LR = 0.3" in second.files["train.py"] and [s.status for s in second.history] == ["keep", "keep"]
    assert second.incumbent.id == 1 and "Experiment #1 (LR 0.3): keep" in second.feedback
    assert "discard" in third.feedback and agent.closed
    assert (recorded.finished.experiments, recorded.finished.kept) == (2, 1)
    assert recorded.finished.baseline_metric == expected_metric(0.5)
    assert recorded.finished.best_metric == expected_metric(0.3)


def test_every_failure_class_is_recorded_and_reverted_and_the_loop_goes_on(make_workspace, run_session):
    workspace = make_workspace(timeout=1.5)
    agent = ScriptedAgent([
        write_files({"train.py": "def broken(:\n"}, "syntax error"),
        change("MODE", "crash"),
        change("MODE", "nan"),
        change("MODE", "hang"),
        change("LR", 0.3),
    ])
    started = time.monotonic()
    _, recorded = run_session(workspace, agent)
    assert time.monotonic() - started < 8
    assert recorded.finished.reason == "exhausted", recorded.of(Notice)

    rows = ledger_rows(workspace)
    assert [r.status for r in rows] == ["keep", "rejected", "crash", "nan", "timeout", "keep"]
    rejected, crashed, diverged, hung, kept = rows[1:]
    assert "does not compile" in rejected.reason and rejected.commit == ""
    assert crashed.reason == "RuntimeError: the fake target crashed on purpose"
    assert "Traceback" in crashed.log_tail and crashed.metric is None
    assert "FAIL" in diverged.reason or "diverged" in diverged.reason
    assert "timeout" in hung.reason
    assert kept.parent_commit == rows[0].commit  # every failure was reverted to the baseline
    assert [e.experiment for e in recorded.of(ChangeRejected)] == [1]
    assert "does not compile" in agent.turns[1].feedback
    assert "RuntimeError" in agent.turns[2].feedback and "Traceback" in agent.turns[2].feedback

    # The hung run and the child it spawned into its own session are gone.
    pids = [int(pid) for pid in (workspace / ".loopdeck/runs/4/hang.pids").read_text().split()]
    assert len(pids) == 2
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert git(workspace, "status", "--porcelain") == ""


def test_consecutive_failures_stop_the_session(make_workspace, run_session):
    workspace = make_workspace(crashes=3)
    agent = ScriptedAgent([change("MODE", "crash"), write_files({"train.py": "x = (\n"}),
                           AgentError("the agent had a bad turn"), change("LR", 0.3)])
    _, recorded = run_session(workspace, agent)
    assert recorded.finished.reason == "crash_limit"
    assert [r.status for r in ledger_rows(workspace)] == ["keep", "crash", "rejected"]
    assert len(agent.turns) == 3


def test_changes_outside_the_editable_files_are_refused(make_workspace, run_session):
    prepare = "MAX_SEQ_LEN = 256\n"
    workspace = make_workspace(protected=("prepare.py",), extra_files={"prepare.py": prepare, "notes.py": "x = 1\n"})
    agent = ScriptedAgent([
        write_files({"prepare.py": "MAX_SEQ_LEN = 1\n"}, "edit the protected harness"),
        write_files({"notes.py": "x = 2\n"}, "edit a non-editable file"),
        write_files({"../outside.py": "x = 1\n"}, "escape the workspace"),
        write_files({".git/config": "[core]\n"}, "write into .git"),
    ])
    _, recorded = run_session(workspace, agent)
    rows = ledger_rows(workspace)
    assert [r.status for r in rows] == ["keep", "rejected", "rejected", "rejected", "rejected"]
    reasons = [r.reason for r in rows[1:]]
    assert all(reason.startswith("refused path") for reason in reasons), reasons
    assert "not an editable file" in reasons[0] and "'..'" in reasons[2] and ".git" in reasons[3]
    assert (workspace / "prepare.py").read_text() == prepare
    assert not (workspace.parent / "outside.py").exists()
    assert recorded.finished.reason == "exhausted"
    assert not recorded.of(ChangeProposed)  # nothing refused reached review


def test_a_log_flood_is_coalesced_and_a_baseline_without_metric_stops_the_session(make_workspace, run_session):
    chatty = make_workspace(fake_train_source(mode="chatty"))
    _, recorded = run_session(chatty, ScriptedAgent())
    lines = [e.line for e in recorded.of(LogLine)]
    assert len(lines) < 1000  # the run printed 8000 lines in well under a second
    assert any("lines not shown here" in line for line in lines)
    assert ledger_rows(chatty)[0].status == "keep"

    silent = make_workspace(fake_train_source(mode="silent"))
    session, recorded = run_session(silent, ScriptedAgent([change("LR", 0.3)]))
    assert recorded.finished.reason == "error"
    assert "baseline" in session.error and "val_bpb" in session.error
    assert [(r.status, r.reason) for r in ledger_rows(silent)] == [("crash", "metric never printed")]


def test_max_experiments_counts_every_number_but_not_the_baseline(workspace, run_session):
    agent = ScriptedAgent([change("LR", 0.3), write_files({"train.py": "("}), change("LR", 0.25), change("LR", 0.2)])
    _, recorded = run_session(workspace, agent, max_experiments=2)
    assert recorded.finished.reason == "max_experiments"
    assert [r.status for r in ledger_rows(workspace)] == ["keep", "keep", "rejected"]


def test_a_second_session_resumes_numbering_on_the_same_branch(workspace, run_session):
    first, _ = run_session(workspace, ScriptedAgent([change("LR", 0.3)]))
    agent = ScriptedAgent([change("LR", 0.25)])
    second, recorded = run_session(workspace, agent)
    assert second.branch == first.branch
    (started,) = recorded.of(SessionStarted)
    assert started.resumed
    assert [(r.id, r.status) for r in ledger_rows(workspace)] == [(0, "keep"), (1, "keep"), (2, "keep")]
    assert not [e for e in recorded.of(ExperimentStarted) if e.baseline]  # no second baseline
    assert agent.turns[0].experiment == 2 and len(agent.turns[0].history) == 2
    assert recorded.of(ExperimentStarted)[0].incumbent_curve  # the incumbent's curve, read back from disk
    assert subprocess.run(["git", "status", "--porcelain"], cwd=workspace, capture_output=True,
                          text=True).stdout == ""


def test_an_on_event_callback_that_raises_does_not_stop_the_loop(workspace):
    from loopdeck.engine.session import RunOptions, Session

    seen = []

    def fragile(event):
        seen.append(event)
        if isinstance(event, ExperimentFinished):
            raise RuntimeError("renderer bug")

    session = Session(workspace, RunOptions(), on_event=fragile, agent=ScriptedAgent([change("LR", 0.3)]))
    finished = session.run()
    assert finished.reason == "exhausted" and finished.kept == 1
    notices = [e for e in seen if getattr(e, "level", "") == "error" and "renderer bug" in e.message]
    assert len(notices) == 1


def test_results_tsv_is_autoresearchs_format_through_the_loop(workspace, run_session):
    agent = ScriptedAgent([change("LR", 0.3, "lower LR"), change("LR", 0.6, "raise LR"),
                           change("MODE", "crash", "crash it"), write_files({"train.py": "("}, "does not compile"),
                           change("LR", 0.25, "a bit lower")])
    run_session(workspace, agent)
    r = ledger_rows(workspace)
    assert [row.status for row in r] == ["keep", "keep", "discard", "crash", "rejected", "keep"]
    expected = (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        f"{r[0].commit[:7]}\t1.300000\t2.0\tkeep\tbaseline\n"
        f"{r[1].commit[:7]}\t1.100000\t2.0\tkeep\tlower LR\n"
        f"{r[2].commit[:7]}\t1.400000\t2.0\tdiscard\traise LR\n"
        f"{r[3].commit[:7]}\t0.000000\t0.0\tcrash\tcrash it\n"
        f"{r[5].commit[:7]}\t1.050000\t2.0\tkeep\ta bit lower\n"
    )
    assert (workspace / ".loopdeck/results.tsv").read_bytes() == expected.encode()


def test_an_autoresearch_repository_keeps_prepare_py_protected(tmp_path, run_session):
    repo = tmp_path / "autoresearch"
    write_autoresearch_repo(repo)
    init_repo(repo, {})
    agent = ScriptedAgent([write_files({"prepare.py": "MAX_SEQ_LEN = 1\n"}, "shorter eval"), change("LR", 0.3)])
    session, _ = run_session(repo, agent, approval="auto")  # inferred settings keep the default gate: ask
    assert session.config.experiment.protected == ["prepare.py"]
    assert any("inferred" in note for note in session.config_notes)
    rows = ledger_rows(repo)
    assert [r.status for r in rows] == ["keep", "rejected", "keep"]
    assert "prepare.py" in rows[1].reason and (repo / "prepare.py").read_text() == PREPARE_PY


def test_an_engine_error_ends_the_session_cleanly_with_its_traceback_saved(workspace, run_session, monkeypatch):
    import loopdeck.engine.research.gate as gate

    def broken_diff(old, new):
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(gate, "unified_diff", broken_diff)
    session, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.3)]))
    assert recorded.finished.reason == "error"
    assert session.error.startswith("engine error: RuntimeError: a bug in the engine")
    assert "broken_diff" in (workspace / ".loopdeck/engine-errors.log").read_text()
    assert [r.status for r in ledger_rows(workspace)] == ["keep"]
    assert git(workspace, "status", "--porcelain") == ""


def test_every_process_of_an_experiment_runs_through_the_executor(make_workspace, run_session, monkeypatch):
    from loopdeck.engine.run.warm import WarmExecutor

    specs = []
    start = WarmExecutor.start  # the session's executor

    def recording_start(self, spec, sink):
        specs.append(spec)
        return start(self, spec, sink)

    monkeypatch.setattr(WarmExecutor, "start", recording_start)
    # noise_drift 0: the keep (15 % better) would otherwise have its noise re-measured, a fourth process
    workspace = make_workspace(evaluation={"baseline_seeds": 2, "noise_drift": 0})
    _, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.3)]), max_experiments=1)
    baseline, candidate = ledger_rows(workspace)
    assert [(s.number, s.commit, s.seed) for s in specs] == [
        (0, baseline.commit, None), (0, baseline.commit, specs[1].seed), (1, candidate.commit, None)]
    assert specs[1].seed is not None and specs[1].env["LOOPDECK_SEED"] == str(specs[1].seed)
    assert all(s.checkout == workspace and s.run_dir.is_relative_to(workspace / ".loopdeck/runs") for s in specs)
    assert recorded.finished.reason == "max_experiments"
