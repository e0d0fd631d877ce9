"""The `loopdeck` command: parses arguments and hands each subcommand to the layer that owns it.

Heavy modules (torch, textual) are imported only by the subcommand that needs them, so `loopdeck --help`,
`status` and headless runs start quickly and the engine runs without the UI.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

APPROVALS = ("ask", "auto")
AGENTS = ("offline", "claude")


def _version() -> str:
    try:
        return version("loopdeck")
    except PackageNotFoundError:
        return "0+unknown"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def _target(dotted: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand handler named 'module:function', imported only when that subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        module_name, function_name = dotted.split(":")
        return getattr(import_module(module_name), function_name)(args)

    return handler


def _add_loop_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", choices=AGENTS, help="who proposes changes (default: from loopdeck.toml; "
                        "claude when ANTHROPIC_API_KEY is set, else the built-in offline agent)")
    parser.add_argument("--max-experiments", type=_positive_int, metavar="N",
                        help="stop after N experiments (the baseline not counted)")
    parser.add_argument("--max-hours", type=_positive_float, metavar="H", help="stop after H hours of wall time")
    parser.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                        help="training time budget per experiment (default: from loopdeck.toml)")
    parser.add_argument("--tag", help="research branch suffix: experiments commit on loopdeck/<tag>")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loopdeck",
        description="Supervisory console for the autoresearch loop: an agent edits training code, loopdeck runs "
        "each experiment for a fixed time budget, keeps the change if the metric improved and reverts it otherwise.",
        epilog="Start here: `loopdeck run DIR` creates a workspace in DIR (if it does not exist) with the embedded "
        "default target and opens the console. `loopdeck SUBCOMMAND --help` explains each subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"loopdeck {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    train = sub.add_parser("train", help="train the default GPT target once, outside any loop",
                           description="Train the built-in GPT target once and print its progress and the "
                           "autoresearch-style summary (val_bpb, …).")
    train.add_argument("--budget", type=_positive_float, metavar="SECONDS",
                       help="training time budget in seconds (default: the harness's TIME_BUDGET)")
    train.add_argument("--data", metavar="PATH", help="a directory or glob of .txt/.jsonl/.parquet files "
                       "(default: the embedded corpus built from CPython's own documentation)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    train.add_argument("--out", metavar="DIR", help="where to write the log, metrics and weights "
                       "(default: runs/<timestamp> under the current directory)")
    train.set_defaults(handler=_target("loopdeck.cli.train:train_command"))

    init = sub.add_parser("init", help="create a research workspace",
                          description="Create a git repository with the editable train.py, program.md and a "
                          "commented loopdeck.toml.")
    init.add_argument("dir", metavar="DIR")
    init.add_argument("--budget", type=_positive_float, metavar="SECONDS", help="training time budget per experiment")
    init.add_argument("--data", metavar="PATH", help="training corpus (default: the embedded corpus)")
    init.add_argument("--agent", choices=AGENTS)
    init.add_argument("--approve", choices=APPROVALS, help="ask: a person approves each change; auto: no gate")
    init.set_defaults(handler=_target("loopdeck.cli.commands:init_command"))

    run = sub.add_parser("run", help="run the research loop (console, or --headless)",
                         description="Run the research loop on DIR. DIR may be a loopdeck workspace, an existing "
                         "autoresearch-style repository (train.py, prepare.py, program.md), or a path that does "
                         "not exist yet, which becomes a new workspace with the embedded default.")
    run.add_argument("dir", metavar="DIR", nargs="?", default=".")
    run.add_argument("--headless", action="store_true", help="no UI: one line per experiment, then a summary")
    run.add_argument("--autonomous", action="store_true", help="no approval gate (same as --approve auto)")
    run.add_argument("--approve", choices=APPROVALS, help="approval policy (default: ask in the console, "
                     "auto headless, unless loopdeck.toml says otherwise)")
    _add_loop_options(run)
    run.set_defaults(handler=_run_handler)

    watch = sub.add_parser("watch", help="watch a running session, read-only",
                           description="Attach to a session (e.g. `loopdeck run --headless` in another terminal): "
                           "replay its history from the events journal and follow it live. Nothing here changes "
                           "the run, and closing it never stops the run.")
    watch.add_argument("dir", metavar="DIR", nargs="?", default=".")
    watch.set_defaults(handler=_target("loopdeck.cli.launch:watch_command"))

    status = sub.add_parser("status", help="print the experiment ledger as a table")
    status.add_argument("dir", metavar="DIR", nargs="?", default=".")
    status.set_defaults(handler=_target("loopdeck.cli.commands:status_command"))

    try_ = sub.add_parser("try", help="run one experiment from your own patch",
                          description="Run a unified diff through the same guard → commit → run → evaluate → "
                          "keep/revert → record path as an agent's change.")
    try_.add_argument("dir", metavar="DIR")
    try_.add_argument("patch", metavar="PATCH", help="a unified diff file (e.g. from `git diff`)")
    try_.add_argument("--description", "-m", help="one line for the ledger (default: the patch file name)")
    try_.add_argument("--budget", type=_positive_float, metavar="SECONDS")
    try_.set_defaults(handler=_target("loopdeck.cli.commands:try_command"))

    report = sub.add_parser("report", help="write a progress chart (PNG) and a Markdown summary")
    report.add_argument("dir", metavar="DIR", nargs="?", default=".")
    report.add_argument("--out", metavar="DIR", help="output folder (default: DIR/.loopdeck/report)")
    report.set_defaults(handler=_target("loopdeck.cli.commands:report_command"))

    ctl = sub.add_parser("ctl", help="send a control command to a running headless session",
                         description="Control a session started with `loopdeck run --headless`.")
    ctl.add_argument("dir", metavar="DIR")
    ctl.add_argument("action", choices=("approve", "veto", "note", "pause", "resume", "stop", "abort",
                                        "autonomous", "supervised"),
                     help="stop = stop after the current experiment; abort = stop now")
    ctl.add_argument("text", nargs="?", default="", help="the note (for `note`, or a veto's note)")
    ctl.add_argument("--experiment", type=int, metavar="N", help="which pending experiment (default: the pending one)")
    ctl.set_defaults(handler=_target("loopdeck.cli.commands:control_command"))

    migrate = sub.add_parser("migrate", help="give a workspace made by an earlier loopdeck its own harness",
                             description="Copy harness.py into DIR, point train.py's import at it, and protect and "
                             "pin it in loopdeck.toml, in one commit on the current branch.")
    migrate.add_argument("dir", metavar="DIR")
    migrate.set_defaults(handler=_target("loopdeck.cli.migrate:migrate_command"))
    return parser


def _run_handler(args: argparse.Namespace) -> int:
    if args.autonomous:
        args.approve = "auto"
    target = "loopdeck.cli.commands:run_headless_command" if args.headless else "loopdeck.cli.launch:run_console_command"
    return _target(target)(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from loopdeck.engine.errors import LoopdeckError

    try:
        return int(args.handler(args) or 0)
    except LoopdeckError as exc:
        print(f"loopdeck: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("loopdeck: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
