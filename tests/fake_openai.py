"""A local stand-in for an OpenAI-compatible Chat Completions endpoint: a threaded HTTP server on 127.0.0.1 that
speaks the real streaming format, scripted per test with a queue of responses.

Streamed replies are `data: {chat.completion.chunk}` server-sent events ending in `data: [DONE]`: a first chunk
with the assistant role, `reasoning_content` deltas (as vLLM and DeepSeek send them), `content` deltas,
`tool_calls` deltas (index, id, type and function name in the first fragment, the JSON arguments cut into
fragments after it), a chunk with `finish_reason`, and, when the request asks for
`stream_options.include_usage`, a last chunk with empty `choices` and the usage; a fault mid-stream is a
`data: {"error": …}` chunk. `GET /v1/models` lists the served models. The real `openai.OpenAI(base_url=server.url, ...)` client talks to it; every request is recorded.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from fake_http import ScriptedServer, json_body

_ids = itertools.count(1)


@dataclass(frozen=True)
class Call:
    """One tool call of a reply; `raw_arguments` replaces the JSON of `arguments` (for malformed JSON)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    raw_arguments: str | None = None
    id: str = ""

    def json(self) -> str:
        return self.raw_arguments if self.raw_arguments is not None else json.dumps(self.arguments)


def call(name: str, **arguments: Any) -> Call:
    return Call(name, arguments, id=f"call_{next(_ids):06d}")


@dataclass(frozen=True)
class Reply:
    """A 200 streamed completion."""

    content: str = ""
    reasoning: str = ""
    calls: tuple[Call, ...] = ()
    prompt_tokens: int = 100
    completion_tokens: int = 50
    cached_tokens: int = 0
    finish_reason: str | None = None  # default: tool_calls if the reply calls a tool, else stop
    fail_after: int | None = None  # after this many chunks, an error chunk ends the stream (a server fault)


def reply(*calls: Call, content: str = "", reasoning: str = "", **options: Any) -> Reply:
    return Reply(content=content, reasoning=reasoning, calls=calls, **options)


@dataclass(frozen=True)
class HttpError:
    """A non-200 answer with the OpenAI JSON error body."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None


def unauthorized() -> HttpError:
    return HttpError(401, "Incorrect API key provided: sk-wr***ng.", code="invalid_api_key")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: dict[str, Any]


class FakeOpenAI(ScriptedServer):
    """`with FakeOpenAI() as api: api.script(reply(...)); client = OpenAI(base_url=api.url, api_key=...)`.
    `models` is what `/v1/models` lists; `key`, when set, is the only bearer token accepted."""

    def __init__(self, models: tuple[str, ...] = ("fake-model",), key: str | None = None) -> None:
        super().__init__(_handler_for(self), "fake-openai")
        self.requests: list[RecordedRequest] = []
        self.models = models
        self.key = key

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def completions(self) -> list[dict[str, Any]]:
        """The bodies of the chat completion requests, in order."""
        return [r.body for r in self.requests if r.path == "/v1/chat/completions"]

    def next_reply(self) -> Reply | HttpError:
        return self.next_response(lambda: HttpError(400, "fake_openai: no scripted response left"))


def _handler_for(api: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            return  # keep test output clean

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if not self._authorised({}):
                return
            if self.path != "/v1/models":
                self._error(HttpError(404, f"Unknown path {self.path}"))
                return
            self._json(200, {"object": "list", "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in api.models]})

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            body = json_body(self)
            if not self._authorised(body):
                return
            if self.path != "/v1/chat/completions":
                self._error(HttpError(404, f"Unknown path {self.path}"))
                return
            if body.get("model") not in api.models:  # what api.openai.com answers for an unknown model
                self._error(HttpError(404, f"The model `{body.get('model')}` does not exist or you do not have "
                                      "access to it.", code="model_not_found"))
                return
            problem = request_problem(body)
            response = HttpError(400, problem) if problem else api.next_reply()
            if isinstance(response, HttpError):
                self._error(response)
            else:
                self._stream(body, response)

        def _authorised(self, body: dict[str, Any]) -> bool:
            api.record(RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                                        body))
            if api.key is None or self.headers.get("authorization") == f"Bearer {api.key}":
                return True
            self._error(unauthorized())
            return False

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, error: HttpError) -> None:
            self._json(error.status, {"error": {"message": error.message, "type": error.type, "param": None,
                                                "code": error.code}})

        def _stream(self, body: dict[str, Any], response: Reply) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("connection", "close")
            self.end_headers()
            self.close_connection = True
            usage = bool(body.get("stream_options", {}).get("include_usage"))
            try:
                for number, chunk in enumerate(chunks(body.get("model", ""), response, usage=usage)):
                    if number == response.fail_after:
                        chunk = {"error": {"message": "The server had an error while processing your request.",
                                           "type": "server_error", "param": None, "code": None}}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if number == response.fail_after:
                        return
                self.wfile.write(b"data: [DONE]\n\n")
            except (BrokenPipeError, ConnectionResetError):
                return  # the client closed the stream early

    return Handler


def chunks(model: str, response: Reply, *, usage: bool) -> list[dict[str, Any]]:
    """The `chat.completion.chunk` objects of one streamed reply, in the order an OpenAI server sends them."""
    ident = f"chatcmpl-fake{next(_ids):06d}"

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": ident, "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"reasoning_content": piece}) for piece in _pieces(response.reasoning) if piece]
    out += [chunk({"content": piece}) for piece in _pieces(response.content) if piece]
    for index, tool_call in enumerate(response.calls):
        out.append(chunk({"tool_calls": [{"index": index, "id": tool_call.id, "type": "function",
                                          "function": {"name": tool_call.name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                for piece in _pieces(tool_call.json(), 9)]
    out.append(chunk({}, response.finish_reason or ("tool_calls" if response.calls else "stop")))
    if usage:
        out.append({"id": ident, "object": "chat.completion.chunk", "created": 0, "model": model, "choices": [],
                    "usage": {"prompt_tokens": response.prompt_tokens,
                              "completion_tokens": response.completion_tokens,
                              "total_tokens": response.prompt_tokens + response.completion_tokens,
                              "prompt_tokens_details": {"cached_tokens": response.cached_tokens}}})
    return out


def _pieces(value: str, size: int = 12) -> list[str]:
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def request_problem(body: dict[str, Any]) -> str:
    """The checks of a real server that a client bug would trip: streaming, well-formed tools, and every
    assistant tool call answered by a tool message before the next assistant or user message."""
    if body.get("stream") is not True:
        return "fake_openai only serves stream: true"
    for tool in body.get("tools", []):
        if tool.get("type") != "function" or "name" not in tool.get("function", {}):
            return "tools: each tool must be {type: function, function: {name, description, parameters}}"
    messages = body.get("messages") or []
    if not messages:
        return "messages: must be non-empty"
    for position, message in enumerate(messages):
        wanted = {c["id"] for c in message.get("tool_calls") or []}
        if message.get("role") != "assistant" or not wanted:
            continue
        answered = set()
        for following in messages[position + 1:]:
            if following.get("role") != "tool":
                break
            answered.add(following.get("tool_call_id"))
        if wanted - answered:
            return (f"messages.[{position}]: an assistant message with 'tool_calls' must be followed by tool "
                    f"messages responding to each 'tool_call_id'; missing {sorted(wanted - answered)}")
    return ""
