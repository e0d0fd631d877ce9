"""Tiny fake training targets and a scripted agent for engine tests (pure Python, no torch; a run takes ~0.1 s).

The metric is computed from the `LR` constant in the file (`val_bpb = |LR - 0.2| + 1.0`), so a scripted agent's
change is kept or discarded deterministically; `MODE` selects a failure class. Like the gpt template, a run writes
the LOOPDECK_METRICS stream (start, a few steps, end) and ends with autoresearch's summary block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from loopdeck.engine.agents.base import AgentError, AgentTurn, Proposal

FAKE_TRAIN = '''\
"""Fake training target for loopdeck tests."""

import json
import os
import subprocess
import sys
import time

# Hyperparameters (edit these directly)
LR = {lr}
MODE = "{mode}"  # ok | crash | nan | hang | silent | chatty
STEPS = {steps}
STEP_SECONDS = {step_seconds}


def record(stream, **fields):
    if stream is not None:
        stream.write(json.dumps(fields) + "\\n")
        stream.flush()


def hang_with_stubborn_child():
    # A child that leaves the process group and ignores SIGTERM and SIGHUP, trying to outlive the run.
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "signal.signal(signal.SIGHUP, signal.SIG_IGN); time.sleep(600)"],
                             start_new_session=True)
    with open(os.path.join(os.environ.get("LOOPDECK_RUN_DIR", "."), "hang.pids"), "w") as handle:
        handle.write(f"{{os.getpid()}} {{child.pid}}")
    print("hanging", flush=True)
    time.sleep(600)


def main():
    path = os.environ.get("LOOPDECK_METRICS")
    stream = open(path, "a") if path else None
    budget = float(os.environ.get("LOOPDECK_TIME_BUDGET", "1"))
    record(stream, type="start", device="cpu", torch="none", corpus_fingerprint="fake-corpus-1", tokenizer="byte",
           num_params=1000, budget_seconds=budget, seed=int(os.environ.get("LOOPDECK_SEED", "0")))
    val_bpb = abs(LR - 0.2) + 1.0
    t0 = time.time()
    for step in range(STEPS):
        loss = val_bpb + 0.5 * (STEPS - step) / STEPS
        print(f"step {{step:05d}} | loss: {{loss:.6f}}", flush=True)
        record(stream, type="step", step=step, elapsed_seconds=round(time.time() - t0, 4), loss=loss,
               progress=(step + 1) / STEPS, tokens_per_second=1000.0, mfu_percent=None, lr_mult=1.0,
               ms_per_step=STEP_SECONDS * 1000)
        if MODE == "chatty":
            for i in range(2000):
                print(f"chatter {{step}}.{{i}}")
        time.sleep(STEP_SECONDS)
    if MODE == "crash":
        raise RuntimeError("the fake target crashed on purpose")
    if MODE == "nan":
        print("FAIL")
        sys.exit(1)
    if MODE == "hang":
        hang_with_stubborn_child()
    training_seconds = time.time() - t0
    print("---")
    if MODE != "silent":
        print(f"val_bpb:          {{val_bpb:.6f}}")
    print(f"training_seconds: {{training_seconds:.1f}}")
    print(f"total_seconds:    {{training_seconds:.1f}}")
    print("peak_vram_mb:     2048.0")
    print("mfu_percent:      0.00")
    print("total_tokens_M:   0.1")
    print(f"num_steps:        {{STEPS}}")
    print("num_params_M:     0.0")
    print("depth:            1")
    record(stream, type="end", val_bpb=val_bpb, training_seconds=training_seconds, peak_vram_mb=2048.0)


if __name__ == "__main__":
    main()
'''


def fake_train_source(lr: float = 0.5, mode: str = "ok", steps: int = 4, step_seconds: float = 0.02) -> str:
    return FAKE_TRAIN.format(lr=lr, mode=mode, steps=steps, step_seconds=step_seconds)


def expected_metric(lr: float) -> float:
    """The val_bpb the fake target prints for a given LR, rounded like the summary line."""
    return round(abs(lr - 0.2) + 1.0, 6)


def set_constant(source: str, name: str, value: object) -> str:
    """Replace the module-level `NAME = …` assignment in a fake train.py (what a scripted agent edits)."""
    literal = f'"{value}"' if isinstance(value, str) else repr(value)
    new, count = re.subn(rf"^{name} = [^\n#]*?(\s*#.*)?$", lambda m: f"{name} = {literal}{m.group(1) or ''}",
                         source, count=1, flags=re.M)
    if count != 1:
        raise ValueError(f"no constant {name} in the source")
    return new


PREPARE_PY = '''\
"""Fixed constants and data preparation (protected: experiments must not edit it)."""

MAX_SEQ_LEN = 256
'''

PROGRAM_MD = """\
# Research program

