"""Training throughput: the default gpt model against a plain reference GPT of the same size, side by side.

The reference is written here with no tricks: learned position embeddings, pre-LayerNorm blocks, attention as
an explicit causal mask + softmax, a GELU MLP, AdamW (lr 1e-3) on every parameter. It has the default model's
depth, width, heads, MLP ratio, vocabulary, sequence length and batch. Both train in one process on the same
batches of the embedded corpus, in alternating blocks of steps (whoever goes first alternates too) so that load on
the machine falls on both alike, until each has trained for the same number of seconds; a step is forward,
backward and the optimizers' update, with the template's warmdown schedule for both. Figures: median tokens/s of
each, and the validation bits per byte each reached in that equal time (the harness's own evaluation). On a GPU
it also runs the template at autoresearch's depth-8 size and compares its MFU with the 39.8 % autoresearch
reports for its train.py on an H100.

Run: python -m bench reference_gpt [--quick]
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F

import loopdeck.gpt.harness as harness
from bench.common import Figure, load, set_constants, standalone
from loopdeck.gpt import TRAIN_TEMPLATE
from loopdeck.gpt.harness import MAX_SEQ_LEN, evaluate_bpb, load_data, make_train_loader

VOCAB = 257  # the byte tokenizer's vocabulary, BOS included
AUTORESEARCH_H100_MFU = 39.8
GPU_SIZE = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "DEVICE_BATCH_SIZE": 128, "TOTAL_BATCH_SIZE": 2**19}


class ReferenceBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int, seq_len: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, mlp_ratio * width), nn.Linear(mlp_ratio * width, width)
        self.register_buffer("mask", torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.heads)
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        y = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, C)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self, depth: int, width: int, heads: int, mlp_ratio: int, vocab: int, seq_len: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, width), nn.Embedding(seq_len, width)
        self.blocks = nn.ModuleList(ReferenceBlock(width, heads, mlp_ratio, seq_len) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        return logits if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def default_train_module() -> ModuleType:
    """The gpt template as a module (importing it does not train); its `from harness import` gets this harness."""
    sys.modules.setdefault("harness", harness)
    spec = importlib.util.spec_from_file_location("loopdeck_default_train", TRAIN_TEMPLATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Contender:
    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    description: str
    trained: float = 0.0  # seconds
    rates: list[float] = field(default_factory=list)  # tokens/s per block


def contenders(train: ModuleType) -> dict[str, Contender]:
    torch.manual_seed(0)
    config = train.GPTConfig(vocab_size=VOCAB)
    default = train.GPT(config)
    reference = ReferenceGPT(config.n_layer, config.n_embd, config.n_head, config.mlp_ratio, VOCAB, MAX_SEQ_LEN)
    adamw = torch.optim.AdamW(reference.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    for group in adamw.param_groups:
        group["initial_lr"] = group["lr"]

    def params(model: nn.Module) -> str:
        return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"

    shape = (f"depth {config.n_layer}, width {config.n_embd}, {config.n_head} heads, "
             f"batch {train.DEVICE_BATCH_SIZE}×{MAX_SEQ_LEN}")
    return {"default": Contender(default, train.build_optimizers(default), f"{shape}, {params(default)}"),
            "reference": Contender(reference, [adamw], params(reference))}


def train_step(contender: Contender, x: torch.Tensor, y: torch.Tensor, lr_mult: float) -> None:
    for optimizer in contender.optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
    contender.model(x, y).backward()
    for optimizer in contender.optimizers:
        optimizer.step()
    contender.model.zero_grad(set_to_none=True)


def side_by_side(seconds: float, block: int, eval_tokens: int) -> tuple[dict[str, Contender], dict[str, float]]:
    """Train both for `seconds` each in alternating blocks of `block` steps; then score both on val."""
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    train = default_train_module()
    data, cpu = load_data(), torch.device("cpu")
    runners = contenders(train)
    loaders = {name: make_train_loader(data, train.DEVICE_BATCH_SIZE, MAX_SEQ_LEN, 0, cpu) for name in runners}
    tokens = block * train.DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    for name, runner in runners.items():  # warm-up (allocator, kernels, optimizer state), not timed
        train_step(runner, *next(loaders[name]), 1.0)
    turn = 0
    while any(runner.trained < seconds for runner in runners.values()):
        names = list(runners) if turn % 2 == 0 else list(reversed(runners))
        turn += 1
        for name in names:
            runner = runners[name]
            if runner.trained >= seconds:
                continue
            began = time.perf_counter()
            for _ in range(block):
                train_step(runner, *next(loaders[name]), train.lr_multiplier(min(runner.trained / seconds, 1.0)))
            elapsed = time.perf_counter() - began
            runner.trained += elapsed
            runner.rates.append(tokens / elapsed)
    scores = {name: evaluate_bpb(runner.model, data, cpu, eval_tokens=eval_tokens) for name, runner in runners.items()}
    return runners, scores


def gpu_mfu(budget: float) -> Figure:
    if not torch.cuda.is_available():
        return Figure("throughput", "MFU depth 8 (H100 reference 39.8 %)", "no GPU here", load=load())
    from bench.train_throughput import measure

    source = set_constants(TRAIN_TEMPLATE.read_text(encoding="utf-8"), GPU_SIZE)
    start, steps, summary = measure(source, budget, "cuda")
    mfu = summary.get("mfu_percent", "n/a")
    return Figure("throughput", "MFU depth 8", f"{mfu} %", f"autoresearch H100: {AUTORESEARCH_H100_MFU} %", load(),
                  f"{torch.cuda.get_device_name(0)}, {len(steps)} timed steps, "
                  f"{statistics.median(r['tokens_per_second'] for r in steps):,.0f} tokens/s")


def run(quick: bool) -> list[Figure]:
    seconds, block, eval_tokens = (8.0, 3, 32768) if quick else (60.0, 5, 131072)
    runners, scores = side_by_side(seconds, block, eval_tokens)
    now = load()
    rates = {name: statistics.median(runner.rates) for name, runner in runners.items()}
    setting = f"{seconds:g} s of training each, alternating blocks of {block} steps"
    return [
        Figure("throughput", "default gpt tokens/s (CPU)", f"{rates['default']:,.0f}", load=now,
               note=runners["default"].description),
        Figure("throughput", "reference gpt tokens/s (CPU)", f"{rates['reference']:,.0f}", load=now,
               note=f"{runners['reference'].description}; {setting}; medians"),
        Figure("throughput", "default / reference tokens/s", f"{rates['default'] / rates['reference']:.2f}×", "> 1",
               now),
        Figure("throughput", "val_bpb in equal time: default vs reference",
               f"{scores['default']:.4f} vs {scores['reference']:.4f}", "default lower", now,
               f"{setting}; {eval_tokens:,} val tokens"),
        gpu_mfu(30.0 if quick else 120.0),
    ]


if __name__ == "__main__":
    standalone(run)
