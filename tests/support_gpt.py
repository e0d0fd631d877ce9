"""Test helpers for the GPT target: the training template with its hyperparameter block set to a tiny model."""

from __future__ import annotations

from loopdeck.gpt import TRAIN_TEMPLATE
from loopdeck.gpt.template import set_hyperparameters

# A model small enough to take many optimizer steps per second on a 2-core CPU.
TINY = {
    "DEPTH": 1,
    "ASPECT_RATIO": 32,
    "HEAD_DIM": 16,
    "MLP_RATIO": 2,
    "DEVICE_BATCH_SIZE": 4,
    "TOTAL_BATCH_SIZE": 1024,
}


def tiny_train_source(**overrides: object) -> str:
    """The template with its hyperparameter block set to a tiny model (depth 1, width 32, batch 4 × 256).

    Keyword arguments override further constants, e.g. tiny_train_source(MATRIX_LR=1e30).
    """
    return set_hyperparameters(TRAIN_TEMPLATE.read_text(encoding="utf-8"), **{**TINY, **overrides})
