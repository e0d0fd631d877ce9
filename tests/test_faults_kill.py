"""Fault injection: the engine SIGKILLed at every stage of an experiment, SIGTERM / Ctrl-C, two engines at once.

Each kill hits a real engine process (tests/fault_driver.py, or `loopdeck run --headless`). The restart must find
the tree at the incumbent, every ledger row exactly once and none in flight, a readable journal, no process left
over, and then go on with more experiments.
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest
from conftest import git, ledger_rows
from fake_targets import ScriptedAgent, change, fake_train_source
from fault_driver import DRAFTING
from fault_support import (
    assert_consistent,
    assert_no_leftovers,
    run_driver,
    start_cli,
    start_driver,
    wait_for_line,
)

from loopdeck.engine.session import Session
from loopdeck.engine.store.journal import read_events
from loopdeck.engine.store.lock import is_locked

pytestmark = pytest.mark.timeout(120)

# (stage, driver arguments, statuses the kill leaves in the ledger). Kills are pinned to the event the engine
# emits at that point (fault_driver --kill-on), so each one lands exactly in its stage.
STAGES = [
    ("baseline mid-run", ["--kill-on", "train_step:experiment=0,step=2"], ["running"]),
    ("approved, before its ledger row", ["--edits", "LR=0.3", "--kill-on", "state_changed:state=committing"],
     ["keep"]),
    ("after the commit, before the run", ["--edits", "LR=0.3", "--kill-on", "experiment_started:experiment=1"],
     ["keep", "running"]),
    ("mid-run", ["--edits", "LR=0.3,STEPS=200,STEP_SECONDS=0.05", "--kill-on", "train_step:experiment=1,step=2"],
     ["keep", "running"]),
    ("after the run, while evaluating", ["--edits", "LR=0.3", "--kill-on", "state_changed:state=evaluating,"
                                         "experiment=1"], ["keep", "running"]),
    ("kept, before recording", ["--edits", "LR=0.3", "--kill-on", "experiment_kept:experiment=1"],
     ["keep", "running"]),
    ("reverted, before recording", ["--edits", "LR=0.9", "--kill-on", "experiment_reverted:experiment=1"],
     ["keep", "running"]),
    ("right after recording", ["--edits", "LR=0.3", "--kill-on", "experiment_finished:experiment=1"],
     ["keep", "keep"]),
]


def restart(workspace, run_session, before: list) -> tuple[list, ScriptedAgent]:
    """A new engine on the same workspace: it must recover and run two more experiments."""
    agent = ScriptedAgent([change("LR", 0.25), change("LR", 0.21)])
    _, recorded = run_session(workspace, agent, max_experiments=2, approval="auto")
    assert recorded.finished.reason == "max_experiments", recorded.events[-3:]
    rows = assert_consistent(workspace)
    assert len(rows) == len(before) + 2 + (0 if any(r.status == "keep" for r in before) else 1)
    for old, new in zip(before, rows, strict=False):
        assert new.status == ("interrupted" if old.status == "running" else old.status)
        assert new.description == old.description and new.commit == (old.commit or new.commit)
    # The agent sees everything recorded before, once; a first proposal drafted while a new baseline trains sees
    # what came before that baseline (it hears the baseline's outcome before its draft is committed).
    rerun_baseline = len(rows) == len(before) + 3
    assert agent.turns[0].history[-1].id == rows[-4 if rerun_baseline else -3].id
    return rows, agent


@pytest.mark.parametrize("stage, args, left", STAGES, ids=[stage for stage, _, _ in STAGES])
def test_sigkill_at_each_stage_then_restart(make_workspace, run_session, stage, args, left):
    workspace = make_workspace(fake_train_source(steps=12, step_seconds=0.05) if stage == "baseline mid-run"
                               else fake_train_source())
    killed = run_driver(workspace, *args)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr

    before = ledger_rows(workspace)
    assert [row.status for row in before] == left
    assert is_locked(workspace / ".loopdeck") is None  # the kernel dropped the dead engine's lock
    orphans = []
    if "mid-run" in stage:
        pid_file = workspace / f".loopdeck/runs/{before[-1].id}/pid"
        orphans = [json.loads(pid_file.read_text())["pid"]]
        assert psutil.pid_exists(orphans[0])  # the run outlived its engine, until the restart kills it
    if stage == "after the commit, before the run":
        assert git(workspace, "rev-parse", "HEAD") == before[1].commit != before[0].commit  # off the incumbent

    restart(workspace, run_session, before)
    assert_no_leftovers(workspace, orphans)


@pytest.mark.parametrize("pipeline", ["off", "on"])
def test_sigkill_while_the_agent_is_drafting(make_workspace, run_session, pipeline):
    """Drafting #2 after #1 finished, or (pipelined) while #1 still trains: nothing of #2 exists yet."""
    workspace = make_workspace(fake_train_source(steps=6, step_seconds=0.05))  # #1 trains while #2 is drafted
    engine = start_driver(workspace, "--edits", "LR=0.3", "--sleep-at", "2", "--pipeline", pipeline)
    try:
        wait_for_line(workspace, lambda line: DRAFTING in line, engine)
    finally:
        engine.kill()
        engine.wait()
    before = ledger_rows(workspace)
    assert [row.status for row in before] == ["keep", "keep" if pipeline == "off" else "running"]
    pid_file = workspace / ".loopdeck/runs/1/pid"  # #1's run, if it had started when the engine died
    orphans = [json.loads(pid_file.read_text())["pid"]] if pid_file.exists() else []
    rows, agent = restart(workspace, run_session, before)
    assert agent.turns[0].experiment == 2 and rows[2].description == "LR 0.25"  # #2's number is used once
    assert_no_leftovers(workspace, orphans)


