"""The protected scorer (`python -m loopdeck.gpt.evaluate`) on saved weights: true scores with the workspace's pinned
harness, the causality probe, tampering."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
support = pytest.importorskip("support_gpt")

from loopdeck.engine.run.evaluator import Evaluation, read_evaluation  # noqa: E402
from loopdeck.engine.run.executor import RunResult  # noqa: E402
from loopdeck.gpt import HARNESS_TEMPLATE  # noqa: E402
from loopdeck.gpt.evaluate import EXIT_REJECTED, RESULT_PREFIX  # noqa: E402
from loopdeck.gpt.harness import EVAL_TOKENS as FULL_TOKENS  # noqa: E402
from loopdeck.gpt.harness import TAMPER_EVAL_TOKENS, evaluate_bpb, load_data, report_bpb, save_model  # noqa: E402

EVAL_TOKENS = 8192
PEEKING = ("is_causal=True", "is_causal=False")  # the edit that lets every position attend to the future


def build(directory: Path, source: str) -> torch.nn.Module:
    """Write train.py into `directory` and save a model of it with small random weights everywhere (the template
    starts its output projections at zero, which would hide what attention does)."""
    support.write_target(directory, source)
    spec = importlib.util.spec_from_file_location(f"train_{uuid.uuid4().hex}", directory / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.GPT(module.GPTConfig(vocab_size=load_data().tokenizer.vocab_size))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    save_model(asdict(model.config), model.state_dict(), directory)
    return model


HARNESS_SHA256 = hashlib.sha256(HARNESS_TEMPLATE.read_bytes()).hexdigest()


def score(directory: Path, split: str = "val", pin: tuple[str, ...] = ("--harness-sha256", HARNESS_SHA256)
          ) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "loopdeck.gpt.evaluate", "--workspace", str(directory), "--weights",
         str(directory / "model.pt"), "--split", split, *pin],
        cwd=directory, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "LOOPDECK_EVAL_TOKENS": str(EVAL_TOKENS), "LOOPDECK_DEVICE": "cpu"})
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    assert lines, result.stdout + result.stderr
    return result.returncode, json.loads(lines[-1].removeprefix(RESULT_PREFIX))


def test_a_causal_model_is_scored_exactly_as_the_harness_scores_it(tmp_path):
    model = build(tmp_path / "ws", support.tiny_train_source())
    code, answer = score(tmp_path / "ws")
    assert code == 0 and answer["status"] == "ok", answer
    assert answer["bpb"] == pytest.approx(evaluate_bpb(model, load_data(), eval_tokens=EVAL_TOKENS), rel=1e-6)
    assert (answer["eval_tokens"], answer["batch_size"], answer["seq_len"]) == (EVAL_TOKENS, 32, 256)
    assert answer["probes"] == 32 and answer["corpus_fingerprint"] and answer["harness"] == str(tmp_path / "ws" / "harness.py")
    assert answer["harness_sha256"] == HARNESS_SHA256
    # What a run under loopdeck prints is scored too: its subset is never more than the whole evaluation.
    assert answer["subset_tokens"] == EVAL_TOKENS and answer["subset_bpb"] == pytest.approx(answer["bpb"])

    code, holdout = score(tmp_path / "ws", split="holdout")
    assert code == 0 and holdout["split"] == "holdout" and holdout["val_bpb"] == pytest.approx(answer["bpb"])
    assert holdout["bpb"] != answer["bpb"]


def test_under_loopdeck_a_run_scores_itself_on_a_subset_that_the_evaluator_scores_too(tmp_path, monkeypatch):
    model = build(tmp_path / "ws", support.tiny_train_source())
    data = load_data()
    full, tokens = report_bpb(model, data)  # standalone: the full evaluation, as before
    assert tokens == FULL_TOKENS > TAMPER_EVAL_TOKENS and full == evaluate_bpb(model, data)
    monkeypatch.setenv("LOOPDECK_TRUSTED_EVAL", "1")
    subset, tokens = report_bpb(model, data)
    assert tokens == TAMPER_EVAL_TOKENS and subset == evaluate_bpb(model, data, eval_tokens=TAMPER_EVAL_TOKENS)
    assert subset != full
    # The printed number is compared with the trusted score of the same tokens, whichever the run scored.
    evaluation = Evaluation("ok", bpb=full, subset_bpb=subset, subset_tokens=TAMPER_EVAL_TOKENS)
    assert evaluation.printed_counterpart(TAMPER_EVAL_TOKENS) == subset
    assert evaluation.printed_counterpart(FULL_TOKENS) == full and evaluation.printed_counterpart(None) == full


def test_a_model_that_looks_ahead_is_rejected_by_the_causality_probe(tmp_path):
    build(tmp_path / "ws", support.tiny_train_source().replace(*PEEKING))
    code, answer = score(tmp_path / "ws")
    assert code == EXIT_REJECTED and answer["status"] == "rejected"
    assert answer["reason"].startswith("model looks ahead: logits at position ")
    position, changed = (int(word) for word in answer["reason"].split() if word.isdigit())
    assert position < changed


def test_a_training_file_that_rebinds_the_harness_at_import_is_rejected(tmp_path):
    tampered = support.tiny_train_source() + "\nimport harness\nharness.EVAL_TOKENS = 256\n"
    build(tmp_path / "ws", tampered)
    code, answer = score(tmp_path / "ws")
    assert code == EXIT_REJECTED and "changed the protected evaluation (EVAL_TOKENS)" in answer["reason"]


def test_only_the_pinned_harness_scores(tmp_path):
    build(tmp_path / "ws", support.tiny_train_source())
    (tmp_path / "ws" / "loopdeck.toml").write_text(
        f'[experiment]\nprotected = ["harness.py"]\nprotected_sha256 = {{ "harness.py" = "{HARNESS_SHA256}" }}\n')
    code, answer = score(tmp_path / "ws", pin=())  # the pin read from loopdeck.toml
    assert code == 0 and answer["status"] == "ok", answer

    harness = tmp_path / "ws" / "harness.py"
    harness.write_text(harness.read_text().replace("EVAL_BATCH_SIZE = 32", "EVAL_BATCH_SIZE = 16"))
    code, answer = score(tmp_path / "ws")
    assert code == EXIT_REJECTED and answer["reason"].startswith("harness.py is not the pinned harness"), answer
    (tmp_path / "ws" / "loopdeck.toml").unlink()
    code, answer = score(tmp_path / "ws", pin=())
    assert code == 1 and "no sha256 pinned for harness.py" in answer["reason"]


def test_missing_weights_and_garbled_answers_are_crashes(tmp_path):
    build(tmp_path / "ws", support.tiny_train_source())
    (tmp_path / "ws" / "model.pt").unlink()
    code, answer = score(tmp_path / "ws")
    assert code == 1 and answer["status"] == "error" and "no weights" in answer["reason"]

    log = tmp_path / "eval.log"
    for text, returncode, expected in [
        ("print('hello')\n", 0, "gave no result"),
        (RESULT_PREFIX + '{"status": "ok", "bpb": NaN}\n', 0, "no usable score"),
        (RESULT_PREFIX + '{"status": "rejected", "reason": "looks ahead"}\n', 0, "failed: looks ahead"),
        (RESULT_PREFIX + '{"status": "rejected", "reason": "looks ahead"}\n', EXIT_REJECTED, "looks ahead"),
    ]:
        log.write_text(text)
        result = RunResult(returncode=returncode, timed_out=False, aborted=False, wall_seconds=1.0,
                           peak_rss_mb=None, log_tail=text, log_path=log)
        evaluation = read_evaluation(result)
        assert expected in evaluation.reason, (text, evaluation)
        assert evaluation.status == ("rejected" if returncode == EXIT_REJECTED else "crash")
