"""`loopdeck ablate` and `loopdeck transfer`: studies of the kept chain, printed one line per run, then a table."""

from __future__ import annotations

import argparse

from loopdeck.cli.paths import existing_state_dir, user_path
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.cli.signals import graceful_stop
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.session import Session
from loopdeck.engine.store.lock import is_locked


def _study_session(directory: str) -> Session:
    """A study session on DIR, refused with one line when DIR has no history or a session holds it."""
    workspace = user_path(directory)
    state = existing_state_dir(directory)
    holder = is_locked(state)
    if holder is not None:
        raise LoopdeckError(f"a loopdeck session is running in {workspace} (engine pid {holder.get('pid', '?')}): a "
                            f"study runs when it has ended (`loopdeck ctl {workspace} stop`)")
    printer = HeadlessPrinter(workspace)
    session = Session(workspace, on_event=printer, study=True)
    for note in session.config_notes:
        printer.note(note)
    return session


def ablate_command(args: argparse.Namespace) -> int:
    session = _study_session(args.dir)
    with graceful_stop(session):
        session.ablate(apply=args.apply)
    return 0


def transfer_command(args: argparse.Namespace) -> int:
    session = _study_session(args.dir)
    with graceful_stop(session):
        session.transfer(args.scale, per_change=args.per_change)
    return 0
