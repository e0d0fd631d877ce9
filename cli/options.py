"""Options of the command line: value types, `ctl`'s actions, `loopdeck run`'s flags and the `RunOptions` they build.

Every `RunOptions` field has a flag here (`RUN_FLAGS`; tests/test_cli.py checks it), so whatever loopdeck.toml
can say about one session, the command line can override.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from loopdeck.engine.config import AGENT_KINDS, APPROVALS, PIPELINE_MODES

if TYPE_CHECKING:  # the engine's session is imported when a run starts, not for `loopdeck --help`
    from loopdeck.engine.session import RunOptions

# RunOptions field -> the flag of `loopdeck run` that sets it.
RUN_FLAGS = {"agent": "--agent", "approval": "--approve", "max_experiments": "--max-experiments",
             "max_hours": "--max-hours", "budget_seconds": "--budget", "tag": "--tag", "pipeline": "--pipeline"}

# `loopdeck ctl DIR ACTION` -> the control command sent and its fixed fields.
CTL_ACTIONS = {"approve": ("decide", {"approve": True}), "veto": ("decide", {"approve": False}),
               "note": ("note", {}), "pause": ("pause", {}), "resume": ("resume", {}), "stop": ("stop", {}),
               "abort": ("abort", {}), "autonomous": ("approval", {"policy": "auto"}),
               "supervised": ("approval", {"policy": "ask"}), "mode": ("mode", {})}


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def add_agent_option(parser: argparse.ArgumentParser, default: str = "loopdeck.toml's [agent] kind, auto") -> None:
    """--agent; `default` says in words what happens without it."""
    parser.add_argument(RUN_FLAGS["agent"], choices=AGENT_KINDS, dest="agent",
                        help="who proposes changes: auto = claude when ANTHROPIC_API_KEY is set, else the built-in "
                        f"offline agent (default: {default})")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The flags of `loopdeck run` that override loopdeck.toml for one session (none given: the file decides)."""
    parser.add_argument("--autonomous", action="store_true", help="no approval gate (same as --approve auto)")
    parser.add_argument(RUN_FLAGS["approval"], choices=APPROVALS, dest="approval",
                        help="ask: a person approves each change; auto: no gate (default: loopdeck.toml's [loop] "
                        "approval if set, else ask in the console and auto headless)")
    add_agent_option(parser)
    parser.add_argument(RUN_FLAGS["max_experiments"], type=positive_int, metavar="N", dest="max_experiments",
                        help="stop after N experiments, the baseline not counted (default: loopdeck.toml's "
                        "[loop] max_experiments, 0 = no limit)")
    parser.add_argument(RUN_FLAGS["max_hours"], type=positive_float, metavar="H", dest="max_hours",
                        help="stop after H hours of wall time (default: loopdeck.toml's [loop] max_hours, "
                        "0 = no limit)")
    parser.add_argument(RUN_FLAGS["budget_seconds"], type=positive_float, metavar="SECONDS", dest="budget_seconds",
                        help="training time budget per experiment (default: loopdeck.toml's [experiment] "
                        "budget_seconds)")
    parser.add_argument(RUN_FLAGS["tag"], dest="tag", help="research branch suffix: experiments commit on "
                        "loopdeck/<tag> (default: loopdeck.toml's [loop] tag, else the research branch checked "
                        "out, else today's date)")
    parser.add_argument(RUN_FLAGS["pipeline"], choices=PIPELINE_MODES, dest="pipeline",
                        help="draft the next proposal while an experiment trains: on | off | auto = on once the "
                        "agent's proposals take more than 10%% of the budget (default: loopdeck.toml's [loop] "
                        "pipeline, auto)")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The RunOptions that `loopdeck run`'s flags ask for; None where a flag was not given (loopdeck.toml decides)."""
    from loopdeck.engine.session import RunOptions

    options = RunOptions(**{field: getattr(args, field) for field in RUN_FLAGS})
    if args.autonomous:
        options.approval = "auto"
    return options
