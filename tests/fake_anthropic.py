"""A local stand-in for Anthropic's Messages API: a threaded HTTP server on 127.0.0.1 that speaks the real
streaming format (server-sent events) and the real error shapes, scripted per test with a queue of responses.

The real `anthropic.Anthropic(base_url=server.url, api_key=...)` client talks to it, so tests exercise the SDK's
own parsing, retries and error classes; only the service behind the HTTP boundary is fake. Every request is
recorded (headers and JSON body) for assertions on what the SDK sent. It also answers the Models API's
GET /v1/models/{id} (an agent's start check) from `models`, and validates requests as the real API does (every
tool_use answered, no thinking block without its signature). Replies can carry malformed tool JSON, unsigned
thinking, a refusal's stop_details, or drop the connection. In adaptive mode (`responder`, e.g. `FileEditor`)
requests past the script are answered from what they ask, as a model would: the real Claude Code CLI is driven
that way. `make_turn` builds the agent turn these tests drive. (Over 400 lines: one server, one protocol.)
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from fake_http import ScriptedServer, json_body

from loopdeck.engine.agents.base import AgentTurn

_ids = itertools.count(1)


# --- what a scripted response is made of -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One content block of a streamed reply: thinking, text or tool_use."""

    type: str
    text: str = ""  # thinking or text
    name: str = ""  # tool_use
    input: dict[str, Any] = field(default_factory=dict)  # tool_use
    id: str = ""
    raw_json: str | None = None  # tool_use: stream this exact (possibly malformed) JSON instead of `input`
    signed: bool = True  # thinking: False leaves out the signature_delta, as when max_tokens cuts the block


def thinking(text: str) -> Block:
    return Block("thinking", text=text)


def unsigned_thinking(text: str) -> Block:
    """A thinking block cut off by max_tokens before its signature arrived."""
    return Block("thinking", text=text, signed=False)


def text(value: str) -> Block:
    return Block("text", text=value)


def tool_use(name: str, **tool_input: Any) -> Block:
    return Block("tool_use", name=name, input=tool_input, id=f"toolu_{next(_ids):06d}")


def malformed_tool_use(name: str, raw_json: str = '{"path": "train.py", "content": "x\\q"}') -> Block:
    """A tool call whose streamed input is not valid JSON (the SDK raises a plain ValueError on it)."""
    return Block("tool_use", name=name, raw_json=raw_json, id=f"toolu_{next(_ids):06d}")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 100
    output_tokens: int = 50
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


@dataclass(frozen=True)
class Reply:
    """A 200 streamed message. `fail_after` cuts the stream after that many SSE events with an `event: error`
    of type `fail_type`, as the API does when it is overloaded mid-response."""

    blocks: tuple[Block, ...]
    usage: Usage = Usage()
    stop_reason: str | None = None  # default: tool_use if a block calls a tool, else end_turn
    fail_after: int | None = None
    fail_type: str = "overloaded_error"
    event_delay: float = 0.0  # seconds between SSE events, for tests that act while a reply streams
    stop_details: dict[str, Any] | None = None  # with stop_reason "refusal": category and explanation


@dataclass(frozen=True)
class HttpError:
    """A non-200 answer with the API's JSON error body."""

    status: int
    type: str
    message: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Dropped:
    """The connection is closed without an answer, as by a service that is down behind its load balancer."""


def reply(*blocks: Block, usage: Usage | None = None, **options: Any) -> Reply:
    return Reply(blocks=blocks, usage=usage or Usage(), **options)


def overloaded(status: int = 529) -> HttpError:
    # retry-after-ms keeps the SDK's own backoff to a millisecond in tests.
    return HttpError(status, "overloaded_error", "Overloaded", (("retry-after-ms", "1"),))


def rate_limited() -> HttpError:
    return HttpError(429, "rate_limit_error", "Number of requests has exceeded your rate limit",
                     (("retry-after-ms", "1"),))


