"""The session surface: the approval gate and the control channel, pause/stop/abort, the lock, and resuming after
an engine died at each stage of an experiment."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import git, ledger_rows
from fake_targets import ScriptedAgent, change, expected_metric, fake_train_source

from loopdeck.engine.control import ControlReader, send_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    ApprovalRequested,
    DecisionMade,
    Event,
    ExperimentStarted,
    NoteDelivered,
    Notice,
    StateChanged,
    TrainStep,
)
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.ledger import ExperimentRow, Ledger
from loopdeck.engine.store.lock import is_locked

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


class Events:
    """Events from a session running in a background thread, with a blocking wait for the next of a kind."""

    def __init__(self) -> None:
        self.all: list[Event] = []
        self._queue: queue.Queue[Event] = queue.Queue()

    def __call__(self, event: Event) -> None:
        self.all.append(event)
        self._queue.put(event)

    def wait_for(self, kind: type, timeout: float = 10.0, **fields: object) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            event = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                return event


def test_the_ask_gate_waits_for_decisions_sent_through_the_control_file(make_workspace):
    workspace = make_workspace(approval="ask")
    agent = ScriptedAgent([change("LR", 0.6, "raise LR"), change("LR", 0.3, "lower LR")])
    events = Events()
    session = Session(workspace, on_event=events, agent=agent)
    session.start()
    assert events.wait_for(ApprovalRequested).experiment == 1
    baseline_commit = git(workspace, "rev-parse", "HEAD")
    time.sleep(0.6)  # several control polls: nothing moves without a decision
    assert session.state == "awaiting_approval" and len(agent.turns) == 1
    assert git(workspace, "rev-parse", "HEAD") == baseline_commit
    assert [r.status for r in ledger_rows(workspace)] == ["keep"]  # a change under review is not an experiment yet

    # A decision for another experiment is refused; a veto with a note comes from another thread.
    send_command(workspace, "decide", approve=True, experiment=7)
    assert "#7 ignored" in events.wait_for(Notice).message
    sender = threading.Thread(target=send_command, args=(workspace, "decide"),
                              kwargs={"approve": False, "note": "too risky: try a lower LR"})
    sender.start()
    assert events.wait_for(ApprovalRequested).experiment == 2
    assert agent.turns[1].notes == ("too risky: try a lower LR",)
    assert "vetoed by a person: too risky" in agent.turns[1].feedback
    delivered = [(e.experiment, e.text) for e in events.all if isinstance(e, NoteDelivered)]
    assert delivered == [(2, "too risky: try a lower LR")]

    # The approval comes from another process: `loopdeck ctl DIR approve`.
    result = subprocess.run([sys.executable, "-m", "loopdeck.cli", "ctl", str(workspace), "approve"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert session.wait(15)
    assert session.finished.reason == "exhausted"
    final = ledger_rows(workspace)
    assert [(r.status, r.reason) for r in final[:2]] == [("keep", "baseline"), ("vetoed", "too risky: try a lower LR")]
    assert final[1].commit == "" and final[2].status == "keep" and final[2].metric == expected_metric(0.3)
    decisions = [e for e in events.all if isinstance(e, DecisionMade)]
    assert [(d.experiment, d.approved, d.by) for d in decisions] == [(1, False, "human"), (2, True, "human")]
    assert "raise LR" not in git(workspace, "log", "--format=%s")


def test_switching_the_policy_to_auto_releases_a_waiting_gate(make_workspace):
    workspace = make_workspace(approval="ask")
    events = Events()
    session = Session(workspace, on_event=events, agent=ScriptedAgent([change("LR", 0.3)]))
    session.start()
    events.wait_for(ApprovalRequested)
    session.set_approval("auto")
    assert session.wait(10)
    assert [r.status for r in ledger_rows(workspace)] == ["keep", "keep"]


def test_pause_holds_before_the_next_proposal_and_stop_lets_the_current_run_finish(make_workspace):
    workspace = make_workspace(fake_train_source(step_seconds=0.1))
    agent = ScriptedAgent([change("LR", 0.3), change("LR", 0.25), change("LR", 0.22)])
    events = Events()
    session = Session(workspace, on_event=events, agent=agent)
    session.pause()
    session.start()
    events.wait_for(StateChanged, state="paused")
    time.sleep(0.4)
    assert agent.turns == [] and [r.status for r in ledger_rows(workspace)] == ["keep"]
    session.resume()
    events.wait_for(TrainStep, experiment=1)
    session.stop_after_current()
    assert session.wait(10)
    assert session.finished.reason == "stopped"
    assert [r.status for r in ledger_rows(workspace)] == ["keep", "keep"]  # #1 ran to its end; #2 never started


def test_abort_kills_the_running_experiment_and_records_it_interrupted(make_workspace):
    workspace = make_workspace(timeout=60)
    events = Events()
    session = Session(workspace, on_event=events, agent=ScriptedAgent([change("MODE", "hang")]))
    session.start()
    events.wait_for(ExperimentStarted, experiment=1)
    pids_file = workspace / ".loopdeck/runs/1/hang.pids"
    deadline = time.monotonic() + 10
    while not pids_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    aborted_at = time.monotonic()
    session.abort()
    assert session.wait(10)
    assert time.monotonic() - aborted_at < 5
    assert session.finished.reason == "aborted"
    final = ledger_rows(workspace)
    assert [(r.status, r.reason) for r in final] == [("keep", "baseline"), ("interrupted", "aborted by a person")]
    assert git(workspace, "rev-parse", "HEAD") == final[0].commit and git(workspace, "status", "--porcelain") == ""
    for pid in map(int, pids_file.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_second_engine_is_refused_and_a_dead_holder_does_not_keep_the_lock(workspace):
    first = Session(workspace, agent=ScriptedAgent())
    with pytest.raises(LoopdeckError, match=rf"another loopdeck engine \(pid {os.getpid()}"):
        Session(workspace, agent=ScriptedAgent())
    assert is_locked(workspace / ".loopdeck")["pid"] == os.getpid()
    first.run()
    assert is_locked(workspace / ".loopdeck") is None

    # A lock file left by an engine that died: its record names a pid, but no process holds the flock.
    (workspace / ".loopdeck/lock").write_text(json.dumps({"pid": 999999, "started": 0}))
    unused = Session(workspace, agent=ScriptedAgent())
    unused.close()  # a session that never ran gives the workspace back too
    assert is_locked(workspace / ".loopdeck") is None
    Session(workspace, agent=ScriptedAgent()).run()


@pytest.mark.parametrize("problem, message", [
    ("not a repo", "not a git repository"),
    ("dirty", "uncommitted changes"),
    ("detached", "HEAD is detached"),
    ("missing train", "train.py not found"),
    ("bad config", "experiment.budget_seconds: must be > 0"),
    ("bad agent option", "unknown agent 'gpt'"),
])
def test_the_constructor_refuses_what_a_person_must_fix(make_workspace, tmp_path, problem, message):
    workspace = make_workspace()
    options = RunOptions()
    if problem == "not a repo":
        workspace = tmp_path / "plain"
        workspace.mkdir()
        (workspace / "train.py").write_text("print('val_bpb: 1.0')\n")
    elif problem == "dirty":
        (workspace / "train.py").write_text("LR = 1\n")
    elif problem == "detached":
        git(workspace, "checkout", "-q", "--detach")
    elif problem == "missing train":
        git(workspace, "rm", "-q", "train.py")
        git(workspace, "commit", "-q", "-m", "remove train.py")
    elif problem == "bad config":
        options = RunOptions(budget_seconds=-3)
    else:
        options = RunOptions(agent="gpt")
    with pytest.raises(LoopdeckError, match=message):
        Session(workspace, options, agent=None)
    assert not (workspace / ".loopdeck/lock").exists() or is_locked(workspace / ".loopdeck") is None


def test_control_reader_ignores_commands_from_before_the_session_and_waits_for_whole_lines(tmp_path):
    send_command(tmp_path, "pause")
    reader = ControlReader(tmp_path / ".loopdeck/control.jsonl")
    assert reader.poll() == []
    send_command(tmp_path, "note", note="hello")
    with open(tmp_path / ".loopdeck/control.jsonl", "a") as handle:
        handle.write('{"action": "stop"')  # a sender mid-write
    (command,) = reader.poll()
    assert (command.action, command.note) == ("note", "hello")
    with open(tmp_path / ".loopdeck/control.jsonl", "a") as handle:
        handle.write(', "id": "x"}\n{"action": "explode"}\n')
    (command,) = reader.poll()
    assert command.action == "stop" and len(reader.rejected) == 1
    with pytest.raises(LoopdeckError, match="unknown control action"):
        send_command(tmp_path, "explode")


# --- resuming after the engine died ----------------------------------------------------------------------------


def baseline_then_kill(workspace: Path, run_session) -> ExperimentRow:
    session, _ = run_session(workspace, ScriptedAgent(), max_experiments=1)
    # A killed engine never gets to leave its research branch (a clean end with nothing kept returns to main).
    git(workspace, "switch", "-q", session.branch)
    (baseline,) = ledger_rows(workspace)
    return baseline


def resume(workspace: Path, run_session) -> tuple[list[ExperimentRow], ScriptedAgent]:
    agent = ScriptedAgent([change("LR", 0.3)])
    run_session(workspace, agent, max_experiments=1)
    assert git(workspace, "status", "--porcelain") == ""
    return ledger_rows(workspace), agent


def test_resume_after_a_kill_between_the_ledger_row_and_the_commit(workspace, run_session):
    baseline = baseline_then_kill(workspace, run_session)
    with Ledger(workspace / ".loopdeck") as ledger:
        ledger.begin(ExperimentRow(id=1, status="running", description="half made", parent_commit=baseline.commit))
    # The engine died while writing the new train.py, before `git commit`.
    (workspace / "train.py").write_text(fake_train_source(lr=0.9))
    final, agent = resume(workspace, run_session)
    assert [(r.id, r.status) for r in final] == [(0, "keep"), (1, "interrupted"), (2, "keep")]
    assert agent.turns[0].history[1].status == "interrupted"
    assert final[2].parent_commit == baseline.commit


def test_resume_after_a_kill_between_the_commit_and_its_record(workspace, run_session):
    baseline = baseline_then_kill(workspace, run_session)
    with Ledger(workspace / ".loopdeck") as ledger:
        ledger.begin(ExperimentRow(id=1, status="running", description="committed", parent_commit=baseline.commit))
    (workspace / "train.py").write_text(fake_train_source(lr=0.9))
    git(workspace, "commit", "-qam", "committed")
    final, _ = resume(workspace, run_session)
    assert [(r.id, r.status) for r in final] == [(0, "keep"), (1, "interrupted"), (2, "keep")]
    assert git(workspace, "rev-parse", "HEAD") == final[2].commit
    assert git(workspace, "rev-parse", "HEAD~1") == baseline.commit  # the stray commit left the branch


def test_resume_after_a_kill_between_recording_a_discard_and_the_revert(workspace, run_session):
    baseline = baseline_then_kill(workspace, run_session)
    (workspace / "train.py").write_text(fake_train_source(lr=0.9))
    git(workspace, "commit", "-qam", "discarded")
    with Ledger(workspace / ".loopdeck") as ledger:
        ledger.begin(ExperimentRow(id=1, status="running", parent_commit=baseline.commit,
                                   commit=git(workspace, "rev-parse", "HEAD")))
        ledger.finish(1, "discard", metric=1.7)
    final, _ = resume(workspace, run_session)
    assert [(r.id, r.status) for r in final] == [(0, "keep"), (1, "discard"), (2, "keep")]
    assert final[2].parent_commit == baseline.commit


def test_resume_after_the_engine_is_killed_mid_run(make_workspace, run_session):
    """A real `loopdeck run --headless` process, SIGKILLed while experiment #1 trains."""
    workspace = make_workspace(fake_train_source(steps=12, step_seconds=0.1))
    engine = subprocess.Popen(
        [sys.executable, "-m", "loopdeck.cli", "run", str(workspace), "--headless", "--agent", "offline",
         "--approve", "auto"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    journal = workspace / ".loopdeck/events.jsonl"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            lines = journal.read_text().splitlines() if journal.exists() else []
            if any('"kind":"train_step"' in line and '"experiment":1,' in line for line in lines):
                break
            assert engine.poll() is None, engine.stdout.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("experiment #1 never started training")
    finally:
        engine.kill()
        engine.wait()
    orphan = json.loads((workspace / ".loopdeck/runs/1/pid").read_text())["pid"]
    assert psutil.pid_exists(orphan)  # the training run outlived its engine, until the next start kills it

    final, agent = resume(workspace, run_session)
    assert [(r.id, r.status) for r in final] == [(0, "keep"), (1, "interrupted"), (2, "keep")]
    assert final[1].commit and final[2].parent_commit == final[0].commit
    assert agent.turns[0].experiment == 2 and agent.turns[0].history[1].status == "interrupted"
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    from loopdeck.engine.store.journal import read_journal

    read = read_journal(journal)
    assert not read.bad_lines and read.events[-1].kind == "session_finished"
    assert (workspace / ".loopdeck/results.tsv").read_text().count("\tcrash\t") == 1  # the interrupted run


def test_sigterm_stops_a_headless_session_gracefully(make_workspace):
    workspace = make_workspace(fake_train_source(steps=40, step_seconds=0.1))
    engine = subprocess.Popen(
        [sys.executable, "-m", "loopdeck.cli", "run", str(workspace), "--headless", "--agent", "offline",
         "--approve", "auto"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = workspace / ".loopdeck/events.jsonl"
    deadline = time.monotonic() + 30
    while not (journal.exists() and '"kind":"train_step"' in journal.read_text()):
        assert time.monotonic() < deadline and engine.poll() is None
        time.sleep(0.02)
    engine.terminate()
    output, _ = engine.communicate(timeout=15)
    assert engine.returncode == 0, output
    assert "finished (stopped)" in output
    (baseline,) = ledger_rows(workspace)
    assert (baseline.status, baseline.reason) == ("interrupted", "the engine was stopped")
    assert is_locked(workspace / ".loopdeck") is None
