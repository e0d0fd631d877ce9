"""Test helpers for the GPT target: the training template set to a tiny model, and folders it can run in."""

from __future__ import annotations

import ast
import contextlib
import shutil
import sys
from pathlib import Path

import loopdeck.gpt.harness as harness
from loopdeck.engine.agents.offline.constants import discover
from loopdeck.engine.agents.offline.edit import apply_edits, render
from loopdeck.gpt import HARNESS_FILE, HARNESS_TEMPLATE, TRAIN_TEMPLATE

# A train.py imported in this process (`from harness import …`) gets the package's harness, the file a workspace
# holds a copy of.
sys.modules.setdefault("harness", harness)

# A model small enough to take many optimizer steps per second on a 2-core CPU.
TINY = {
    "DEPTH": 1,
    "ASPECT_RATIO": 32,
    "HEAD_DIM": 16,
    "MLP_RATIO": 2,
    "DEVICE_BATCH_SIZE": 4,
    "TOTAL_BATCH_SIZE": 1024,
}


def set_hyperparameters(source: str, **values: object) -> str:
    """`source` with the named constants set, edited the way the offline agent edits them."""
    knobs = {knob.key: knob for knob in discover({"train.py": source})}
    return apply_edits(source, [(knobs[name], render(knobs[name], value)) for name, value in values.items()])


def hyperparameters(source: str) -> dict[str, object]:
    """Every module-level UPPER_CASE constant whose value is a literal, in file order."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            with contextlib.suppress(ValueError):  # computed from other names: not a hyperparameter
                found[node.targets[0].id] = ast.literal_eval(node.value)
    return found


def tiny_train_source(**overrides: object) -> str:
    """The template with its hyperparameter block set to a tiny model (depth 1, width 32, batch 4 × 256).

    Keyword arguments override further constants, e.g. tiny_train_source(MATRIX_LR=1e30).
    """
    return set_hyperparameters(TRAIN_TEMPLATE.read_text(encoding="utf-8"), **{**TINY, **overrides})


def write_target(folder: Path, source: str) -> None:
    """A folder that runs `python train.py`: the given train.py and a copy of the harness beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(source, encoding="utf-8")
    shutil.copyfile(HARNESS_TEMPLATE, folder / HARNESS_FILE)


def harness_files() -> dict[str, str]:
    """make_workspace(extra_files=…) for a GPT-target workspace: its harness.py."""
    return {HARNESS_FILE: HARNESS_TEMPLATE.read_text(encoding="utf-8")}
