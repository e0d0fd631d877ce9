"""The engine's `loopdeck` subcommands: init, run --headless, status, try, report, ctl (argparse in, exit code out)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from loopdeck.engine.config import STATE_DIR, load_config
from loopdeck.engine.control import send_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    ApprovalRequested,
    DecisionMade,
    Event,
    ExperimentFinished,
    Notice,
    SessionFinished,
    SessionStarted,
    StateChanged,
)
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.lock import is_locked
from loopdeck.engine.store.workspace import init_workspace, is_workspace

# How a session ended -> exit status of `loopdeck run --headless` (anything else is an error: 2).
EXIT_CODES = {"max_experiments": 0, "time_limit": 0, "stopped": 0, "aborted": 0, "exhausted": 0, "budget": 0,
              "crash_limit": 1}
CTL_ACTIONS = {"approve": ("decide", {"approve": True}), "veto": ("decide", {"approve": False}),
               "note": ("note", {}), "pause": ("pause", {}), "resume": ("resume", {}), "stop": ("stop", {}),
               "abort": ("abort", {}), "autonomous": ("approval", {"policy": "auto"}),
               "supervised": ("approval", {"policy": "ask"})}


def init_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    with _path_errors(path):
        if is_workspace(path):
            print(f"{path} is already a loopdeck workspace; nothing changed")
            return 0
        data = None if args.data is None else typed_text(args.data)
        path = init_workspace(path, budget=args.budget, data=data, agent=args.agent, approval=args.approve)
    print(f"created a loopdeck workspace in {path}: train.py, program.md, loopdeck.toml (committed on main)")
    print(f"next: `loopdeck run {path}` (console) or `loopdeck run {path} --headless`")
    return 0


def run_headless_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    with _path_errors(path):
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            path = init_workspace(path, budget=args.budget, agent=args.agent, approval=args.approve)
            print(f"loopdeck: {path} did not exist or was empty: created a workspace there with the embedded "
                  "default (train.py, program.md, loopdeck.toml)")
    options = RunOptions(agent=args.agent, approval=args.approve or _headless_approval(path),
                         max_experiments=args.max_experiments, max_hours=args.max_hours, budget_seconds=args.budget,
                         tag=args.tag)
    printer = HeadlessPrinter(path)
    session = Session(path, options, on_event=printer)
    for note in session.config_notes:
        print(f"loopdeck: {note}")
    with _graceful_stop(session):
        finished = session.run()
    if finished.reason in EXIT_CODES:
        return EXIT_CODES[finished.reason]
    print(f"loopdeck: error: {session.error or finished.reason}", file=sys.stderr)
    return 2


def user_path(text: str) -> Path:
    """A path as typed, `~` expanded; `~someone` for a user this machine does not know is a LoopdeckError."""
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # pathlib's "Could not determine home directory"
        raise LoopdeckError(f"{text}: {exc} (no such user?): give the path in full") from None


def typed_text(value: str) -> str:
    """An argument as text: bytes that are not UTF-8 (Python decodes them to lone surrogates, which no file, JSON
    line or database can hold) become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@contextmanager
def _path_errors(path: Path) -> Iterator[None]:
    """A workspace path that cannot be one (under a file, too long, not writable, …) as a LoopdeckError."""
    try:
        yield
    except OSError as exc:
        raise LoopdeckError(f"cannot use {path} as a workspace: {exc.strerror or exc}: choose a directory you can "
                            "write to") from None


def _headless_approval(path: Path) -> str:
    """Headless runs unattended (auto) unless loopdeck.toml explicitly asks for the gate."""
    config, _ = load_config(path)
    return config.loop.approval if "approval" in config.loop.model_fields_set else "auto"


