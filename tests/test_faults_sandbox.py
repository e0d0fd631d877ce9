"""LLM-written code contained: the credential scrub seen from inside a real session's training run, and the
`[sandbox]` settings (engine/run/sandbox.py): no network, memory and CPU limits, the process limit, and the clear
refusal where the kernel allows no namespaces."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ledger_rows
from fake_targets import ScriptedAgent, write_files
from fault_support import REPO, amend_config, assert_consistent, assert_no_leftovers

from loopdeck.engine.config import Config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.sandbox import LAUNCHER, _probe_namespaces, check_sandbox, sandboxed_argv

pytestmark = pytest.mark.timeout(120)
NETNS = _probe_namespaces(network=True) == ""
needs_netns = pytest.mark.skipif(not NETNS, reason="no user+network namespaces here (the refusal is tested)")

TRAIN = '''\
"""Training target for sandbox tests: {what}."""
import os, socket, sys

LR = {lr}

{body}
print("---")
print(f"val_bpb: {{abs(LR - 0.2) + 1.0:.6f}}")
'''


def train(what: str = "a plain run", lr: float = 0.5, body: str = "") -> str:
    return TRAIN.format(what=what, lr=lr, body=body)


def sandbox_workspace(make_workspace, train_source: str, **sandbox: object) -> Path:
    workspace = make_workspace(train_source)
    amend_config(workspace, "\n[sandbox]\n" + "".join(f"{name} = {str(value).lower()}\n"
                                                      for name, value in sandbox.items()))
    return workspace


# --- credentials ---------------------------------------------------------------------------------------------


SECRETS = {"ANTHROPIC_API_KEY": "sk-ant-api03-faultsuite-0f9e8d7c6b5a", "AWS_SECRET_ACCESS_KEY": "aws-faultsuite-1a2b3c",
           "GITHUB_TOKEN": "ghp_faultsuite4d5e6f", "DATABASE_PASSWORD": "pw-faultsuite-7g8h9i"}


def test_a_training_run_cannot_read_the_api_key_or_other_credentials(make_workspace, run_session, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HARMLESS_SETTING", "visible-faultsuite")
    dump = ("import json\nprint(json.dumps(dict(os.environ)))\n"
            "open(os.path.join(os.environ['LOOPDECK_RUN_DIR'], 'environ.json'), 'w').write(json.dumps(dict(os.environ)))")
    workspace = make_workspace(train("dumps its environment", body=dump))
    run_session(workspace, ScriptedAgent(), approval="auto")
    log = (workspace / ".loopdeck/runs/0/log.txt").read_text()
    assert "visible-faultsuite" in log  # the dump really happened, and ordinary variables pass
    everything = "".join(p.read_bytes().decode("utf-8", "replace") for p in workspace.rglob("*") if p.is_file())
    for value in SECRETS.values():
        assert value not in everything


# --- the sandbox -------------------------------------------------------------------------------------------------


def test_the_command_is_unchanged_without_a_sandbox_and_wrapped_with_one():
    assert sandboxed_argv(["python", "train.py"], Config().sandbox) == ["python", "train.py"]
    wrapped = sandboxed_argv(["python", "train.py"], Config().updated(network=False, memory_mb=512).sandbox)
    assert wrapped == [sys.executable, "-I", "-S", str(LAUNCHER), "--no-network", "--memory-mb", "512", "--",
                       "python", "train.py"]


class Listener:
    """A TCP server on the host's 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            connection.close()


CONNECT = '''\
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    print("network: connected")
except OSError as exc:
    print(f"network: {{exc}}")
try:  # a way back to the host's network: setns into the network namespace of pid 1
    import ctypes
    fd = os.open("/proc/1/ns/net", os.O_RDONLY)
    ok = ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) == 0
    print("escape:", "rejoined the host network" if ok else os.strerror(ctypes.get_errno()))
except OSError as exc:
    print(f"escape: {{exc.strerror}}")
print("uid:", os.getuid())
'''


@needs_netns
@pytest.mark.parametrize("network", [False, True], ids=["network = false", "network = true"])
def test_network_false_cuts_even_the_hosts_loopback(make_workspace, run_session, network):
    listener = Listener()
    workspace = sandbox_workspace(make_workspace, train("connects to the host", body=CONNECT.format(
        port=listener.port)), network=network)
    session, recorded = run_session(workspace, ScriptedAgent(), approval="auto")
    assert recorded.finished.reason == "exhausted" and ledger_rows(workspace)[0].status == "keep"
    log = (workspace / ".loopdeck/runs/0/log.txt").read_text()
    assert f"uid: {os.getuid()}" in log  # the same user inside
    if network:
        assert "network: connected" in log and listener.accepted == 1
    else:
        assert "network: [Errno 101] Network is unreachable" in log and listener.accepted == 0
        assert "rejoined" not in log and "escape: Permission denied" in log
    assert_no_leftovers(workspace)


