"""Fault injection at the agent's service: minutes of rate limits, overloads, server errors and refused connections
(the real anthropic SDK against tests/fake_anthropic.py, with a virtual clock for the backoff), stop and abort while
the loop waits, and the API key in no file, event, report or screen text a session produced."""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time

import pytest
from conftest import Recorded, ledger_rows
from fake_anthropic import (
    Dropped,
    FakeAnthropic,
    HttpError,
    overloaded,
    rate_limited,
    reply,
    text,
    tool_use,
)
from fake_targets import expected_metric, fake_train_source
from fault_support import assert_consistent

from loopdeck.cli.main import main
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.console.state import SessionView
from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings
from loopdeck.engine.events import ExperimentKept, Notice, SessionFinished
from loopdeck.engine.session import RunOptions, Session

# The fake service answers a script in order: a draft made ahead (`[loop] pipeline`) would take replies meant
# for the next turn, and whether "auto" drafts ahead depends on how loaded the machine is.
SCRIPTED = "off"
pytestmark = pytest.mark.timeout(120)
KEY = "sk-ant-api03-FAULTSUITE-9c1d2e3f4a5b6c7d-NEVER-WRITE-ME"


def lr_turn(old: float, new: float) -> list:
    """Claude's three calls for one experiment: read train.py, edit LR, propose."""
    return [reply(tool_use("read_file", path="train.py")),
            reply(tool_use("edit_file", path="train.py", old_string=f"LR = {old}", new_string=f"LR = {new}")),
            reply(text("Proposing."), tool_use("propose_experiment", description=f"LR {old} -> {new}",
                                               rationale="closer to 0.2"))]


def server_error() -> HttpError:
    return HttpError(500, "api_error", "Internal server error")


def mid_stream_overload():
    return reply(text("this reply is cut off halfway through"), fail_after=4)


def test_an_outage_of_minutes_is_waited_out_with_backoff_and_the_loop_resumes(make_workspace):
    """Dropped connections, then 429/529/500 and a stream cut mid-way: 12 failed calls over two agent turns and
    four and a half minutes of (virtual) backoff; then the service recovers and the experiment runs."""
    workspace = make_workspace(fake_train_source(lr=0.5))
    slept: list[float] = []
    # The service answers the agent's start check, then drops three connections before it answers with errors.
    with FakeAnthropic() as api:
        api.script(Dropped(), Dropped(), Dropped(),
                   rate_limited(), overloaded(), server_error(), mid_stream_overload(), overloaded(),  # turn 1 ends
                   rate_limited(), server_error(), overloaded(), mid_stream_overload(), *lr_turn(0.5, 0.25))
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, max_retries=0, sleep=slept.append)
        recorded = Recorded()
        Session(workspace, RunOptions(approval="auto", max_experiments=1, pipeline=SCRIPTED), on_event=recorded,
                agent=agent).run()

    assert recorded.finished.reason == "max_experiments"
    (kept,) = [e for e in recorded.of(ExperimentKept) if e.experiment == 1]
    assert kept.metric == pytest.approx(expected_metric(0.25))
    waits = [n.message for n in recorded.of(Notice) if "before retrying" in n.message]
    assert len(waits) == 7 + 4  # every failed call but the last of the first turn, announced with its wait
    for fault in ("connection failed", "429 rate_limit_error", "529 overloaded_error", "500 api_error",
                  "mid-stream overloaded_error"):
        assert any(fault in message for message in waits), fault
    assert "waiting 120 s" in waits[6]  # exponential, capped
    failed = [n.message for n in recorded.of(Notice) if "the agent failed to propose" in n.message]
    assert len(failed) == 1 and "still failing after 8 attempts" in failed[0]
    assert sum(slept) == pytest.approx(2 + 4 + 8 + 16 + 32 + 64 + 120 + 2 + 4 + 8 + 16)  # minutes, waited out
    assert [r.status for r in assert_consistent(workspace)] == ["keep", "keep"]


