"""What the benchmarks share: figures with the load they were taken under, the machine, scratch workspaces, a
training target that sleeps for exactly its budget, and setting the GPT template's hyperparameters."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    """One measured figure, with the 1-minute load average of the machine when it was taken."""

    bench: str
    name: str
    value: str
    target: str = ""
    load: float = 0.0
    note: str = ""


def load() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> str:
    """CPU model, cores, torch version (and GPU when there is one), for the results file."""
    import torch

    from bench.train_throughput import cpu_name

    gpu = f" · {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu_name()} · {os.cpu_count()} cores · torch {torch.__version__} · Python {platform.python_version()}{gpu}"


def print_figures(figures: list[Figure]) -> None:
    width = max((len(f"{f.bench}: {f.name}") for f in figures), default=20)
    for figure in figures:
        target = f"  (target {figure.target})" if figure.target else ""
        note = f"  — {figure.note}" if figure.note else ""
        print(f"  {f'{figure.bench}: {figure.name}':<{width}}  {figure.value}{target}  [load {figure.load:.2f}]{note}")


def standalone(run: Callable[[bool], list[Figure]]) -> None:
    """`python -m bench.NAME [--quick]`: one benchmark alone, its figures printed."""
    quick = "--quick" in sys.argv[1:]
    print_figures(run(quick))


# --- scratch workspaces --------------------------------------------------------------------------------------------


# A training target that sleeps for exactly its budget and prints `metric()`: the benchmarks' stand-in for training.
_SLEEPING = '''\
"""{doc}"""

import json
import math
import os
import random
import time

{constants}


def metric():
{metric}


def main():
    budget = float(os.environ.get("LOOPDECK_TIME_BUDGET", "1"))
    path = os.environ.get("LOOPDECK_METRICS")
    stream = open(path, "a") if path else None
    if stream:
        stream.write(json.dumps({{"type": "start", "device": "cpu", "budget_seconds": budget}}) + "\\n")
        stream.flush()
    time.sleep(budget)
    val_bpb = metric()
    print("---")
    print(f"val_bpb:          {{val_bpb:.6f}}")
    print(f"training_seconds: {{budget:.3f}}")
    print("peak_vram_mb:     0.0")
    if stream:
        stream.write(json.dumps({{"type": "end", "val_bpb": val_bpb, "training_seconds": budget}}) + "\\n")


if __name__ == "__main__":
    main()
'''


def sleeping_target(lr: float = 0.5) -> str:
    """val_bpb = |LR - 0.2| + 1 (loopdeck benchmarks); STEP lets a benchmark make a new experiment without
    changing the metric."""
    return _SLEEPING.format(
        doc="A training target that sleeps for exactly its budget: val_bpb = |LR - 0.2| + 1 (loopdeck benchmarks).",
        constants=f"LR = {lr}\nSTEP = 0  # benchmarks change this to make a new experiment without changing the metric",
        metric="    return abs(LR - 0.2) + 1.0")


# The synthetic objective (bench/search_strategies.py): a known function of four constants with an interaction (the
# best learning rate depends on the depth: the optimum is a valley, not a point per knob) and a constant that does
# nothing. Minimum 1.0 at MATRIX_LR 0.08, DEPTH 8, WEIGHT_DECAY 0.01, WARMUP_RATIO 0.3. The noise is seeded by
# LOOPDECK_SEED and the configuration, so a run is reproducible; it is not a module constant, so not a knob.
SYNTHETIC_CONSTANTS = """\
# Hyperparameters (edit these directly)
MATRIX_LR = {matrix_lr}        # learning rate of the matrix parameters
DEPTH = {depth}                # transformer layers
WEIGHT_DECAY = {weight_decay}  # AdamW weight decay
WARMUP_RATIO = {warmup_ratio}  # fraction of the budget spent warming up
ADAM_BETA2 = 0.95      # second-moment decay"""
SYNTHETIC_METRIC = """\
    a = math.log2(MATRIX_LR * DEPTH / 0.64)
    w = math.log10(max(WEIGHT_DECAY, 1e-6) / 0.01)
    clean = (1.0 + 0.05 * a * a + 0.004 * (DEPTH - 8) ** 2 + 0.02 * w * w + 0.4 * (WARMUP_RATIO - 0.3) ** 2
             + 0.03 * a * (DEPTH - 8) / 4)
    seed = f"{{os.environ.get('LOOPDECK_SEED', '0')}}:{{MATRIX_LR}}:{{DEPTH}}:{{WEIGHT_DECAY}}:{{WARMUP_RATIO}}"
    return clean + random.Random(seed).gauss(0.0, {noise})"""
SYNTHETIC_START = {"matrix_lr": 0.02, "depth": 4, "weight_decay": 0.1, "warmup_ratio": 0.1}
SYNTHETIC_OPTIMUM = 1.0  # the clean metric's minimum


def synthetic_target(noise: float = 0.002, **constants: float) -> str:
    """The synthetic objective's train.py, starting from SYNTHETIC_START unless constants say otherwise."""
    return _SLEEPING.format(doc="A training target whose val_bpb is a known function of its constants (see "
                            "bench/common.py).", constants=SYNTHETIC_CONSTANTS.format(**{**SYNTHETIC_START,
                                                                                           **constants}),
                            metric=SYNTHETIC_METRIC.format(noise=noise))


def loop_toml(budget: float, pipeline: str = "off") -> str:
    return f"""\
[experiment]
editable = ["train.py"]
budget_seconds = {budget}
timeout_seconds = {budget * 4 + 30}

[loop]
approval = "auto"
pipeline = "{pipeline}"

[evaluation]
baseline_seeds = 3  # the sleeping target reads no seed; 3 keeps these figures comparable with earlier ones

[research]
skip_repeats = false  # these agents step one knob on purpose: the engine's time is measured, not the research
"""


@contextmanager
def scratch_workspace(files: dict[str, str]) -> Iterator[Path]:
    """A committed git workspace in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="loopdeck-bench-") as folder:
        root = Path(folder) / "ws"
        root.mkdir()
        files = {".gitignore": ".loopdeck/\n__pycache__/\n", "program.md": "# Benchmark\nLower val_bpb.\n", **files}
        for name, text in files.items():
            (root / name).write_text(text)
        for args in (("init", "-q", "--initial-branch=main"), ("add", "-A"),
                     ("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "bench")):
            subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)
        yield root


def set_constants(source: str, values: dict[str, object]) -> str:
    """A training file with the named hyperparameter constants set, as the offline agent edits them."""
    from loopdeck.engine.agents.offline.constants import discover
    from loopdeck.engine.agents.offline.edit import apply_edits, render

    knobs = {knob.key: knob for knob in discover({"train.py": source})}
    return apply_edits(source, [(knobs[name], render(knobs[name], value)) for name, value in values.items()])
