"""The engine's end of the channel: accepts consoles of this user, replays the session so far, then streams live.

`publish` is called for every event from the engine's threads and never blocks: each client has a bounded outbox
drained by its own writer thread, and a client too slow to keep up is disconnected (it reattaches and replays)
rather than holding the engine back. Commands from a client go straight to the controller (no polling), and the
client gets a reply saying whether the command was taken.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopdeck.engine.channel.protocol import (
    MAX_FRAME_BYTES,
    ROLES,
    decode,
    encode,
    event_frame,
    peer_uid,
)
from loopdeck.engine.channel.replay import ReplayLog
from loopdeck.engine.control import ControlCommand
from loopdeck.engine.events import Event

OUTBOX_LIMIT = 20_000  # writes waiting for one client before it counts as stuck (a replay chunk is one)
REPLAY_CHUNK = 512  # replayed frames per write
HELLO_TIMEOUT = 5.0  # seconds a new connection has to say who it is


class _Client:
    """One connected console: its socket, outbox and identity."""

    def __init__(self, sock: socket.socket, name: str, role: str) -> None:
        self.sock = sock
        self.name = name
        self.role = role
        self.outbox: queue.Queue[bytes | None] = queue.Queue(OUTBOX_LIMIT)
        self.writer = threading.Thread(target=self.write_loop, name="loopdeck-channel-writer", daemon=True)

    def send(self, frame: bytes) -> bool:
        try:
            self.outbox.put_nowait(frame)
            return True
        except queue.Full:
            return False

    def write_loop(self) -> None:
        while (frame := self.outbox.get()) is not None:
            try:
                self.sock.sendall(frame)
            except OSError:
                break
        self.close()

    def finish(self) -> None:
        """Hang up once what is queued is written; at once if the outbox is full (never blocks)."""
        try:
            self.outbox.put_nowait(None)
        except queue.Full:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class ChannelServer:
    """Serves one session's events and control on a Unix socket; `start`, `publish` (any thread), `close`."""

    def __init__(self, path: Path, put: Callable[[ControlCommand], str], hello: Callable[[], dict[str, Any]],
                 replay: ReplayLog | None = None, uid_of: Callable[[socket.socket], int] = peer_uid,
                 pointer: Path | None = None) -> None:
        """`replay`: the session so far (the journal's, for a resumed or long session); `pointer`: the workspace's
        file naming a socket kept elsewhere (a long path), removed with the socket."""
        self.path = Path(path)
        self.pointer = pointer
        self._put = put
        self._hello = hello
        self._uid_of = uid_of
        self._lock = threading.Lock()
        self._replay = replay if replay is not None else ReplayLog()
        self._clients: list[_Client] = []
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.refused = 0  # connections from another user, for tests and the log
        self.started = time.time()  # when the engine began serving: consoles tell its start-up news from history

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a killed engine's socket file; the workspace lock says we are the one
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)  # before listen(): nobody can connect in between
        listener.listen(16)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept_loop, name="loopdeck-channel", daemon=True)
        self._acceptor.start()

    def publish(self, event: Event) -> None:
        frame = event_frame(event)
        with self._lock:
            self._replay.add_event(event, frame)
            stuck = [client for client in self._clients if not client.send(frame)]
            for client in stuck:
                self._clients.remove(client)
        for client in stuck:
            client.close()

    def close(self, flush_seconds: float = 2.0) -> None:
        """Stop listening and hang up on every client once what it was sent (the session's end) is written."""
        listener, self._listener = self._listener, None
        if listener is not None:
            # close() alone does not wake a thread blocked in accept(): it would sit on the file descriptor, and
            # once the number is reused (another socket of this process) take that socket's connections.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            if self._acceptor is not None:
                self._acceptor.join(5.0)
            listener.close()
            with contextlib.suppress(OSError):
                self.path.unlink()
            if self.pointer is not None:
                self.pointer.unlink(missing_ok=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.finish()
        for client in clients:
            if client.writer.is_alive():
                client.writer.join(flush_seconds)

    @property
    def clients(self) -> list[str]:
        with self._lock:
            return [client.name for client in self._clients]

    def _accept_loop(self) -> None:
        while (listener := self._listener) is not None:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), name="loopdeck-channel-client", daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            uid = self._uid_of(sock)
        except OSError:
            uid = -1
        if uid != os.getuid():
            self.refused += 1
            with contextlib.suppress(OSError):
                sock.sendall(encode({"t": "reply", "id": "", "ok": False,
                                     "message": "refused: this engine belongs to another user"}))
            sock.close()
            return
        reader = sock.makefile("rb")
        client = self._greet(sock, reader)
        if client is None:
            sock.close()
            return
        client.writer.start()
        try:
            self._read_commands(client, reader)
        finally:
            with self._lock:
                if client in self._clients:
                    self._clients.remove(client)
            client.finish()

    def _greet(self, sock: socket.socket, reader: Any) -> _Client | None:
        """Read the client's hello, then queue our hello, the replay and "live" ahead of any new event."""
        sock.settimeout(HELLO_TIMEOUT)
        try:
            frame = decode(reader.readline(MAX_FRAME_BYTES))
        except (OSError, ValueError):
            return None
        sock.settimeout(None)
        if frame.get("t") != "hello" or frame.get("role") not in ROLES:
            return None
        client = _Client(sock, str(frame.get("client", "?")), str(frame["role"]))
        after = frame.get("after")
        after = float(after) if isinstance(after, int | float) else None
        with self._lock:
            replay = self._replay.frames(after)
            client.send(encode({**self._hello(), "t": "hello", "started": self.started, "replay": len(replay)}))
            for start in range(0, len(replay), REPLAY_CHUNK):
                client.send(b"".join(replay[start:start + REPLAY_CHUNK]))
            client.send(encode({"t": "live"}))
            self._clients.append(client)
        return client

    def _read_commands(self, client: _Client, reader: Any) -> None:
        for line in iter(lambda: reader.readline(MAX_FRAME_BYTES), b""):
            if not line.endswith(b"\n"):
                return  # over-long or cut off: not a command we can trust
            try:
                frame = decode(line)
                if frame["t"] != "command" or not isinstance(frame.get("command"), dict):
                    raise ValueError("expected a command frame")
                command = ControlCommand.from_dict({**frame["command"], "client": client.name})
            except (ValueError, TypeError) as exc:
                client.send(encode({"t": "reply", "id": "", "ok": False, "message": f"bad command: {exc}"}))
                continue
            if client.role != "control":
                refusal = "this console is read-only (`loopdeck watch`): use `loopdeck attach DIR` to control"
            else:
                refusal = self._put(command)
            client.send(encode({"t": "reply", "id": command.id, "ok": not refusal, "message": refusal}))