def test_memory_and_cpu_limits_turn_a_runaway_run_into_a_recorded_crash(make_workspace, run_session):
    hog = "blocks = [bytearray(64 * 2**20) for _ in range(8)]  # 512 MB, over the 256 MB cap"
    spin = "while True:\n    pass"
    workspace = sandbox_workspace(make_workspace, train(), memory_mb=256, cpu_seconds=1)
    agent = ScriptedAgent([write_files({"train.py": train("a memory hog", 0.3, hog)}, "memory hog"),
                           write_files({"train.py": train("a CPU spinner", 0.3, spin)}, "cpu spinner"),
                           write_files({"train.py": train("a good run", 0.3)}, "good run")])
    _, recorded = run_session(workspace, agent, approval="auto")
    rows = assert_consistent(workspace)
    assert [(r.description, r.status, r.reason) for r in rows[1:]] == [
        ("memory hog", "crash", "MemoryError"),
        ("cpu spinner", "crash", "killed by SIGXCPU"),
        ("good run", "keep", "improved on the incumbent by 0.200000"),  # the limits leave a normal run alone
    ]
    assert "MemoryError" in agent.turns[1].feedback and "SIGXCPU" in agent.turns[2].feedback
    assert_no_leftovers(workspace)


def test_the_process_limit_is_announced_as_unenforced_for_root():
    settings = Config().updated(max_processes=64).sandbox
    notes = check_sandbox(settings)
    assert notes == (["[sandbox] max_processes is not enforced: loopdeck runs as root, which the kernel exempts "
                      "from the process limit"] if os.geteuid() == 0 else [])


# An interpreter another user can run (this one may live under /root).
PYTHON = next((path for path in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(path, os.X_OK)), None)


@needs_netns
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not PYTHON,
                    reason="needs root (to become another user) and setpriv")
@pytest.mark.parametrize("network, connect", [(False, "Network is unreachable"), (True, "Connection refused")],
                         ids=["network = false", "network = true"])
def test_the_launcher_as_an_unprivileged_user_isolates_and_limits_processes(network, connect):
    """What a normal user gets: their own uid inside, at most 5 processes (itself and 4 forks; the user's other
    processes do not count), and the network cut, or the host's as it is."""
    with socket.socket() as closed:  # a port nothing listens on: refused on the host, unreachable without network
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    probe = ("import os, socket\nprint('uid', os.getuid())\nforks = 0\ntry:\n    for _ in range(20):\n"
             "        if os.fork() == 0:\n            import time; time.sleep(2); os._exit(0)\n        forks += 1\n"
             "except OSError as exc:\n    print('fork refused after', forks, exc.strerror)\ntry:\n"
             f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\nexcept OSError as exc:\n"
             "    print('network', exc.strerror)\n")
    flags = ["--max-processes", "5"] + ([] if network else ["--no-network"])
    # Other processes of the same user, which the limit must not count.
    others = [subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "5"])
              for _ in range(6)]
    try:
        ran = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-I", "-S",
                              str(LAUNCHER), *flags, "--", PYTHON, "-c", probe],
                             cwd="/", capture_output=True, text=True, timeout=30)
    finally:
        for other in others:
            other.kill()
            other.wait()
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["uid 65534", "fork refused after 4 Resource temporarily unavailable",
                                       f"network {connect}"]


@pytest.mark.skipif(not shutil.which("unshare") or not NETNS, reason="needs unshare(1) and user namespaces")
def test_where_namespaces_are_refused_the_session_does_not_start_and_says_why(make_workspace):
    """A user namespace whose user.max_user_namespaces is 0 stands for a machine that forbids them."""
    workspace = sandbox_workspace(make_workspace, train(), network=False)
    engine = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", 'echo 0 > /proc/sys/user/max_user_namespaces && '
         'exec "$0" -m loopdeck.cli run "$1" --headless --agent offline', sys.executable, str(workspace)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert engine.returncode == 2, engine.stdout + engine.stderr
    assert engine.stderr.startswith("loopdeck: error: [sandbox] network = false needs a new network namespace, "
                                    "which this system refuses (unshare(CLONE_NEWUSER | CLONE_NEWNET): No space "
                                    "left on device — user namespaces are limited to none here")
    assert "set network = true in [sandbox]" in engine.stderr and "Traceback" not in engine.stderr
    assert not (workspace / ".loopdeck/ledger.sqlite").exists()  # refused before anything ran


@pytest.mark.skipif(NETNS, reason="this machine allows namespaces (the isolation itself is tested)")
def test_without_namespaces_network_false_is_refused_with_a_clear_message():
    with pytest.raises(LoopdeckError, match=r"\[sandbox\] network = false needs a new network namespace"):
        check_sandbox(Config().updated(network=False).sandbox)
