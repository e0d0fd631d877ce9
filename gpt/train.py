"""Train a small GPT for a fixed time budget and report val_bpb: the one file loopdeck experiments edit.

Model, optimizer and training loop live here, to be read top to bottom and changed freely. What the run is
measured by (time budget, data, tokenizer, evaluation) lives in the protected `harness.py` beside this file.

Notable features:
- GPT: token embedding, RMSNorm (no learnable weight), rotary position embeddings, QK-norm, causal attention via
  F.scaled_dot_product_attention, ReLU² MLP, learnable per-layer residual and input-skip scalars, untied LM head,
  tanh logit soft-cap.
- Optimizer: Muon (momentum orthogonalised by polar-express iterations, same-shaped matrices in one batched call)
  for the hidden 2-D weight matrices, AdamW for the embedding, the LM head and the scalars.
- Learning-rate warmup and warmdown tied to progress through the time budget, not to a step count. The harness's
  BudgetClock times it: by default CPU (or GPU) work, so a busy machine does not change the steps a run gets.
- Device: CUDA, else Apple MPS, else CPU (LOOPDECK_DEVICE overrides); bf16 autocast and torch.compile on CUDA.
- Fails fast on a NaN or exploding loss: prints FAIL and exits 1.
- A progress line per step, a JSON-lines metrics stream (LOOPDECK_METRICS), the weights saved as model.pt in
  LOOPDECK_RUN_DIR (default runs/latest), and autoresearch's summary block at the end (its val_bpb on a short
  subset when loopdeck's trusted evaluator scores the saved weights in full anyway).

Run: `python train.py` beside harness.py (a loopdeck workspace: only torch needed) or `loopdeck train`.
Importing this file does not train.
"""

import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness import (
    EVAL_TOKENS,
    MAX_SEQ_LEN,
    TIME_BUDGET,
    UNTIMED_STEPS,
    BudgetClock,
    DataError,
    format_summary,
    load_data,
    make_train_loader,
    open_metrics,
    peak_flops,
    peak_memory_mb,
    pick_device,
    report_bpb,
    run_seed,
    save_model,
)

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly)
# ---------------------------------------------------------------------------
# Sized for a 2-core CPU and a 60 s budget. autoresearch's GPU reference is DEPTH = 8, ASPECT_RATIO = 64,
# HEAD_DIM = 128, DEVICE_BATCH_SIZE = 128, TOTAL_BATCH_SIZE = 524288 (with a 2048-token context).

# Model architecture
DEPTH = 2                 # transformer blocks: the main size dial
ASPECT_RATIO = 64         # model width = DEPTH * ASPECT_RATIO, rounded up to a multiple of HEAD_DIM
HEAD_DIM = 32             # channels per attention head
MLP_RATIO = 4             # MLP hidden width as a multiple of the model width

# Batch
DEVICE_BATCH_SIZE = 8     # sequences per forward/backward pass
TOTAL_BATCH_SIZE = 2048   # tokens per optimizer step: TOTAL / (DEVICE_BATCH_SIZE * MAX_SEQ_LEN) passes add up

# Optimization
MATRIX_LR = 0.02          # Muon learning rate for the hidden weight matrices
EMBEDDING_LR = 0.3        # AdamW learning rate for the token embedding (scaled by 1/sqrt(width / 768))
UNEMBEDDING_LR = 0.004    # AdamW learning rate for the LM head (scaled by 1/sqrt(width / 768))
SCALAR_LR = 0.5           # AdamW learning rate for the per-layer residual scalars
WEIGHT_DECAY = 0.0        # decoupled weight decay on the Muon matrices
ADAM_BETAS = (0.8, 0.95)  # AdamW beta1, beta2
MUON_MOMENTUM = 0.95      # Muon's Nesterov momentum
NS_STEPS = 5              # polar-express iterations per Muon update (at most 5)

# Schedule (fractions of the time budget)
WARMUP_RATIO = 0.0        # fraction of the budget over which the LR ramps up from 0
WARMDOWN_RATIO = 0.4      # fraction of the budget over which the LR decays at the end
FINAL_LR_FRAC = 0.0       # LR at the end of the warmdown, as a fraction of the peak

# Model details
SOFTCAP = 15.0            # logits are squashed into (-SOFTCAP, SOFTCAP) by tanh
ROPE_BASE = 10000.0       # rotary embedding base frequency


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


MODEL_DIM = math.ceil(DEPTH * ASPECT_RATIO / HEAD_DIM) * HEAD_DIM  # derived, not a knob: whole heads


