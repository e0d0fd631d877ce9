"""Several experiments in flight: own worktrees, concurrent keeps rebased and confirmed, faults, Ray end to end."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from conftest import Recorded, git, ledger_rows
from fake_targets import ScriptedAgent, change, fake_train_source
from fault_support import assert_consistent, assert_no_leftovers, run_driver

from loopdeck.engine.events import (
    Event,
    ExperimentFinished,
    ExperimentStarted,
    Notice,
    SessionStarted,
    TrainStep,
)

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_ray_left")]


def two_knob_source(step_seconds: float = 0.25, steps: int = 4) -> str:
    """The fake target with a second knob: val_bpb = |LR - 0.2| + |WD - 0.1| + 1, and the run's checkout printed."""
    source = fake_train_source(step_seconds=step_seconds, steps=steps)
    source = source.replace("LR = 0.5\n", "LR = 0.5\nWD = 0.5\n", 1)
    source = source.replace("    val_bpb = abs(LR - 0.2) + 1.0\n",
                            '    val_bpb = abs(LR - 0.2) + abs(WD - 0.1) + 1.0\n    print("checkout", os.getcwd())\n',
                            1)
    assert "WD = 0.5" in source and "abs(WD - 0.1)" in source
    return source


def exp_branches(workspace: Path) -> list[str]:
    return [name for name in git(workspace, "branch", "--format=%(refname:short)").split() if ".exp-" in name]


