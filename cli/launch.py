"""`loopdeck run` (the console, supervising an in-process engine) and `loopdeck watch` (read-only, from the journal).

Everything a person can get wrong (a bad path, a dirty tree, a bad config) raises `LoopdeckError` here, before the
app takes over the terminal, so the CLI prints one clean line. Textual and the app are imported only once that is
done, so nothing else on the command line loads them.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from loopdeck.cli.options import run_options
from loopdeck.cli.paths import user_path
from loopdeck.cli.signals import handling_signals
from loopdeck.cli.workspace import workspace_for_run
from loopdeck.console.bridge import EventBridge
from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.session import JOURNAL_FILE, Session

if TYPE_CHECKING:
    from loopdeck.console.app import LoopdeckApp

STOP_TIMEOUT = 60.0  # seconds to wait for the engine to record an aborted experiment on the way out


def run_console_command(args: argparse.Namespace) -> int:
    options = run_options(args)
    path, notes = workspace_for_run(args.dir, options)
    bridge = EventBridge()
    session = Session(path, options, on_event=bridge)
    notes += list(session.config_notes)

    from loopdeck.console.app import LoopdeckApp

    app = LoopdeckApp(bridge=bridge, session=session, workspace=str(path), notes=notes)
    try:
        with _stop_on_hangup(session, app):
            app.run()
    finally:
        # However the app ended (quit, a crash, the terminal gone), the in-process loop must not be left running.
        if not session.wait(timeout=0):
            session.abort()
            session.wait(timeout=STOP_TIMEOUT)
    return 0


@contextmanager
def _stop_on_hangup(session: Session, app: LoopdeckApp) -> Iterator[None]:
    """The terminal closing (SIGHUP) or a SIGTERM stops the in-process loop the way headless does: the running
    training is killed and recorded as interrupted, then the console closes."""

    def handler(signum: int, frame: object) -> None:
        session.interrupt()
        app.call_later(app.exit)

    with handling_signals(handler, signal.SIGHUP, signal.SIGTERM):
        yield


def watch_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    if not path.is_dir():
        raise LoopdeckError(f"{path} is not a directory: give `loopdeck watch` a workspace a session runs in")
    journal = path / STATE_DIR / JOURNAL_FILE
    if not journal.exists():
        raise LoopdeckError(
            f"{path} has no events journal ({journal}): start a session there first, e.g. "
            f"`loopdeck run {path} --headless`, then `loopdeck watch {path}` in another terminal"
        )
    from loopdeck.console.app import LoopdeckApp

    LoopdeckApp(journal=journal, workspace=str(path)).run()
    return 0
