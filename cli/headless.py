"""`loopdeck run --headless`: a session in this process, its events as terse lines, its end as an exit status."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from loopdeck.cli.options import run_options
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.cli.signals import graceful_stop
from loopdeck.cli.workspace import workspace_for_run
from loopdeck.engine.config import load_config
from loopdeck.engine.events import Event, Notice
from loopdeck.engine.session import Session

# How a session ended -> exit status of `loopdeck run --headless` (anything else is an error: 2).
EXIT_CODES = {"max_experiments": 0, "time_limit": 0, "stopped": 0, "aborted": 0, "exhausted": 0, "budget": 0,
              "crash_limit": 1, "refusal_limit": 1}


def run_headless_command(args: argparse.Namespace) -> int:
    options = run_options(args)
    path, notes = workspace_for_run(args.dir, options)
    printer = HeadlessPrinter(path)
    for note in notes:
        printer.note(note)
    if options.approval is None:
        options = dataclasses.replace(options, approval=headless_approval(path))
    output = ErrorsOnStderr(printer)
    session = Session(path, options, on_event=output)
    for note in session.config_notes:
        printer.note(note)
    with graceful_stop(session):
        finished = session.run()
    if finished.reason in EXIT_CODES:
        return EXIT_CODES[finished.reason]
    output.error(session.error or finished.reason)
    return 2


class ErrorsOnStderr:
    """A session's events for a terminal: error notices on stderr, each message once (the session's closing
    error repeats its last error notice), everything else through the printer on stdout."""

    def __init__(self, printer: HeadlessPrinter) -> None:
        self.printer = printer
        self.shown: set[str] = set()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Notice) and event.level == "error":
            self.error(event.message)
        else:
            self.printer(event)

    def error(self, message: str) -> None:
        if message not in self.shown:
            self.shown.add(message)
            print(f"loopdeck: error: {message}", file=sys.stderr, flush=True)


def headless_approval(path: Path) -> str:
    """Headless runs unattended (auto) unless loopdeck.toml explicitly asks for the gate."""
    config, _ = load_config(path)
    return config.loop.approval if "approval" in config.loop.model_fields_set else "auto"
