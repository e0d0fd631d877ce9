"""Coding-agent CLIs as the agent (claude-code, codex) against a stand-in speaking their JSON streams, and
`loopdeck agents`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git, ledger_rows
from fake_anthropic import FakeAnthropic, FileEditor
from fake_targets import PROGRAM_MD

from loopdeck.cli.main import main
from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, ExperimentSummary
from loopdeck.engine.agents.cli.agent import CodingCliAgent, description_and_rationale
from loopdeck.engine.agents.cli.streams import ClaudeCodeStream, CodexStream
from loopdeck.engine.config.schema import CliAgentSettings
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    AgentUsage,
    Notice,
)
from loopdeck.engine.session import RunOptions, Session

FAKE_CLI = Path(__file__).with_name("fake_coding_cli.py")
KINDS = ("claude-code", "codex")


@pytest.fixture
def fake_clis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`claude` and `codex` on PATH, both the stand-in; returns the log of their invocations."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("claude", "codex"):
        wrapper = bin_dir / program
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_CLI}" {program} "$@"\n')
        wrapper.chmod(0o755)
    log = tmp_path / "cli.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_CLI_LOG", str(log))
    monkeypatch.delenv("FAKE_CLI_MODE", raising=False)
    return log


def _turn(workspace: Path, events: list, cancelled=lambda: False) -> AgentTurn:
    baseline = ExperimentSummary(id=0, status="keep", metric=1.3, delta=None, description="baseline",
                                 baseline=True)
    return AgentTurn(experiment=1, workspace=workspace, files={"train.py": (workspace / "train.py").read_text()},
                     editable=("train.py",), protected=(), program=PROGRAM_MD, metric_name="val_bpb",
                     direction="minimize", history=(baseline,), incumbent=baseline,
                     notes=("try the learning rate",), emit=events.append, cancelled=cancelled)


@pytest.mark.parametrize("kind", KINDS)
def test_cli_edit_becomes_the_proposal_streamed_live(kind: str, workspace: Path, fake_clis: Path) -> None:
    events: list = []
    before = (workspace / "train.py").read_text()
    proposal = CodingCliAgent(kind, CliAgentSettings()).propose(_turn(workspace, events))

    assert "LR = 0.15" in proposal.files["train.py"] and list(proposal.files) == ["train.py"]
    assert proposal.description == "raise LR towards 0.2"
    assert proposal.rationale.startswith("the metric is best near 0.2")
    assert (workspace / "train.py").read_text() == before  # the user's tree is never touched
    assert git(workspace, "status", "--porcelain") == ""
    (call,) = [json.loads(line) for line in fake_clis.read_text().splitlines()]
    assert Path(call["cwd"]).resolve() != workspace.resolve()
    assert "Lower val_bpb" in call["prompt"] and "try the learning rate" in call["prompt"]
    assert "Baseline #0" in call["prompt"] and "DESCRIPTION:" in call["prompt"]
    assert not Path(call["cwd"]).exists()  # the scratch copy is removed
    kinds = {type(event) for event in events}
    assert {AgentTextDelta, AgentThinkingDelta, AgentToolCall, AgentUsage} <= kinds
    tool_calls = [event.summary for event in events if isinstance(event, AgentToolCall)]
    assert any("train.py" in summary and call["cwd"] not in summary for summary in tool_calls)
    (usage,) = [event for event in events if isinstance(event, AgentUsage)]
    assert usage.output_tokens > 0 and usage.session_tokens > 0


def test_claude_code_gets_only_the_allowed_tools(workspace: Path, fake_clis: Path) -> None:
    settings = CliAgentSettings(allowed_tools=["Read", "Edit"])
    CodingCliAgent("claude-code", settings).propose(_turn(workspace, []))
    argv = json.loads(fake_clis.read_text())["argv"]
    assert argv[argv.index("--allowedTools") + 1] == "Read,Edit"


@pytest.mark.parametrize("kind", KINDS)
def test_cli_failure_costs_one_turn(kind: str, workspace: Path, fake_clis: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CLI_MODE", "error")
    with pytest.raises(AgentError) as raised:
        CodingCliAgent(kind, CliAgentSettings()).propose(_turn(workspace, []))
    assert not raised.value.fatal
    assert ("Invalid API key" if kind == "claude-code" else "401 Unauthorized") in str(raised.value)


def test_no_edit_is_a_failed_turn_and_stray_edits_are_ignored(workspace: Path, fake_clis: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CLI_MODE", "noedit")
    with pytest.raises(AgentError, match="without changing an editable file"):
        CodingCliAgent("codex", CliAgentSettings()).propose(_turn(workspace, []))
    monkeypatch.setenv("FAKE_CLI_MODE", "stray")
    events: list = []
    proposal = CodingCliAgent("claude-code", CliAgentSettings()).propose(_turn(workspace, events))
    assert list(proposal.files) == ["train.py"]
    assert any(isinstance(event, Notice) and "program.md" in event.message for event in events)
    assert (workspace / "program.md").read_text() == PROGRAM_MD


def _group_gone(pids_file: Path) -> bool:
    deadline = time.monotonic() + 5
    pids = [int(pid) for pid in pids_file.read_text().split()]
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z")
            except (ProcessLookupError, FileNotFoundError):
                alive.append(False)
        if not any(alive):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_kills_the_whole_process_group(kind: str, workspace: Path, fake_clis: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_CLI_MODE", "hang")
    monkeypatch.setenv("FAKE_CLI_PIDS", str(pids))
    started = time.monotonic()
    with pytest.raises(AgentError, match="turn_timeout_seconds"):
        CodingCliAgent(kind, CliAgentSettings(turn_timeout_seconds=1.5)).propose(_turn(workspace, []))
    assert time.monotonic() - started < 15
    assert _group_gone(pids)


def test_cancel_kills_the_cli(workspace: Path, fake_clis: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_CLI_MODE", "hang")
    monkeypatch.setenv("FAKE_CLI_PIDS", str(pids))
    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    with pytest.raises(AgentCancelled):
        CodingCliAgent("claude-code", CliAgentSettings()).propose(_turn(workspace, [], cancel.is_set))
    assert _group_gone(pids)


def test_missing_cli_is_one_line_naming_the_install(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(workspace))  # no claude, no codex
    with pytest.raises(AgentError) as raised:
        CodingCliAgent("codex", CliAgentSettings())
    assert raised.value.fatal and "npm install -g @openai/codex" in str(raised.value)
    with pytest.raises(LoopdeckError, match="npm install -g @anthropic-ai/claude-code"):
        Session(workspace, RunOptions(agent="claude-code"))


def test_session_with_a_cli_agent_keeps_its_change(workspace: Path, fake_clis: Path, run_session) -> None:
    session, recorded = run_session(workspace, None, agent="claude-code", max_experiments=1)
    rows = ledger_rows(workspace)
    assert [row.status for row in rows] == ["keep", "keep"]
    assert rows[1].description == "raise LR towards 0.2"
    assert "LR = 0.15" in (workspace / "train.py").read_text()
    assert recorded.of(AgentToolCall) and recorded.of(AgentTextDelta)


def test_stream_lines_of_the_documented_formats() -> None:
    claude = ClaudeCodeStream(3, "/tmp/scratch")
    events = claude.feed({"type": "assistant", "message": {"content": [
        {"type": "text", "text": "hi"}, {"type": "tool_use", "id": "a", "name": "Write",
                                         "input": {"file_path": "/tmp/scratch/train.py", "content": "x"}}]}})
    events += claude.feed({"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "a", "is_error": True, "content": "denied"}]}})
    assert [dataclasses.replace(event, ts=0) for event in events] == [
        AgentTextDelta(ts=0, experiment=3, text="hi\n"),
        AgentToolCall(ts=0, experiment=3, tool="Write", summary="Write train.py"),
        AgentToolResult(ts=0, experiment=3, tool="Write", ok=False, summary="denied")]
    claude.feed({"type": "result", "subtype": "error_max_turns", "is_error": False})
    assert claude.outcome.finished and claude.outcome.error == "error_max_turns"

    codex = CodexStream(3, "/tmp/scratch")
    assert codex.feed({"type": "error", "message": "reconnecting"}) == []
    codex.feed({"type": "turn.completed", "usage": {"input_tokens": 10, "cached_input_tokens": 4,
                                                    "output_tokens": 2}})
    assert codex.outcome.error == "" and codex.outcome.usage["cache_read_tokens"] == 4
    assert codex.outcome.usage["input_tokens"] == 6


def test_description_falls_back_to_the_first_line() -> None:
    assert description_and_rationale("Raised the LR.\nMore words.", "codex") == (
        "Raised the LR.", "Raised the LR.\nMore words.")
    assert description_and_rationale("", "codex")[0] == "change by codex"


def test_agents_command_lists_every_kind_without_network(tmp_path: Path, fake_clis: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert main(["agents", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert " yes " in lines["claude-code"] and " yes " in lines["codex"] and " yes " in lines["offline"]
    assert " no " in lines["claude"] and "ANTHROPIC_API_KEY" in lines["claude"]
    assert "resolves to offline" in lines["auto"] and "its own login" in lines["claude-code"]
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    main(["agents", str(tmp_path)])
    assert "ANTHROPIC_API_KEY is not passed on" in capsys.readouterr().out
    monkeypatch.setenv("PATH", str(tmp_path))
    main(["agents", str(tmp_path)])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:] if line.strip()}
    assert " no " in lines["codex"] and "not on PATH" in lines["codex"]


def test_api_key_reaches_claude_code_only_when_asked(workspace: Path, fake_clis: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-should-not-bill")
    CodingCliAgent("claude-code", CliAgentSettings()).propose(_turn(workspace, []))
    CodingCliAgent("claude-code", CliAgentSettings(pass_api_key=True)).propose(_turn(workspace, []))
    assert [json.loads(line)["api_key"] for line in fake_clis.read_text().splitlines()] == [False, True]
    assert os.environ["ANTHROPIC_API_KEY"] == "sk-ant-should-not-bill"  # loopdeck's own environment is kept


# --- the real Claude Code CLI against the Messages API stand-in ----------------------------------------------------

CI_CLAUDE = Path(__file__).resolve().parents[1] / ".ci" / "node" / "node_modules" / ".bin" / "claude"


def _real_claude() -> str | None:
    """The real CLI: LOOPDECK_TEST_CLAUDE_CODE, else the copy `.ci/run` installs, else `claude` on PATH."""
    if os.environ.get("LOOPDECK_TEST_CLAUDE_CODE"):
        return os.environ["LOOPDECK_TEST_CLAUDE_CODE"]
    return str(CI_CLAUDE) if CI_CLAUDE.is_file() else shutil.which("claude")


REAL_CLAUDE = _real_claude()
needs_real_claude = pytest.mark.skipif(REAL_CLAUDE is None, reason="the real Claude Code CLI is not installed (.ci/run "
                                       "installs it into .ci/node with npm; or point LOOPDECK_TEST_CLAUDE_CODE at it)")
FINAL = "Raised the learning rate.\nDESCRIPTION: raise LR to 0.15\nRATIONALE: the loss falls faster with a larger step."


def _raise_lr(line: str) -> str | None:
    return "LR = 0.15" if line.startswith("LR = ") else None


@pytest.fixture
def claude_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeAnthropic, FileEditor]]:
    """The Messages API stand-in, answering the real CLI like a model would (Read, then Edit a line it read)."""
    home = tmp_path / "home"  # no login, settings or sessions of the person running the tests
    home.mkdir()
    with FakeAnthropic() as api:
        api.responder = editor = FileEditor("train.py", _raise_lr, FINAL)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake")
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        yield api, editor


@needs_real_claude
def test_real_claude_code_reads_then_edits_and_the_edit_is_the_proposal(
        workspace: Path, claude_api: tuple[FakeAnthropic, FileEditor]) -> None:
    api, editor = claude_api
    events: list = []
    settings = CliAgentSettings(executable=str(REAL_CLAUDE), pass_api_key=True, turn_timeout_seconds=120)
    proposal = CodingCliAgent("claude-code", settings).propose(_turn(workspace, events))

    assert list(proposal.files) == ["train.py"] and "LR = 0.15" in proposal.files["train.py"]
    assert (proposal.description, proposal.rationale) == ("raise LR to 0.15",
                                                          "the loss falls faster with a larger step.")
    (edit,) = editor.edits
    assert edit["old_string"] in (workspace / "train.py").read_text().splitlines()  # a line the Read returned
    assert [event.tool for event in events if isinstance(event, AgentToolCall)] == ["Read", "Edit"]
    assert [event.ok for event in events if isinstance(event, AgentToolResult)] == [True, True]
    assert "Lower val_bpb" in json.dumps(api.requests[0].body)
    assert {request.headers.get("x-api-key") for request in api.requests} == {"sk-ant-fake"}


@needs_real_claude
def test_real_claude_code_does_not_bill_the_api_key_by_default(
        workspace: Path, claude_api: tuple[FakeAnthropic, FileEditor]) -> None:
    """Without pass_api_key the CLI must use its own login; here there is none, so it stops before any request."""
    api, _ = claude_api
    agent = CodingCliAgent("claude-code", CliAgentSettings(executable=str(REAL_CLAUDE), turn_timeout_seconds=120))
    with pytest.raises(AgentError, match="Not logged in") as raised:
        agent.propose(_turn(workspace, []))
    assert not raised.value.fatal and api.requests == []


@needs_real_claude
@pytest.mark.slow
def test_real_claude_code_session_from_the_command_line(
        workspace: Path, claude_api: tuple[FakeAnthropic, FileEditor], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{Path(str(REAL_CLAUDE)).parent}{os.pathsep}{os.environ['PATH']}")
    config = workspace / "loopdeck.toml"
    config.write_text(config.read_text() + "\n[agent.cli]\npass_api_key = true\n")
    git(workspace, "commit", "-qam", "bill the API key (the stand-in's)")

    assert main(["agents", str(workspace)]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("claude-code ")]
    assert " yes " in line and "bills ANTHROPIC_API_KEY" in line
    assert main(["run", str(workspace), "--headless", "--agent", "claude-code", "--max-experiments", "1"]) == 0
    rows = ledger_rows(workspace)
    assert [row.status for row in rows] == ["keep", "keep"] and rows[1].description == "raise LR to 0.15"
    assert "LR = 0.15" in (workspace / "train.py").read_text()
