"""The events journal (.loopdeck/events.jsonl): append, read back, and follow it live from another process.

One JSON object per line, flushed per event (not fsynced: a killed engine loses nothing it wrote, and hundreds of
events a second stay cheap). A crash mid-write leaves a torn last line without its newline; the next writer starts
on a fresh line, and readers skip the torn piece and count it.

Recovery from a damaged journal: readers skip what they cannot decode, so a damaged journal never stops a session;
a session start reports damage near the end (`check_journal`), `read_journal(path).bad_lines` names every damaged
line. Moving events.jsonl aside loses only the replay of past sessions in `loopdeck watch`; the ledger and
results.tsv keep every experiment.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event, event_from_dict, event_kinds


class JournalWriter:
    """Appends events to a journal; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the writer's lifetime
            if self._file.tell() > 0 and not _ends_with_newline(self.path):
                # A previous writer died mid-line: end the torn piece so our first event is a line of its own.
                self._write(b"\n")
        except OSError as exc:
            raise LoopdeckError(f"cannot write the events journal {self.path}: {exc}") from exc

    def append(self, event: Event) -> None:
        """Write one event as one line and flush it. A failed write (disk full…) raises `LoopdeckError`."""
        line = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            self._write(line.encode("utf-8"))
        except OSError as exc:
            raise LoopdeckError(f"cannot write the events journal {self.path}: {exc}") from exc

    def _write(self, data: bytes) -> None:
        with self._lock:
            self._file.write(data)
            self._file.flush()

    def close(self) -> None:
        """Close the file; events a failed write (disk full) left buffered are dropped, append already said so."""
        with self._lock, contextlib.suppress(OSError):
            self._file.close()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class JournalRead:
    """What a journal held: its events, plus what was skipped so a caller can warn about damage."""

    events: list[Event] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)  # 1-based numbers of lines that were not a decodable event
    unknown_kinds: int = 0  # events of kinds this version does not know (written by a newer loopdeck)
    torn_tail: bool = False  # the file ends with an incomplete line (a writer died mid-line, or is mid-write)

    @property
    def skipped(self) -> int:
        return len(self.bad_lines) + self.unknown_kinds + self.torn_tail

    def describe(self) -> str:
        """What was skipped, in words ("" for a clean journal), for a warning to the user."""
        problems = []
        if self.bad_lines:
            shown = ", ".join(map(str, self.bad_lines[:5])) + (", …" if len(self.bad_lines) > 5 else "")
            problems.append(f"{len(self.bad_lines)} damaged line(s) skipped (line {shown})")
        if self.torn_tail:
            problems.append("an incomplete last line skipped (a writer stopped mid-event)")
        if self.unknown_kinds:
            problems.append(f"{self.unknown_kinds} event(s) of unknown kinds skipped (written by a newer loopdeck?)")
        return "; ".join(problems)


def read_journal(path: Path) -> JournalRead:
    """Read a whole journal. A missing file reads as empty (the session has not written anything yet)."""
    result = JournalRead()
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return result
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    result.torn_tail = bool(tail)
    for number, line in enumerate(lines, start=1):
        _decode_line(line, number, result)
    return result


def read_events(path: Path) -> list[Event]:
    """Every event in a journal, skipping a torn last line, damaged lines and unknown kinds."""
    return read_journal(path).events


def check_journal(path: Path, tail_bytes: int = 1 << 20) -> JournalRead:
    """The damage in a journal's last `tail_bytes` (where a killed writer or a full disk leaves it), with true line
    numbers: cheap enough for every session start however long the journal has grown. Events are not kept."""
    result = JournalRead()
    try:
        with open(path, "rb") as journal:
            info = os.fstat(journal.fileno())
            # Only a regular file has an end: a device or a pipe in its place would be read forever.
            data = journal.read(info.st_size) if stat.S_ISREG(info.st_mode) else b""
    except FileNotFoundError:
        return result
    start = data.find(b"\n", max(0, len(data) - tail_bytes) - 1) + 1 if len(data) > tail_bytes else 0
    lines = data[start:].split(b"\n")
    result.torn_tail = bool(lines.pop())
    first = data.count(b"\n", 0, start) + 1
    for number, line in enumerate(lines, start=first):
        _decode_line(line, number, result)
    result.events.clear()
    return result


def scan_journal(path: Path, block: int = 1 << 20) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Each decodable event of a known kind as (its JSON object, its line without the newline), in one pass that
    holds one block at a time: a night's journal can hold millions of training steps. A torn last line, damaged
    lines and unknown kinds are skipped as by `read_journal`; the events are not built (a caller that only
    forwards lines need not pay for that)."""
    try:
        journal = open(path, "rb")  # noqa: SIM115 - closed below; a regular file is checked first
    except FileNotFoundError:
        return
    with journal:
        if not stat.S_ISREG(os.fstat(journal.fileno()).st_mode):
            return
        kinds, partial = event_kinds(), b""
        while chunk := journal.read(block):
            *lines, partial = (partial + chunk).split(b"\n")
            for line in lines:
                data = _json_object(line)
                if data is not None and data.get("kind") in kinds:
                    yield data, line


class JournalFollower:
    """Tails a journal that another process (or thread) appends to.

    Works before the file exists, keeps a partial last line until its newline arrives, and starts over from the
    beginning when the file is truncated or replaced (a new inode)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""
        self._line_number = 0
        self.bad_lines: list[int] = []
        self.unknown_kinds = 0

    @property
    def skipped(self) -> int:
        return len(self.bad_lines) + self.unknown_kinds

    def poll(self, max_bytes: int | None = None) -> list[Event]:
        """Events completed since the last poll. `max_bytes` bounds one call's reading (replaying a long journal
        in slices); the rest comes on later calls."""
        try:
            with open(self.path, "rb") as journal:
                stat = os.fstat(journal.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:
                    self._restart(stat.st_ino)
                journal.seek(self._offset)
                chunk = journal.read(-1 if max_bytes is None else max_bytes)
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        found = JournalRead()
        for line in complete:
            self._line_number += 1
            _decode_line(line, self._line_number, found)
        self.bad_lines.extend(found.bad_lines)
        self.unknown_kinds += found.unknown_kinds
        return found.events

    def _restart(self, inode: int) -> None:
        self._inode = inode
        self._offset = 0
        self._partial = b""
        self._line_number = 0


def _json_object(line: bytes) -> dict[str, Any] | None:
    """A line's JSON object; None for anything else (damage)."""
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _decode_line(line: bytes, number: int, into: JournalRead) -> None:
    if not line.strip():
        return
    data = _json_object(line)
    if data is None:
        into.bad_lines.append(number)
        return
    if data.get("kind") not in event_kinds():
        into.unknown_kinds += 1
        return
    try:
        into.events.append(event_from_dict(data))
    except (TypeError, ValueError):  # a known kind with missing or malformed fields
        into.bad_lines.append(number)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as journal:
        journal.seek(-1, os.SEEK_END)
        return journal.read(1) == b"\n"
