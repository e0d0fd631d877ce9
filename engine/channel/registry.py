"""Which engines run on this machine: each writes `.loopdeck/engine.json` and an entry in the user's registry.

`.loopdeck/engine.json` says how to reach and restart a workspace's engine (pid, socket, argv) and what it is doing
(state, experiment, kept); the registry (`$XDG_STATE_HOME/loopdeck/engines/`, one small file per workspace) lets
`loopdeck ls` find every workspace without searching the disk. The workspace lock is the truth about life: a
record whose pid no longer holds its workspace's lock is a dead engine's, pruned on sight.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from loopdeck.engine.store.lock import is_locked

ENGINE_FILE = "engine.json"


@dataclass
class EngineRecord:
    workspace: str
    pid: int
    socket: str
    argv: list[str] = field(default_factory=list)  # the `loopdeck engine …` arguments, to restart it the same way
    started: float = field(default_factory=time.time)
    state: str = "starting"
    experiment: int | None = None
    kept: int = 0

    @property
    def state_dir(self) -> Path:
        return Path(self.workspace) / ".loopdeck"

    def uptime(self, now: float | None = None) -> float:
        return max(0.0, (now or time.time()) - self.started)


def registry_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME", "") or str(Path.home() / ".local" / "state")
    path = Path(base) / "loopdeck" / "engines"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _entry(workspace: str) -> Path:
    return registry_dir() / (hashlib.sha256(workspace.encode()).hexdigest()[:16] + ".json")


def _write_json(path: Path, data: dict) -> None:
    """Atomically: a reader never sees half a record."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def write_record(record: EngineRecord) -> None:
    """Publish (or update) this engine's record and its registry entry."""
    _write_json(record.state_dir / ENGINE_FILE, dataclasses.asdict(record))
    entry = _entry(record.workspace)
    if not entry.exists():
        _write_json(entry, {"workspace": record.workspace})


def forget(workspace: str) -> None:
    """An engine leaving: off the registry (its engine.json stays, for a later restart's arguments)."""
    with contextlib.suppress(OSError):
        _entry(workspace).unlink()


def last_record(state_dir: Path) -> EngineRecord | None:
    """The record the workspace's last engine wrote, alive or not (None when there never was one)."""
    try:
        data = json.loads((Path(state_dir) / ENGINE_FILE).read_text())
        return EngineRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def running_record(state_dir: Path) -> EngineRecord | None:
    """The record of the engine running on this workspace now, or None."""
    record = last_record(state_dir)
    if record is None:
        return None
    holder = is_locked(Path(state_dir))
    return record if holder is not None and holder.get("pid") == record.pid else None


def running_engines() -> list[EngineRecord]:
    """Every engine running on this machine for this user, oldest first; dead entries are pruned."""
    records = []
    for entry in sorted(registry_dir().glob("*.json")):
        try:
            workspace = json.loads(entry.read_text())["workspace"]
        except (OSError, ValueError, KeyError, TypeError):
            entry.unlink(missing_ok=True)
            continue
        record = running_record(Path(workspace) / ".loopdeck")
        if record is None:
            entry.unlink(missing_ok=True)
        else:
            records.append(record)
    return sorted(records, key=lambda record: record.started)
