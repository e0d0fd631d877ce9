"""`loopdeck engine DIR` (hidden): the background engine process that `loopdeck run` starts.

It runs one session with no terminal (stdout and stderr go to `.loopdeck/engine.log`, one line per experiment as
headless prints them), serves the channel consoles attach to, and keeps `.loopdeck/engine.json` and the registry
of running engines up to date for `loopdeck ls`. Start-up errors end it with the usual one line, which the
starting console reads back from the log.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from loopdeck.cli.headless import ErrorsOnStderr, RecordKeeper, exit_status, run_served
from loopdeck.cli.options import run_options
from loopdeck.cli.paths import user_path
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.engine.session import Session


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
    session.serve()
    finished = run_served(session, keeper, sys.argv[1:])
    return exit_status(session, finished, printer)