@pytest.mark.parametrize("request_stop, reason", [("stop_after_current", "stopped"), ("abort", "aborted")])
def test_stop_and_abort_work_while_the_loop_waits_out_an_outage(make_workspace, request_stop, reason):
    workspace = make_workspace()
    with FakeAnthropic() as api:
        api.script(*[overloaded()] * 100)
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, max_retries=0, retry_delay=30.0)
        recorded = Recorded()
        session = Session(workspace, RunOptions(approval="auto", pipeline=SCRIPTED), on_event=recorded, agent=agent)
        session.start()
        deadline = time.monotonic() + 20
        while not any("before retrying" in n.message for n in recorded.of(Notice)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        asked = time.monotonic()
        getattr(session, request_stop)()
        assert session.wait(timeout=5)
        assert time.monotonic() - asked < 1.5  # mid-way through a 30 s backoff
    assert recorded.of(SessionFinished)[0].reason == reason
    assert [row.id for row in ledger_rows(workspace)] == [0]  # the turn that never produced anything left no row


def test_stop_works_while_a_request_hangs_without_an_answer(make_workspace):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.extend(silent.accept() for _ in range(5)), daemon=True).start()
    agent = ClaudeAgent(ClaudeSettings(base_url=f"http://127.0.0.1:{silent.getsockname()[1]}"), api_key=KEY,
                        max_retries=0)
    session = Session(make_workspace(), RunOptions(approval="auto", pipeline=SCRIPTED), agent=agent)
    session.start()
    while not accepted:
        time.sleep(0.02)
    session.stop_after_current()
    stopped = session.wait(timeout=2)
    for connection, _ in accepted:  # the request fails at last, and the session ends
        connection.close()
    silent.close()
    assert session.wait(timeout=10)
    assert stopped


def test_the_api_key_appears_in_no_file_event_report_or_screen(make_workspace, monkeypatch, capsys):
    """The key is in the engine's environment and every request; the service even echoes it back in errors."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    workspace = make_workspace(fake_train_source(lr=0.5))
    echoed = HttpError(429, "rate_limit_error", f"rate limit exceeded for key {KEY}", (("retry-after-ms", "1"),))
    printed = io.StringIO()
    recorded = Recorded()
    printer = HeadlessPrinter(workspace, out=printed)

    def on_event(event) -> None:
        recorded(event)
        printer(event)

    with FakeAnthropic() as api:
        api.script(echoed, echoed, echoed, *lr_turn(0.5, 0.25), echoed, echoed, echoed,
                   reply(text("no idea"), fail_after=3, fail_type="overloaded_error"), *lr_turn(0.25, 0.22))
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), sleep=lambda seconds: None)  # key from the env
        Session(workspace, RunOptions(approval="auto", max_experiments=2, pipeline=SCRIPTED), on_event=on_event,
                agent=agent).run()
        assert all(KEY in r.headers.get("x-api-key", "") + r.headers.get("authorization", "") for r in api.requests)
    assert recorded.finished.reason == "max_experiments"
    assert any("[api key redacted]" in n.message for n in recorded.of(Notice))  # the echo reached a message

    assert main(["report", str(workspace)]) == 0
    assert main(["status", str(workspace)]) == 0
    view = SessionView()
    for event in recorded.events:
        view.apply(event)
    written = "".join(path.read_bytes().decode("utf-8", "replace") for path in workspace.rglob("*") if path.is_file())
    history = subprocess.run(["git", "log", "--all", "-p"], cwd=workspace, capture_output=True, text=True).stdout
    out, err = capsys.readouterr()
    assert (workspace / ".loopdeck/report").is_dir() and "report" in out
    for where, content in [("files", written), ("git history", history), ("events", repr(recorded.events)),
                           ("headless output", printed.getvalue()), ("cli output", out + err),
                           ("console state", repr(vars(view)))]:
        assert KEY not in content, where
        assert KEY[12:40] not in content, where  # nor a recognisable piece of it

