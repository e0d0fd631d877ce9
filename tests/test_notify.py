"""Notifications when you are away: apprise's real json:// scheme posts to a local HTTP server; what arrives is the
session's news (approval waiting, new best, crash streak, agent outage, the end) and never a secret or the code."""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from fake_http import ScriptedServer, json_body
from fake_targets import ScriptedAgent, change, fake_train_source

from loopdeck.cli.main import main
from loopdeck.engine import events as ev
from loopdeck.engine.agents.base import AgentError
from loopdeck.engine.config import NotifySettings
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.notify import Notifier, apprise_sender
from loopdeck.engine.session import RunOptions, Session

pytestmark = pytest.mark.timeout(60)

SECRET = "sk-ant-fake-key-0123456789"
RUN = {"steps": 4, "step_seconds": 0.03}


class Webhook(ScriptedServer):
    """Receives apprise's json:// posts; answers 200 unless a status (or a delay in seconds) is scripted."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        super().__init__(_handler(self), "fake-webhook")

    @property
    def url(self) -> str:
        return self.origin.replace("http://", "json://") + "/hook"

    def bodies(self) -> list[dict[str, Any]]:
        return list(self.requests)

    def wait_for(self, count: int, seconds: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.bodies()


def _handler(hook: Webhook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            return

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            hook.record(json_body(self))
            time.sleep(hook.delay)
            status = hook.next_response(lambda: 200)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

    return Handler


def with_notify(workspace: Path, **settings: object) -> Path:
    lines = "\n".join(f"{name} = {str(value).lower() if isinstance(value, bool) else value}"
                      for name, value in settings.items())
    with open(workspace / "loopdeck.toml", "a", encoding="utf-8") as handle:
        handle.write(f"\n[notify]\n{lines}\n")
    git(workspace, "commit", "-qam", "notify settings")
    return workspace


def leaky(turn) -> Any:
    """An agent whose description quotes the API key (a prompt injection, a careless model)."""
    proposal = change("LR", 0.3)(turn)
    return type(proposal)(description=f"LR 0.3 (key {SECRET})", rationale=proposal.rationale, files=proposal.files)


def test_a_supervised_session_sends_its_news_and_never_a_secret_or_code(make_workspace, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with Webhook() as hook:
        monkeypatch.setenv("LOOPDECK_NOTIFY_URLS", hook.url)
        workspace = with_notify(make_workspace(fake_train_source(lr=0.5, **RUN), approval="ask", crashes=5),
                                approval_wait_minutes=0.005, crash_streak=2)
        agent = ScriptedAgent([leaky, change("MODE", "crash"), change("MODE", "crash")])

        def on_event(event: ev.Event) -> None:
            if isinstance(event, ev.ApprovalRequested):  # the person is away for a second
                threading.Timer(1.0, session.decide, args=(True,), kwargs={"experiment": event.experiment}).start()

        session = Session(workspace, RunOptions(approval="ask", pipeline="off"), on_event=on_event, agent=agent)
        session.run()
        bodies = hook.wait_for(4)

    titles = [body["title"] for body in bodies]
    name = workspace.name
    assert titles[:3] == [f"loopdeck {name}: #1 waits for your approval", f"loopdeck {name}: new best val_bpb "
                          "1.100000", f"loopdeck {name}: #2 waits for your approval"]
    assert f"loopdeck {name}: 2 failed experiments in a row" in titles
    assert titles[-1] == f"loopdeck {name}: session finished (exhausted)"
    assert "3 experiments, 1 kept; val_bpb 1.300000 (baseline) → 1.100000" in bodies[-1]["message"]
    best = bodies[1]["message"]
    assert best.startswith("#1 LR 0.3 (key [redacted]): val_bpb 1.100000 (-0.2 vs 1.300000)")
    assert bodies[1]["type"] == "success"
    everything = repr(bodies)
    assert SECRET not in everything and "LR = 0.3" not in everything  # no key, no code


def test_include_diff_adds_the_change_to_the_new_best_message(make_workspace, monkeypatch):
    with Webhook() as hook:
        workspace = with_notify(make_workspace(fake_train_source(lr=0.5, **RUN)), include_diff=True,
                                urls=f'["{hook.url}"]', session_end=False)
        session = Session(workspace, RunOptions(pipeline="off"), agent=ScriptedAgent([change("LR", 0.3)]))
        session.run()
        (body,) = hook.wait_for(1)
    assert body["title"].endswith("new best val_bpb 1.100000")
    assert "-LR = 0.5" in body["message"] and "+LR = 0.3" in body["message"]


def test_a_missing_extra_is_one_line_naming_the_install_command(make_workspace, monkeypatch):
    monkeypatch.setitem(sys.modules, "apprise", None)  # import apprise now raises ImportError
    workspace = with_notify(make_workspace(), urls='["ntfy://ntfy.sh/loopdeck-test"]')
    with pytest.raises(LoopdeckError, match=r"apprise is not installed: pip install 'loopdeck\[notify\]'"):
        Session(workspace, RunOptions(), agent=ScriptedAgent([]))


def test_a_bad_url_is_refused_by_its_scheme_only(make_workspace):
    workspace = with_notify(make_workspace(), urls='["nosuchservice://token-abc@host"]')
    with pytest.raises(LoopdeckError, match="scheme 'nosuchservice'") as raised:
        Session(workspace, RunOptions(), agent=ScriptedAgent([]))
    assert "token-abc" not in str(raised.value)


def test_a_turn_lost_to_an_agent_outage_reaches_the_webhook(make_workspace, monkeypatch):
    with Webhook() as hook:
        monkeypatch.setenv("LOOPDECK_NOTIFY_URLS", hook.url)
        workspace = make_workspace(fake_train_source(**RUN))
        agent = ScriptedAgent([AgentError("Claude API still failing after 5 attempts: overloaded (529)",
                                          stop_reason="outage")])
        Session(workspace, RunOptions(pipeline="off"), agent=agent).run()
        bodies = hook.wait_for(2)
    assert bodies[0]["title"] == f"loopdeck {workspace.name}: the agent is stuck (an outage of its service)"
    assert "overloaded (529)" in bodies[0]["message"] and bodies[0]["type"] == "warning"


def notifier(hook: Webhook, emitted: list, **settings: Any) -> Notifier:
    sender = apprise_sender([hook.url])
    made = Notifier(NotifySettings(**settings), Path("/w/demo"), emitted.append, sender)
    made.start()
    return made


def test_sending_never_blocks_the_loop_and_a_failure_is_one_notice():
    emitted: list = []
    with Webhook(delay=0.5) as hook:
        hook.script(500)  # the first message fails
        sending = notifier(hook, emitted)
        began = time.monotonic()
        for n in range(1, 60):  # far more messages than the queue holds, against a slow service
            sending.observe(ev.ExperimentFinished(experiment=n, status="keep", metric=1.0 - n / 100,
                                                  delta=-0.01, incumbent_metric=1.0, commit="c",
                                                  description=f"change {n}"))
        assert time.monotonic() - began < 0.5  # observe only queues
        sending.close(timeout=1.0)
    warnings = [e.message for e in emitted if isinstance(e, ev.Notice)]
    assert len([w for w in warnings if "could not be sent" in w]) == 1
    assert [w for w in warnings if "dropped" in w] == ["notifications: 32 messages are waiting to be sent; newer "
                                                       "ones are dropped"]


def test_an_agent_outage_is_told_once_until_the_agent_proposes_again():
    emitted: list = []
    with Webhook() as hook:
        sending = notifier(hook, emitted, session_end=False)
        outage = ev.Notice(level="warning", topic="agent_outage", message="the agent failed to propose: 529")
        for event in (outage, outage, ev.Notice(level="warning", message="unrelated"),
                      ev.ChangeProposed(experiment=3, description="d", rationale="", diff="", files=(), added=0,
                                        removed=0),
                      ev.Notice(level="warning", topic="agent_refusal", message="the agent declined this turn")):
            sending.observe(event)
        sending.close()
        bodies = hook.bodies()
    assert [b["title"] for b in bodies] == ["loopdeck demo: the agent is stuck (an outage of its service)",
                                           "loopdeck demo: the agent is stuck (a refusal)"]
    assert not emitted


def test_notify_test_sends_one_message_or_says_why_not(make_workspace, monkeypatch, capsys):
    workspace = make_workspace()
    assert main(["notify-test", str(workspace)]) == 2
    assert "no notification URL: set [notify] urls" in capsys.readouterr().err
    with Webhook() as hook:
        monkeypatch.setenv("LOOPDECK_NOTIFY_URLS", hook.url)
        assert main(["notify-test", str(workspace)]) == 0
        assert "sent a test message to 1 notification service" in capsys.readouterr().out
        assert hook.bodies()[0]["title"] == f"loopdeck {workspace.name}: test message"
        hook.script(404)
        assert main(["notify-test", str(workspace)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("loopdeck: error: the test message was not sent (") and error.count("\n") == 1
