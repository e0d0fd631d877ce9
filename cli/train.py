"""`loopdeck train`: run the GPT training template once, outside any loop, with its files kept in one folder.

The folder gets the exact train.py and harness.py that ran, log.txt (everything it printed), metrics.jsonl and
model.pt.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.environment import budget_clock_env
from loopdeck.gpt import HARNESS_FILE, HARNESS_TEMPLATE, TRAIN_TEMPLATE


def train_command(args: argparse.Namespace) -> int:
    """Train once; returns the training process's exit status. A bad --data path raises LoopdeckError up front."""
    data = (getattr(args, "data", None) or "").strip()
    if data:
        # Here: the harness loads torch, worth it only when there is a path to check.
        from loopdeck.gpt.harness import DataError, data_files

        try:
            data_files(data)  # fail in seconds, before the training process starts, with the reason
        except DataError as exc:
            raise LoopdeckError(str(exc)) from None
        data = os.path.abspath(os.path.expanduser(data))  # the run's working directory is the output folder
    out = Path(getattr(args, "out", None) or Path("runs", time.strftime("%Y%m%d-%H%M%S"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TRAIN_TEMPLATE, out / "train.py")
    shutil.copyfile(HARNESS_TEMPLATE, out / HARNESS_FILE)  # train.py imports it from its own folder
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)  # the run appends: start a fresh stream
    env = {**os.environ, "LOOPDECK_RUN_DIR": str(out), "LOOPDECK_METRICS": str(metrics), "LOOPDECK_DATA": data,
           "PYTHONUNBUFFERED": "1"}
    if getattr(args, "budget", None):
        env["LOOPDECK_TIME_BUDGET"] = repr(float(args.budget))
    if getattr(args, "clock", None):
        env.update(budget_clock_env(args.clock))
    device = getattr(args, "device", None)
    if device and device != "auto":
        env["LOOPDECK_DEVICE"] = device
    print(f"loopdeck train: run folder {out}", flush=True)
    with (out / "log.txt").open("w", encoding="utf-8") as log, subprocess.Popen(
        [sys.executable, "train.py"], cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding="utf-8", errors="replace",
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            log.write(line)
    return process.returncode
