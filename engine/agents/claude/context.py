"""What Claude reads each turn: the system prompt and a bounded, structured summary of the research so far.

Every turn starts a fresh conversation, so the context never grows with the night: the history is compacted
into the incumbent, the kept path, dead ends grouped by how they failed, and the last few experiments in detail.
Each section has a fixed cap, so the summary stays the same size after ten experiments or ten thousand.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from loopdeck.engine.agents.base import AgentTurn, ExperimentSummary
from loopdeck.engine.agents.claude.research_log import mode_section

RECENT_IN_DETAIL = 5  # newest experiments shown with diff, reason and log tail
LINES_PER_GROUP = 25  # newest one-liners kept per group of older experiments
DESCRIPTION_CHARS = 100
REASON_CHARS = 160
DETAIL_DIFF_CHARS = 2000
DETAIL_LOG_CHARS = 1200
# read_history(experiment=N) shows one experiment at a larger, still bounded, size.
FULL_DIFF_CHARS = 8000
FULL_LOG_CHARS = 4000
NOTE_CHARS = 2000
FEEDBACK_CHARS = 4000
# A conservative characters-per-token ratio for code and logs, to keep a turn's conversation inside the window.
CHARS_PER_TOKEN = 3
TRIMMED = "[older tool result removed to fit the model's context; call the tool again if you need it]"

# How older experiments are grouped, in display order. Interrupted runs failed through no fault of the change.
_DEAD_END_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("ran but did not improve (discarded or aborted)", frozenset({"discard", "aborted"})),
    ("broke the run (crash, timeout, NaN)", frozenset({"crash", "timeout", "nan"})),
    ("refused before running (guard rejection or human veto)", frozenset({"rejected", "vetoed"})),
    ("interrupted by the engine (not the change's fault)", frozenset({"interrupted"})),
)

RULES = """\
# How loopdeck works
You are the research agent in loopdeck, an autonomous research loop. Each turn you propose ONE experiment: a
change to the editable files. loopdeck then commits it, trains for a fixed wall-clock budget, reads the metric,
keeps the commit if the metric improved on the incumbent and reverts it otherwise. You will be told the outcome
next turn. Many turns run unattended overnight; a human may watch, veto proposals, and send you notes.

# Tools
- read_file, list_files, search_files: look at the workspace (paths relative to the workspace root).
- read_history: the experiment ledger; pass `experiment` to see one experiment's diff, reason and log tail.
- research_log: what was tried on which code (region), which way, with what result; `check=true` tells you
  whether your edits repeat an idea already tried against the incumbent (a repeat is rejected unrun).
- edit_file: replace an exact, unique string in an editable file (include enough context to be unique).
- write_file: replace a whole editable file (prefer edit_file for small changes).
- propose_experiment: finish the turn with a one-line description and a rationale. Your edits so far are the
  change. Call it exactly once, after editing.
Edits stay in memory until you propose; nothing runs before that. Only the editable files can be changed;
protected files, .git and .loopdeck are off limits and such calls are refused.

# Rules
- One idea per experiment, so its effect can be measured. Do not bundle unrelated changes.
- Do not repeat a dead end listed in the history unless you have a concrete new reason, and then say it.
- The time budget is fixed: a change that makes each step slower must win more than the steps it costs.
- Do not touch the evaluation, the data, the time budget or the random seed to improve the number.
- Keep the code runnable: a crash wastes a whole run. Check names, shapes and syntax before proposing.
- Simplicity criterion: all else equal, simpler is better. A tiny gain that adds ugly complexity is not worth
  it; removing code for an equal result is a win.
- Human notes take priority: follow them and acknowledge each one in your rationale.

# Proposal format
- description: one line, imperative, at most 80 characters (it becomes the commit subject), e.g.
  "raise matrix LR from 0.02 to 0.03".
