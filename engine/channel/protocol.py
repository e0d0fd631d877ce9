"""The channel's wire format and where its socket lives: newline-delimited JSON frames, one object per line.

Every frame has a type `t`:
  client → engine  hello    client: "user@host:pid", role: "control" | "watch", after: ts of the last event seen
                   command  command: a control command (engine/control.py's ControlCommand.to_dict)
  engine → client  hello    pid, workspace, approval, notes (the session's start-up notes), started (ts the engine
                            began serving: its notes are news only to a console attaching soon after), replay (the
                            number of events to come: every lifecycle event, high-rate ones of recent experiments)
                   event    event: an event as the journal stores it (engine/events.py's Event.to_dict)
                   live     the replay is over: what follows happens now
                   reply    id: the command's id, ok: bool, message: why it was refused ("" when accepted)

The socket is `.loopdeck/engine.sock` when that path fits `sun_path` (~100 bytes); otherwise it is a short path
under $XDG_RUNTIME_DIR (or /tmp) and `.loopdeck/engine.sock.path` names it.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event, event_from_dict, event_kinds

SOCKET_FILE = "engine.sock"
POINTER_FILE = "engine.sock.path"
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin
MAX_FRAME_BYTES = 1 << 20  # a client line longer than this is not a command: the connection is dropped
ROLES = ("control", "watch")


def encode(frame: dict[str, Any]) -> bytes:
    return (json.dumps(frame, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def event_frame(event: Event) -> bytes:
    return encode({"t": "event", "event": event.to_dict()})


def decode(line: bytes) -> dict[str, Any]:
    """One frame; ValueError for anything that is not a JSON object with a type."""
    frame = json.loads(line.decode("utf-8"))
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise ValueError("a frame is a JSON object with a type `t`")
    return frame


def decode_event(data: object) -> Event | None:
    """An event frame's event, or None for one this version cannot read (a newer engine's kind, a damaged one)."""
    if not isinstance(data, dict) or data.get("kind") not in event_kinds():
        return None
    try:
        return event_from_dict(data)
    except (TypeError, ValueError):
        return None


def client_id() -> str:
    """Who is on the other end of a console, as other consoles show it: user@host:pid."""
    return f"{getpass.getuser()}@{socket.gethostname()}:{os.getpid()}"


def runtime_dir() -> Path:
    """This user's private directory for sockets and the registry of running engines."""
    base = os.environ.get("XDG_RUNTIME_DIR", "")
    path = Path(base) / "loopdeck" if base and Path(base).is_dir() else Path("/tmp") / f"loopdeck-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise LoopdeckError(f"{path} belongs to another user: set XDG_RUNTIME_DIR to a directory of your own")
    return path


def socket_path_for(state_dir: Path) -> Path:
    """Where the engine of this workspace listens (a new engine calls this: it writes the pointer when needed)."""
    local = Path(state_dir).resolve() / SOCKET_FILE
    pointer = local.with_name(POINTER_FILE)
    if len(os.fsencode(local)) <= MAX_SOCKET_PATH:
        pointer.unlink(missing_ok=True)
        return local
    digest = hashlib.sha256(os.fsencode(local)).hexdigest()[:16]
    short = runtime_dir() / f"{digest}.sock"
    pointer.write_text(str(short) + "\n")
    return short


def find_socket(state_dir: Path) -> Path:
    """Where a running engine of this workspace listens (read through the pointer file when there is one)."""
    local = Path(state_dir).resolve() / SOCKET_FILE
    try:
        return Path(local.with_name(POINTER_FILE).read_text().strip())
    except OSError:
        return local


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process on the other end of a connected Unix socket (Linux SO_PEERCRED, else getpeereid)."""
    if hasattr(socket, "SO_PEERCRED"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1]
    if hasattr(socket, "LOCAL_PEERCRED"):  # macOS / BSD: struct xucred {u_int version; uid_t uid; …}
        creds = sock.getsockopt(0, socket.LOCAL_PEERCRED, struct.calcsize("2I"))
        return struct.unpack("2I", creds[:8])[1]
    raise OSError("this platform cannot tell who is on the other end of a Unix socket")
