"""Fault injection in the training process: out of memory (simulated three ways), children that try to outlive
their run, a hang that ignores SIGTERM. Each is recorded with a readable reason, the agent hears it, nothing is
left running, and the loop goes on. (Plain crashes, NaN and a hang past the timeout: tests/test_loop.py.)
"""

from __future__ import annotations

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, change, write_files
from fault_support import assert_consistent, assert_no_leftovers

from loopdeck.engine.events import ExperimentFinished

pytestmark = pytest.mark.timeout(120)

TRAIN = '''\
"""A small training target for fault tests: {what}."""
import os, signal, subprocess, sys, time

LR = {lr}
RUN_DIR = os.environ["LOOPDECK_RUN_DIR"]


def finish():
    print("---")
    print(f"val_bpb: {{abs(LR - 0.2) + 1.0:.6f}}")
    print("training_seconds: 0.1")


def note_pids(*pids):
    with open(os.path.join(RUN_DIR, "pids"), "w") as handle:
        handle.write(" ".join(map(str, pids)))


{body}
'''

STUBBORN = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(600)")
# Leaves the run's session, forks, and lets its parent exit at once: the grandchild is reparented before the runner
# can see it in the process tree (only the run's marker variable in its environment gives it away).
DAEMON = ("import os, time; os.setsid(); pid = os.fork(); "
          "os._exit(0) if pid else (open(os.environ['LOOPDECK_RUN_DIR'] + '/daemon', 'w').write(str(os.getpid())), "
          "time.sleep(600))")

BODIES = {
    "cuda out of memory": 'raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.15 GiB '
                          'total capacity; 71.20 GiB already allocated)")',
    "MemoryError": "blocks = []\nwhile True:\n    blocks.append(bytearray(2**20))\n    if len(blocks) > 64:\n"
                   "        raise MemoryError()",
    "OOM killer": "os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does",
    "child outlives a good run": f"child = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}], "
                                 "start_new_session=True)\nnote_pids(child.pid)\ntime.sleep(0.3)\nfinish()",
    "daemon outlives a crash": f"subprocess.run([sys.executable, '-c', {DAEMON!r}])\ntime.sleep(0.3)\n"
                               "raise SystemExit('crashed after starting a daemon')",
}


def train(what: str, lr: float = 0.5) -> str:
    return TRAIN.format(what=what, lr=lr, body=BODIES.get(what, "finish()"))


def test_out_of_memory_and_escaping_children_are_recorded_and_cleaned_up(make_workspace, run_session):
    workspace = make_workspace(train("a good run"))
    agent = ScriptedAgent([write_files({"train.py": train(what, lr)}, what) for what, lr in [
        ("cuda out of memory", 0.3), ("MemoryError", 0.3), ("OOM killer", 0.3),
        ("child outlives a good run", 0.3), ("daemon outlives a crash", 0.25)]] + [change("LR", 0.25)])
    _, recorded = run_session(workspace, agent)
    assert recorded.finished.reason == "exhausted"

    rows = assert_consistent(workspace)
    outcomes = {row.description: (row.status, row.reason) for row in rows[1:]}
    assert outcomes["cuda out of memory"][0] == "crash"
    assert outcomes["cuda out of memory"][1].startswith("RuntimeError: CUDA out of memory. Tried to allocate")
    assert outcomes["MemoryError"] == ("crash", "MemoryError")
    assert outcomes["OOM killer"] == ("crash", "killed by SIGKILL (out of memory?)")
    assert outcomes["child outlives a good run"][0] == "keep"
    assert outcomes["daemon outlives a crash"] == ("crash", "exit code 1")
    assert [row.status for row in rows][-1] == "keep"  # the loop went on after every fault
    finished = {e.experiment: e for e in recorded.of(ExperimentFinished)}
    assert "CUDA out of memory" in finished[1].reason and "CUDA out of memory" in finished[1].log_tail
    assert "CUDA out of memory" in agent.turns[1].feedback and "SIGKILL (out of memory?)" in agent.turns[3].feedback

    child = int((workspace / ".loopdeck/runs/4/pids").read_text())
    daemon = int((workspace / ".loopdeck/runs/5/daemon").read_text())
    assert_no_leftovers(workspace, [child, daemon], wait=0)  # gone when each run was recorded, not later


@pytest.mark.slow
def test_a_hang_that_ignores_sigterm_is_killed_at_the_timeout(make_workspace, run_session):
    body = (f"child = subprocess.Popen([sys.executable, '-c', {STUBBORN!r}])\nnote_pids(os.getpid(), child.pid)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)")
    workspace = make_workspace(train("a good run"), timeout=1.0)
    hang = TRAIN.format(what="a hang", lr=0.3, body=body)
    _, recorded = run_session(workspace, ScriptedAgent([write_files({"train.py": hang}), change("LR", 0.3)]))
    rows = ledger_rows(workspace)
    assert [(r.status, r.reason) for r in rows[1:]] == [("timeout", "killed after the 1 s timeout"),
                                                       ("keep", "improved on the incumbent by 0.200000")]
    assert rows[1].wall_seconds < 1.0 + 3.0 + 1.0  # the timeout, then SIGTERM's grace, then SIGKILL
    pids = [int(pid) for pid in (workspace / ".loopdeck/runs/1/pids").read_text().split()]
    assert_no_leftovers(workspace, pids, wait=0)
    assert_consistent(workspace)
