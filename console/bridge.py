"""The one bridge from background threads to the UI: an ordered, thread-safe event buffer plus a wake-up message.

The engine calls the bridge from its own thread for every event (and the journal follower calls it with whole
batches). Events go into one FIFO under a lock; only when the buffer turns non-empty is an `EventsPending`
message posted (`post_message` is thread-safe and never blocks the engine). The UI drains everything that has
arrived since, in emission order, and folds it into the `SessionView`.

So a burst of high-rate events costs one message, not one per event; additive text deltas are never dropped
(unlike `can_replace`, which discards the older message); lifecycle events are never reordered around the
deltas that preceded them; and drawing is decoupled from arrival (the app redraws dirty widgets on a timer).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from textual.message_pump import MessagePump

from loopdeck.console.messages import EventsPending
from loopdeck.engine.events import Event


class EventBridge:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[Event] = deque()
        self._target: MessagePump | None = None
        self._wake_posted = False  # a wake-up is queued or being handled: no need for another
        self.emitted = 0

    def attach(self, target: MessagePump) -> None:
        """Start delivering to `target` (events emitted before this wait in the buffer)."""
        with self._lock:
            self._target = target
            wake = bool(self._pending) and not self._wake_posted
            self._wake_posted = self._wake_posted or wake
        if wake:
            target.post_message(EventsPending())

    def __call__(self, event: Event) -> None:
        """The engine's `on_event` callback; safe from any thread, never blocks on the UI."""
        self.emit_many((event,))

    def emit_many(self, events: Iterable[Event]) -> None:
        with self._lock:
            before = len(self._pending)
            self._pending.extend(events)
            self.emitted += len(self._pending) - before
            target = self._target
            wake = target is not None and not self._wake_posted and bool(self._pending)
            if wake:
                self._wake_posted = True
        if wake:
            assert target is not None
            target.post_message(EventsPending())

    @property
    def waiting(self) -> int:
        """Events emitted but not drained yet."""
        with self._lock:
            return len(self._pending)

    def drain(self, limit: int) -> tuple[list[Event], bool]:
        """Up to `limit` events in order, and whether more are waiting (the caller then wakes itself again)."""
        with self._lock:
            count = min(limit, len(self._pending))
            batch = [self._pending.popleft() for _ in range(count)]
            more = bool(self._pending)
            if not more:
                self._wake_posted = False
        return batch, more


REPLAY_SLICE = 1 << 20  # bytes of journal read per poll, so a long history replays in slices


def follow_journal(path: Path, emit: Callable[[list[Event]], None], cancelled: Callable[[], bool],
                   interval: float = 0.2) -> None:
    """Replay a session's events journal from the start, then keep following it until `cancelled()`.

    Runs in a worker thread; the journal follower buffers a torn last line until it is complete."""
    from loopdeck.engine.session import journal_reader

    follower = journal_reader(path)
    while not cancelled():
        events = follower.poll(max_bytes=REPLAY_SLICE)
        if events:
            emit(events)
        else:
            time.sleep(interval)
