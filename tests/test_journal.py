"""Events journal: every kind round-trips, torn and damaged lines are skipped, a follower tails another process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import time
import typing
from pathlib import Path
from typing import Any

import pytest

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event, ExperimentFinished, GpuSample, LogLine, Notice, event_kinds
from loopdeck.engine.store.journal import JournalFollower, JournalWriter, read_events, read_journal

REPO = Path(__file__).resolve().parents[1]


def _sample(hint: Any, name: str) -> Any:
    """A non-default value of type `hint`, so a field that failed to round-trip would show."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return args[-1]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (_sample(args[0], name), _sample(args[0], name + "'"))
        return tuple(_sample(a, name) for a in args)
    if args and type(None) in args:  # Optional[X]
        return _sample(next(a for a in args if a is not type(None)), name)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: _sample(hints[f.name], f.name) for f in dataclasses.fields(hint)})
    return {str: f"{name} ✓ \"quoted\"\nnewline", int: 7, float: 2.5, bool: True}[hint]


def one_of_each_kind() -> list[Event]:
    events = []
    for kind, cls in sorted(event_kinds().items()):
        hints = typing.get_type_hints(cls)
        values = {f.name: _sample(hints[f.name], f.name) for f in dataclasses.fields(cls) if f.name != "ts"}
        events.append(cls(ts=1700000000.25, **values))
        assert events[-1].kind == kind
    return events


def test_every_event_kind_round_trips(tmp_path: Path) -> None:
    events = one_of_each_kind()
    assert len(events) == len(event_kinds()) >= 20
    assert any(isinstance(g, GpuSample) for e in events for g in getattr(e, "gpus", ()))  # nested dataclasses too
    path = tmp_path / "events.jsonl"
    with JournalWriter(path) as writer:
        for event in events:
            writer.append(event)
    assert read_events(path) == events
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(events) + 1  # one line per event, newline-terminated


def test_append_reopens_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "events.jsonl"
    first = Notice(level="info", message="one")
    second = Notice(level="warning", message="two")
    with JournalWriter(path) as writer:
        writer.append(first)
    with JournalWriter(path) as writer:
        writer.append(second)
    assert read_events(path) == [first, second]


def test_missing_journal_reads_empty(tmp_path: Path) -> None:
    assert read_events(tmp_path / "nothing.jsonl") == []
    assert read_journal(tmp_path / "nothing.jsonl").skipped == 0


def test_torn_last_line_is_skipped_and_the_next_writer_starts_a_fresh_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    before = [LogLine(experiment=1, line=f"step {i}") for i in range(3)]
    with JournalWriter(path) as writer:
        for event in before:
            writer.append(event)
    torn = json.dumps(Notice(level="error", message="cut off").to_dict()).encode()[:25]
    with open(path, "ab") as crashed_writer:
        crashed_writer.write(torn)

    journal = read_journal(path)
    assert journal.events == before and journal.torn_tail and journal.skipped == 1
    assert "incomplete last line" in journal.describe()

    after = Notice(level="info", message="resumed")
    with JournalWriter(path) as writer:
        writer.append(after)
    journal = read_journal(path)
    assert journal.events == [*before, after]
    assert journal.bad_lines == [4] and not journal.torn_tail


def test_damaged_lines_and_unknown_kinds_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    good = Notice(level="info", message="fine")
    path.write_bytes(
        b"\n".join([
            json.dumps(good.to_dict()).encode(),
            b"\xff\xfe not utf-8",
            b"{broken json",
            b"[1, 2, 3]",
            json.dumps({"kind": "from_the_future", "x": 1}).encode(),
            json.dumps({"kind": "notice", "message": "no level"}).encode(),
            b"",
            json.dumps(good.to_dict()).encode(),
        ]) + b"\n"
    )
    journal = read_journal(path)
    assert journal.events == [good, good]
    assert journal.bad_lines == [2, 3, 4, 6]
    assert journal.unknown_kinds == 1 and journal.skipped == 5
    assert journal.describe() == (
        "4 damaged line(s) skipped (line 2, 3, 4, 6); 1 event(s) of unknown kinds skipped (written by a newer "
        "loopdeck?)"
    )


