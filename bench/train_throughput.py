"""Training throughput of the GPT template on this machine: tokens/s, ms/step, and MFU on a GPU with a known peak.

Runs the real template (or another train.py) once for a short budget in a subprocess, exactly as loopdeck does, and
reads its metrics stream; the first UNTIMED_STEPS steps (compilation, allocator warm-up) are left out.

    python bench/train_throughput.py                       # the default model, 20 s
    python bench/train_throughput.py --set DEPTH=8 --set ASPECT_RATIO=64 --set HEAD_DIM=128   # GPU reference size
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import set_constants
from loopdeck.engine.run.metrics import parse_summary, read_records, summary_numbers
from loopdeck.gpt import HARNESS_FILE, HARNESS_TEMPLATE, TRAIN_TEMPLATE
from loopdeck.gpt.harness import UNTIMED_STEPS


def parse_override(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a Python literal") from None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(source: str, budget: float, device: str = "auto", env: dict[str, str] | None = None
            ) -> tuple[dict, list[dict], dict]:
    """Run a training file once in a subprocess (`env` added to its environment): (start record, timed step
    records, summary). Raises RuntimeError with the output's tail when the run fails."""
    with tempfile.TemporaryDirectory(prefix="loopdeck-bench-") as folder:
        (Path(folder) / "train.py").write_text(source, encoding="utf-8")
        shutil.copyfile(HARNESS_TEMPLATE, Path(folder) / HARNESS_FILE)
        metrics = Path(folder) / "metrics.jsonl"
        environment = {**os.environ, "LOOPDECK_TIME_BUDGET": str(budget), "LOOPDECK_METRICS": str(metrics),
                       "LOOPDECK_RUN_DIR": folder, "LOOPDECK_EVAL_TOKENS": "256",  # throughput only: skip most of eval
                       **({"LOOPDECK_DEVICE": device} if device != "auto" else {}), **(env or {})}
        result = subprocess.run([sys.executable, "train.py"], cwd=folder, env=environment, capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        records = list(read_records(metrics))
    steps = [record for record in records if record["type"] == "step"][UNTIMED_STEPS:]
    return records[0], steps, summary_numbers(parse_summary(result.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=20.0, help="timed training seconds (default 20)")
    parser.add_argument("--template", type=Path, default=TRAIN_TEMPLATE, help="training file (default: gpt's)")
    parser.add_argument("--set", type=parse_override, action="append", default=[], metavar="NAME=VALUE",
                        help="override a hyperparameter constant (repeatable)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    args = parser.parse_args()

    source = set_constants(args.template.read_text(encoding="utf-8"), dict(args.set))
    try:
        start, steps, summary = measure(source, args.budget, args.device)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"machine:        {cpu_name()} · {os.cpu_count()} CPUs · {platform.system()}")
    print(f"device:         {start['device']} · torch {start['torch']}")
    print(f"model:          depth {start['config']['n_layer']} · {start['config']['n_embd']} wide · "
          f"{start['num_params'] / 1e6:.2f} M parameters")
    print(f"timed steps:    {len(steps)} in {summary['training_seconds']:.1f} s")
    print(f"ms/step:        median {statistics.median(r['ms_per_step'] for r in steps):.1f}")
    seconds = sum(r["ms_per_step"] for r in steps) / 1000
    tokens = sum(r["tokens_per_second"] * r["ms_per_step"] / 1000 for r in steps)
    print(f"tokens/s:       median {statistics.median(r['tokens_per_second'] for r in steps):,.0f} · "
          f"overall {tokens / seconds:,.0f}")
    mfu = [r["mfu_percent"] for r in steps if r["mfu_percent"] is not None]
    print(f"MFU:            {f'{statistics.median(mfu):.1f} %' if mfu else 'n/a (no peak FLOP/s figure for this device)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
