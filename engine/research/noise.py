"""Run-to-run noise of the metric, and the noise-aware keep decision built on it.

The baseline runs with several seeds; the sample standard deviation of its metric is the noise σ. A candidate
whose gain over the incumbent is within `confirm_multiple` × σ is re-run with fresh seeds before it can be kept,
and kept only if the mean gain over all its runs clears `min_improvement` by one standard error of the
difference (σ·√(1/n_candidate + 1/n_incumbent), or σ·√(2/n) for runs paired with incumbent re-runs).

The estimate is paid once: stored in the ledger under its key (target, budget, machine) and reused by later
sessions and baselines while `reusable` says it holds; re-measured on the incumbent when it does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import socket
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loopdeck.engine.store.ledger import NoiseEstimate

# Seeds of extra runs: the baseline's are 1, 2, …; experiment n's confirmations are n*SEED_STRIDE + 1, + 2, …;
# study s's (ablation, transfer) STUDY_SEED_BASE + s*SEED_STRIDE + 1, + 2, … — past any experiment's.
SEED_STRIDE = 1000
MAIN_SEED = 0
STUDY_SEED_BASE = 1_000_000_000


def gain(metric: float, reference: float, direction: str) -> float:
    """How much better `metric` is than `reference` (positive = better) for a minimize/maximize metric."""
    return reference - metric if direction == "minimize" else metric - reference


def run_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation of one run's metric, or None with fewer than two values."""
    return statistics.stdev(values) if len(values) >= 2 else None


def delta_band(std: float | None, runs: int, incumbent_runs: int) -> float | None:
    """One standard error of (mean of `runs` runs) - (mean of `incumbent_runs` runs), each with noise `std`."""
    if std is None:
        return None
    return std * math.sqrt(1 / max(runs, 1) + 1 / max(incumbent_runs, 1))


def needs_confirmation(improvement: float, std: float | None, multiple: float, min_improvement: float) -> bool:
    """A would-be keep whose improvement the noise alone could explain."""
    if not std:
        return False
    return min_improvement < improvement <= multiple * std


def baseline_seeds(count: int) -> list[int]:
    """Seeds of the baseline's extra noise runs (its first run has MAIN_SEED)."""
    return list(range(MAIN_SEED + 1, MAIN_SEED + count))


def confirmation_seeds(experiment: int, count: int) -> list[int]:
    """Fresh seeds for re-runs of one experiment: never a baseline seed, never another experiment's."""
    return [experiment * SEED_STRIDE + i for i in range(1, count + 1)]


def study_seeds(study: int, count: int) -> list[int]:
    """Seeds shared by every variant of one ablation or transfer study: never a baseline's or an experiment's."""
    return [STUDY_SEED_BASE + study * SEED_STRIDE + i for i in range(1, count + 1)]


def pooled_std(groups: Sequence[Sequence[float]]) -> float | None:
    """One run's standard deviation estimated from several groups of runs (each around its own mean), or None
    without two runs in any group: a study's variants, each run on the same seeds, measure the noise together."""
    residuals = [(value - statistics.fmean(group)) ** 2 for group in groups if len(group) >= 2 for value in group]
    freedom = sum(len(group) - 1 for group in groups if len(group) >= 2)
    return math.sqrt(sum(residuals) / freedom) if freedom else None


def paired_gain(values: Sequence[float], paired: Sequence[float], std: float | None,
                direction: str) -> tuple[float, float | None]:
    """Mean gain of `values` over `paired` (run i against run i, same seed) and its band: σ·√(2/n) with the
    measured noise σ, else the spread of the differences themselves (None with a single pair)."""
    gains = [gain(v, p, direction) for v, p in zip(values, paired, strict=True)]
    if std is not None:
        return statistics.fmean(gains), std * math.sqrt(2 / len(gains))
    spread = run_std(gains)
    return statistics.fmean(gains), None if spread is None else spread / math.sqrt(len(gains))


@dataclass(frozen=True)
class Verdict:
    keep: bool
    metric: float  # mean of the candidate's runs
    improvement: float  # mean gain over the incumbent
    band: float | None  # ± on the improvement
    runs: int
    reason: str


def confirm(values: Sequence[float], incumbent_metric: float, incumbent_runs: int, *, std: float | None,
            direction: str, min_improvement: float, paired: Sequence[float] = ()) -> Verdict:
    """The decision on a candidate re-run within the noise: `values` are all its metrics (first run included);
    `paired`, when given, the incumbent's metrics on the same fresh seeds as values[1:]."""
    mean = statistics.fmean(values)
    if paired:
        improvement, band = paired_gain(values[1:], paired, std, direction)
        band = band if std is not None else None
    else:
        improvement = gain(mean, incumbent_metric, direction)
        band = delta_band(std, len(values), incumbent_runs)
    needed = min_improvement + (band or 0.0)
    what = f"mean of {len(values)} runs" + (f", paired with {len(paired)} incumbent re-runs" if paired else "")
    shown = f"{improvement:+.6f}" + (f" ± {band:.6f}" if band is not None else "")
    if improvement > needed:
        return Verdict(True, mean, improvement, band, len(values),
                       f"confirmed: {what} improves on the incumbent by {shown}")
    return Verdict(False, mean, improvement, band, len(values),
                   f"not confirmed: {what} improves on the incumbent by {shown}, within the noise "
                   f"(needs more than {needed:.6f})")


# --- the estimate, paid once --------------------------------------------------------------------------------------


def machine_id() -> str:
    """This machine as far as the noise is concerned: host name, CPU model and the threads this process may use."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{socket.gethostname()} · {cpu} · {threads} threads"


def noise_key(files: Mapping[str, str], protected: Mapping[str, str], budget: float, machine: str
              ) -> tuple[str, str]:
    """(key, context) of a noise estimate: the target (editable files' and protected files' hashes), the budget
    and the machine; the context leaves out the editable files, which every kept experiment changes."""
    digest = hashlib.sha256(json.dumps(sorted(protected.items())).encode()).hexdigest()[:16]
    context = f"harness {digest} · budget {budget:g} s · {machine}"
    target = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]
    return f"target {target} · {context}", context


def reusable(estimates: Sequence[NoiseEstimate], key: str, context: str, metric: float | None,
             drift: float) -> tuple[NoiseEstimate | None, str]:
    """The stored estimate that still holds, or None and why none does.

    The rule: an estimate measured on the same target, budget and machine (the same key) holds. One measured on
    another version of train.py holds while the harness, budget and machine are the same and the current metric
    is within `drift` (a fraction) of the mean it was measured at: a much better model may be noisier or quieter."""
    for estimate in estimates:
        if estimate.key == key:
            return estimate, ""
    same = [e for e in estimates if e.context == context]
    if not same:
        return None, ("no estimate for this harness, budget and machine" if estimates else "none measured yet")
    latest = same[0]
    if metric is not None and drift and abs(metric - latest.mean) > drift * abs(latest.mean):
        return None, (f"the incumbent's metric {metric:.6f} drifted more than {drift:.0%} from {latest.mean:.6f}, "
                      "where the noise was measured")
    return latest, ""
