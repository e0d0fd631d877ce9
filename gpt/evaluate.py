"""The protected scorer of the GPT target: rebuilds a finished run's model from its weights and scores it itself.

Fixed, do not modify. The engine runs it in a fresh process after every training run that exited cleanly:

    python -P -m loopdeck.gpt.evaluate --workspace DIR --weights DIR/.loopdeck/runs/7/model.pt \
        [--harness-sha256 HEX] [--split val|holdout]

It loads the workspace's own harness.py by path once its sha256 matches the pin (given on the command line, else
`[experiment] protected_sha256` in loopdeck.toml), so a workspace is scored by the harness it was made with, not
by whatever loopdeck is installed. Then it imports the workspace's train.py by path (importing never trains; its
`from harness import …` gets that checked harness), rebuilds `GPT(GPTConfig(**config))` from the saved config,
loads the weights, runs the causality probe, and computes bits per byte with the harness's fixed evaluation
(batch shape, token count, split). Whatever train.py printed plays no part. The answer is one line,
`loopdeck-evaluation: {json}`, with `status` ok | rejected | error; exit code 0, 3 (rejected) or 1 (error).

Causality probe: rows of one evaluation batch (real text windows, the scoring batch shape) are run twice, then
with one token changed per row at a random position t; the logits at every position before t must not change.
A model that fails is rejected ("model looks ahead: logits at position 12 changed when token 40 changed").

What this does not guard against: train.py's code runs in this process (at import and in the model's forward),
so a file written to attack the scorer could still tamper with it. The probe, the check that importing train.py
left the harness alone, the pinned hash and the engine's hash checks of these files catch the ways a model or
an edit games the number by accident or by shortcut (peeking ahead, a changed evaluation, a printed number); a
model trained on the validation text is what the holdout split is for.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
import tomllib
import traceback
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from loopdeck.gpt import HARNESS_FILE

if TYPE_CHECKING:
    import torch

RESULT_PREFIX = "loopdeck-evaluation: "
PROBE_SEED = 1234
# Relative to the largest logit, plus a floor for an untrained model's near-zero logits. A causal model gives
# exactly 0: the positions before t see bit-identical inputs through the same kernels.
PROBE_TOLERANCE = 1e-4
PROBE_FLOOR = 1e-7
EXIT_REJECTED = 3
# What importing train.py must leave as it found it (a file that rebinds these changes what is measured).
_HARNESS_NAMES = ("MAX_SEQ_LEN", "EVAL_TOKENS", "EVAL_BATCH_SIZE", "evaluate_bpb", "load_data", "load_model")


class Rejected(Exception):
    """The model or its code may not be scored; the message says why in one line."""


def pinned_sha256(workspace: Path) -> str:
    """The harness's sha256 pinned in the workspace's loopdeck.toml ([experiment] protected_sha256)."""
    try:
        settings = tomllib.loads((workspace / "loopdeck.toml").read_text(encoding="utf-8"))
        return str(settings["experiment"]["protected_sha256"][HARNESS_FILE])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"no sha256 pinned for {HARNESS_FILE}: pass --harness-sha256 or pin it in "
                         "loopdeck.toml ([experiment] protected_sha256)") from None


def load_harness(path: Path, expected_sha256: str) -> ModuleType:
    """Import the workspace's harness as module `harness` from the very bytes whose sha256 matches the pin.

    Under loopdeck's warm runner this process is forked from a zygote that loaded that very harness (checked the
    same way, before any experiment code ran): it is used as it is, with the data it has loaded."""
    preloaded = sys.modules.get("harness")
    if (preloaded is not None and getattr(preloaded, "__file__", None) == str(path)
            and getattr(preloaded, "__loopdeck_sha256__", None) == expected_sha256.lower()):
        return preloaded
    source = path.read_bytes()
    digest = hashlib.sha256(source).hexdigest()
    if digest != expected_sha256.lower():
        raise Rejected(f"{path.name} is not the pinned harness (sha256 {digest[:12]}…, pinned "
                       f"{expected_sha256[:12]}…): the harness defines the metric and must be used as it is")
    module = ModuleType("harness")
    module.__file__ = str(path)
    module.__loopdeck_sha256__ = digest  # type: ignore[attr-defined]
    sys.modules["harness"] = module  # before running it: dataclasses resolve annotations through sys.modules
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def import_train(path: Path) -> ModuleType:
    """Import a training file by path as module `train`, its directory searchable after the installed packages;
    its `import harness` finds the checked harness already loaded."""
    sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location("train", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["train"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _harness_snapshot(harness: ModuleType) -> dict[str, Any]:
    import torch.nn.functional as F

    return {**{name: getattr(harness, name) for name in _HARNESS_NAMES}, "F.cross_entropy": F.cross_entropy}


def _check_untouched(harness: ModuleType, before: dict[str, Any]) -> None:
    after = _harness_snapshot(harness)
    changed = [name for name, value in before.items() if after[name] is not value]
    if changed:
        raise Rejected(f"importing train.py changed the protected evaluation ({', '.join(changed)}); the harness "
                       "defines the metric and must be used as it is")


def causality_probe(harness: ModuleType, model: torch.nn.Module, stream: torch.Tensor, vocab_size: int,
                    device: torch.device) -> int:
    """Raise Rejected unless changing the token at position t leaves every logit before t unchanged, on one
    evaluation batch of windows at seeded offsets (a different t per row); returns the number of probes."""
    import torch

    batch, seq_len = harness.EVAL_BATCH_SIZE, harness.MAX_SEQ_LEN
    generator = torch.Generator().manual_seed(PROBE_SEED)
    last = len(stream) - seq_len
    if last < 0:
        raise ValueError(f"the split has {len(stream)} tokens; the probe needs {seq_len}")
    starts = torch.randint(0, last + 1, (batch, 1), generator=generator)
    x = stream[starts + torch.arange(seq_len)].long()  # (B, T)
    rows = torch.arange(batch)
    changed_at = torch.randint(1, seq_len, (batch,), generator=generator)
    shift = torch.randint(1, max(vocab_size, 2), (batch,), generator=generator)
    x_changed = x.clone()
    x_changed[rows, changed_at] = (x[rows, changed_at] + shift) % vocab_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), harness.eval_autocast(device):
            first = model(x.to(device)).float()
            again = model(x.to(device)).float()
            tolerance = PROBE_TOLERANCE * first.abs().max().item() + PROBE_FLOOR
            if (first - again).abs().max().item() > tolerance:
                raise Rejected("model output is not deterministic: the same input gave different logits twice, so "
                               "it cannot be scored or checked for looking ahead")
            del again
            moved = (model(x_changed.to(device)).float() - first).abs().amax(dim=-1).cpu()  # (B, T)
    finally:
        model.train(was_training)
    before_change = torch.arange(seq_len)[None, :] < changed_at[:, None]
    leaked = torch.where(before_change, moved, torch.zeros_like(moved))
    if leaked.max().item() > tolerance:
        row, position = divmod(int(leaked.argmax()), seq_len)
        raise Rejected(f"model looks ahead: logits at position {position} changed when token "
                       f"{int(changed_at[row])} changed (by {leaked.max().item():.3g})")
    return batch


def evaluate(workspace: Path, train_file: str, weights: Path, split: str, harness_sha256: str) -> dict[str, Any]:
    """Score the weights with the workspace's pinned harness; the result dict (status ok), or Rejected."""
    started = time.perf_counter()
    harness_path = workspace / HARNESS_FILE
    harness = load_harness(harness_path, harness_sha256)
    before = _harness_snapshot(harness)
    device = harness.pick_device()
    data = harness.load_data()
    module = import_train(workspace / train_file)
    _check_untouched(harness, before)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights}: the run must save its model with harness.save_model")
    model = harness.load_model(module, weights, device)
    probes = causality_probe(harness, model, data.val, data.tokenizer.vocab_size, device)
    result: dict[str, Any] = {
        "status": "ok", "split": split, "bpb": harness.evaluate_bpb(model, data, device, split=split),
        "eval_tokens": harness.EVAL_TOKENS, "batch_size": harness.EVAL_BATCH_SIZE, "seq_len": harness.MAX_SEQ_LEN,
        "corpus_fingerprint": data.fingerprint, "tokenizer": data.tokenizer.name, "device": device.type,
        "probes": probes, "harness": str(harness_path), "harness_sha256": harness_sha256.lower(),
    }
    if split != "val":  # the same weights on val: the other half of the transfer gap
        result["val_bpb"] = harness.evaluate_bpb(model, data, device, split="val")
    subset = min(getattr(harness, "TAMPER_EVAL_TOKENS", 0), harness.EVAL_TOKENS)  # 0: a harness pinned before it
    if split == "val" and subset:  # what the run scored itself on under loopdeck: compared with what it printed
        result["subset_tokens"] = subset
        result["subset_bpb"] = harness.evaluate_bpb(model, data, device, split="val", eval_tokens=subset)
    result["seconds"] = time.perf_counter() - started
    return result


