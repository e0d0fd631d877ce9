"""The workspace commands: init (and the workspace `run` makes on a new DIR), status, try, report, ctl."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from loopdeck.cli.options import CTL_ACTIONS
from loopdeck.cli.paths import existing_state_dir, typed_text, user_path, workspace_path_errors
from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.cli.signals import graceful_stop
from loopdeck.engine.config import STATE_DIR, load_config
from loopdeck.engine.control import send_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.lock import is_locked
from loopdeck.engine.store.workspace import init_workspace, is_workspace

if TYPE_CHECKING:
    from loopdeck.engine.store.ledger import ExperimentRow


def init_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    with workspace_path_errors(path):
        if is_workspace(path):
            print(f"{path} is already a loopdeck workspace; nothing changed")
            return 0
        data = None if args.data is None else typed_text(args.data)
        path = init_workspace(path, budget=args.budget, data=data, agent=args.agent, approval=args.approve)
    print(f"created a loopdeck workspace in {path}: train.py, harness.py (protected, pinned), program.md, loopdeck.toml (committed on main)")
    print(f"next: `loopdeck run {path}` (console) or `loopdeck run {path} --headless`")
    return 0


def workspace_for_run(directory: str, options: RunOptions) -> tuple[Path, list[str]]:
    """`loopdeck run`'s DIR, and notes for the person: a path that does not exist yet (or an empty directory) first
    becomes a workspace with the embedded default, with `options` written into its loopdeck.toml."""
    path = user_path(directory)
    with workspace_path_errors(path):
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            return path, []
        path = init_workspace(path, budget=options.budget_seconds, agent=options.agent, approval=options.approval)
    return path, [f"{path} did not exist or was empty: created a workspace there with the embedded default "
                  "(train.py, harness.py, program.md, loopdeck.toml)"]


def status_command(args: argparse.Namespace) -> int:
    from loopdeck.cli.status_table import format_status_table
    from loopdeck.engine.store.ledger import Ledger

    with Ledger(existing_state_dir(args.dir), create=False) as ledger:
        rows = ledger.rows()
    print(format_status_table(rows))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from loopdeck.engine.research.report import write_report
    from loopdeck.engine.store.ledger import Ledger

    workspace = user_path(args.dir)
    with Ledger(existing_state_dir(args.dir), create=False) as ledger:
        rows, studies, runs = ledger.rows(), ledger.studies(), ledger.runs()
    try:
        metric = load_config(workspace)[0].metric
        name, direction = metric.name, metric.direction
    except LoopdeckError:
        name, direction = "val_bpb", "minimize"  # the report still works when the config no longer loads
    out = user_path(args.out) if args.out else workspace / STATE_DIR / "report"
    try:
        chart, summary = write_report(rows, out, metric_name=name, direction=direction,
                                      title=workspace.resolve().name, studies=studies, runs=runs,
                                      patch=_incumbent_patch(workspace, rows))
    except OSError as exc:
        raise LoopdeckError(f"cannot write the report to {out}: {exc.strerror or exc}: choose another --out "
                            "folder") from None
    print(f"wrote {chart}\nwrote {summary}")
    return 0


def _incumbent_patch(workspace: Path, rows: list[ExperimentRow]) -> str:
    """The incumbent against the baseline as one patch ("" without both, or when git cannot say)."""
    from loopdeck.engine.store.gitops import ResearchRepo
    from loopdeck.engine.store.ledger import first_baseline

    baseline = first_baseline(rows)
    incumbent = next((row for row in reversed(rows) if row.status == "keep"), None)
    if baseline is None or incumbent is None or baseline.commit == incumbent.commit:
        return ""
    try:
        return ResearchRepo(workspace).diff(baseline.commit, incumbent.commit)
    except LoopdeckError:
        return ""


def try_command(args: argparse.Namespace) -> int:
    patch_path = user_path(args.patch)
    try:
        patch_text = patch_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoopdeckError(f"cannot read the patch {patch_path}: {exc}") from None
    workspace = user_path(args.dir)
    printer = HeadlessPrinter(workspace)
    session = Session(workspace, RunOptions(approval="auto", budget_seconds=args.budget), on_event=printer)
    for note in session.config_notes:
        printer.note(note)
    with graceful_stop(session):
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
    elif action == "mode":
        fields = {"mode": text or "auto"}
    send_command(workspace, action, **fields)
    print(f"sent {args.action} to the session in {workspace} (engine pid {holder.get('pid', '?')})")
    return 0
