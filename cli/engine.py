"""`loopdeck engine DIR` (hidden): the background engine process that `loopdeck run` starts.

It runs one session with no terminal (stdout and stderr go to `.loopdeck/engine.log`, one line per experiment as
headless prints them), serves the channel consoles attach to, and keeps `.loopdeck/engine.json` and the registry
of running engines up to date for `loopdeck ls`. Start-up errors end it with the usual one line, which the
starting console reads back from the log.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from loopdeck.cli.headless import EXIT_CODES, ErrorsOnStderr
from loopdeck.cli.options import run_options
from loopdeck.cli.paths import user_path
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.cli.signals import graceful_stop
from loopdeck.engine.channel.registry import EngineRecord, forget, write_record
from loopdeck.engine.events import Event, ExperimentKept, SessionFinished, StateChanged
from loopdeck.engine.session import Session

# Events that change what `loopdeck ls` shows; only these rewrite engine.json.
TRACKED = (StateChanged, ExperimentKept, SessionFinished)


class RecordKeeper:
    """The session's `on_event`: each event to the log, and engine.json's state, experiment and kept kept in
    step (from when `record` is set: the record needs the session's socket)."""

    def __init__(self, output: ErrorsOnStderr) -> None:
        self.output = output
        self.record: EngineRecord | None = None

    def __call__(self, event: Event) -> None:
        self.output(event)
        if self.record is None or not isinstance(event, TRACKED):
            return
        if isinstance(event, StateChanged):
            self.record.state = event.state
            self.record.experiment = event.experiment if event.experiment is not None else self.record.experiment
        elif isinstance(event, ExperimentKept) and event.previous_metric is not None:
            self.record.kept += 1
        else:
            self.record.state = "stopped"
        write_record(self.record)


def engine_command(args: argparse.Namespace) -> int:
    print(f"--- loopdeck {' '.join(sys.argv[1:])} (started {time.strftime('%Y-%m-%d %H:%M:%S')})",
          flush=True)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # no terminal to lose; a stray hangup must not end the night
    path = user_path(args.dir)
    printer = ErrorsOnStderr(HeadlessPrinter(path))
    keeper = RecordKeeper(printer)
    session = Session(path, run_options(args), on_event=keeper)
    for note in session.config_notes:
        printer.printer.note(note)
    channel = session.serve()
    record = EngineRecord(workspace=str(session.workspace), pid=os.getpid(), socket=str(channel.path),
                          argv=sys.argv[1:], kept=session.kept_at_start)
    keeper.record = record
    write_record(record)
    try:
        with graceful_stop(session):
            finished = session.run()
    finally:
        forget(record.workspace)
    if finished.reason in EXIT_CODES:
        return EXIT_CODES[finished.reason]
    printer.error(session.error or finished.reason)
    return 2
