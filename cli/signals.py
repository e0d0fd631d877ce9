"""Signals during a session, for the console launcher and the headless commands alike."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from loopdeck.engine.session import Session


@contextmanager
def handling_signals(handler: Callable[[int, object], None], *signums: int) -> Iterator[None]:
    """Install `handler` for `signums` while the block runs, then restore what was there."""
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextmanager
def graceful_stop(session: Session) -> Iterator[None]:
    """SIGTERM / Ctrl-C stop the session gracefully; a second one ends the process at once."""

    def handler(signum: int, frame: object) -> None:
        print("\nloopdeck: stopping: the running experiment is killed and recorded as interrupted "
              "(again to quit at once)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        session.interrupt()

    with handling_signals(handler, signal.SIGINT, signal.SIGTERM):
        yield
