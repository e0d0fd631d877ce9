"""The console's session when the engine runs in its own process: `SessionControls` over the engine's channel.

Events from the channel go into the app's `EventBridge` like an in-process engine's; control calls become commands
on the socket, and a refusal (another console decided first) comes back as a notice for this console only. When
the connection drops (the engine was killed), `wait` returns and the app offers `restart`, which starts a new
engine with the same arguments and reattaches, replaying only what this console has not seen.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loopdeck.console.bridge import EventBridge
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.control import ControlCalls, ControlCommand
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event, Notice

Restart = Callable[[], Path]  # starts a new engine on the workspace and returns its socket path


class RemoteSession(ControlCalls):
    """A console attached to a background engine (role "control"), or watching one (role "watch")."""

    def __init__(self, socket_path: Path, bridge: EventBridge, *, role: str = "control",
                 restart: Restart | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.bridge = bridge
        self.read_only = role == "watch"
        self.can_restart = restart is not None
        self._restart = restart
        self.client = ChannelClient(self.socket_path, role=role)
        self._last_ts: float | None = None
        self._reader: threading.Thread | None = None
        self.connect()

    @property
    def name(self) -> str:
        return self.client.name

    @property
    def approval(self) -> str:
        return str(self.client.hello.get("approval", "ask"))

    @property
    def engine_pid(self) -> int | None:
        pid = self.client.hello.get("pid")
        return pid if isinstance(pid, int) else None

    @property
    def notes(self) -> list[str]:
        """The engine's start-up notes (news only soon after `started`)."""
        return [str(note) for note in self.client.hello.get("notes", [])]

    @property
    def started(self) -> float:
        """When the engine began serving (0 when it does not say)."""
        started = self.client.hello.get("started")
        return float(started) if isinstance(started, int | float) else 0.0

    def connect(self) -> None:
        """Attach (again): LoopdeckError when no engine answers on the socket."""
        try:
            self.client.connect(after=self._last_ts)
        except OSError as exc:
            raise LoopdeckError(f"no engine answers on {self.socket_path} ({exc.strerror or exc}): start one with "
                                "`loopdeck run DIR`") from None

    # --- the app's SessionControls ------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the channel in a background thread until the engine hangs up."""
        self._reader = threading.Thread(target=self._follow, name="loopdeck-channel-reader", daemon=True)
        self._reader.start()

    def _follow(self) -> None:
        self.client.follow(self._events, self._reply)
        self.client.close()

    def _events(self, events: list[Event]) -> None:
        self._last_ts = events[-1].ts
        self.bridge.emit_many(events)

    def _reply(self, frame: dict[str, Any]) -> None:
        if not frame.get("ok", True):
            self.bridge(Notice(level="warning", message=str(frame.get("message", "the engine refused"))))

    def wait(self, timeout: float | None = None) -> bool:
        """True once the engine has hung up (the session ended, or the engine died)."""
        if self._reader is None:
            return True
        self._reader.join(timeout)
        return not self._reader.is_alive()

    def restart(self) -> None:
        """Start a new engine with the same arguments and reattach (blocking: call it from a worker)."""
        if self._restart is None:
            raise LoopdeckError("this console cannot restart the engine: run `loopdeck run DIR` again")
        self.socket_path = self._restart()
        self.client = ChannelClient(self.socket_path, role=self.client.role, name=self.client.name)
        self.connect()
        self.start()

    def deliver(self, command: ControlCommand) -> None:
        try:
            self.client.send(command)
        except OSError:
            self.bridge(Notice(level="error", message=f"the engine is gone: {command.action} not sent"))
