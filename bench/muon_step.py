"""Muon's step, batched against the per-matrix reference: tokens/s of whole training steps and ms per Muon step.

The GPT template's model at its default size trains on random tokens in this process, alternating rounds of
steps with the template's Muon (same-shaped matrices orthogonalised in one chain of batched, fused
multiply-adds) and with the plain reference below (one chain of plain matmuls per matrix, the template before
batching), so both see the same machine load. AdamW
and everything else are the template's own. Full: 8 rounds of 10 steps; --quick: 3 rounds of 4.

Run: python -m bench muon_step [--quick]
"""

from __future__ import annotations

import statistics
import time
from types import ModuleType

import torch

from bench.common import Figure, load, standalone
from bench.reference_gpt import default_train_module


def plain_orthogonalize(G: torch.Tensor, coefficients: tuple[tuple[float, float, float], ...]) -> torch.Tensor:
    """The template's polar-express iteration before batching: one matrix (m, n), plain matmuls."""
    X = G.float()
    tall = X.size(0) > X.size(1)
    X = (X.T if tall else X) / (X.norm() * 1.02 + 1e-6)
    for a, b, c in coefficients:
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def per_matrix_muon(train: ModuleType) -> type[torch.optim.Optimizer]:
    """The reference: the template's Muon before batching, orthogonalising one matrix at a time."""

    class PerMatrixMuon(train.Muon):
        @torch.no_grad()
        def step(self) -> None:
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    steps = train.polar_express_coeffs[: group["ns_steps"]]
                    update = plain_orthogonalize(p.grad.lerp(buf, group["momentum"]), steps)
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * max(1.0, p.size(-2) / p.size(-1)) ** 0.5)

    return PerMatrixMuon


class Trainer:
    """The template's model and optimizers with Muon of class `muon`: timed training steps on random tokens."""

    def __init__(self, train: ModuleType, muon: type[torch.optim.Optimizer]) -> None:
        torch.manual_seed(0)
        self.train = train
        self.model = train.GPT(train.GPTConfig())
        adamw, batched = train.build_optimizers(self.model)
        self.muon = muon(batched.param_groups[0]["params"], lr=train.MATRIX_LR, momentum=train.MUON_MOMENTUM,
                         ns_steps=train.NS_STEPS, weight_decay=train.WEIGHT_DECAY)
        self.optimizers = [adamw, self.muon]
        shape = (train.DEVICE_BATCH_SIZE, train.MAX_SEQ_LEN)
        self.x = torch.randint(0, self.model.config.vocab_size, shape)
        self.y = torch.randint(0, self.model.config.vocab_size, shape)
        self.tokens = 0
        self.step_seconds = 0.0
        self.muon_seconds: list[float] = []

    def steps(self, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            self.model(self.x, self.y).backward()
            self.optimizers[0].step()
            before_muon = time.perf_counter()
            self.muon.step()
            self.muon_seconds.append(time.perf_counter() - before_muon)
            self.model.zero_grad(set_to_none=True)
            self.step_seconds += time.perf_counter() - started
            self.tokens += self.x.numel()


def run(quick: bool) -> list[Figure]:
    rounds, steps = (3, 4) if quick else (8, 10)
    train = default_train_module()
    trainers = {"batched": Trainer(train, train.Muon), "per-matrix": Trainer(train, per_matrix_muon(train))}
    for trainer in trainers.values():
        trainer.steps(2)  # allocator and thread-pool warm-up, not timed
        trainer.tokens, trainer.step_seconds, trainer.muon_seconds = 0, 0.0, []
    for _ in range(rounds):  # alternating, so that a change in the machine's load hits both
        for trainer in trainers.values():
            trainer.steps(steps)
    now = load()
    rate = {name: t.tokens / t.step_seconds for name, t in trainers.items()}
    muon_ms = {name: 1000 * statistics.median(t.muon_seconds) for name, t in trainers.items()}
    setting = (f"template defaults (depth {train.DEPTH}, {torch.get_num_threads()} threads), {rounds}×{steps} "
               "steps each, alternating")
    return [
        Figure("muon_step", "tokens/s batched / per-matrix", f"{rate['batched'] / rate['per-matrix']:.2f}×",
               "> 1", now, f"{rate['batched']:,.0f} vs {rate['per-matrix']:,.0f} tokens/s; {setting}"),
        Figure("muon_step", "Muon step batched", f"{muon_ms['batched']:.1f} ms", load=now,
               note=f"per-matrix {muon_ms['per-matrix']:.1f} ms (median)"),
    ]


if __name__ == "__main__":
    standalone(run)
