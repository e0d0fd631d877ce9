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

from loopdeck.cli.options import CTL_ACTIONS, add_agent_option, add_run_options, parse_scale, positive_float
from loopdeck.engine.config import APPROVALS, BUDGET_CLOCKS, Config

DIR_HELP = "the workspace (default: the current directory)"
AddParser = Callable[..., argparse.ArgumentParser]  # `add_parser` of the subcommands


def _version() -> str:
    try:
        return version("loopdeck")
    except PackageNotFoundError:
        return "0+unknown"


def _target(dotted: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand handler named 'module:function', imported only when that subcommand runs."""

    def handler(args: argparse.Namespace) -> int:
        module_name, function_name = dotted.split(":")
        return getattr(import_module(module_name), function_name)(args)

    return handler


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
    for add in (_add_train, _add_init, _add_run, _add_attach, _add_watch, _add_ls, _add_stop, _add_status, _add_try,
                _add_report, _add_ablate, _add_transfer, _add_ctl, _add_migrate, _add_doctor, _add_notify_test,
                _add_agents, _add_engine):
        add(sub.add_parser)
    return parser


# One function per subcommand, in the order `loopdeck --help` lists them.

def _add_train(add_parser: AddParser) -> None:
    train = add_parser("train", help="train the default GPT target once, outside any loop",
                       description="Train the built-in GPT target once and print its progress and the "
                       "autoresearch-style summary (val_bpb, …).")
    train.add_argument("--budget", type=positive_float, metavar="SECONDS",
                       help="training time budget in seconds (default: the harness's TIME_BUDGET)")
    train.add_argument("--data", metavar="PATH", help="a directory or glob of .txt/.jsonl/.parquet files "
                       "(default: the embedded corpus built from CPython's own documentation)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                       help="where to train; auto = CUDA, else MPS, else CPU (default: auto)")
    train.add_argument("--clock", choices=BUDGET_CLOCKS, default=Config().experiment.budget_clock,
                       help="what times the budget: process = CPU seconds of the run divided by its threads (GPU "
                       "time on CUDA), so a busy machine cannot change how many steps it gets; wall = seconds on "
                       "the wall clock (default: %(default)s)")
    train.add_argument("--out", metavar="DIR", help="where to write the log, metrics and weights "
                       "(default: runs/<timestamp> under the current directory)")
    train.set_defaults(handler=_target("loopdeck.cli.train:train_command"))


def _add_init(add_parser: AddParser) -> None:
    init = add_parser("init", help="create a research workspace",
                      description="Create a git repository with the editable train.py, its protected "
                      "harness.py, program.md and a commented loopdeck.toml. The options are written into "
                      "loopdeck.toml.")
    init.add_argument("dir", metavar="DIR", help="the workspace to create: a new or empty directory")
    init.add_argument("--budget", type=positive_float, metavar="SECONDS", help="training time budget per "
                      f"experiment (default: {Config().experiment.budget_seconds:g})")
    init.add_argument("--data", metavar="PATH", help="training corpus: a directory or glob of .txt/.jsonl/.parquet "
                      "files (default: the embedded corpus)")
    add_agent_option(init, default="auto")
    init.add_argument("--approve", choices=APPROVALS, help="ask: a person approves each change; auto: no gate "
                      "(default: unset, so ask in the console and auto headless)")
    init.set_defaults(handler=_target("loopdeck.cli.workspace:init_command"))


def _add_run(add_parser: AddParser) -> None:
    run = add_parser("run", help="run the research loop in the background and open its console",
                     description="Run the research loop on DIR in a background engine and open a console "
                     "attached to it: `q` detaches (the research goes on; closing the terminal or losing SSH "
                     "does the same), `loopdeck attach DIR` comes back, `loopdeck stop DIR` ends it. If an engine "
                     "already runs on DIR, this attaches to it. DIR may be a loopdeck workspace, an existing "
                     "autoresearch-style repository (train.py, prepare.py, program.md), or a path that does "
                     "not exist yet, which becomes a new workspace with the embedded default (--budget, "
                     "--agent and --approve are then written into its loopdeck.toml). Each option overrides "
                     "loopdeck.toml for this session only.")
    run.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    run.add_argument("--headless", action="store_true", help="no UI: one line per experiment, then a summary; "
                     "exit status 0 when the session ends normally, 1 after too many crashes (or refusals) in a row, 2 on "
                     "an error")
    run.add_argument("--foreground", action="store_true", help="run the loop inside the console's own process: "
                     "quitting the console (or losing the terminal) stops the research")
    add_run_options(run)
    run.set_defaults(handler=_run_handler)


def _add_attach(add_parser: AddParser) -> None:
    attach = add_parser("attach", help="open a console on a session running in the background",
                        description="Attach a console with full control (approve, veto, notes, pause, stop, …) "
                        "to the engine running on DIR (started by `loopdeck run DIR`, with or without --headless). Several consoles may be "
                        "attached at once; a change is decided once, by the first decision. `q` detaches.")
    attach.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    attach.set_defaults(handler=_target("loopdeck.cli.launch:attach_command"))


def _add_ls(add_parser: AddParser) -> None:
    ls = add_parser("ls", help="list the sessions running on this machine",
                    description="List the background and headless sessions of this user on this machine: workspace, pid, "
                    "state, current experiment, experiments kept, uptime.")
    ls.set_defaults(handler=_target("loopdeck.cli.sessions:ls_command"))


def _add_stop(add_parser: AddParser) -> None:
    stop = add_parser("stop", help="stop the session running on DIR",
                      description="Ask the session running on DIR to stop once its current experiment is "
                      "recorded (--now: abort the running experiment, recorded as interrupted). Resume later "
                      "with `loopdeck run DIR`.")
    stop.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    stop.add_argument("--now", action="store_true", help="abort now instead of after the current experiment")
    stop.set_defaults(handler=_target("loopdeck.cli.sessions:stop_command"))


def _add_engine(add_parser: AddParser) -> None:
    """Hidden (no help=): the background engine that `loopdeck run` starts; people never type it."""
    engine = add_parser("engine", description="The background engine of `loopdeck run` (internal).")
    engine.add_argument("dir", metavar="DIR")
    add_run_options(engine)
    engine.set_defaults(handler=_target("loopdeck.cli.engine:engine_command"))


def _add_watch(add_parser: AddParser) -> None:
    watch = add_parser("watch", help="watch a running session, read-only",
                       description="Follow a session read-only: a background or headless one's over its channel, "
                       "a --foreground one's from the events journal; its history replays first. "
                       "Nothing here changes the run, and closing it never stops the run.")
    watch.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    watch.set_defaults(handler=_target("loopdeck.cli.launch:watch_command"))


def _add_status(add_parser: AddParser) -> None:
    status = add_parser("status", help="print the experiment ledger as a table",
                        description="Print every experiment recorded in DIR's ledger as a table.")
    status.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    status.set_defaults(handler=_target("loopdeck.cli.workspace:status_command"))


def _add_try(add_parser: AddParser) -> None:
    try_ = add_parser("try", help="run one experiment from your own patch",
                      description="Run a unified diff through the same guard → commit → run → evaluate → "
                      "keep/revert → record path as an agent's change.")
    try_.add_argument("dir", metavar="DIR", help="the workspace")
    try_.add_argument("patch", metavar="PATCH", help="a unified diff file (e.g. from `git diff`)")
    try_.add_argument("--description", "-m", metavar="TEXT",
                      help="one line for the ledger (default: the patch file name)")
    try_.add_argument("--budget", type=positive_float, metavar="SECONDS",
                      help="training time budget for this experiment (default: loopdeck.toml's budget_seconds)")
    try_.set_defaults(handler=_target("loopdeck.cli.workspace:try_command"))


def _add_report(add_parser: AddParser) -> None:
    report = add_parser("report", help="write a progress chart (PNG) and a Markdown summary",
                        description="Write a chart of the metric over the experiments (PNG) and a Markdown "
                        "summary of DIR's ledger.")
    report.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    report.add_argument("--out", metavar="DIR", help="output folder (default: DIR/.loopdeck/report)")
    report.set_defaults(handler=_target("loopdeck.cli.workspace:report_command"))


def _add_ablate(add_parser: AddParser) -> None:
    ablate = add_parser("ablate", help="measure what each kept change contributes to the incumbent",
                        description="Remove each kept change alone from the incumbent (a three-way revert in a "
                        "scratch checkout: your branch and working tree are not touched), run each on the same "
                        "seeds as the incumbent's re-runs ([research] study_seeds), and print each change's "
                        "contribution ± the noise. Changes that contribute nothing are offered for removal. "
                        "The table goes to the ledger and `loopdeck report`.")
    ablate.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    ablate.add_argument("--apply", action="store_true", help="also remove the changes that contribute nothing: "
                        "the simpler incumbent is re-run and kept (a new experiment on the research branch) "
                        "only if it scores the same within the noise")
    ablate.set_defaults(handler=_target("loopdeck.cli.research:ablate_command"))


def _add_transfer(add_parser: AddParser) -> None:
    transfer = add_parser("transfer", help="check whether the incumbent's gain holds at a larger scale",
                          description="Run the baseline commit and the incumbent with a longer budget and a larger "
                          "model ([experiment] scale_knobs, DEPTH for the built-in target), on shared seeds, with "
                          "the noise band measured at that scale, and report whether the gain holds, shrinks or "
                          "reverses. Your branch and working tree are not touched.")
    transfer.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    transfer.add_argument("--scale", type=parse_scale, default=2.0, metavar="2x|4x",
                          help="budget and size knobs multiplied by this (default: 2x)")
    transfer.add_argument("--per-change", action="store_true", help="also run the incumbent without each kept "
                          "change at that scale: which changes help only the small run (one variant per change)")
    transfer.set_defaults(handler=_target("loopdeck.cli.research:transfer_command"))


def _add_ctl(add_parser: AddParser) -> None:
    ctl = add_parser("ctl", help="send a control command to a running session (scripts, headless)",
                     description="Control the session running on DIR (background, headless or --foreground) "
                     "by appending a command to DIR/.loopdeck/control.jsonl, which the engine reads within a "
                     "fraction of a second. A console (`loopdeck attach DIR`) does the same interactively.")
    ctl.add_argument("dir", metavar="DIR", help="the workspace the session runs in")
    ctl.add_argument("action", choices=CTL_ACTIONS, metavar="ACTION",
                     help="approve / veto: decide on the pending change; note: add TEXT as a note; pause / resume; "
                     "stop: stop after the current experiment; abort: stop now; autonomous / supervised: set the "
                     "approval policy to auto / ask; mode explore|exploit|combine|ablate|auto: force the research "
                     "planner's mode from the next turn (auto: the planner chooses again)")
    ctl.add_argument("text", nargs="?", default="", metavar="TEXT",
                     help="the note (for `note`), a veto's reason, or the mode (for `mode`); default: none")
    ctl.add_argument("--experiment", type=int, metavar="N",
                     help="which pending experiment (default: the pending one)")
    ctl.set_defaults(handler=_target("loopdeck.cli.workspace:control_command"))


def _add_migrate(add_parser: AddParser) -> None:
    migrate = add_parser("migrate", help="give a workspace made by an earlier loopdeck its own harness",
                         description="Copy harness.py into DIR, point train.py's import at it, and protect and pin "
                         "it in loopdeck.toml, in one commit on the current branch.")
    migrate.add_argument("dir", metavar="DIR", help="the workspace to migrate")
    migrate.set_defaults(handler=_target("loopdeck.cli.migrate:migrate_command"))


def _add_doctor(add_parser: AddParser) -> None:
    doctor = add_parser("doctor", help="check that a workspace can run on this machine",
                        description="Run the checks a session makes before its baseline, and only those: the run "
                        "command and its Python (uv for a uv project), the imports of the training and protected "
                        "files, CUDA where the code requires it, the data cache the protected file names. Each "
                        "problem comes with the command that fixes it. Exit status 0 when DIR can run, 1 otherwise.")
    doctor.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    doctor.set_defaults(handler=_target("loopdeck.cli.doctor:doctor_command"))


def _add_agents(add_parser: AddParser) -> None:
    agents = add_parser("agents", help="list the agents and whether each is usable here",
                        description="List every agent kind with usable / not usable and why (key missing, CLI not "
                        "on PATH, package not installed). Reads the environment, PATH and DIR's loopdeck.toml "
                        "only: no network request is made.")
    agents.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    agents.set_defaults(handler=_target("loopdeck.cli.agents:agents_command"))


def _add_notify_test(add_parser: AddParser) -> None:
    test = add_parser("notify-test", help="send a test notification to the [notify] URLs",
                      description="Send one test message to every URL in [notify] urls of DIR's loopdeck.toml "
                      "and in LOOPDECK_NOTIFY_URLS (apprise URLs: ntfy, Slack, Discord, Telegram, e-mail, …), "
                      "so you know the messages of a session will reach you. Needs pip install 'loopdeck[notify]'.")
    test.add_argument("dir", metavar="DIR", nargs="?", default=".", help=DIR_HELP)
    test.set_defaults(handler=_target("loopdeck.cli.notify:notify_test_command"))


def _run_handler(args: argparse.Namespace) -> int:
    target = "loopdeck.cli.headless:run_headless_command" if args.headless else "loopdeck.cli.launch:run_console_command"
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
