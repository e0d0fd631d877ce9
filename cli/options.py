"""Options of the command line: value types, `ctl`'s actions, `loopdeck run`'s flags and the `RunOptions` they build.

Every `RunOptions` field has a flag here (`RUN_FLAGS`; tests/test_cli.py checks it), so whatever loopdeck.toml
can say about one session, the command line can override.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from loopdeck.engine.config import AGENT_KINDS, APPROVALS, PIPELINE_MODES, SCALES, WORKER_BACKENDS

if TYPE_CHECKING:  # the engine's session is imported when a run starts, not for `loopdeck --help`
    from loopdeck.engine.session import RunOptions

# RunOptions field -> the flag of `loopdeck run` that sets it.
RUN_FLAGS = {"agent": "--agent", "approval": "--approve", "max_experiments": "--max-experiments",
             "max_hours": "--max-hours", "budget_seconds": "--budget", "tag": "--tag", "pipeline": "--pipeline",
             "workers": "--workers", "backend": "--backend"}

# `loopdeck ctl DIR ACTION` -> the control command sent and its fixed fields.
CTL_ACTIONS = {"approve": ("decide", {"approve": True}), "veto": ("decide", {"approve": False}),
               "note": ("note", {}), "pause": ("pause", {}), "resume": ("resume", {}), "stop": ("stop", {}),
               "abort": ("abort", {}), "autonomous": ("approval", {"policy": "auto"}),
               "supervised": ("approval", {"policy": "ask"}), "mode": ("mode", {})}


def parse_scale(text: str) -> float:
    """`2x`, `4x` (or `2`, `4`) as a number; argparse shows the error's message."""
    try:
        scale = float(text.strip().lower().removesuffix("x"))
    except ValueError:
        scale = 0.0
    if scale not in SCALES:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one of {', '.join(f'{s:g}x' for s in SCALES)}")
    return scale


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


def worker_count(text: str) -> int | str:
    """--workers: a positive whole number, or "auto"."""
    return "auto" if text == "auto" else positive_int(text)


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
    parser.add_argument(RUN_FLAGS["workers"], type=worker_count, metavar="N|auto", dest="workers",
                        help="experiments in flight at once, each in its own git worktree: auto = one per GPU with "
                        "--backend ray, or one per [workers] cpus_per_worker cores without GPUs (default: loopdeck.toml's [workers] count, "
                        "1)")
    parser.add_argument(RUN_FLAGS["backend"], choices=WORKER_BACKENDS, dest="backend",
                        help="where experiments run: local processes, or ray (every GPU of a machine, or the Ray "
                        "cluster at [workers] address; pip install 'loopdeck[ray]') (default: loopdeck.toml's "
                        "[workers] backend, local)")


def run_options(args: argparse.Namespace) -> RunOptions:
    """The RunOptions that `loopdeck run`'s flags ask for; None where a flag was not given (loopdeck.toml decides)."""
    from loopdeck.engine.session import RunOptions

    options = RunOptions(**{field: getattr(args, field) for field in RUN_FLAGS})
    if args.autonomous:
        options.approval = "auto"
    return options
