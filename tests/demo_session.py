"""A scripted, deterministic event stream of a short research session: the console's fixed data for its tests and
snapshots, and for bench/console_events.py (which puts tests/ on its path). Test data, not part of the app."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

from loopdeck.engine import events as ev

T0 = 1_760_000_000.0  # a fixed wall clock, so screens built from this stream are identical run to run
BUDGET = 60.0

_CHANGES = (
    ("increase MATRIX_LR 0.04 → 0.05", "MATRIX_LR", "0.04", "0.05", "keep", -0.0123,
     "Muon has headroom at this width; a slightly higher matrix learning rate should converge faster."),
    ("deeper model: DEPTH 4 → 5", "DEPTH", "4", "5", "discard", +0.0087,
     "More layers may help, but the step time rises; checking whether the budget still pays for it."),
    ("warmdown ratio 0.5 → 0.6", "WARMDOWN_RATIO", "0.5", "0.6", "keep", -0.0041,
     "A longer warmdown usually lowers the final loss for short fixed-time runs."),
    ("embedding lr 0.6 → 1.2", "EMBEDDING_LR", "0.6", "1.2", "crash", None,
     "Embeddings often tolerate a much higher rate with Adam; trying a bold step."),
    ("weight decay 0.0 → 0.1", "WEIGHT_DECAY", "0.0", "0.1", "discard", +0.0019,
     "A little decoupled weight decay might regularise the matrices."),
    ("batch 2**14 → 2**13 tokens", "TOTAL_BATCH_SIZE", "2**14", "2**13", "keep", -0.0066,
     "Smaller batches give more optimizer steps inside the same wall-clock budget."),
)


def _diff(name: str, old: str, new: str) -> str:
    return (
        "diff --git a/train.py b/train.py\n"
        "--- a/train.py\n+++ b/train.py\n"
        "@@ -31,7 +31,7 @@ ASPECT_RATIO = 64        # model_dim = depth * ASPECT_RATIO\n"
        ' HEAD_DIM = 64            # target head dimension for attention\n'
        ' WINDOW_PATTERN = "SSSL"  # sliding window pattern: L=full, S=half context\n'
        " # Optimization\n"
        f"-{name} = {old}\n"
        f"+{name} = {new}\n"
        " UNEMBEDDING_LR = 0.004  # learning rate for lm_head (Adam)\n"
        " SCALAR_LR = 0.5         # learning rate for per-layer scalars (Adam)\n"
        ' ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2\n'
    )


def _curve(rng: random.Random, floor: float, steps: int, budget: float) -> list[tuple[float, float]]:
    return [(budget * (i + 1) / steps, floor + 3.2 * math.exp(-(i + 1) / (steps / 6)) + rng.gauss(0, 0.02))
            for i in range(steps)]


def telemetry(ts: float, i: int, gpu: bool, training: bool) -> ev.TelemetrySample:
    wave = 0.5 + 0.5 * math.sin(i / 3)
    gpus = (ev.GpuSample(index=0, name="NVIDIA H100 80GB HBM3", utilization_percent=(88 + 10 * wave) if training
                         else 3.0, memory_used_mb=41_200.0 if training else 900.0, memory_total_mb=81_559.0,
                         power_watts=(520 + 150 * wave) if training else 70.0, temperature_c=58 + 8 * wave,
                         process_memory_mb=40_100.0 if training else None),) if gpu else ()
    return ev.TelemetrySample(
        ts=ts, gpus=gpus, gpu_status="" if gpu else "no NVIDIA GPU — CPU only",
        cpu_percent=(70 + 25 * wave) if training else 8.0, memory_used_mb=12_400 + 300 * wave,
        memory_total_mb=31_900.0, process_cpu_percent=(180 + 15 * wave) if training else None,
        process_rss_mb=2_150.0 if training else None,
    )


def demo_session(*, gpu: bool = True, experiments: int = len(_CHANGES), steps: int = 48,
                 pending: bool = True, seed: int = 0) -> list[ev.Event]:
    """Baseline plus `experiments` finished experiments, then (if `pending`) one change awaiting a decision."""
    rng = random.Random(seed)
    out: list[ev.Event] = []
    clock = iter(T0 + i * 0.5 for i in range(10**7))
    sample = iter(range(10**7))

    def at() -> float:
        return next(clock)

    out.append(ev.SessionStarted(ts=at(), workspace="/home/ada/research", branch="loopdeck/20251009", agent="claude",
                                 approval="ask", budget_seconds=BUDGET, metric_name="val_bpb",
                                 metric_direction="minimize", editable=("train.py",), self_reported=False))
    metric = 1.9123
    incumbent: list[tuple[float, float]] = []
    tokens = 0
    for n in range(experiments + 1):
        baseline = n == 0
        if not baseline:
            description, name, old, new, outcome, delta, rationale = _CHANGES[(n - 1) % len(_CHANGES)]
            out += _agent_turn(n, at, rationale, name)
            tokens += 5200
            out.append(ev.AgentUsage(ts=at(), experiment=n, input_tokens=4100, output_tokens=700,
                                     cache_read_tokens=400, cost_usd=0.0213, session_tokens=tokens,
                                     session_cost_usd=0.0213 * n))
            out.append(ev.ChangeProposed(ts=at(), experiment=n, description=description, rationale=rationale,
                                         diff=_diff(name, old, new), files=("train.py",), added=1, removed=1))
            out.append(ev.ApprovalRequested(ts=at(), experiment=n, description=description))
            out.append(ev.StateChanged(ts=at(), state="awaiting_approval", experiment=n))
            out.append(ev.DecisionMade(ts=at(), experiment=n, approved=True))
        else:
            description, outcome, delta = "baseline", "keep", None
        out.append(ev.StateChanged(ts=at(), state="training", experiment=n))
        out.append(ev.ExperimentStarted(ts=at(), experiment=n, commit=f"{0xabc000 + n:07x}", parent_commit="",
                                        description=description, budget_seconds=BUDGET, baseline=baseline,
                                        incumbent_curve=tuple(incumbent)))
        floor = metric + (delta or 0.0) - 0.35
        curve = _curve(rng, floor, steps, BUDGET)
        if outcome == "crash":
            curve = curve[: steps // 5]
        for step, (t, loss) in enumerate(curve, start=1):
            out.append(ev.TrainStep(ts=at(), experiment=n, step=step * 10, elapsed_seconds=t, loss=loss,
                                    progress=t / BUDGET, tokens_per_second=51_234.0))
            if step % 6 == 0:
                out.append(telemetry(at(), next(sample), gpu, training=True))
                out.append(ev.LogLine(ts=at(), experiment=n, line=f"step {step * 10:05d} | loss {loss:.4f}"))
        out.append(ev.StateChanged(ts=at(), state="evaluating", experiment=n))
        if outcome == "crash":
            out.append(ev.ExperimentFinished(
                ts=at(), experiment=n, status="crash", metric=None, delta=None, incumbent_metric=metric,
                commit=f"{0xabc000 + n:07x}", description=description, wall_seconds=14.2,
                reason="loss exploded to NaN at step 100", log_tail="step 00100 | loss nan\nFAIL"))
            out.append(ev.ExperimentReverted(ts=at(), experiment=n, to_commit="", reason="crash"))
            continue
        result = metric + (delta or 0.0)
        out.append(ev.ExperimentFinished(
            ts=at(), experiment=n, status=outcome, metric=result, delta=delta, incumbent_metric=None if baseline
            else metric, commit=f"{0xabc000 + n:07x}", description=description, training_seconds=BUDGET,
            wall_seconds=BUDGET + 21.5, peak_memory_mb=41_200.0, log_tail=f"---\nval_bpb: {result:.6f}"))
        if outcome == "keep":
            out.append(ev.ExperimentKept(ts=at(), experiment=n, commit=f"{0xabc000 + n:07x}", metric=result,
                                         previous_metric=None if baseline else metric))
            metric, incumbent = result, curve
        else:
            out.append(ev.ExperimentReverted(ts=at(), experiment=n, to_commit="", reason=outcome))
    if pending:
        n = experiments + 1
        out += _agent_turn(n, at, "Shorter warmup frees steps for the main phase.", "WARMUP_RATIO")
        out.append(ev.ChangeProposed(ts=at(), experiment=n, description="warmup ratio 0.05 → 0.02",
                                     rationale="Shorter warmup frees steps for the main phase of a 60 s run.",
                                     diff=_diff("WARMUP_RATIO", "0.05", "0.02"), files=("train.py",), added=1,
                                     removed=1))
        out.append(ev.ApprovalRequested(ts=at(), experiment=n, description="warmup ratio 0.05 → 0.02"))
        out.append(ev.StateChanged(ts=at(), state="awaiting_approval", experiment=n))
        out.append(telemetry(at(), next(sample), gpu, training=False))
    return out


def _agent_turn(n: int, at, rationale: str, knob: str) -> Iterator[ev.Event]:
    yield ev.StateChanged(ts=at(), state="proposing", experiment=n)
    for chunk in ("Looking at the history: ", "the last kept change lowered val_bpb, ", "so the optimizer still has "
                  "room.\n", f"Next I will try `{knob}`."):
        yield ev.AgentThinkingDelta(ts=at(), experiment=n, text=chunk)
    yield ev.AgentToolCall(ts=at(), experiment=n, tool="read_file", summary="read_file train.py")
    yield ev.AgentToolResult(ts=at(), experiment=n, tool="read_file", ok=True, summary="train.py: 412 lines")
    yield ev.AgentToolCall(ts=at(), experiment=n, tool="edit_file", summary=f"edit_file train.py ({knob})")
    yield ev.AgentToolResult(ts=at(), experiment=n, tool="edit_file", ok=True, summary="1 replacement")
    for chunk in ("**Plan:** ", rationale):
        yield ev.AgentTextDelta(ts=at(), experiment=n, text=chunk)
