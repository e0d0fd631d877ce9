"""What the fake API services share: a threaded HTTP server on 127.0.0.1 that answers from a script and records
each request. Each fake (fake_anthropic, fake_openai) adds its own protocol: the handler, the reply format, errors."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class ScriptedServer:
    """`with Fake() as api: api.script(...)`: replies are served in order, one per request that asks for one."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._responses: queue.Queue[Any] = queue.Queue()
        self.requests: list[Any] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=name, daemon=True)

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(self, *responses: Any) -> None:
        for response in responses:
            self._responses.put(response)

    def pending(self) -> int:
        return self._responses.qsize()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def record(self, request: Any) -> None:
        with self._lock:
            self.requests.append(request)

    def next_response(self, exhausted: Callable[[], Any]) -> Any:
        """The next scripted response, or `exhausted()` when the script has run out."""
        try:
            return self._responses.get_nowait()
        except queue.Empty:
            return exhausted()


def json_body(handler: BaseHTTPRequestHandler) -> dict[str, Any]:
    """The request's JSON body; {} for an empty or unreadable one (the fake then answers as the API would)."""
    length = int(handler.headers.get("content-length", "0"))
    try:
        body = json.loads(handler.rfile.read(length) or b"{}")
    except json.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}