STUBBORN_TRAIN = '''\
"""Training target whose runs after the baseline spawn a child that tries to outlive them, then train slowly."""
import os, subprocess, sys, time

LR = 0.5
WIDTH = 64

run_dir = os.environ["LOOPDECK_RUN_DIR"]
if not run_dir.endswith("/0"):
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
                              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
                             start_new_session=True)
    with open(os.path.join(run_dir, "pids"), "w") as handle:
        handle.write(f"{os.getpid()} {child.pid}")
    for step in range(600):
        print(f"step {step}", flush=True)
        time.sleep(0.1)
print("---")
print(f"val_bpb: {abs(LR - 0.2) + 1.0:.6f}")
print("training_seconds: 0.1")
'''


@pytest.mark.parametrize(("signum", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, False),
                                                  (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT", "Ctrl-C to the process group"])
def test_sigterm_and_ctrl_c_stop_gracefully_and_kill_the_whole_run(make_workspace, signum, to_group):
    workspace = make_workspace(STUBBORN_TRAIN)
    engine = start_cli(workspace, "--agent", "offline", "--approve", "auto")
    pids_file = workspace / ".loopdeck/runs/1/pids"
    deadline = time.monotonic() + 30
    while not pids_file.exists() or len(pids_file.read_text().split()) < 2:
        assert time.monotonic() < deadline and engine.poll() is None, engine.communicate()
        time.sleep(0.02)
    pids = [int(pid) for pid in pids_file.read_text().split()]
    sent = time.monotonic()
    # A terminal's Ctrl-C reaches every process of the foreground group, helpers the engine started included.
    if to_group:
        os.killpg(engine.pid, signum)
    else:
        engine.send_signal(signum)
    out, err = engine.communicate(timeout=20)
    assert time.monotonic() - sent < 8  # TERM to the group, a 3 s grace for the stubborn child, then KILL
    assert engine.returncode == 0, out + err
    assert "finished (stopped)" in out and "Traceback" not in err
    assert_no_leftovers(workspace, pids)

    rows = ledger_rows(workspace)
    assert [(r.status, r.reason) for r in rows] == [("keep", "baseline"), ("interrupted", "the engine was stopped")]
    events = read_events(workspace / ".loopdeck/events.jsonl")
    assert events[-1].kind == "session_finished" and events[-1].reason == "stopped"
    assert is_locked(workspace / ".loopdeck") is None
    assert_consistent(workspace)
    Session(workspace, agent=ScriptedAgent()).close()  # the workspace is free at once


def test_a_second_engine_is_refused_and_a_killed_one_does_not_hold_the_workspace(make_workspace):
    workspace = make_workspace(fake_train_source(steps=600, step_seconds=0.05))
    first = start_cli(workspace, "--agent", "offline")
    try:
        wait_for_line(workspace, lambda line: '"kind":"train_step"' in line, first)
        second = start_cli(workspace, "--agent", "offline")
        out, err = second.communicate(timeout=30)
        assert second.returncode == 2
        assert err.startswith(f"loopdeck: error: another loopdeck engine (pid {first.pid}, started ")
        assert "loopdeck attach" in err and "loopdeck stop" in err and "Traceback" not in err
    finally:
        first.kill()
        first.wait()
    # The dead engine's record is still in the lock file, but the kernel released its flock.
    assert json.loads((workspace / ".loopdeck/lock").read_text())["pid"] == first.pid
    third = start_cli(workspace, "--agent", "offline", "--max-experiments", "1")
    try:
        wait_for_line(workspace, lambda line: '"kind":"session_started"' in line and '"resumed":true' in line,
                      third)
        assert is_locked(workspace / ".loopdeck")["pid"] == third.pid
    finally:
        third.terminate()
        out, err = third.communicate(timeout=30)
    assert third.returncode == 0 and "Traceback" not in err, out + err
    assert_no_leftovers(workspace)
    assert_consistent(workspace)