@contextmanager
def _graceful_stop(session: Session) -> Iterator[None]:
    """SIGTERM / Ctrl-C stop the session gracefully; a second one ends the process at once."""

    def handler(signum: int, frame: object) -> None:
        print("\nloopdeck: stopping: the running experiment is killed and recorded as interrupted "
              "(again to quit at once)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        session.interrupt()

    with handling_signals(handler, signal.SIGINT, signal.SIGTERM):
        yield


@contextmanager
def handling_signals(handler: Callable[[int, object], None], *signums: int) -> Iterator[None]:
    """Install `handler` for `signums` while the block runs, then restore what was there."""
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class HeadlessPrinter:
    """Terse text for a session: one line per experiment, a few state lines, then a summary."""

    def __init__(self, workspace: Path, out: TextIO | None = None) -> None:
        self.workspace = workspace
        self.out = out or sys.stdout
        self.metric_name = "metric"

    def __call__(self, event: Event) -> None:
        text = self.format(event)
        if text:
            print(text, file=self.out, flush=True)

    def format(self, event: Event) -> str:
        if isinstance(event, SessionStarted):
            self.metric_name = event.metric_name
            text = (f"loopdeck: {'resumed' if event.resumed else 'started'} on {event.branch}: agent {event.agent}, "
                    f"approval {event.approval}, budget {event.budget_seconds:g} s per experiment")
            if event.approval == "ask":
                text += (f"\nloopdeck: each change waits for a decision: `loopdeck ctl {self.workspace} approve` or "
                         f"`loopdeck ctl {self.workspace} veto \"why\"` (--approve auto runs unattended)")
            return text
        if isinstance(event, ExperimentFinished):
            return experiment_line(event)
        if isinstance(event, ApprovalRequested):
            return f"#{event.experiment} awaiting approval: {event.description}"
        if isinstance(event, DecisionMade) and event.by == "human" and event.approved:  # a veto is a result line
            return f"#{event.experiment} approved" + (f": {event.note}" if event.note else "")
        if isinstance(event, StateChanged) and event.state == "paused":
            return f"loopdeck: paused (`loopdeck ctl {self.workspace} resume` continues)"
        if isinstance(event, Notice) and event.level != "info":
            return f"loopdeck: {event.level}: {event.message}"
        if isinstance(event, SessionFinished):
            return self.summary(event)
        return ""

    def summary(self, event: SessionFinished) -> str:
        text = f"loopdeck: finished ({event.reason}): {event.experiments} experiments, {event.kept} kept"
        if event.baseline_metric is not None and event.best_metric is not None:
            change = event.best_metric - event.baseline_metric
            text += (f"; {self.metric_name} {event.baseline_metric:.6f} (baseline) -> {event.best_metric:.6f} "
                     f"({change:+.4g})")
        return text + f"\nloopdeck: results in {self.workspace / STATE_DIR / 'results.tsv'}"


def experiment_line(event: ExperimentFinished) -> str:
    """`#3 keep 2.914321 (-0.0123) MATRIX_LR 0.04 -> 0.06`, with the reason for anything that did not run well."""
    status = "baseline" if event.status == "keep" and event.incumbent_metric is None else event.status
    parts = [f"#{event.experiment}", status]
    if event.metric is not None:
        parts.append(f"{event.metric:.6f}")
        if event.delta is not None:
            parts.append(f"({event.delta:+.4g})")
    if event.description != status:
        parts.append(event.description)
    if event.status not in ("keep", "discard") and event.reason:
        parts.append(f"— {event.reason}")
    return " ".join(parts)


def status_command(args: argparse.Namespace) -> int:
    from loopdeck.cli.status_table import format_status_table
    from loopdeck.engine.store.ledger import Ledger

    with Ledger(_existing_state_dir(args.dir), create=False) as ledger:
        rows = ledger.rows()
    print(format_status_table(rows))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from loopdeck.engine.research.report import write_report
    from loopdeck.engine.store.ledger import Ledger

    workspace = user_path(args.dir)
    with Ledger(_existing_state_dir(args.dir), create=False) as ledger:
        rows = ledger.rows()
    try:
        metric = load_config(workspace)[0].metric
        name, direction = metric.name, metric.direction
    except LoopdeckError:
        name, direction = "val_bpb", "minimize"  # the report still works when the config no longer loads
    out = user_path(args.out) if args.out else workspace / STATE_DIR / "report"
    try:
        chart, summary = write_report(rows, out, metric_name=name, direction=direction,
                                      title=workspace.resolve().name)
    except OSError as exc:
        raise LoopdeckError(f"cannot write the report to {out}: {exc.strerror or exc}: choose another --out "
                            "folder") from None
    print(f"wrote {chart}\nwrote {summary}")
    return 0


def try_command(args: argparse.Namespace) -> int:
    patch_path = user_path(args.patch)
    try:
        patch_text = patch_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoopdeckError(f"cannot read the patch {patch_path}: {exc}") from None
    workspace = user_path(args.dir)
    session = Session(workspace, RunOptions(approval="auto", budget_seconds=args.budget),
                      on_event=HeadlessPrinter(workspace))
    for note in session.config_notes:
        print(f"loopdeck: {note}")
    with _graceful_stop(session):
        outcome = session.try_patch(patch_text, typed_text(args.description or patch_path.name))
    return 0 if outcome.status in ("keep", "discard") else 1


def control_command(args: argparse.Namespace) -> int:
    workspace = user_path(args.dir)
    holder = is_locked(workspace / STATE_DIR)
    if holder is None:
        raise LoopdeckError(f"no loopdeck session is running in {workspace}: start one with "
                            f"`loopdeck run {workspace} --headless`")
    action, fields = CTL_ACTIONS[args.action]
    text = typed_text(args.text).strip()
    if action == "note":
        if not text:
            raise LoopdeckError("`loopdeck ctl DIR note TEXT` needs the note's text")
        fields = {"note": text}
    elif action == "decide":
        fields = {**fields, "note": text, "experiment": args.experiment}
    send_command(workspace, action, **fields)
    print(f"sent {args.action} to the session in {workspace} (engine pid {holder.get('pid', '?')})")
    return 0


def _existing_state_dir(directory: str) -> Path:
    path = user_path(directory) / STATE_DIR
    try:
        found = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise LoopdeckError(f"{directory}: {exc.strerror or exc}") from None
    if not found:
        raise LoopdeckError(f"{user_path(directory)} has no {STATE_DIR}/: nothing has run there yet "
                            f"(start with `loopdeck run {directory}`)")
    return path
