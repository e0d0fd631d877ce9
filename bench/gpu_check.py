"""The GPU path, checked on a lent GPU: depth 8 at autoresearch's GPU settings, for a short budget, twice.

Trains the real template in a subprocess (bf16 autocast, torch.compile and PyTorch's fused SDPA, as train.py does
on CUDA) with DEPTH = 8, ASPECT_RATIO = 64, HEAD_DIM = 128, DEVICE_BATCH_SIZE = 128, TOTAL_BATCH_SIZE = 524288
(the harness's context stays MAX_SEQ_LEN) and prints MFU, tokens/s, peak memory and the time outside the budget
(start-up and torch.compile in the untimed first steps), on the wall clock; then the same run on the process clock (CUDA events), whose timed seconds should
match the wall clock's within a few percent when nothing else uses the GPU. Exits 2 with a message without CUDA.

Run: python -m bench.gpu_check [--budget SECONDS]   (default 30)
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.common import set_constants
from bench.train_throughput import measure
from loopdeck.engine.run.environment import budget_clock_env
from loopdeck.gpt import TRAIN_TEMPLATE
from loopdeck.gpt.harness import UNTIMED_STEPS

GPU_REFERENCE = {"DEPTH": 8, "ASPECT_RATIO": 64, "HEAD_DIM": 128, "DEVICE_BATCH_SIZE": 128,
                 "TOTAL_BATCH_SIZE": 524288}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=30.0, help="timed training seconds per run (default 30)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch sees none); run it where a GPU is lent",
              file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)} · torch {torch.__version__} · CUDA {torch.version.cuda}")
    source = set_constants(TRAIN_TEMPLATE.read_text(encoding="utf-8"), GPU_REFERENCE)
    runs = {}
    for clock in ("wall", "process"):
        start, steps, summary = measure(source, args.budget, "cuda", env=budget_clock_env(clock))
        runs[clock] = summary
        mfu = [step["mfu_percent"] for step in steps if step["mfu_percent"] is not None]
        print(f"\n{clock} clock: depth {start['config']['n_layer']}, {start['num_params'] / 1e6:.1f} M parameters")
        print(f"  timed steps:    {len(steps)} in {summary['training_seconds']:.1f} s")
        print(f"  tokens/s:       median {statistics.median(step['tokens_per_second'] for step in steps):,.0f}")
        print(f"  MFU:            {f'median {statistics.median(mfu):.1f} %' if mfu else 'n/a (no peak figure)'}")
        print(f"  peak memory:    {summary['peak_vram_mb']:,.0f} MiB")
        outside = summary["total_seconds"] - summary["training_seconds"]
        print(f"  compile etc.:   {outside:.1f} s outside the timed budget (start-up, torch.compile in the "
              f"{UNTIMED_STEPS} untimed steps, a 256-token evaluation)")
    print(f"\nsteps wall/process clock: {runs['wall']['num_steps']:.0f}/{runs['process']['num_steps']:.0f} "
          "(alone on the GPU they should match within a few percent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