def _emit(result: dict[str, Any], code: int) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    # No atexit handlers, no lingering threads: nothing train.py registered may print after the answer.
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loopdeck.gpt.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", required=True, type=Path, help="the workspace holding the training file")
    parser.add_argument("--train-file", default="train.py", help="the training file, relative to the workspace")
    parser.add_argument("--weights", required=True, type=Path, help="the run's model.pt")
    parser.add_argument("--split", choices=("val", "holdout"), default="val")
    parser.add_argument("--harness-sha256", metavar="HEX", help=f"the pinned sha256 of the workspace's "
                        f"{HARNESS_FILE} (default: [experiment] protected_sha256 in loopdeck.toml)")
    args = parser.parse_args(argv)
    try:
        workspace = args.workspace.resolve()
        pin = args.harness_sha256 or pinned_sha256(workspace)
        result = evaluate(workspace, args.train_file, args.weights.resolve(), args.split, pin)
    except Rejected as exc:
        _emit({"status": "rejected", "reason": str(exc)}, EXIT_REJECTED)
    except BaseException as exc:  # noqa: BLE001 - anything train.py's code raises is a reason to report
        traceback.print_exc()  # into the evaluation log, for a person to read
        _emit({"status": "error", "reason": f"{type(exc).__name__}: {exc}".strip()}, 1)
    _emit(result, 0)


if __name__ == "__main__":
    main()
