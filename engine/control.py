"""The control channel: commands for a running engine, from its own process or through `.loopdeck/control.jsonl`.

Another process (`loopdeck ctl`, a script) controls a headless session by appending one JSON object per line to
`.loopdeck/control.jsonl`; the engine polls the file (about 5 times a second) from the offset it had when the
session started, so commands written before the session began — for an earlier session — are never replayed.
Each line is written with a single `write` on an `O_APPEND` descriptor, so concurrent senders never interleave
and a reader never sees half a command (it keeps a partial last line buffered until it is complete).

Actions and their fields:
  decide    approve: bool, note: str = "", experiment: int | None (None = whatever is pending)
  note      note: str                      a note delivered to the agent in its next turn
  pause     holds the loop before its next proposal (or before committing a change just approved); a run in
            progress finishes
  resume
  stop      stop after the current experiment
  abort     stop now: the running training process group is killed, the experiment recorded `interrupted`
  approval  policy: "ask" | "auto"
  mode      mode: "explore" | "exploit" | "combine" | "ablate" | "auto"   the research planner's mode from the next
            turn on, until another `mode`; "auto" lets the planner choose again
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import RESEARCH_MODES, ApprovalPolicyChanged, Event, Notice

CONTROL_FILE = "control.jsonl"
ACTIONS = ("decide", "note", "pause", "resume", "stop", "abort", "approval", "mode")
POLICIES = ("ask", "auto")
MODE_CHOICES = (*RESEARCH_MODES, "auto")


@dataclass(frozen=True)
class ControlCommand:
    action: str
    approve: bool = False
    note: str = ""
    experiment: int | None = None
    policy: str = ""
    mode: str = ""
    id: str = ""
    ts: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ControlCommand:
        """Validate one decoded line; a malformed command raises ValueError."""
        action = data.get("action")
        if action not in ACTIONS:
            raise ValueError(f"unknown control action {action!r}")
        policy = str(data.get("policy", ""))
        if action == "approval" and policy not in POLICIES:
            raise ValueError(f"approval policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        mode = str(data.get("mode", ""))
        if action == "mode" and mode not in MODE_CHOICES:
            raise ValueError(f"mode must be one of {', '.join(MODE_CHOICES)}, got {mode!r}")
        experiment = data.get("experiment")
        if experiment is not None and (isinstance(experiment, bool) or not isinstance(experiment, int)):
            raise ValueError(f"experiment must be a whole number, got {experiment!r}")
        return cls(
            action=action,
            approve=bool(data.get("approve", False)),
            note=str(data.get("note", data.get("text", ""))),
            experiment=experiment,
            policy=policy,
            mode=mode,
            id=str(data.get("id", "")),
            ts=float(data.get("ts", 0.0)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "action": self.action, "approve": self.approve, "note": self.note,
                "experiment": self.experiment, "policy": self.policy, "mode": self.mode}


def control_path(state_dir: Path) -> Path:
    return Path(state_dir) / CONTROL_FILE


def make_command(action: str, **fields: Any) -> ControlCommand:
    """A validated command with a fresh id; raises LoopdeckError for a bad action or field."""
    try:
        return ControlCommand.from_dict({"action": action, "id": uuid.uuid4().hex, "ts": time.time(), **fields})
    except ValueError as exc:
        raise LoopdeckError(f"bad control command: {exc}") from None


def send_command(workspace: Path | str, action: str, **fields: Any) -> ControlCommand:
    """Append one command to `workspace/.loopdeck/control.jsonl` and return it."""
    command = make_command(action, **fields)
    path = control_path(Path(workspace) / ".loopdeck")
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(command.to_dict(), ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return command


class ControlReader:
    """Follows control.jsonl from the end it had when the reader was made; `poll()` returns the new commands."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = self._size()
        self._partial = b""
        self.rejected: list[str] = []  # lines that were not valid commands, for the engine to report

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def poll(self) -> list[ControlCommand]:
        size = self._size()
        if size < self._offset:  # the file was truncated or replaced: read the new one from its start
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read(size - self._offset)
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        commands = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                commands.append(ControlCommand.from_dict(json.loads(raw)))
            except (ValueError, TypeError, AttributeError) as exc:
                self.rejected.append(f"{raw[:200]!r}: {exc}")
        return commands