def test_full_disk_is_a_clear_error() -> None:
    writer = JournalWriter(Path("/dev/full"))
    try:
        with pytest.raises(LoopdeckError, match="events journal /dev/full.*No space left"):
            writer.append(Notice(level="info", message="x" * 10_000))
    finally:
        with contextlib.suppress(OSError):
            writer.close()


def test_follower_waits_for_the_file_and_for_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = JournalFollower(path)
    assert follower.poll() == []
    event = ExperimentFinished(experiment=3, status="keep", metric=1.25, delta=-0.01, incumbent_metric=1.26,
                               commit="abc1234", description="more depth")
    line = (json.dumps(event.to_dict()) + "\n").encode()
    with open(path, "ab") as out:
        out.write(line[:30])
        out.flush()
        assert follower.poll() == []
        out.write(line[30:-1])
        out.flush()
        assert follower.poll() == []
        out.write(b"\n")
        out.flush()
        assert follower.poll() == [event]
        assert follower.poll() == []


def test_follower_skips_a_torn_line_completed_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    follower = JournalFollower(path)
    path.write_bytes(b'{"kind":"notice","level":"in')
    assert follower.poll() == []
    resumed = Notice(level="info", message="resumed")
    with JournalWriter(path) as writer:
        writer.append(resumed)
    assert follower.poll() == [resumed]
    assert follower.bad_lines == [1]


def test_follower_starts_over_after_truncation_or_replacement(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    old = [Notice(level="info", message=f"old {i}") for i in range(3)]
    with JournalWriter(path) as writer:
        for event in old:
            writer.append(event)
    follower = JournalFollower(path)
    assert follower.poll() == old

    path.write_bytes(b"")  # truncated in place
    fresh = Notice(level="info", message="fresh")
    with JournalWriter(path) as writer:
        writer.append(fresh)
    assert follower.poll() == [fresh]

    replacement = tmp_path / "new.jsonl"
    rotated = [Notice(level="warning", message=f"rotated {i}") for i in range(5)]
    with JournalWriter(replacement) as writer:
        for event in rotated:
            writer.append(event)
    os.replace(replacement, path)  # a new inode, and longer than what was read
    assert follower.poll() == rotated


def test_follower_reads_a_long_journal_in_slices(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [LogLine(experiment=0, line=f"line {i} " + "x" * (i % 17)) for i in range(300)]
    with JournalWriter(path) as writer:
        for event in events:
            writer.append(event)
    follower = JournalFollower(path)
    seen: list[Event] = []
    for _ in range(1000):
        batch = follower.poll(max_bytes=333)
        if not batch and len(seen) == len(events):
            break
        seen.extend(batch)
    assert seen == events


@pytest.mark.timeout(30)
def test_follower_tails_a_writer_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    count = 60
    script = textwrap.dedent(f"""
        import json, time
        from pathlib import Path
        from loopdeck.engine.events import LogLine
        from loopdeck.engine.store.journal import JournalWriter
        path = Path({str(path)!r})
        with JournalWriter(path) as writer:
            for i in range({count}):
                if i % 10 == 5:
                    # a line written in two pieces, as a slow writer might
                    line = (json.dumps(LogLine(ts=1.0, experiment=2, line=f"line {{i}}").to_dict()) + "\\n").encode()
                    with open(path, "ab") as raw:
                        raw.write(line[:20]); raw.flush(); time.sleep(0.02); raw.write(line[20:])
                else:
                    writer.append(LogLine(ts=1.0, experiment=2, line=f"line {{i}}"))
                time.sleep(0.005)
    """)
    follower = JournalFollower(path)
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    seen: list[Event] = []
    polls_with_events = 0
    try:
        deadline = time.monotonic() + 20
        while len(seen) < count and time.monotonic() < deadline:
            batch = follower.poll()
            polls_with_events += bool(batch)
            seen.extend(batch)
            time.sleep(0.01)
    finally:
        assert writer.wait(timeout=20) == 0
    seen.extend(follower.poll())
    assert [e.line for e in seen] == [f"line {i}" for i in range(count)]
    assert polls_with_events > 1  # it followed the writer live rather than reading a finished file
    assert follower.skipped == 0