def unauthorized() -> HttpError:
    return HttpError(401, "authentication_error", "invalid x-api-key")


def prompt_too_long() -> HttpError:
    return HttpError(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")


def refusal(*blocks: Block, category: str = "cyber", explanation: str = "This looks like exploit development.",
            **options: Any) -> Reply:
    """A reply the model stopped with stop_reason "refusal" and the API's structured stop_details."""
    return reply(*blocks, stop_reason="refusal",
                 stop_details={"type": "refusal", "category": category, "explanation": explanation}, **options)


def model_info(model: str, *, thinking: tuple[str, ...] = ("adaptive", "between_tools"),
               efforts: tuple[str, ...] = ("low", "medium", "high", "xhigh", "max"),
               max_input_tokens: int = 200_000, max_tokens: int = 64_000) -> dict[str, Any]:
    """The body of GET /v1/models/{id}: the model's limits and which thinking types and efforts it accepts."""
    supported = {"supported": True}
    unsupported = {"supported": False}
    other = {name: unsupported for name in ("batch", "citations", "code_execution", "image_input", "pdf_input",
                                            "structured_outputs")}
    return {
        "type": "model", "id": model, "display_name": model, "created_at": "2026-01-01T00:00:00Z",
        "lifecycle": "active", "max_input_tokens": max_input_tokens, "max_tokens": max_tokens,
        "capabilities": {
            **other,
            "context_management": {"supported": False},
            "server_tools": {"supported": False},
            "effort": {"supported": bool(efforts), **{level: supported if level in efforts else unsupported
                                                      for level in ("low", "medium", "high", "xhigh", "max")}},
            "thinking": {"supported": True, "types": {kind: supported if kind in thinking else unsupported
                                                      for kind in ("adaptive", "enabled", "disabled",
                                                                   "between_tools")}},
        },
    }


# --- the server --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]


class FakeAnthropic(ScriptedServer):
    """`with FakeAnthropic() as api: api.script(reply(...), ...); client = Anthropic(base_url=api.url, ...)`."""

    def __init__(self) -> None:
        super().__init__(_handler_for(self), "fake-anthropic")
        self.requests: list[RecordedRequest] = []  # the Messages API calls
        # GET /v1/models/{id}: a model it does not list is a 404, as from the real API.
        self.models: dict[str, dict[str, Any] | HttpError] = {"claude-sonnet-5-5": model_info("claude-sonnet-5-5")}
        self.model_requests: list[RecordedRequest] = []  # the Models API look-ups (an agent's start check)
        # Adaptive mode: once the script is empty, each request is answered by `responder(body)`.
        self.responder: Callable[[dict[str, Any]], Reply | HttpError] | None = None

    @property
    def url(self) -> str:
        return self.origin

    def look_up(self, request: RecordedRequest) -> dict[str, Any] | HttpError:
        """GET /v1/models/{id}: the model's entry, its scripted error, or the API's 404 for a model it lacks."""
        with self._lock:
            self.model_requests.append(request)
        model = request.path.split("?")[0].removeprefix("/v1/models/")
        info = self.models.get(model) if request.path.startswith("/v1/models/") else None
        return HttpError(404, "not_found_error", f"model: {model}") if info is None else info

    def next_reply(self, body: dict[str, Any]) -> Reply | HttpError | Dropped:
        if self.responder is not None:
            responder = self.responder
            return self.next_response(lambda: responder(body))
        return self.next_response(
            lambda: HttpError(400, "invalid_request_error", "fake_anthropic: no scripted response left"))


def _handler_for(api: FakeAnthropic) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            return  # keep test output clean

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            answer = api.look_up(RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, {}))
            if isinstance(answer, HttpError):
                self._error(answer)
                return
            payload = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = json_body(self)
            api.record(RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            if self.path.split("?")[0] != "/v1/messages":  # Claude Code asks /v1/messages?beta=true
                self._error(HttpError(404, "not_found_error", f"Not found: {self.path}"))
                return
            problem = _request_problem(body)
            if problem:
                self._error(HttpError(400, "invalid_request_error", problem))
                return
            response = api.next_reply(body)
            if isinstance(response, Dropped):
                self.close_connection = True  # no answer at all: the client sees the connection fail
            elif isinstance(response, HttpError):
                self._error(response)
            else:
                self._stream(body, response)

        def _error(self, error: HttpError) -> None:
            payload = json.dumps({
                "type": "error", "error": {"type": error.type, "message": error.message},
                "request_id": f"req_fake{next(_ids):06d}",
            }).encode()
            self.send_response(error.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            for name, value in error.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _stream(self, body: dict[str, Any], response: Reply) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("request-id", f"req_fake{next(_ids):06d}")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for number, (event, data) in enumerate(sse_events(body.get("model", ""), response)):
                    if response.fail_after is not None and number == response.fail_after:
                        event, data = "error", {"type": "error", "error": {"type": response.fail_type,
                                                                            "message": "Overloaded"}}
                    self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                    self.wfile.flush()
                    if event == "error":
                        return
                    if response.event_delay:
                        time.sleep(response.event_delay)
            except (BrokenPipeError, ConnectionResetError):
                return  # the client closed the stream early (a cancelled turn)

    return Handler


def sse_events(model: str, response: Reply) -> Iterator[tuple[str, dict[str, Any]]]:
    """The events of one streamed message, in the order and shape the Messages API sends them."""
    usage = response.usage
    yield "message_start", {"type": "message_start", "message": {
        "id": f"msg_fake{next(_ids):06d}", "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": 1,
                  "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                  "cache_read_input_tokens": usage.cache_read_input_tokens},
    }}
    yield "ping", {"type": "ping"}
    for index, block in enumerate(response.blocks):
        if block.type == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _pieces(block.text)]
            if block.signed:
                deltas.append({"type": "signature_delta", "signature": f"sig-{index}-fake"})
        elif block.type == "text":
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _pieces(block.text)]
        else:
            start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": piece}
                      for piece in ["", *_pieces(block.raw_json if block.raw_json is not None
                                                  else json.dumps(block.input), 24)]]
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
        for delta in deltas:
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    stop_reason = response.stop_reason or (
        "tool_use" if any(b.type == "tool_use" for b in response.blocks) else "end_turn")
    # message_delta's usage counts are cumulative totals for the whole message, not increments.
    yield "message_delta", {"type": "message_delta",
                            "delta": {"stop_reason": stop_reason, "stop_sequence": None,
                                      "stop_details": response.stop_details},
                            "usage": {"output_tokens": usage.output_tokens, "input_tokens": usage.input_tokens,
                                      "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                                      "cache_read_input_tokens": usage.cache_read_input_tokens}}
    yield "message_stop", {"type": "message_stop"}


def _pieces(value: str, size: int = 12) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def _request_problem(body: dict[str, Any]) -> str:
    """The checks of the real API that a client bug would trip: required fields, streaming, and every tool_use
    answered by a tool_result in the next user message."""
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if body.get("stream") is not True:
        return "fake_anthropic only serves stream: true"
    messages = body["messages"]
    if not messages or messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    for position, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list) and not content:
            return f"messages.{position}: content must be non-empty"
        for number, block in enumerate(content if isinstance(content, list) else []):
            if block.get("type") == "thinking" and not block.get("signature"):
                return f"messages.{position}.content.{number}.thinking.signature: Field required"
        if message.get("role") != "assistant" or not isinstance(content, list):
            continue
        wanted = {block["id"] for block in content if block.get("type") == "tool_use"}
        if not wanted:
            continue
        following = messages[position + 1]["content"] if position + 1 < len(messages) else []
        answered = {block.get("tool_use_id") for block in following if isinstance(block, dict)
                    and block.get("type") == "tool_result"}
        if wanted - answered:
            return (f"messages.{position + 1}: tool_use ids were found without tool_result blocks immediately "
                    f"after: {sorted(wanted - answered)}")
    return ""


# --- adaptive mode: answer what the client actually asked ---------------------------------------------------------


_WORKDIR = re.compile(r"(?:Primary working directory|Working directory): (/[^\s\\\"]+)")
_LINE_NUMBER = re.compile(r"^\s*\d+(?:→|\t)")  # Read's `cat -n` style prefix: "     1\t" or "1→"


class FileEditor:
    """A responder for `FakeAnthropic.responder` that drives a coding agent the way a model would, reading the
    request rather than a script: it Reads `filename` under the working directory the client's prompt names, then
    Edits one line the Read returned (the first that `change` rewrites), then ends the turn with `final`.
    Requests that offer no Read/Edit tools (a client's side requests) get a short text answer."""

    def __init__(self, filename: str, change: Callable[[str], str | None], final: str) -> None:
        self.filename, self.change, self.final = filename, change, final
        self.edits: list[dict[str, Any]] = []  # the Edit inputs it sent, for assertions

    def __call__(self, body: dict[str, Any]) -> Reply | HttpError:
        offered = {tool.get("name") for tool in body.get("tools") or [] if isinstance(tool, dict)}
        if not {"Read", "Edit"} <= offered:
            return reply(text("OK"))
        workdir = _WORKDIR.search(json.dumps(body, ensure_ascii=False))
        if workdir is None:
            return HttpError(400, "invalid_request_error", "fake_anthropic: no working directory in the prompt")
        path = f"{workdir.group(1).rstrip('/')}/{self.filename}"
        calls, results = tool_exchanges(body.get("messages") or [])
        if not any(call["name"] == "Read" for call in calls.values()):
            return reply(text(f"Reading {self.filename} first."), tool_use("Read", file_path=path))
        edited = [call_id for call_id, call in calls.items() if call["name"] == "Edit"]
        if edited and not results.get(edited[-1], {}).get("is_error"):
            return reply(text(self.final))
        read_id = [call_id for call_id, call in calls.items() if call["name"] == "Read"][-1]
        for line in result_text(results.get(read_id, {})).splitlines():
            line = _LINE_NUMBER.sub("", line, count=1)
            new_line = self.change(line)
            if new_line is not None and new_line != line:
                edit = {"file_path": path, "old_string": line, "new_string": new_line}
                self.edits.append(edit)
                return reply(tool_use("Edit", **edit))
        return reply(text(f"Nothing in {self.filename} to change."))


def tool_exchanges(messages: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """The conversation's tool calls (id -> tool_use block) and their results (tool_use_id -> tool_result)."""
    calls: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for message in messages:
        for block in message.get("content") if isinstance(message.get("content"), list) else []:
            if block.get("type") == "tool_use":
                calls[block["id"]] = block
            elif block.get("type") == "tool_result":
                results[block.get("tool_use_id", "")] = block
    return calls, results


def result_text(result: dict[str, Any]) -> str:
    content = result.get("content", "")
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


# --- a turn to drive an agent with -------------------------------------------------------------------------------


def make_turn(workspace: Path, events: list[Any] | None = None, **overrides: Any) -> AgentTurn:
    """An `AgentTurn` for experiment 1 of `workspace`: editable train.py (the existing editable files are read
    from disk), protected prepare.py; events go to `events` when given."""
    editable = overrides.pop("editable", ("train.py",))
    fields: dict[str, Any] = {
        "experiment": 1, "workspace": workspace,
        "files": {path: (workspace / path).read_text() for path in editable if (workspace / path).is_file()},
        "editable": editable, "protected": ("prepare.py",), "program": "Make val_bpb as low as you can.",
        "metric_name": "val_bpb", "direction": "minimize", "history": (), "incumbent": None,
    }
    if events is not None:
        fields["emit"] = events.append
    fields.update(overrides)
    return AgentTurn(**fields)