@dataclass(frozen=True)
class Decision:
    approved: bool
    note: str = ""
    by: str = "human"  # "human" | "auto" (the policy switched to auto while the gate waited)


class Controller:
    """The engine's side of the channel: commands from any thread, read by the loop between its stages.

    Commands are applied in arrival order under one lock. Most only set what the loop reads at its next stage
    boundary (pause, stop, notes, policy); `abort` also sets `abort_event` at once, which the runner watches to kill
    the training process group without waiting for the loop. A decision is accepted only while the gate waits for
    one (for the pending experiment, or for "whatever is pending"); any other is reported and dropped, so a stray
    approval can never pass a change nobody has seen.
    """

    def __init__(self, approval: str, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self._cond = threading.Condition()
        self.approval = approval
        self.paused = False
        self.stop_requested = False
        self.abort_event = threading.Event()
        self.abort_reason = ""  # SessionFinished reason of an abort: "aborted", or "stopped" for SIGTERM/Ctrl-C
        self.forced_mode = ""  # the research mode a person chose; "" = the planner chooses
        self._notes: list[str] = []
        self._pending: int | None = None
        self._decision: Decision | None = None

    def put(self, command: ControlCommand) -> None:
        events: list[Event] = []
        with self._cond:
            if command.action == "decide":
                events += self._decide(command)
            elif command.action == "note":
                if command.note.strip():
                    self._notes.append(command.note.strip())
            elif command.action == "pause":
                self.paused = True
            elif command.action == "resume":
                self.paused = False
            elif command.action == "stop":
                self.stop_requested = True
            elif command.action == "abort":
                self._abort("aborted")
            elif command.action == "approval" and command.policy != self.approval:
                self.approval = command.policy
                events.append(ApprovalPolicyChanged(approval=command.policy))
            elif command.action == "mode":
                self.forced_mode = "" if command.mode == "auto" else command.mode
                chosen = "the planner chooses again" if command.mode == "auto" else f"{command.mode} from the next turn"
                events.append(Notice(level="info", message=f"research mode: {chosen}"))
            self._cond.notify_all()
        for event in events:
            self._emit(event)

    def interrupt(self, reason: str = "stopped") -> None:
        """SIGTERM / Ctrl-C: stop now like `abort`, but the session ends as `reason` ("stopped", a normal way to
        end; "error" when the engine cannot go on, e.g. its journal cannot be written)."""
        with self._cond:
            self._abort(reason)
            self._cond.notify_all()

    def _abort(self, reason: str) -> None:
        if not self.abort_event.is_set():
            self.abort_reason = reason
            self.abort_event.set()

    def _decide(self, command: ControlCommand) -> list[Event]:
        if self._pending is None or self._decision is not None:
            return [Notice(level="warning", message="no change is awaiting approval: decision ignored",
                           experiment=command.experiment)]
        if command.experiment is not None and command.experiment != self._pending:
            return [Notice(level="warning", message=f"decision for #{command.experiment} ignored: the change "
                           f"awaiting approval is #{self._pending}", experiment=command.experiment)]
        self._decision = Decision(approved=command.approve, note=command.note.strip())
        return []

    @property
    def halted(self) -> bool:
        """A stop or an abort was requested."""
        return self.stop_requested or self.abort_event.is_set()

    def take_notes(self) -> list[str]:
        with self._cond:
            notes, self._notes = self._notes, []
        return notes

    def wait_decision(self, experiment: int) -> Decision | None:
        """Block until a person decides on `experiment`, the policy turns auto, or a stop/abort (→ None)."""
        with self._cond:
            self._pending, self._decision = experiment, None
            try:
                while True:
                    if self._decision is not None:
                        return self._decision
                    if self.halted:
                        return None
                    if self.approval == "auto":
                        return Decision(approved=True, by="auto")
                    self._cond.wait(0.5)
            finally:
                self._pending = None

    def wait_while_paused(self, on_pause: Callable[[], None]) -> bool:
        """Hold the loop while paused (calling on_pause once if it had to wait); True if it paused at all."""
        with self._cond:
            if not self.paused or self.halted:
                return False
        on_pause()
        with self._cond:
            while self.paused and not self.halted:
                self._cond.wait(0.5)
        return True