- rationale: two or three sentences: why it should help, what result you expect, and what you learn if not.
"""


def system_prompt(program: str) -> str:
    """The workspace's research instructions and loopdeck's rules: the same for every turn of a session, so the
    API can cache it."""
    program = program.strip() or "(the workspace has no program.md; improve the metric within the rules below)"
    return f"# Research program (program.md)\n{program}\n\n{RULES}"


def first_message(turn: AgentTurn) -> str:
    """The opening user message of a turn: task, notes, feedback, history summary and the files to work on."""
    better = "lower" if turn.direction == "minimize" else "higher"
    parts = [
        f"# Experiment {turn.experiment}",
        f"Metric: {turn.metric_name} ({better} is better).",
        f"Editable: {', '.join(turn.editable) or '(none)'}."
        + (f" Protected (read-only): {', '.join(turn.protected)}." if turn.protected else ""),
    ]
    if turn.notes:
        parts.append("\n## Notes from the human supervisor (follow them; acknowledge each in your rationale)")
        parts.extend(f"- {cut(note.strip(), NOTE_CHARS)}" for note in turn.notes)
    if turn.feedback.strip():
        parts.append(f"\n## What happened to your previous proposal\n{cut(turn.feedback.strip(), FEEDBACK_CHARS)}")
    if turn.mode:
        parts.append(mode_section(turn))
    parts.append("\n" + history_overview(turn.history, turn.incumbent, turn.direction,
                                         told=_told_log_of(turn)))
    if turn.running:
        parts.append("\n## Already running (other workers are trying these now: propose a different idea)")
        parts.extend(f"- #{summary.id} {_short(summary.description)}" for summary in turn.running)
    parts.append("\n## Editable files (incumbent version)")
    parts.extend(f"- {path} ({_line_count(content)} lines)" for path, content in turn.files.items())
    parts.append(
        "\nRead what you need, make one focused change with edit_file or write_file, then call "
        "propose_experiment."
    )
    return "\n".join(parts)


def _told_log_of(turn: AgentTurn) -> int | None:
    """The experiment whose log tail the feedback already quotes, so the history does not repeat it."""
    last = turn.history[-1] if turn.history else None
    if last is None or not last.log_tail.strip() or f"#{last.id} " not in turn.feedback:
        return None
    return last.id if last.log_tail.strip()[-200:] in turn.feedback else None


def history_overview(
    history: Sequence[ExperimentSummary], incumbent: ExperimentSummary | None, direction: str,
    told: int | None = None,
) -> str:
    """Baseline, incumbent, the kept path, grouped dead ends and the newest experiments in detail; the log tail of
    experiment `told` is left out (the opening message already shows it)."""
    if not history:
        return "## History\nNo experiments yet."
    baseline = next((s for s in history if s.baseline and s.status == "keep"), None)
    lines = ["## History", f"Baseline #{baseline.id}: {_metric(baseline.metric)}" if baseline else "No baseline yet"]
    if incumbent is not None:
        gain = _delta(incumbent.metric, baseline.metric if baseline else None)
        lines.append(f"Incumbent #{incumbent.id}: {_metric(incumbent.metric)}{gain} — {_short(incumbent.description)}")
    lines.append(_counts(history))

    recent = list(history[-RECENT_IN_DETAIL:])
    older = [s for s in history[: len(history) - len(recent)] if not s.baseline]
    kept = [s for s in older if s.status == "keep"]
    if kept:
        lines.append("\n### Kept changes (the path to the incumbent)")
        lines.extend(_capped(kept))
    for title, statuses in _DEAD_END_GROUPS:
        group = [s for s in older if s.status in statuses]
        if group:
            lines.append(f"\n### Dead ends: {title}")
            lines.extend(_capped(group))
    lines.append(f"\n### Most recent experiments ({'lower' if direction == 'minimize' else 'higher'} is better)")
    for summary in recent:
        log_chars = 0 if summary.id == told else DETAIL_LOG_CHARS
        lines.append(experiment_detail(summary, DETAIL_DIFF_CHARS, log_chars))
    return "\n".join(lines)


def experiment_detail(
    summary: ExperimentSummary, diff_chars: int = FULL_DIFF_CHARS, log_chars: int = FULL_LOG_CHARS
) -> str:
    """One experiment with its diff, reason and log tail, each cut to a bound."""
    lines = [one_line(summary, description_chars=300)]
    if summary.reason:
        lines.append(f"  reason: {cut(summary.reason.strip(), 600)}")
    if summary.diff:
        lines.append("  diff:\n" + _indent(cut(summary.diff, diff_chars)))
    if summary.log_tail and log_chars and summary.status not in ("keep", "discard"):
        lines.append("  log tail:\n" + _indent(_cut_head(summary.log_tail, log_chars)))
    return "\n".join(lines)


def context_chars(context_tokens: int, max_tokens: int) -> int:
    """How many characters of conversation a turn may hold: the window less the reply's room and a margin for
    the system prompt and tools, at a conservative ratio."""
    return max(20_000, (context_tokens - max_tokens - 20_000) * CHARS_PER_TOKEN)


def trim_tool_results(messages: list[dict[str, Any]], max_chars: int) -> bool:
    """Replace the oldest tool results (never the newest round's) by a short marker until the conversation fits
    in `max_chars`; True when anything was trimmed."""
    size = conversation_chars(messages)
    trimmed = False
    for message in messages[:-1]:
        if size <= max_chars:
            break
        if message.get("role") != "user" or not isinstance(message.get("content"), list):
            continue
        for block in message["content"]:
            content = block.get("content")
            if block.get("type") == "tool_result" and isinstance(content, str) and len(content) > len(TRIMMED):
                size -= len(content) - len(TRIMMED)
                block["content"] = TRIMMED
                trimmed = True
    return trimmed


def conversation_chars(messages: list[dict[str, Any]]) -> int:
    """The characters of a conversation's contents (what its token count grows with)."""
    return sum(_chars(message.get("content")) for message in messages)


def _chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    return sum(len(str(block.get("content") or block.get("text") or block.get("thinking") or block.get("input")
                       or "")) for block in content or [])


def one_line(summary: ExperimentSummary, description_chars: int = DESCRIPTION_CHARS) -> str:
    text = f"#{summary.id} {summary.status} {_metric(summary.metric)}"
    if summary.delta is not None:
        text += f" ({summary.delta:+.6f})"
    text += f" — {_short(summary.description, description_chars)}"
    if summary.reason and summary.status != "keep":
        text += f" [{_short(summary.reason, REASON_CHARS)}]"
    return text


def _capped(summaries: Sequence[ExperimentSummary]) -> Iterable[str]:
    hidden = len(summaries) - LINES_PER_GROUP
    if hidden > 0:
        yield f"- … {hidden} older ones not shown (read_history(experiment=N) shows any one by id)"
    for summary in summaries[-LINES_PER_GROUP:]:
        yield f"- {one_line(summary)}"


def _counts(history: Sequence[ExperimentSummary]) -> str:
    counts: dict[str, int] = {}
    experiments = [summary for summary in history if not summary.baseline]
    for summary in experiments:
        counts[summary.status] = counts.get(summary.status, 0) + 1
    detail = ", ".join(f"{status} {n}" for status, n in sorted(counts.items()))
    return f"Experiments after the baseline: {len(experiments)}" + (f" ({detail})" if detail else "")


def _metric(value: float | None) -> str:
    return "no metric" if value is None else f"{value:.6f}"


def _delta(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return ""
    return f" ({value - reference:+.6f} vs baseline)"


def _short(text: str, limit: int = DESCRIPTION_CHARS) -> str:
    return cut(" ".join(text.split()), limit)


def cut(text: str, limit: int) -> str:
    """`text`, shortened to at most `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut_head(text: str, limit: int) -> str:
    """Keep the end of a log, where the error is."""
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip("\n").splitlines())


def _line_count(content: str) -> int:
    return content.count("\n") + (0 if content.endswith("\n") or not content else 1)


def assistant_content(message: Any) -> list[dict[str, Any]]:
    """The response's blocks as request params, thinking signatures intact (the API checks them on tool turns).
    Empty text blocks are dropped: the API refuses them in a request."""
    blocks: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text" and block.text:
            blocks.append({"type": "text", "text": block.text})
        elif block.type == "thinking" and block.signature:  # a block cut by max_tokens is unsigned: not replayed
            blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif block.type == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": block.data})
        elif block.type == "tool_use":
            blocks.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
    return blocks


def append_to_last(reply: list[dict[str, Any]], words: str) -> None:
    """Add `words` to the last block of a user reply: inside the last tool result, since a text block after tool
    results invites an empty reply."""
    last = reply[-1]
    key = "content" if last["type"] == "tool_result" else "text"
    last[key] = f"{last[key]}\n\n{words}"
