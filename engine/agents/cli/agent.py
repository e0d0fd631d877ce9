"""A coding-agent CLI (Claude Code or Codex) as loopdeck's agent: one non-interactive run per turn.

Each turn makes a scratch copy of the workspace at the incumbent, runs the CLI there with the prompt on stdin
(program.md, loopdeck's rules for the CLI, notes, feedback and the bounded history summary of the Claude agent),
streams its JSON events into the reasoning pane, and returns the diff of the editable files as the proposal. The
guard, approval gate and integrity checks then treat it like any other agent's change.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, Proposal
from loopdeck.engine.agents.claude.context import FEEDBACK_CHARS, NOTE_CHARS, cut, history_overview
from loopdeck.engine.agents.cli.process import GroupProcess, ProcessCancelled, ProcessTimeout
from loopdeck.engine.agents.cli.scratch import ScratchCheckout
from loopdeck.engine.agents.cli.streams import ClaudeCodeStream, CodexStream, parse_line
from loopdeck.engine.config.schema import CliAgentSettings
from loopdeck.engine.events import AgentUsage, Notice

DESCRIPTION_CHARS = 80
RATIONALE_CHARS = 2000


@dataclass(frozen=True)
class CliKind:
    """One coding-agent CLI: its program, how to install it, and its non-interactive command line."""

    kind: str
    program: str
    install: str
    argv: Callable[[str, CliAgentSettings, Path], list[str]]
    stream: type[ClaudeCodeStream] | type[CodexStream]
    billing_key: str = ""  # the variable that makes the CLI bill per token instead of its login ([agent.cli] pass_api_key)


def _claude_argv(executable: str, settings: CliAgentSettings, scratch: Path) -> list[str]:
    # The prompt comes on stdin. --tools is all the model is offered, --allowedTools runs them without asking;
    # no MCP servers of the user's, and no saved session per turn.
    tools = ",".join(settings.allowed_tools)
    return [executable, "-p", "--output-format", "stream-json", "--verbose", "--tools", tools,
            "--allowedTools", tools, "--strict-mcp-config", "--no-session-persistence"]


def _codex_argv(executable: str, settings: CliAgentSettings, scratch: Path) -> list[str]:
    # workspace-write: codex may edit files under the scratch directory only; --ephemeral: no session files kept;
    # `-` reads the prompt from stdin.
    return [executable, "exec", "--json", "--sandbox", "workspace-write", "--skip-git-repo-check", "--ephemeral",
            "--cd", str(scratch), "-"]


CLI_KINDS: dict[str, CliKind] = {
    "claude-code": CliKind("claude-code", "claude", "npm install -g @anthropic-ai/claude-code", _claude_argv,
                           ClaudeCodeStream, billing_key="ANTHROPIC_API_KEY"),
    "codex": CliKind("codex", "codex", "npm install -g @openai/codex", _codex_argv, CodexStream),
}

CLI_RULES = """\
# How loopdeck works
You are the research agent in loopdeck, an autonomous research loop. This run is ONE experiment: change the
editable files in the current directory. loopdeck then commits your change, trains for a fixed wall-clock
budget, reads the metric, keeps the commit if the metric improved on the incumbent and reverts it otherwise.

# Rules
- Edit only the editable files listed below; changes to any other file are discarded. Do not run training.
- One idea per experiment, so its effect can be measured. Do not repeat a dead end from the history unless you
  have a concrete new reason, and then say it.
- The time budget is fixed: a change that makes each step slower must win more than the steps it costs.
- Do not touch the evaluation, the data, the time budget or the random seed to improve the number.
- Keep the code runnable: a crash wastes a whole run. Simpler is better at equal results.
- Human notes take priority: follow them and acknowledge each one in your rationale.

# When you are done
End your final message with exactly these two lines:
DESCRIPTION: <one line, imperative, at most 80 characters, e.g. raise matrix LR from 0.02 to 0.03>
RATIONALE: <two or three sentences: why it should help, and what you learn if not>
"""


def cli_problem(kind: str, settings: CliAgentSettings) -> str:
    """Why the CLI of `kind` cannot run here ("" when it can): one line naming how to install it."""
    spec = CLI_KINDS[kind]
    executable = settings.executable or spec.program
    if shutil.which(executable) is None:
        return (f"the {kind} agent needs the `{executable}` command, which is not on PATH: install it with "
                f"`{spec.install}` (or set [agent.cli] executable in loopdeck.toml)")
    return ""


def cli_prompt(turn: AgentTurn) -> str:
    """The whole prompt of one CLI run: program.md, the rules, notes, feedback, the history and the files."""
    program = turn.program.strip() or "(the workspace has no program.md; improve the metric within the rules)"
    better = "lower" if turn.direction == "minimize" else "higher"
    parts = [f"# Research program (program.md)\n{program}\n", CLI_RULES, f"# Experiment {turn.experiment}",
             f"Metric: {turn.metric_name} ({better} is better).",
             f"Editable: {', '.join(turn.editable) or '(none)'}."
             + (f" Protected (read-only): {', '.join(turn.protected)}." if turn.protected else "")]
    if turn.notes:
        parts.append("\n## Notes from the human supervisor (follow them; acknowledge each in your rationale)")
        parts.extend(f"- {cut(note.strip(), NOTE_CHARS)}" for note in turn.notes)
    if turn.feedback.strip():
        parts.append(f"\n## What happened to your previous proposal\n{cut(turn.feedback.strip(), FEEDBACK_CHARS)}")
    parts.append("\n" + history_overview(turn.history, turn.incumbent, turn.direction))
    return "\n".join(parts) + "\n"


def description_and_rationale(final_text: str, kind: str) -> tuple[str, str]:
    """The DESCRIPTION and RATIONALE lines of the CLI's final message; without them, its first line and text."""
    described = re.search(r"^\W*DESCRIPTION:\W*(.+)$", final_text, re.MULTILINE | re.IGNORECASE)
    reasoned = re.search(r"^\W*RATIONALE:\W*(.+)", final_text, re.MULTILINE | re.IGNORECASE | re.DOTALL)
    lines = [line.strip() for line in final_text.splitlines() if line.strip()]
    description = described.group(1).strip() if described else (lines[0] if lines else f"change by {kind}")
    rationale = reasoned.group(1).strip() if reasoned else final_text.strip()
    return cut(" ".join(description.split()), DESCRIPTION_CHARS), cut(rationale, RATIONALE_CHARS)


