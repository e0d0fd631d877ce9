"""The control channel: commands for a running engine, from its own process or through `.loopdeck/control.jsonl`.

Another process (`loopdeck ctl`, a script) controls a headless session by appending one JSON object per line to
`.loopdeck/control.jsonl`; the engine polls the file (about 5 times a second) from the offset it had when the
session started, so commands written before the session began — for an earlier session — are never replayed.
Each line is written with a single `write` on an `O_APPEND` descriptor, so concurrent senders never interleave
and a reader never sees half a command (it keeps a partial last line buffered until it is complete).

Actions and their fields:
  decide    approve: bool, note: str = "", experiment: int | None (None = whatever is pending); the first
            decision on a change wins, a later one is refused with who decided it
  note      note: str                      a note delivered to the agent in its next turn
  pause     holds the loop before its next proposal (or before committing a change just approved); a run in
            progress finishes
  resume
  stop      stop after the current experiment
  abort     stop now: the running training process group is killed, the experiment recorded `interrupted`
  approval  policy: "ask" | "auto"
Every command may say who sent it (`client`, e.g. "ann@gpu1:4242"; the channel fills it in), shown with decisions.
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
    client: str = ""  # who sent it: user@host:pid of a console, "" for control.jsonl

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
            client=str(data.get("client", "")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "action": self.action, "approve": self.approve, "note": self.note,
                "experiment": self.experiment, "policy": self.policy, "mode": self.mode, "client": self.client}


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


class ControlCalls:
    """A session's control API, one command per call, for whatever carries commands to the engine (`deliver`:
    the in-process controller, or a console's channel)."""

    def deliver(self, command: ControlCommand) -> None:
        raise NotImplementedError

    def _send(self, action: str, **fields: Any) -> None:
        self.deliver(make_command(action, **fields))

    def decide(self, approve: bool, note: str = "", experiment: int | None = None) -> None:
        self._send("decide", approve=approve, note=note, experiment=experiment)

    def send_note(self, text: str) -> None:
        self._send("note", note=text)

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def stop_after_current(self) -> None:
        self._send("stop")

    def abort(self) -> None:
        self._send("abort")

    def set_approval(self, policy: str) -> None:
        if policy not in POLICIES:
            raise LoopdeckError(f"approval policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self._send("approval", policy=policy)

    def set_mode(self, mode: str) -> None:
        """Force the research planner's mode from the next turn on ("auto": the planner chooses again)."""
        if mode not in MODE_CHOICES:
            raise LoopdeckError(f"research mode must be one of {', '.join(MODE_CHOICES)}, got {mode!r}")
        self._send("mode", mode=mode)


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
    client: str = ""  # who decided (a console's user@host:pid), when a person did

    def describe(self) -> str:
        """'approved by ann@gpu1:4242', 'vetoed', 'approved automatically'."""
        verdict = "approved" if self.approved else "vetoed"
        if self.by == "auto":
            return f"{verdict} automatically"
        return f"{verdict} by {self.client}" if self.client else verdict


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
        self._decided: dict[int, Decision] = {}  # experiment -> its decision, to answer a late second one

    def put(self, command: ControlCommand) -> str:
        """Apply one command; returns why it was refused ("" when taken), for a sender that waits for an answer."""
        events: list[Event] = []
        refusal = ""
        with self._cond:
            if command.action == "decide":
                refusal = self._decide(command)
                if refusal:
                    events.append(Notice(level="warning", message=refusal, experiment=command.experiment))
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
        return refusal

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

    def _decide(self, command: ControlCommand) -> str:
        """Take the first decision on the pending change; any other is refused, saying why."""
        sender = f" from {command.client}" if command.client else ""
        earlier = self._decided.get(command.experiment if command.experiment is not None else -1)
        if earlier is None and command.experiment is None and self._pending is not None:
            earlier = self._decision
        if earlier is not None:
            number = command.experiment if command.experiment is not None else self._pending
            return f"decision{sender} on #{number} ignored: already {earlier.describe()}"
        if self._pending is None:
            return f"no change is awaiting approval: decision{sender} ignored"
        if command.experiment is not None and command.experiment != self._pending:
            return (f"decision{sender} for #{command.experiment} ignored: the change awaiting approval is "
                    f"#{self._pending}")
        self._decision = Decision(approved=command.approve, note=command.note.strip(), client=command.client)
        self._decided[self._pending] = self._decision
        return ""

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
            self._decided.pop(experiment, None)  # asked again (e.g. after a pause): a fresh decision is due
            try:
                while True:
                    if self._decision is not None:
                        return self._decision
                    if self.halted:
                        return None
                    if self.approval == "auto":
                        self._decided[experiment] = Decision(approved=True, by="auto")
                        return self._decided[experiment]
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
