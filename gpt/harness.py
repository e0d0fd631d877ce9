"""The protected harness of the GPT target: fixed constants, data, dataloader, the run's environment, and val_bpb.

Fixed, do not modify. Experiments edit train.py; this file defines how they are measured, so every experiment
trains for the same wall-clock budget and is scored on the same validation tokens in the same way.

Environment (all optional; the engine sets them, a person may too):
  LOOPDECK_TIME_BUDGET   training seconds (default 60)
  LOOPDECK_EVAL_TOKENS   evaluation token count; tests only, since it changes what val_bpb means
  LOOPDECK_DATA          a directory, file or glob of .txt/.jsonl/.parquet; unset = the embedded corpus
  LOOPDECK_TOKENIZER     byte (default), bpe or bpe:VOCAB (a BPE trained on the corpus and cached)
  LOOPDECK_DEVICE        cpu | cuda | mps; unset = CUDA, else MPS, else CPU
  LOOPDECK_SEED          integer seed (default 0)
  LOOPDECK_RUN_DIR       where the finished run saves model.pt (default runs/latest under the current directory)
  LOOPDECK_METRICS       JSON-lines file the run appends its start/step/end records to
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from loopdeck.gpt.cache import atomic_path
from loopdeck.gpt.corpus import load_corpus
from loopdeck.gpt.errors import DataError
from loopdeck.gpt.metrics import MetricsLog, format_summary, open_metrics
from loopdeck.gpt.tokenizer import Tokenizer, get_tokenizer

__all__ = [
    "EVAL_BATCH_SIZE", "EVAL_TOKENS", "MAX_SEQ_LEN", "TIME_BUDGET", "UNTIMED_STEPS", "Data", "DataError",
    "MetricsLog", "evaluate_bpb", "format_summary", "load_data", "load_model", "make_train_loader",
    "open_metrics", "peak_flops", "peak_memory_mb", "pick_device", "run_dir", "run_seed", "save_model",
]


def _env_number(name: str, default: float, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not value > 0 or not math.isfinite(value):
        raise DataError(f"{name} must be a positive {'whole ' if kind is int else ''}number, got {raw!r}")
    return value


# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

MAX_SEQ_LEN = 256  # context length of every training row and every evaluation row
TIME_BUDGET = _env_number("LOOPDECK_TIME_BUDGET", 60.0, float)  # training seconds, start-up steps excluded
EVAL_TOKENS = _env_number("LOOPDECK_EVAL_TOKENS", 131072, int)  # validation tokens scored (fewer if val is smaller)
EVAL_BATCH_SIZE = 32  # rows of MAX_SEQ_LEN per evaluation forward pass
UNTIMED_STEPS = 3  # first optimizer steps not counted in the budget: compilation, allocator warm-up


# ---------------------------------------------------------------------------
# The run's environment
# ---------------------------------------------------------------------------


def run_seed() -> int:
    raw = os.environ.get("LOOPDECK_SEED", "").strip() or "0"
    try:
        return int(raw)
    except ValueError:
        raise DataError(f"LOOPDECK_SEED must be an integer, got {raw!r}") from None


def pick_device() -> torch.device:
    """LOOPDECK_DEVICE when set, else the best available: CUDA, then Apple's MPS, then the CPU."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    requested = os.environ.get("LOOPDECK_DEVICE", "").strip().lower() or "auto"
    if requested == "auto":
        return torch.device(next(name for name, present in available.items() if present))
    if requested not in available:
        raise DataError(f"LOOPDECK_DEVICE={requested!r}: expected cpu, cuda, mps or auto")
    if not available[requested]:
        raise DataError(f"LOOPDECK_DEVICE={requested}: no {requested} device on this machine; "
                        "unset it to use the best device available")
    return torch.device(requested)


def run_dir() -> Path:
    return Path(os.environ.get("LOOPDECK_RUN_DIR") or Path("runs", "latest"))


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    corpus_name: str
    fingerprint: str  # sha256 of the corpus content: differs on another Python version's embedded corpus
    tokenizer: Tokenizer
    train: torch.Tensor  # (N,) int32 token stream: every document is BOS followed by its tokens
    val: torch.Tensor  # (N,) int32, the same for every experiment
    holdout: torch.Tensor  # (N,) int32, never used for keep decisions
    token_bytes: torch.Tensor  # (vocab_size,) int64: UTF-8 bytes each token stands for; BOS stands for none


def _token_stream(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    bos = torch.tensor([tokenizer.bos_id], dtype=torch.int32)
    pieces = []
    for ids in tokenizer.encode_batch(texts):
        pieces += [bos, torch.tensor(ids, dtype=torch.int32)]
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int32)


