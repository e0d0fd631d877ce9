"""The JSON event streams of the coding-agent CLIs, read line by line into loopdeck events.

Claude Code (`claude -p --output-format stream-json --verbose`): one object per line, `{"type": "system", …}`
first, then `{"type": "assistant", "message": {"content": [text | thinking | tool_use blocks]}}` and
`{"type": "user", "message": {"content": [tool_result blocks]}}`, and last `{"type": "result", "subtype",
"is_error", "result", "usage", "total_cost_usd"}`. Codex (`codex exec --json`): `thread.started`, `turn.started`,
`item.started` / `item.completed` with an `item` of type agent_message, reasoning, command_execution,
file_change, …, then `turn.completed` with `usage` (or `turn.failed` / `error`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from loopdeck.engine.events import AgentTextDelta, AgentThinkingDelta, AgentToolCall, AgentToolResult, Event

SUMMARY_CHARS = 120
ERROR_CHARS = 400  # an error is the whole story of a failed turn: longer than a tool call's summary


@dataclass
class StreamOutcome:
    """What a stream said besides its events: the final message, an error, token usage and cost."""

    final_text: str = ""
    error: str = ""
    finished: bool = False  # the stream's own end-of-turn record arrived
    usage: dict[str, int] = field(default_factory=dict)  # AgentUsage field names
    cost_usd: float = 0.0


def parse_line(line: str) -> dict[str, Any] | None:
    """One JSON object from a stream line; None for blank or non-JSON lines (CLIs print the odd banner)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _short(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ClaudeCodeStream:
    """Reads `claude -p --output-format stream-json` records."""

    def __init__(self, experiment: int, scratch: str) -> None:
        self.experiment = experiment
        self._scratch = scratch.rstrip("/") + "/"
        self.outcome = StreamOutcome()
        self._tools: dict[str, str] = {}  # tool_use id -> tool name, for the results

    def feed(self, record: dict[str, Any]) -> list[Event]:
        kind = record.get("type")
        message = record.get("message") if isinstance(record.get("message"), dict) else {}
        blocks = [block for block in message.get("content") or [] if isinstance(block, dict)]
        if kind == "assistant":
            return [event for block in blocks if (event := self._assistant_block(block)) is not None]
        if kind == "user":
            return [event for block in blocks if (event := self._tool_result(block)) is not None]
        if kind == "result":
            self._result(record)
        return []

    def _assistant_block(self, block: dict[str, Any]) -> Event | None:
        n = self.experiment
        if block.get("type") == "text" and block.get("text"):
            self.outcome.final_text = str(block["text"])
            return AgentTextDelta(experiment=n, text=str(block["text"]) + "\n")
        if block.get("type") == "thinking" and block.get("thinking"):
            return AgentThinkingDelta(experiment=n, text=str(block["thinking"]) + "\n")
        if block.get("type") == "tool_use":
            name = str(block.get("name", "tool"))
            self._tools[str(block.get("id", ""))] = name
            return AgentToolCall(experiment=n, tool=name, summary=self._tool_summary(name, block.get("input")))
        return None

    def _tool_summary(self, name: str, arguments: Any) -> str:
        arguments = arguments if isinstance(arguments, dict) else {}
        target = next((arguments[key] for key in ("file_path", "path", "pattern", "command") if key in arguments), "")
        return _short(f"{name} {str(target).removeprefix(self._scratch)}".strip())

    def _tool_result(self, block: dict[str, Any]) -> Event | None:
        if block.get("type") != "tool_result":
            return None
        content = block.get("content")
        if isinstance(content, list):
            content = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        tool = self._tools.get(str(block.get("tool_use_id", "")), "tool")
        return AgentToolResult(experiment=self.experiment, tool=tool, ok=not block.get("is_error"),
                               summary=_short(str(content or "").replace(self._scratch, "")))

    def _result(self, record: dict[str, Any]) -> None:
        outcome = self.outcome
        outcome.finished = True
        if isinstance(record.get("result"), str) and record["result"].strip():
            outcome.final_text = record["result"]
        if record.get("is_error") or record.get("subtype", "success") != "success":
            outcome.error = _short(record.get("result") or record.get("subtype") or "the CLI reported an error",
                                   ERROR_CHARS)
        usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
        outcome.usage = {"input_tokens": _int(usage.get("input_tokens")),
                         "output_tokens": _int(usage.get("output_tokens")),
                         "cache_write_tokens": _int(usage.get("cache_creation_input_tokens")),
                         "cache_read_tokens": _int(usage.get("cache_read_input_tokens"))}
        cost = record.get("total_cost_usd")
        outcome.cost_usd = float(cost) if isinstance(cost, int | float) else 0.0


class CodexStream:
    """Reads `codex exec --json` events."""

    def __init__(self, experiment: int, scratch: str) -> None:
        self.experiment = experiment
        self._scratch = scratch.rstrip("/") + "/"
        self.outcome = StreamOutcome()

    def feed(self, record: dict[str, Any]) -> list[Event]:
        kind = record.get("type")
        if kind == "item.completed" and isinstance(record.get("item"), dict):
            return self._item(record["item"])
        if kind == "turn.completed":
            usage = record.get("usage") if isinstance(record.get("usage"), dict) else {}
            cached = _int(usage.get("cached_input_tokens"))
            self.outcome.finished = True
            self.outcome.error = ""  # an `error` event before a completed turn was a passing one (a reconnect)
            self.outcome.usage = {"input_tokens": max(0, _int(usage.get("input_tokens")) - cached),
                                  "output_tokens": _int(usage.get("output_tokens")),
                                  "cache_write_tokens": 0, "cache_read_tokens": cached}
        elif kind in ("turn.failed", "error"):
            error = record.get("error") if isinstance(record.get("error"), dict) else record
            self.outcome.finished = kind == "turn.failed"
            self.outcome.error = _short(error.get("message") or kind, ERROR_CHARS)
        return []

    def _item(self, item: dict[str, Any]) -> list[Event]:
        n, kind = self.experiment, item.get("type")
        if kind == "agent_message" and item.get("text"):
            self.outcome.final_text = str(item["text"])
            return [AgentTextDelta(experiment=n, text=str(item["text"]) + "\n")]
        if kind == "reasoning" and item.get("text"):
            return [AgentThinkingDelta(experiment=n, text=str(item["text"]) + "\n")]
        if kind == "command_execution":
            ok = item.get("exit_code") in (0, None) and item.get("status") != "failed"
            summary = _short(str(item.get("command", "")))
            return [AgentToolCall(experiment=n, tool="command", summary=summary),
                    AgentToolResult(experiment=n, tool="command", ok=ok,
                                    summary=_short(f"exit {item.get('exit_code')}"))]
        if kind == "file_change":
            changes = [change for change in item.get("changes") or [] if isinstance(change, dict)]
            return [AgentToolCall(experiment=n, tool="file_change", summary=_short(
                f"{change.get('kind', 'update')} {str(change.get('path', '')).removeprefix(self._scratch)}"))
                for change in changes]
        if kind == "error" and item.get("message"):
            return [AgentTextDelta(experiment=n, text=f"[codex] {item['message']}\n")]
        return []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