Lower val_bpb. Edit only train.py. Keep changes simple.
"""


def write_autoresearch_repo(root: Path, lr: float = 0.5) -> None:
    """An autoresearch-layout checkout (train.py, prepare.py, program.md, pyproject.toml; no loopdeck.toml)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(fake_train_source(lr=lr))
    (root / "prepare.py").write_text(PREPARE_PY)
    (root / "program.md").write_text(PROGRAM_MD)
    (root / "pyproject.toml").write_text('[project]\nname = "autoresearch"\nversion = "0.1.0"\n')


class ScriptedAgent:
    """An Agent that plays a fixed script: each step is a Proposal, a callable(turn) -> Proposal, or an exception
    to raise. It records every turn it receives; when the script runs out it ends the session ("exhausted")."""

    name = "scripted"

    def __init__(self, steps: Iterable[object] = ()) -> None:
        self.steps = list(steps)
        self.turns: list[AgentTurn] = []
        self.closed = False

    def propose(self, turn: AgentTurn) -> Proposal:
        self.turns.append(turn)
        if not self.steps:
            raise AgentError("the script is exhausted", fatal=True, stop_reason="exhausted")
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(turn)
        assert isinstance(step, Proposal)
        return step

    def close(self) -> None:
        self.closed = True


def change(name: str, value: object, description: str | None = None, path: str = "train.py"
           ) -> Callable[[AgentTurn], Proposal]:
    """A script step: set one constant in the incumbent's train.py."""

    def make(turn: AgentTurn) -> Proposal:
        return Proposal(description=description or f"{name} {value}", rationale=f"try {name} = {value}",
                        files={path: set_constant(turn.files[path], name, value)})

    return make


def write_files(files: dict[str, str], description: str = "scripted edit") -> Callable[[AgentTurn], Proposal]:
    """A script step that returns these exact file contents."""
    return lambda turn: Proposal(description=description, rationale="scripted", files=files)


# A target whose metric is a known function of its constants, with interactions, a scale effect and seeded noise
# (for ablation and the scale-transfer check). Y makes X redundant (X helps only without Y); TRICK helps at
# DEPTH <= 2 and hurts above it; DEPTH itself helps. Each constant sits in its own paragraph, so reverting one
# kept change never touches the lines of another (a clean three-way revert).
SYNTHETIC_TRAIN = '''\
"""Synthetic fake target: val_bpb is a known function of the constants below, plus seeded noise."""

import os
import random
import time

X = {x}  # helps only without Y

# ---

Y = {y}  # helps, and makes X redundant

# ---

Z = {z}  # helps

# ---

TRICK = {trick}  # helps at DEPTH <= 2, hurts above

# ---

DEPTH = {depth}  # the size knob

# ---

SIGMA = {sigma}
STEP_SECONDS = {step_seconds}


def main():
    seed = int(os.environ.get("LOOPDECK_SEED", "0"))
    label = f"{{X}}:{{Y}}:{{Z}}:{{TRICK}}:{{DEPTH}}"
    value = 1.0 - 0.03 * X * (1 - Y) - 0.05 * Y - 0.02 * Z - 0.02 * TRICK * (1 if DEPTH <= 2 else -1) - 0.01 * DEPTH
    val_bpb = value + SIGMA * random.Random(f"{{seed}}:{{label}}").gauss(0.0, 1.0)
    time.sleep(STEP_SECONDS)
    print("---")
    print(f"val_bpb:          {{val_bpb:.6f}}")
    print(f"training_seconds: {{STEP_SECONDS:.1f}}")
    print(f"depth:            {{DEPTH}}")


if __name__ == "__main__":
    main()
'''


def synthetic_source(x: int = 0, y: int = 0, z: int = 0, trick: int = 0, depth: int = 2, sigma: float = 0.001,
                     step_seconds: float = 0.05) -> str:
    return SYNTHETIC_TRAIN.format(x=x, y=y, z=z, trick=trick, depth=depth, sigma=sigma, step_seconds=step_seconds)


def synthetic_value(x: int = 0, y: int = 0, z: int = 0, trick: int = 0, depth: int = 2) -> float:
    """The synthetic target's metric without its noise."""
    return 1.0 - 0.03 * x * (1 - y) - 0.05 * y - 0.02 * z - 0.02 * trick * (1 if depth <= 2 else -1) - 0.01 * depth