def load_data(spec: str | None = None, tokenizer_spec: str | None = None) -> Data:
    """Corpus and tokenizer from the arguments, else from LOOPDECK_DATA / LOOPDECK_TOKENIZER, tokenized by split."""
    spec = os.environ.get("LOOPDECK_DATA", "") if spec is None else spec
    tokenizer_spec = os.environ.get("LOOPDECK_TOKENIZER", "") if tokenizer_spec is None else tokenizer_spec
    corpus = load_corpus(spec.strip() or None)
    tokenizer = get_tokenizer(tokenizer_spec, corpus)
    return Data(
        corpus_name=corpus.name,
        fingerprint=corpus.fingerprint,
        tokenizer=tokenizer,
        train=_token_stream(tokenizer, corpus.texts("train")),
        val=_token_stream(tokenizer, corpus.texts("val")),
        holdout=_token_stream(tokenizer, corpus.texts("holdout")),
        token_bytes=torch.tensor(tokenizer.token_bytes(), dtype=torch.int64),
    )


def make_train_loader(data: Data, batch_size: int, seq_len: int, seed: int,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches of shape (batch_size, seq_len): windows at seeded random offsets."""
    last_start = len(data.train) - seq_len - 1
    if last_start < 0:
        raise DataError(f"the train split has {len(data.train)} tokens; a batch row needs {seq_len + 1}")
    generator = torch.Generator().manual_seed(seed)
    window = torch.arange(seq_len + 1)
    while True:
        starts = torch.randint(0, last_start + 1, (batch_size, 1), generator=generator)
        rows = data.train[starts + window].long()  # (B, T+1)
        if device.type == "cuda":  # pinned host memory lets the copy overlap the previous step's compute
            rows = rows.pin_memory()
        rows = rows.to(device, non_blocking=True)
        yield rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


# ---------------------------------------------------------------------------
# Evaluation (fixed: this is the metric)
# ---------------------------------------------------------------------------


def _eval_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def evaluate_bpb(model: torch.nn.Module, data: Data, device: torch.device | None = None, split: str = "val",
                 eval_tokens: int | None = None) -> float:
    """Bits per byte of `model` on the first `eval_tokens` target tokens of a split (fewer when it is shorter).

    model(inputs) must return logits (B, T, vocab). Summed cross-entropy in nats over the target tokens, divided by
    ln 2 times the UTF-8 bytes those targets stand for; BOS targets stand for no bytes and count in neither sum,
    so the figure is comparable across tokenizers. Rows are consecutive MAX_SEQ_LEN windows, batch shape fixed.
    """
    device = device or next(model.parameters()).device
    stream = getattr(data, split)
    eval_tokens = EVAL_TOKENS if eval_tokens is None else eval_tokens
    rows = min(eval_tokens, len(stream) - 1) // MAX_SEQ_LEN
    if rows < 1:
        raise DataError(f"the {split} split has {len(stream)} tokens; evaluation needs at least {MAX_SEQ_LEN + 1}")
    inputs = stream[: rows * MAX_SEQ_LEN].view(rows, MAX_SEQ_LEN)
    targets = stream[1 : rows * MAX_SEQ_LEN + 1].view(rows, MAX_SEQ_LEN)
    token_bytes = data.token_bytes.to(device)
    total_nats = torch.zeros((), dtype=torch.float64, device=device)
    total_bytes = torch.zeros((), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, rows, EVAL_BATCH_SIZE):
            x = inputs[start : start + EVAL_BATCH_SIZE].to(device).long()
            y = targets[start : start + EVAL_BATCH_SIZE].to(device).long()
            with _eval_autocast(device):
                logits = model(x)
            nats = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
            nbytes = token_bytes[y.flatten()]
            total_nats += (nats * (nbytes > 0)).sum(dtype=torch.float64)
            total_bytes += nbytes.sum()
    finally:
        model.train(was_training)
    return total_nats.item() / (math.log(2) * total_bytes.item())


# ---------------------------------------------------------------------------
# Weights, so another process can rebuild and score the model
# ---------------------------------------------------------------------------


def save_model(config: dict[str, Any], state_dict: dict[str, torch.Tensor], directory: Path | None = None) -> Path:
    """Write {"config": config, "state_dict": state_dict} to DIR/model.pt (LOOPDECK_RUN_DIR by default)."""
    path = (directory or run_dir()) / "model.pt"
    with atomic_path(path) as tmp:
        torch.save({"config": config, "state_dict": state_dict}, tmp)
    return path


def load_model(train_module: ModuleType, path: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Rebuild `train_module.GPT(train_module.GPTConfig(**config))` from a saved model.pt and load its weights."""
    checkpoint = torch.load(path, map_location=device, weights_only=True)
    model = train_module.GPT(train_module.GPTConfig(**checkpoint["config"])).to(device)
    model.load_state_dict(checkpoint["state_dict"])
    return model


# ---------------------------------------------------------------------------
# Hardware figures for the progress line and the summary
# ---------------------------------------------------------------------------

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets; matched against the device name in order.
_PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362.1e12), ("L4", 121e12), ("A10G", 70e12), ("RTX 4090", 165.2e12),
    ("RTX 3090", 71e12),
)


def peak_flops(device: torch.device) -> float | None:
    """The device's peak bf16 FLOP/s, or None where no figure is known (CPU, MPS, unlisted GPUs): no MFU then."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in _PEAK_BF16_FLOPS if key in name), None)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of the run: allocated CUDA/MPS memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
