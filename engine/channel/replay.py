"""What a console attaching to an engine replays: every lifecycle event, and the high-rate ones only where it shows.

A night's journal is mostly training steps, log lines, agent text deltas and telemetry; the console's lasting state
(the experiments table, the kept chain, decisions, notices, studies) is folded from the other events. So those are
kept in full, in memory, from one pass over the journal at start-up (they grow with experiments, a few KB each,
not with steps), while high-rate events are kept only for the latest `RECENT_EXPERIMENTS` experiments (the live
curve, log and reasoning), each stream bounded, plus the last training step of every older experiment (its row's
step, loss and progress). The replay merges them back in journal order.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path

from loopdeck.engine.channel.protocol import event_frame
from loopdeck.engine.events import Event, TrainStep, event_kinds
from loopdeck.engine.store.journal import scan_journal

RECENT_EXPERIMENTS = 4  # experiments whose high-rate events replay (pipelined or concurrent runs overlap)
STREAM_LIMIT = 4_000  # high-rate events kept per experiment and kind
TELEMETRY_LIMIT = 600  # telemetry samples kept (the console's sparklines show fewer)

Entry = tuple[int, float, bytes]  # (position in the stream, ts, frame): positions are unique, so they order entries


@functools.cache
def _high_rate_kinds() -> frozenset[str]:
    return frozenset(kind for kind, cls in event_kinds().items() if cls.high_rate)


class ReplayLog:
    """The frames an attaching console is sent before it goes live; `add` is called for every event in order."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self._positions = itertools.count()
        self._lifecycle: list[Entry] = []
        self._streams: OrderedDict[int, dict[str, list[Entry]]] = OrderedDict()  # experiment → kind → entries
        self._last_steps: list[Entry] = []  # the last training step of each experiment out of the window
        self._telemetry: deque[Entry] = deque(maxlen=TELEMETRY_LIMIT)
        for event in events:
            self.add_event(event, event_frame(event))

    @classmethod
    def from_journal(cls, path: Path) -> ReplayLog:
        """Everything a console needs from a journal, in one pass; its lines are forwarded as they are."""
        log = cls()
        for data, line in scan_journal(path):
            ts, experiment = data.get("ts"), data.get("experiment")
            log.add(data["kind"], float(ts) if isinstance(ts, int | float) else 0.0,
                    experiment if isinstance(experiment, int) else None, b'{"t":"event","event":' + line + b"}\n")
        return log

    def add_event(self, event: Event, frame: bytes) -> None:
        self.add(event.kind, event.ts, getattr(event, "experiment", None), frame)

    def add(self, kind: str, ts: float, experiment: int | None, frame: bytes) -> None:
        entry = (next(self._positions), ts, frame)
        if kind not in _high_rate_kinds():
            self._lifecycle.append(entry)
        elif experiment is None:
            self._telemetry.append(entry)
        else:
            self._stream(experiment, kind).append(entry)

    def _stream(self, experiment: int, kind: str) -> list[Entry]:
        streams = self._streams.get(experiment)
        if streams is None:
            streams = self._streams[experiment] = {}
            if len(self._streams) > RECENT_EXPERIMENTS:
                self._retire(self._streams.popitem(last=False)[1])
        else:
            self._streams.move_to_end(experiment)
        stream = streams.setdefault(kind, [])
        if len(stream) >= STREAM_LIMIT:
            if kind == TrainStep.kind:
                del stream[1::2]  # a long run's curve thins evenly, as the console's Curve does; the first stays
            else:
                del stream[: STREAM_LIMIT // 4]  # text and log lines: the latest matter (a quarter at once: cheap)
        return stream

    def _retire(self, streams: dict[str, list[Entry]]) -> None:
        steps = streams.get(TrainStep.kind)
        if steps:
            self._last_steps.append(steps[-1])

    def frames(self, after: float | None = None) -> list[bytes]:
        """The replay, in the order the events happened; with `after`, only events newer than that ts."""
        streams = (stream for kinds in self._streams.values() for stream in kinds.values())
        merged = heapq.merge(self._lifecycle, sorted(self._last_steps), self._telemetry, *streams)
        return [frame for _, ts, frame in merged if after is None or ts > after]