@dataclass
class GPTConfig:
    """The model's shape. Defaults come from the hyperparameter block, so that block is the one place to edit."""

    sequence_len: int = MAX_SEQ_LEN  # longest context the rotary tables cover
    vocab_size: int = 257  # tokenizer vocabulary, BOS included (the byte tokenizer's; main passes the real one)
    n_layer: int = DEPTH  # transformer blocks
    n_head: int = MODEL_DIM // HEAD_DIM  # attention heads per block
    n_embd: int = MODEL_DIM  # model width (residual stream channels)
    mlp_ratio: int = MLP_RATIO  # MLP hidden width / n_embd
    softcap: float = SOFTCAP  # tanh logit cap
    rope_base: float = ROPE_BASE  # rotary base frequency


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a learnable gain."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (1, seq_len, 1, head_dim/2): one rotation frequency per channel pair."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + D/2) of x (B, T, H, D) by a position-dependent angle."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_q = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_k = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_v = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, H, D)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))  # QK-norm keeps logits bounded
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_ratio * config.n_embd, bias=False)
        self.c_proj = nn.Linear(config.mlp_ratio * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm(x), cos, sin)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # x = resid_lambdas[i] * x + x0_lambdas[i] * x0 before block i: learned mix with the normed embedding.
        self.resid_lambdas = nn.Parameter(torch.ones(config.n_layer))
        self.x0_lambdas = nn.Parameter(torch.zeros(config.n_layer))
        cos, sin = rotary_tables(config.sequence_len, config.n_embd // config.n_head, config.rope_base)
        self.register_buffer("cos", cos, persistent=False)  # derived from config: not part of the weights
        self.register_buffer("sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        bound = 3**0.5 * self.config.n_embd**-0.5  # uniform with std 1/sqrt(fan_in)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)  # near-uniform predictions at step 0
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(block.attn.c_proj.weight)  # every block starts as the identity
            nn.init.zeros_(block.mlp.c_proj.weight)
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.1)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) in float32, or with targets the mean cross-entropy loss."""
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0, cos, sin)
        logits = self.lm_head(norm(x)).float()
        logits = self.config.softcap * torch.tanh(logits / self.config.softcap)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per weight (forward + backward) plus attention's score and value products."""
        c = self.config
        matmul_params = sum(p.numel() for p in self.parameters()) - self.wte.weight.numel()
        return 6 * matmul_params + 12 * c.n_layer * c.n_embd * c.sequence_len


# ---------------------------------------------------------------------------
# Optimizer: Muon for hidden matrices, AdamW for the rest
# ---------------------------------------------------------------------------

