"""A small repository in autoresearch's layout, written for these tests (not anyone's code): train.py, prepare.py,
program.md, optionally pyproject.toml + uv.lock, each behaviour of a real one switchable.

Like autoresearch, train.py imports its budget from the protected prepare.py, prints `\\r`-separated progress lines
(`step 00012 (40.0%) | loss: … | dt: 300ms | … | remaining: 2s`), finishes the step that crosses the budget, and
ends with the `---` summary block. Its metric is a known function of LEARNING_RATE (best at 0.02) plus noise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

PREPARE = '''\
"""Fixed constants and the data cache of this small research target (do not modify)."""

import os

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 64         # context length
TIME_BUDGET = {time_budget!r}        # training time budget in seconds
EVAL_TOKENS = 4096       # number of tokens for val eval

CACHE_DIR = {cache_dir!r}


def data_ready():
    return os.path.isdir(CACHE_DIR)
'''

TRAIN = '''\
"""A stand-in training script in autoresearch's shape: sleeps for its steps, reports a metric from LEARNING_RATE."""

import os
import random
import sys
import time
{imports}
from prepare import TIME_BUDGET, data_ready

LEARNING_RATE = 0.04     # the knob experiments change
STEP_SECONDS = {step_seconds!r}      # how long one training step takes
NOISE = {noise!r}             # run-to-run standard deviation of the metric

{seeding}
{preamble}
if not data_ready():
    print("data not found: run prepare.py first", file=sys.stderr)
    sys.exit(1)
t_start = time.time()
total_training_time = 0.0
step = 0
while True:
    t0 = time.time()
    time.sleep(STEP_SECONDS)
    dt = time.time() - t0
    if step > 1:  # the first steps warm up and are not counted, as in autoresearch
        total_training_time += dt
    step += 1
    pct_done = 100 * min(total_training_time / TIME_BUDGET, 1.0)
    remaining = max(0, TIME_BUDGET - total_training_time)
    print(f"\\rstep {{step:05d}} ({{pct_done:.1f}}%) | loss: {{3.0 - step * 0.01:.6f}} | dt: {{dt * 1000:.0f}}ms | "
          f"remaining: {{remaining:.0f}}s    ", end="", flush=True)
    if step > 2 and total_training_time >= TIME_BUDGET:
        break
print()
val_bpb = 1.0 + 50 * (LEARNING_RATE - 0.02) ** 2 + random.gauss(0.0, NOISE)
print("---")
print(f"val_bpb:          {{val_bpb:.6f}}")
print(f"training_seconds: {{total_training_time:.1f}}")
print(f"total_seconds:    {{time.time() - t_start:.1f}}")
print(f"peak_vram_mb:     0.0")
print(f"num_steps:        {{step}}")
'''

PROGRAM = "# autoresearch-style program\n\nLower val_bpb. Edit train.py only; prepare.py is fixed.\n"
PYPROJECT = '[project]\nname = "tiny-autoresearch"\nversion = "0.1.0"\nrequires-python = ">=3.10"\ndependencies = []\n'


def make_repo(path: Path, *, time_budget: float = 1.0, step_seconds: float = 0.2, noise: float = 0.002,
              seeded: bool = False, missing_import: str = "", cuda_only: bool = False, uv_project: bool = False,
              cache_dir: Path | None = None) -> Path:
    """Write the repository at `path`, commit it on `master`, and return it. `cache_dir` (default: a folder
    beside the repo, created) is the data cache prepare.py names; pass a missing folder for "not prepared"."""
    if cache_dir is None:
        cache_dir = path.parent / f"{path.name}-cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
    imports = f"import {missing_import}\n" if missing_import else ""
    preamble = ('import torch\n\ntorch.zeros(1, device="cuda")  # autoresearch needs a GPU: this fails on a CPU '
                "build\n") if cuda_only else ""
    seeding = ('random.seed(int(os.environ.get("LOOPDECK_SEED", "0")))  # honours the seed loopdeck passes'
               if seeded else "random.seed()  # like a GPU run: not reproducible from one seed")
    path.mkdir(parents=True)
    files = {
        "prepare.py": PREPARE.format(time_budget=time_budget, cache_dir=str(cache_dir)),
        "train.py": TRAIN.format(imports=imports, step_seconds=step_seconds, noise=noise, seeding=seeding,
                                 preamble=preamble),
        "program.md": PROGRAM,
        ".gitignore": "__pycache__/\n",
    }
    if uv_project:
        files["pyproject.toml"] = PYPROJECT
        files["uv.lock"] = "version = 1\nrequires-python = \">=3.10\"\n"
    for name, text in files.items():
        (path / name).write_text(text, encoding="utf-8")
    for args in (["init", "-q", "--initial-branch=master"], ["add", "-A"],
                 ["-c", "user.name=researcher", "-c", "user.email=r@example.com", "commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return path
