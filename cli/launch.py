"""The console launchers: `loopdeck run` (start or find the background engine, then attach), `attach`, `watch`.

`loopdeck run DIR` starts the engine as its own process (cli/daemon.py) unless one already runs on DIR, and opens
a console attached to it over the channel: quitting, SIGHUP or a lost SSH connection only detach. `--foreground`
keeps the engine inside the console's process, as before. `attach` works on a background or a headless session
(both serve the channel). `watch` is read-only: over the channel when the session serves one, else by following the
journal (a --foreground session).

Everything a person can get wrong (a bad path, a dirty tree, a bad config) raises `LoopdeckError` here, before the
app takes over the terminal, so the CLI prints one clean line. Textual and the app are imported only once that is
done, so nothing else on the command line loads them.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from loopdeck.cli.daemon import engine_argv, find_engine, start_engine
from loopdeck.cli.options import run_options
from loopdeck.cli.paths import user_path
from loopdeck.cli.signals import handling_signals
from loopdeck.cli.workspace import workspace_for_run
from loopdeck.console.bridge import EventBridge
from loopdeck.console.remote import RemoteSession
from loopdeck.engine.channel.registry import EngineRecord, last_record
from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.session import JOURNAL_FILE, RunOptions, Session
from loopdeck.engine.store.lock import is_locked

if TYPE_CHECKING:
    from loopdeck.console.app import LoopdeckApp

STOP_TIMEOUT = 60.0  # seconds to wait for the engine to record an aborted experiment on the way out


def run_console_command(args: argparse.Namespace) -> int:
    options = run_options(args)
    path, notes = workspace_for_run(args.dir, options)
    if args.foreground:
        return _run_in_process(path, options, notes)
    record = find_engine(path)
    if record is None:
        record = start_engine(path, engine_argv(path, options))
    else:
        given = engine_argv(path, options)[2:]
        if given:
            notes.append(f"an engine (pid {record.pid}) already runs on {path}: attached to it; "
                         f"{' '.join(given)} would apply only to a new engine")
    return _attach(path, record, notes)


def attach_command(args: argparse.Namespace) -> int:
    path = _existing_workspace(args.dir, "attach")
    record = find_engine(path)
    if record is None and is_locked(path / STATE_DIR):
        raise LoopdeckError(f"the session on {path} runs without a channel (started with --foreground): follow "
                            f"it with `loopdeck watch {path}`, control it with `loopdeck ctl {path} ACTION`")
    if record is None:
        raise LoopdeckError(f"no engine runs on {path}: start one with `loopdeck run {path}` (`loopdeck ls` lists "
                            "the running sessions)")
    return _attach(path, record, [])


def watch_command(args: argparse.Namespace) -> int:
    path = _existing_workspace(args.dir, "watch")
    record = find_engine(path)
    if record is not None:
        return _attach(path, record, [], role="watch")
    journal = path / STATE_DIR / JOURNAL_FILE
    if not journal.exists():
        raise LoopdeckError(
            f"{path} has no events journal ({journal}): start a session there first, e.g. "
            f"`loopdeck run {path}`, then `loopdeck watch {path}` in another terminal"
        )
    from loopdeck.console.app import LoopdeckApp

    LoopdeckApp(journal=journal, workspace=str(path)).run()
    return 0


def _existing_workspace(directory: str, command: str) -> Path:
    path = user_path(directory)
    if not path.is_dir():
        raise LoopdeckError(f"{path} is not a directory: give `loopdeck {command}` a workspace a session runs in")
    return path


def _attach(path: Path, record: EngineRecord, notes: Sequence[str], role: str = "control") -> int:
    """A console on a background engine; leaving it (q, SIGHUP, SIGTERM) closes only the console."""
    bridge = EventBridge()

    def restart() -> Path:
        """A new engine with the dead one's arguments (or whichever engine another console started meanwhile)."""
        argv = (last_record(path / STATE_DIR) or record).argv
        return Path((find_engine(path) or start_engine(path, argv)).socket)

    session = RemoteSession(Path(record.socket), bridge, role=role, restart=restart if role == "control" else None)
    from loopdeck.console.app import LoopdeckApp

    app = LoopdeckApp(bridge=bridge, session=session, workspace=str(path), notes=notes)
    try:
        with _closing_on_hangup(app):
            app.run()
    finally:
        session.client.close()
    return 0


@contextmanager
def _closing_on_hangup(app: LoopdeckApp) -> Iterator[None]:
    """The terminal closing (SIGHUP) or a SIGTERM closes the console: a detach, as the engine has its own session."""

    def handler(signum: int, frame: object) -> None:
        app.call_later(app.exit)

    with handling_signals(handler, signal.SIGHUP, signal.SIGTERM):
        yield


def _run_in_process(path: Path, options: RunOptions, notes: list[str]) -> int:
    """`--foreground`: the engine in this process; leaving the console stops it."""
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
    """With --foreground, the terminal closing (SIGHUP) or a SIGTERM stops the in-process loop the way headless
    does: the running training is killed and recorded as interrupted, then the console closes."""

    def handler(signum: int, frame: object) -> None:
        session.interrupt()
        app.call_later(app.exit)

    with handling_signals(handler, signal.SIGHUP, signal.SIGTERM):
        yield