class CodingCliAgent:
    """`Agent` that runs a coding-agent CLI per turn. A missing CLI is fatal at construction; a failed, timed
    out or empty run costs one turn."""

    def __init__(self, kind: str, settings: CliAgentSettings) -> None:
        problem = cli_problem(kind, settings)
        if problem:
            raise AgentError(problem, fatal=True, stop_reason="error")
        self.name = kind
        self.settings = settings
        self._spec = CLI_KINDS[kind]
        self._session_tokens = 0
        self._session_cost = 0.0

    def close(self) -> None:
        """Nothing outlives a turn: each run's process group and scratch copy go with it."""

    def propose(self, turn: AgentTurn) -> Proposal:
        scratch = ScratchCheckout(turn.workspace, turn.files)
        try:
            final_text = self._run(turn, scratch.path)
            changes = scratch.changes()
        finally:
            scratch.remove()
        if changes.ignored:
            turn.emit(Notice(level="warning", experiment=turn.experiment, message=f"{self.name} changed files that "
                             f"are not editable; ignored: {', '.join(changes.ignored[:10])}"))
        if not changes.files:
            raise AgentError(f"{self.name} finished without changing an editable file "
                             f"({', '.join(turn.editable)})")
        description, rationale = description_and_rationale(final_text, self.name)
        return Proposal(description=description, rationale=rationale, files=changes.files,
                        meta={"agent": self.name})

    def _run(self, turn: AgentTurn, scratch: Path) -> str:
        """Run the CLI in `scratch`, its events into the turn; its final message, or AgentError/AgentCancelled."""
        stream = self._spec.stream(turn.experiment, str(scratch))
        argv = self._spec.argv(self.settings.executable or self._spec.program, self.settings, scratch)
        with tempfile.TemporaryDirectory(prefix="loopdeck-cli-io-") as io:
            prompt, stderr = Path(io) / "prompt.md", Path(io) / "stderr.txt"
            prompt.write_text(cli_prompt(turn), encoding="utf-8")
            try:
                process = GroupProcess(argv, scratch, prompt, stderr, self._environment())
            except OSError as exc:
                raise AgentError(f"{self.name}: cannot start {argv[0]}: {exc}") from None
            try:
                for line in process.lines(self.settings.turn_timeout_seconds, turn.cancelled):
                    record = parse_line(line)
                    for event in stream.feed(record) if record is not None else ():
                        turn.emit(event)
            except ProcessCancelled:
                raise AgentCancelled() from None
            except ProcessTimeout:
                raise AgentError(f"{self.name} was still working after [agent.cli] turn_timeout_seconds = "
                                 f"{self.settings.turn_timeout_seconds:g} s; its processes were killed") from None
            outcome = stream.outcome
            self._count_usage(turn, outcome.usage, outcome.cost_usd)
            exit_code = process.process.returncode
            if outcome.error or not outcome.finished:
                why = outcome.error or process.stderr_tail() or f"it exited with status {exit_code} mid-turn"
                raise AgentError(f"{self.name} failed this turn: {why}")
        return outcome.final_text

    def _environment(self) -> dict[str, str]:
        """The CLI's environment: ours, less the per-token API key unless [agent.cli] pass_api_key says so (with
        that key set, Claude Code bills it instead of the subscription its own login holds)."""
        environment = dict(os.environ)
        if self._spec.billing_key and not self.settings.pass_api_key:
            environment.pop(self._spec.billing_key, None)
        return environment

    def _count_usage(self, turn: AgentTurn, usage: dict[str, int], cost: float) -> None:
        if not any(usage.values()) and not cost:
            return
        self._session_tokens += sum(usage.values())
        self._session_cost += cost
        turn.emit(AgentUsage(experiment=turn.experiment, **usage, cost_usd=cost,
                             session_tokens=self._session_tokens, session_cost_usd=self._session_cost))