def ray_processes() -> list[psutil.Process]:
    """Ray's own processes started from this test process (raylet, GCS, workers)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if any(word in " ".join(process.cmdline()) for word in ("raylet", "gcs_server", "ray::", "default_worker")):
                found.append(process)
        except psutil.Error:
            continue
    return found


def check_concurrent_keeps(workspace: Path, session, recorded, initial_main: str, rows: list | None = None) -> None:
    rows = ledger_rows(workspace) if rows is None else rows
    by_id = {row.id: row for row in rows}
    assert [row.status for row in rows] == ["keep", "keep", "keep", "discard"]
    # Both improvements were kept; the one that finished second was rebased onto the first and measured again.
    rebased = [row for row in rows if "rebased_from" in row.meta]
    assert len(rebased) == 1 and rebased[0].id in (1, 2)
    first = by_id[3 - rebased[0].id]
    assert rebased[0].parent_commit == first.commit and rebased[0].incumbent_metric == first.metric
    assert rebased[0].metric == pytest.approx(1.2)
    notices = [e.message for e in recorded.of(Notice) if "rebased onto" in e.message]
    assert len(notices) == 1
    # #1 and #2 ran at the same time, each in its own worktree.
    events = recorded.events
    started = {e.experiment: events.index(e) for e in reversed(recorded.of(ExperimentStarted))}  # the first
    finished = {e.experiment: events.index(e) for e in recorded.of(ExperimentFinished)}
    assert started[2] < finished[1] and started[1] < finished[2]
    for number in (1, 2, 3):
        assert f".loopdeck/worktrees/{number}" in (workspace / ".loopdeck" / "runs" / str(number) / "log.txt").read_text()
    # The final incumbent holds exactly the kept changes; the user's branch is untouched; nothing is left over.
    incumbent = max((row for row in rows if row.status == "keep"), key=lambda row: row.finished_at)
    train = git(workspace, "show", f"{incumbent.commit}:train.py")
    assert "LR = 0.3\n" in train and "WD = 0.2\n" in train
    assert git(workspace, "rev-parse", "HEAD") == incumbent.commit
    assert git(workspace, "rev-parse", "main") == initial_main
    assert git(workspace, "status", "--porcelain") == ""
    assert len(git(workspace, "worktree", "list").splitlines()) == 1
    assert exp_branches(workspace) == []
    assert recorded.of(SessionStarted)[0].workers == 2


def test_two_workers_keep_two_concurrent_changes_after_a_rebase(make_workspace, run_session):
    workspace = make_workspace(two_knob_source())
    initial_main = git(workspace, "rev-parse", "main")
    agent = ScriptedAgent([change("LR", 0.3), change("WD", 0.2), change("LR", 0.9)])
    session, recorded = run_session(workspace, agent, workers=2)
    assert recorded.finished.reason == "exhausted", session.error
    check_concurrent_keeps(workspace, session, recorded, initial_main)
    assert all(row.worker in ("local:1", "local:2") for row in ledger_rows(workspace))  # the slot each ran in
    # The agent was told which idea was already running when it drafted the second one.
    assert [summary.id for summary in agent.turns[1].running] == [1]


def test_a_conflicting_concurrent_keep_is_discarded_with_its_reason(make_workspace, run_session):
    workspace = make_workspace(two_knob_source())
    agent = ScriptedAgent([change("LR", 0.3), change("LR", 0.25)])
    session, recorded = run_session(workspace, agent, workers=2)
    rows = ledger_rows(workspace)
    assert sorted(row.status for row in rows[1:]) == ["discard", "keep"], session.error
    (lost,) = [row for row in rows[1:] if row.status == "discard"]
    assert "conflicts with" in lost.reason
    assert exp_branches(workspace) == []


def test_the_offline_agent_draws_distinct_knobs_for_runs_in_flight(make_workspace, run_session):
    workspace = make_workspace(two_knob_source(step_seconds=0.1))
    session, recorded = run_session(workspace, None, workers=2, agent="offline", max_experiments=2)
    rows = ledger_rows(workspace)[1:]
    keys = [{move["key"] for move in row.meta["moves"]} for row in rows]
    assert len(rows) == 2 and not keys[0] & keys[1], keys


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray is not installed"))])
def test_sigkill_with_two_runs_in_flight_then_resume(make_workspace, run_session, backend):
    workspace = make_workspace(two_knob_source(step_seconds=0.05))
    long = "STEPS=400,STEP_SECONDS=0.05"
    killed = run_driver(workspace, "--edits", f"LR=0.3,{long} WD=0.2,{long}", "--workers", "2", "--backend",
                        backend, "--kill-on", "train_step:experiment=2,step=2", timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    before = ledger_rows(workspace)
    assert [row.status for row in before] == ["keep", "running", "running"]
    orphans = [json.loads((workspace / f".loopdeck/runs/{n}/pid").read_text())["pid"] for n in (1, 2)]
    assert all(psutil.pid_exists(pid) for pid in orphans)  # both runs outlived their engine
    assert len(git(workspace, "worktree", "list").splitlines()) == 3

    agent = ScriptedAgent([change("LR", 0.25)])
    _, recorded = run_session(workspace, agent, workers=2, max_experiments=1)
    assert recorded.finished.reason == "max_experiments"
    rows = assert_consistent(workspace)
    assert [row.status for row in rows] == ["keep", "interrupted", "interrupted", "keep"]
    assert sum("removed 2 worktree" in e.message for e in recorded.of(Notice)) == 1
    assert exp_branches(workspace) == [] and len(git(workspace, "worktree", "list").splitlines()) == 1
    assert_no_leftovers(workspace, orphans)
    assert ray_processes() == []


@pytest.mark.slow
def test_ray_two_workers_end_to_end_with_a_killed_worker(make_workspace):
    pytest.importorskip("ray")
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(two_knob_source())
    initial_main = git(workspace, "rev-parse", "main")
    agent = ScriptedAgent([change("LR", 0.3), change("WD", 0.2), change("LR", 0.9),
                           change("STEPS", 400, "a long run whose worker dies")])
    recorded = Recorded()
    killed = threading.Event()

    def on_event(event: Event) -> None:
        recorded(event)
        # The Ray worker process running #4 dies mid-run (the training process is its child).
        if isinstance(event, TrainStep) and event.experiment == 4 and event.step == 3 and not killed.is_set():
            for process in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if ".loopdeck/worktrees/4" in process.cwd() and "train.py" in process.cmdline():
                        killed.set()
                        os.kill(process.ppid(), signal.SIGKILL)

    session = Session(workspace, RunOptions(workers=2, backend="ray"), on_event=on_event, agent=agent)
    session.run()
    assert killed.is_set()
    rows = ledger_rows(workspace)
    assert rows[4].status == "interrupted" and "Ray worker died" in rows[4].reason, rows[4].reason
    assert all(row.worker.startswith("ray node") for row in rows[1:4])
    recorded.events = [e for e in recorded.events if getattr(e, "experiment", None) != 4]
    check_concurrent_keeps(workspace, session, recorded, initial_main, rows=rows[:4])
    assert_no_leftovers(workspace)
    assert ray_processes() == []


@pytest.mark.slow
def test_the_cli_runs_an_autoresearch_repository_with_two_workers(tmp_path):
    from autoresearch_fixture import make_repo

    repo = make_repo(tmp_path / "repo", time_budget=0.5, step_seconds=0.1)
    master = git(repo, "rev-parse", "master")
    done = subprocess.run([sys.executable, "-m", "loopdeck.cli", "run", str(repo), "--headless", "--agent",
                           "offline", "--workers", "2", "--max-experiments", "3"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (repo / ".loopdeck/results.tsv").read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split("\t")) == 5 for line in lines)
    rows = ledger_rows(repo)
    moved = [{move["key"] for move in row.meta["moves"]} for row in rows[1:3]]
    assert not moved[0] & moved[1]  # #1 and #2 were in flight together: distinct knobs
    assert git(repo, "rev-parse", "master") == master
    assert len(git(repo, "worktree", "list").splitlines()) == 1 and exp_branches(repo) == []


def test_supervised_mode_reviews_the_next_diff_while_the_approved_one_runs(make_workspace):
    from test_session import Events

    from loopdeck.engine.events import ApprovalRequested
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(two_knob_source(step_seconds=0.3), approval="ask")
    agent = ScriptedAgent([change("LR", 0.3), change("WD", 0.2), change("LR", 0.9)])
    events = Events()
    session = Session(workspace, RunOptions(workers=2), on_event=events, agent=agent)
    session.start()
    assert events.wait_for(ApprovalRequested).experiment == 1
    session.decide(True, experiment=1)
    assert events.wait_for(ApprovalRequested).experiment == 2
    assert [row.status for row in ledger_rows(workspace)] == ["keep", "running"]  # #1 trains during the review
    session.decide(True, experiment=2)
    assert events.wait_for(ApprovalRequested, timeout=20).experiment == 3
    session.decide(False, "not that one", experiment=3)
    assert session.wait(30)
    rows = ledger_rows(workspace)
    assert [row.status for row in rows] == ["keep", "keep", "keep", "vetoed"]
    assert exp_branches(workspace) == []