# Polar Express (Amsel et al. 2025, arXiv:2505.16932): per-iteration coefficients of the odd polynomial
# a·X + b·(X Xᵀ)X + c·(X Xᵀ)²X that drives every singular value towards 1 faster than fixed Newton–Schulz.
polar_express_coeffs = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def orthogonalize(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximate U Vᵀ for each G = U S Vᵀ of a batch (N, m, n): every singular value set to ~1."""
    X = G.bfloat16() if G.is_cuda else G.float()  # bf16 is fast on tensor cores; CPUs prefer float32
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # iterate on the smaller Gram matrix
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)  # spectral norm <= Frobenius norm < 1
    for a, b, c in polar_express_coeffs[:steps]:
        A = X @ X.mT  # (N, m, m)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b·A + c·A²: fused multiply-adds, no temporaries
        X = torch.baddbmm(X, B, X, beta=a)  # a·X + B·X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, scaled so tall and wide matrices take steps of the same RMS size.

    Matrices of the same shape are orthogonalised together, stacked into one batch (as modded-nanogpt does): one
    chain of fused batched multiply-adds instead of one chain of plain matmuls per matrix (bench/muon_step.py).
    """

    def __init__(self, params, lr: float, momentum: float, ns_steps: int, weight_decay: float) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for shape in dict.fromkeys(p.shape for p in params):
                same = [p for p in params if p.shape == shape]
                grads = torch.stack([p.grad for p in same])  # (N, m, n)
                bufs = torch.stack([self.state[p].get("momentum", torch.zeros_like(p)) for p in same])
                bufs.lerp_(grads, 1 - group["momentum"])
                updates = orthogonalize(grads.lerp_(bufs, group["momentum"]), group["ns_steps"])
                scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
                for p, buf, update in zip(same, bufs, updates, strict=True):
                    self.state[p]["momentum"] = buf
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(model: GPT) -> list[torch.optim.Optimizer]:
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    # AdamW learning rates were tuned at width 768 (nanochat); they scale as 1/sqrt(width).
    width_scale = (model.config.n_embd / 768) ** -0.5
    adamw = torch.optim.AdamW([
        dict(params=[model.wte.weight], lr=EMBEDDING_LR * width_scale),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * width_scale),
        dict(params=[model.resid_lambdas, model.x0_lambdas], lr=SCALAR_LR),
    ], betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY)
    optimizers = [adamw, muon]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress: float) -> float:
    """Learning-rate multiplier at a fraction `progress` of the time budget: warmup, flat, linear warmdown."""
    if progress < WARMUP_RATIO:
        return progress / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    remaining = max(0.0, 1.0 - progress) / WARMDOWN_RATIO
    return remaining + (1.0 - remaining) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main() -> None:
    t_start = time.time()
    seed = run_seed()
    torch.manual_seed(seed)
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    data = load_data()
    config = GPTConfig(vocab_size=data.tokenizer.vocab_size)
    model = GPT(config).to(device)
    optimizers = build_optimizers(model)
    train_model = torch.compile(model) if device.type == "cuda" else model  # compiling pays off on GPUs only
    num_params = sum(p.numel() for p in model.parameters())
    grad_accum = max(1, round(TOTAL_BATCH_SIZE / (DEVICE_BATCH_SIZE * MAX_SEQ_LEN)))
    tokens_per_step = grad_accum * DEVICE_BATCH_SIZE * MAX_SEQ_LEN
    flops_per_step = model.flops_per_token() * tokens_per_step
    peak = peak_flops(device)
    loader = make_train_loader(data, DEVICE_BATCH_SIZE, MAX_SEQ_LEN, seed, device)
    fail_loss = 3 * math.log(config.vocab_size)  # 3× a uniform guess's loss: the run has diverged
    clock = BudgetClock(device)  # times the budget: CPU/GPU work by default, so load cannot change the steps

    metrics = open_metrics()
    metrics.start(device=device.type, torch=torch.__version__, corpus=data.corpus_name,
                  corpus_fingerprint=data.fingerprint, tokenizer=data.tokenizer.name, num_params=num_params,
                  budget_seconds=TIME_BUDGET, budget_clock=clock.name, seed=seed, eval_tokens=EVAL_TOKENS,
                  config=asdict(config))
    print(f"device: {device.type} | corpus: {data.corpus_name} ({data.fingerprint[:12]}) | "
          f"tokenizer: {data.tokenizer.name} | train tokens: {len(data.train):,}")
    print(f"model: {num_params:,} parameters | {config}")
    print(f"batch: {tokens_per_step:,} tokens/step ({grad_accum} × {DEVICE_BATCH_SIZE} × {MAX_SEQ_LEN}) | "
          f"budget: {TIME_BUDGET:g} s ({clock.name} clock)", flush=True)

    step = 0
    training_time = 0.0
    smooth_loss = 0.0
    while training_time < TIME_BUDGET:
        clock.start()
        loss_sum = torch.zeros((), device=device)
        for _ in range(grad_accum):
            x, y = next(loader)
            with autocast:
                loss = train_model(x, y)
            (loss / grad_accum).backward()
            loss_sum += loss.detach()
        lrm = lr_multiplier(training_time / TIME_BUDGET)
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lrm
            optimizer.step()
        model.zero_grad(set_to_none=True)
        train_loss = loss_sum.item() / grad_accum  # .item() waits for the device, so dt below is honest
        if not math.isfinite(train_loss) or train_loss > fail_loss:
            print(f"step {step}: loss {train_loss}")
            print("FAIL")
            sys.exit(1)
        dt = clock.stop()
        if step >= UNTIMED_STEPS:
            training_time += dt
        step += 1

        smooth_loss = 0.9 * smooth_loss + 0.1 * train_loss
        debiased = smooth_loss / (1 - 0.9**step)
        progress = min(training_time / TIME_BUDGET, 1.0)
        tokens_per_second = tokens_per_step / dt
        mfu = 100 * flops_per_step / dt / peak if peak else None
        print(f"step {step:05d} ({100 * progress:5.1f}%) | loss {debiased:.4f} | lrm {lrm:.2f} | "
              f"{1000 * dt:6.1f} ms | {tokens_per_second:9,.0f} tok/s | "
              f"mfu {f'{mfu:.1f}%' if mfu is not None else 'n/a'} | left {TIME_BUDGET - training_time:4.0f} s",
              flush=True)
        metrics.step(step=step, elapsed_seconds=training_time, loss=debiased, loss_raw=train_loss,
                     progress=progress, tokens_per_second=tokens_per_second, mfu_percent=mfu, lr_mult=lrm,
                     ms_per_step=1000 * dt)

    val_bpb, eval_tokens = report_bpb(model, data, device)  # a short subset when loopdeck scores the weights itself
    save_model(asdict(config), model.state_dict())
    timed_steps = max(step - UNTIMED_STEPS, 0)
    summary = {
        "val_bpb": val_bpb,
        "training_seconds": training_time,
        "total_seconds": time.time() - t_start,
        "peak_vram_mb": peak_memory_mb(device),
        "mfu_percent": 100 * flops_per_step * timed_steps / training_time / peak if peak else None,
        "total_tokens_M": step * tokens_per_step / 1e6,
        "num_steps": step,
        "num_params_M": num_params / 1e6,
        "depth": DEPTH,
        "budget_clock": clock.name,
    }
    metrics.end({**summary, "eval_tokens": eval_tokens})
    metrics.close()
    if eval_tokens != EVAL_TOKENS:
        print(f"val_bpb below is on the first {eval_tokens:,} validation tokens: loopdeck scores the weights in full")
    print(format_summary(summary))


if __name__ == "__main__":
    try:
        main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
