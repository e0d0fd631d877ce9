"""`loopdeck ablate` and `loopdeck transfer`: studies of the kept chain, one line per run, then their table."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from loopdeck.cli.paths import existing_state_dir, user_path
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.cli.signals import graceful_stop
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event, StudyFinished, StudyRun, StudyStarted
from loopdeck.engine.session import Session
from loopdeck.engine.store.lock import is_locked


class StudyPrinter(HeadlessPrinter):
    """The headless printer, plus a line per study run and the study's table at the end."""

    def format(self, event: Event) -> str:
        if isinstance(event, StudyStarted):
            at = f" at {event.scale:g}x" if event.scale != 1.0 else ""
            return (f"loopdeck: {event.study_kind} study {event.study} of #{event.incumbent}{at}: "
                    f"{len(event.variants)} variants × {len(event.seeds)} seeds")
        if isinstance(event, StudyRun):
            metric = f"{event.metric:.6f}" if event.metric is not None else f"{event.status} {event.reason}".strip()
            return f"[{event.index}/{event.of}] {event.variant}, seed {event.seed}: {metric}"
        if isinstance(event, StudyFinished):
            return study_table(event)
        return super().format(event)


def study_table(event: StudyFinished) -> str:
    """The study's result as aligned text: one line per change (or gain), then its summary."""
    if event.study_kind == "ablation":
        head = f"{'change':<8} {'contribution':>14} {'± band':>10}  {'verdict':<9} description"
    else:
        head = f"{'':<8} {'gain (loop)':>14} {'gain at ' + format(event.scale, 'g') + 'x':>14} {'± band':>10}  " \
               f"{'verdict':<9} description"
    lines = [head]
    for line in event.lines:
        gain = "-" if line.gain is None else f"{line.gain:+.6f}"
        band = "-" if line.band is None else f"{line.band:.6f}"
        what = line.description + (f" ({line.detail})" if line.detail else "")
        if event.study_kind == "ablation":
            lines.append(f"{line.label:<8} {gain:>14} {band:>10}  {line.verdict:<9} {what}")
        else:
            reference = "-" if line.reference_gain is None else f"{line.reference_gain:+.6f}"
            lines.append(f"{line.label:<8} {reference:>14} {gain:>14} {band:>10}  {line.verdict:<9} {what}")
    return "\n".join([*lines, f"loopdeck: {event.summary}"])


def _study_session(directory: str, out: TextIO | None = None) -> tuple[Session, StudyPrinter]:
    """A study session on DIR, refused with one line when DIR has no history or a session holds it."""
    workspace = user_path(directory)
    state = existing_state_dir(directory)
    holder = is_locked(state)
    if holder is not None:
        raise LoopdeckError(f"a loopdeck session is running in {workspace} (engine pid {holder.get('pid', '?')}): a "
                            f"study runs when it has ended (`loopdeck ctl {workspace} stop`)")
    printer = StudyPrinter(workspace, out or sys.stdout)
    session = Session(workspace, on_event=printer, study=True)
    for note in session.config_notes:
        printer.note(note)
    return session, printer


def ablate_command(args: argparse.Namespace) -> int:
    session, _ = _study_session(args.dir)
    with graceful_stop(session):
        session.ablate(apply=args.apply)
    return 0


def transfer_command(args: argparse.Namespace) -> int:
    session, _ = _study_session(args.dir)
    with graceful_stop(session):
        session.transfer(args.scale, per_change=args.per_change)
    return 0
