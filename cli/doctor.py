"""`loopdeck doctor DIR`: preflight alone: each check as ok / warning / problem with its fix; exit 0 when runnable."""

from __future__ import annotations

import argparse

from loopdeck.cli.paths import user_path
from loopdeck.engine.config import load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.preflight import preflight


def doctor_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    try:
        config, notes = load_config(path)
    except LoopdeckError as exc:  # not runnable either: the same exit status as any other problem
        print(f"{'problem':<8} settings: {exc}")
        return 1
    for note in notes:
        print(f"{'note':<8} {note}")
    report = preflight(path, config)
    for check in report.checks:
        print(f"{check.level:<8} {check.line()}")
    if report.runnable:
        print(f"loopdeck: {path} can run here (`loopdeck run {path}`)")
        return 0
    count = len(report.problems)
    print(f"loopdeck: {count} problem{'s' if count > 1 else ''}: apply the fix{'es' if count > 1 else ''} above, "
          f"then run `loopdeck doctor {path}` again")
    return 1
