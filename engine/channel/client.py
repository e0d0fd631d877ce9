"""A console's end of the channel: connect to a workspace's engine, read its frames, send it commands."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopdeck.engine.channel.protocol import client_id, decode, decode_event, encode
from loopdeck.engine.control import ControlCommand
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event

CONNECT_TIMEOUT = 5.0  # seconds for the engine's hello


class ChannelClient:
    """A connection to one engine. `connect` says hello; then either `follow` (a reader thread) delivers events
    and replies, or `request` waits for one command's reply (the CLI)."""

    def __init__(self, path: Path, role: str = "control", name: str | None = None) -> None:
        self.path = Path(path)
        self.role = role
        self.name = name or client_id()
        self.hello: dict[str, Any] = {}
        self.live = False  # the replay is over
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._send_lock = threading.Lock()

    def connect(self, after: float | None = None, timeout: float = CONNECT_TIMEOUT) -> dict[str, Any]:
        """Connect and exchange hellos; OSError when no engine listens, LoopdeckError when it refuses us or the
        socket is not this user's own (someone else's socket in its place would see our decisions and notes)."""
        owner = os.stat(self.path).st_uid
        if owner != os.getuid():
            raise LoopdeckError(f"{self.path} belongs to another user (uid {owner}): refusing to connect; remove "
                                "it if no engine of yours runs there")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(self.path))
            self._sock, self._buffer, self.live = sock, b"", False
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # refused: its reply says why
                sock.sendall(encode({"t": "hello", "client": self.name, "role": self.role, "after": after}))
            frame = self._next_frame()
        except BaseException:
            sock.close()
            self._sock = None
            raise
        if frame is None or frame["t"] != "hello":
            self.close()
            why = frame.get("message") if frame else "it hung up"
            raise LoopdeckError(f"the engine at {self.path} refused this console: {why}")
        sock.settimeout(None)
        self.hello = frame
        return frame

    def _next_frame(self) -> dict[str, Any] | None:
        """The next frame (blocking on the socket's timeout); None when the engine hung up."""
        assert self._sock is not None
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return decode(line)

    def follow(self, on_events: Callable[[list[Event]], None], on_reply: Callable[[dict[str, Any]], None],
               cancelled: Callable[[], bool] = lambda: False) -> None:
        """Deliver frames until the engine hangs up (or `cancelled()`); events come in batches, in order."""
        assert self._sock is not None
        self._sock.settimeout(0.25)
        chunk = b""  # frames that came with the hello are already in the buffer
        while not cancelled():
            *lines, self._buffer = (self._buffer + chunk).split(b"\n")
            events: list[Event] = []
            for line in lines:
                self._dispatch(line, events, on_reply)
            if events:
                on_events(events)
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                chunk = b""
                continue
            except OSError:
                return
            if not chunk:
                return

    def _dispatch(self, line: bytes, events: list[Event], on_reply: Callable[[dict[str, Any]], None]) -> None:
        try:
            frame = decode(line)
        except ValueError:
            return
        if frame["t"] == "event":
            event = decode_event(frame.get("event"))
            if event is not None:
                events.append(event)
        elif frame["t"] == "live":
            self.live = True
        elif frame["t"] == "reply":
            on_reply(frame)

    def send(self, command: ControlCommand) -> None:
        """Send one command (the reply comes through `follow`); OSError when the engine is gone."""
        if self._sock is None:
            raise OSError("not connected")
        with self._send_lock:
            self._sock.sendall(encode({"t": "command", "command": command.to_dict()}))

    def request(self, command: ControlCommand, timeout: float = CONNECT_TIMEOUT) -> str:
        """Send a command and wait for its reply (skipping the replay); returns the refusal, "" when taken."""
        self.send(command)
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            frame = self._next_frame()
            if frame is None:
                raise OSError("the engine hung up before answering")
            if frame["t"] == "reply" and frame.get("id") == command.id:
                return str(frame.get("message", ""))
        raise TimeoutError(f"the engine did not answer within {timeout:g}s")

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
