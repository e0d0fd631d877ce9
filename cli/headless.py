"""`loopdeck run --headless`: a session in this process, its events as terse lines, its end as an exit status.

A headless session serves the channel as a background engine does (and is listed by `loopdeck ls`), so a person
can attach a console with full control to an overnight run started over SSH. The pieces it shares with
`loopdeck engine` (the record of a running engine, the exit status) live here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from loopdeck.cli.daemon import engine_argv
from loopdeck.cli.options import run_options
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.cli.signals import graceful_stop
from loopdeck.cli.workspace import workspace_for_run
from loopdeck.engine.channel.registry import EngineRecord, forget, write_record
from loopdeck.engine.config import load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import Event, ExperimentKept, Notice, SessionFinished, StateChanged
from loopdeck.engine.session import Session

# How a session ended -> exit status of `loopdeck run --headless` (anything else is an error: 2).
EXIT_CODES = {"max_experiments": 0, "time_limit": 0, "stopped": 0, "aborted": 0, "exhausted": 0, "budget": 0,
              "crash_limit": 1, "refusal_limit": 1}
# Events that change what `loopdeck ls` shows; only these rewrite engine.json.
TRACKED = (StateChanged, ExperimentKept, SessionFinished)


def run_headless_command(args: argparse.Namespace) -> int:
    options = run_options(args)
    path, notes = workspace_for_run(args.dir, options)
    printer = HeadlessPrinter(path)
    for note in notes:
        printer.note(note)
    if options.approval is None:
        options = dataclasses.replace(options, approval=headless_approval(path))
    output = ErrorsOnStderr(printer)
    keeper = RecordKeeper(output)
    session = Session(path, options, on_event=keeper)
    for note in session.config_notes:
        printer.note(note)
    try:
        session.serve()
    except LoopdeckError as exc:  # the night matters more than the consoles: run on, followed through the journal
        printer.note(f"{exc}; consoles cannot attach: follow with `loopdeck watch`, control with `loopdeck ctl`")
        with graceful_stop(session):
            finished = session.run()
    else:
        finished = run_served(session, keeper, engine_argv(path, options))
    return exit_status(session, finished, output)


def run_served(session: Session, keeper: RecordKeeper, argv: list[str]) -> SessionFinished:
    """Run a session whose channel is open, recorded for `loopdeck ls`, `attach` and `stop` while it runs; `argv`
    are the `loopdeck engine` arguments that restart it."""
    assert session.channel is not None
    record = EngineRecord(workspace=str(session.workspace), pid=os.getpid(), socket=str(session.channel.path),
                          argv=argv, kept=session.kept_at_start)
    keeper.record = record
    write_record(record)
    try:
        with graceful_stop(session):
            return session.run()
    finally:
        forget(record.workspace)


def exit_status(session: Session, finished: SessionFinished, output: ErrorsOnStderr) -> int:
    """The process's exit status for how the session ended; an error is said once on stderr."""
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


class RecordKeeper:
    """The session's `on_event`: each event to the output, and engine.json's state, experiment and kept kept in
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


def headless_approval(path: Path) -> str:
    """Headless runs unattended (auto) unless loopdeck.toml explicitly asks for the gate."""
    config, _ = load_config(path)
    return config.loop.approval if "approval" in config.loop.model_fields_set else "auto"
