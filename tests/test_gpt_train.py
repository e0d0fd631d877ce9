"""The training template end to end on CPU (tiny model, second-long budgets), in a workspace without loopdeck, and
`loopdeck train`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from support_gpt import hyperparameters, tiny_train_source, write_target

from loopdeck.engine.run.metrics import parse_summary as parse_summary_text
from loopdeck.engine.run.metrics import summary_numbers
from loopdeck.engine.store.workspace import init_workspace
from loopdeck.gpt import HARNESS_TEMPLATE, TRAIN_TEMPLATE
from loopdeck.gpt.harness import (
    SUMMARY_FORMATS,
    embedded_corpus,
    evaluate_bpb,
    load_data,
    load_model,
)

BUDGET = 2.0
EVAL_TOKENS = 2048
STEP_KEYS = {"type", "step", "elapsed_seconds", "loss", "progress", "tokens_per_second", "mfu_percent", "lr_mult",
             "ms_per_step"}


def run_training(folder: Path, source: str, **env: str) -> subprocess.CompletedProcess:
    write_target(folder, source)
    environment = {**os.environ, "LOOPDECK_TIME_BUDGET": str(BUDGET), "LOOPDECK_EVAL_TOKENS": str(EVAL_TOKENS),
                   "LOOPDECK_METRICS": str(folder / "metrics.jsonl"), "LOOPDECK_RUN_DIR": str(folder / "run"),
                   "LOOPDECK_DEVICE": "cpu", "LOOPDECK_SEED": "3", "LOOPDECK_DATA": "", **env}
    return subprocess.run([sys.executable, "train.py"], cwd=folder, env=environment, capture_output=True,
                          text=True, timeout=240)


def import_file(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("tiny")
    return folder, run_training(folder, tiny_train_source())


def test_summary_block_parses(tiny_run):
    _, result = tiny_run
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    block = lines[-len(SUMMARY_FORMATS) - 1 :]
    assert block[0] == "---"
    assert [line.split(":")[0] for line in block[1:]] == list(SUMMARY_FORMATS)
    assert all(re.fullmatch(r"[a-z_M]+: +[0-9.]+", line) for line in block[1:])
    summary = parse_summary(result.stdout)
    assert 0 < summary["val_bpb"] < 7.5  # a uniform byte model scores 8.0
    assert BUDGET <= summary["training_seconds"] < BUDGET + 2
    assert summary["total_seconds"] > summary["training_seconds"]
    assert summary["num_steps"] >= 5 and summary["depth"] == 1
    assert summary["total_tokens_M"] == pytest.approx(summary["num_steps"] * 1024 / 1e6, abs=0.06)
    assert re.search(r"^step 00001 \( *[0-9.]+%\) \| loss [0-9.]+ \| lrm [0-9.]+ \| +[0-9.]+ ms \| +[0-9,]+ tok/s "
                     r"\| mfu n/a \| left +[0-9]+ s$", result.stdout, re.MULTILINE)


def test_metrics_stream_is_json_lines_with_start_steps_and_end(tiny_run):
    folder, result = tiny_run
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    start, steps, end = records[0], records[1:-1], records[-1]
    assert start["type"] == "start" and end["type"] == "end"
    assert start["device"] == "cpu" and start["torch"] == torch.__version__
    assert start["corpus_fingerprint"] == embedded_corpus().fingerprint
    assert (start["tokenizer"], start["budget_seconds"], start["seed"], start["eval_tokens"]) == (
        "byte", BUDGET, 3, EVAL_TOKENS)
    assert f"{start['num_params'] / 1e6:.1f}" == f"{parse_summary(result.stdout)['num_params_M']:.1f}"
    assert all(record["type"] == "step" and set(record) >= STEP_KEYS for record in steps)
    assert [record["step"] for record in steps] == list(range(1, len(steps) + 1))
    elapsed = [record["elapsed_seconds"] for record in steps]
    assert elapsed == sorted(elapsed) and steps[-1]["progress"] == 1.0
    assert all(record["mfu_percent"] is None and record["loss"] > 0 for record in steps)
    assert set(SUMMARY_FORMATS) <= set(end)
    assert f"{end['val_bpb']:.6f}" == f"{parse_summary(result.stdout)['val_bpb']:.6f}"


def test_saved_weights_rebuild_and_score_the_same_in_another_process(tiny_run):
    folder, _ = tiny_run
    train = import_file(folder / "train.py", "tiny_train")  # importing must not train
    model = load_model(train, folder / "run" / "model.pt")
    end = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    rescored = evaluate_bpb(model, load_data(""), torch.device("cpu"), eval_tokens=EVAL_TOKENS)
    assert rescored == pytest.approx(end["val_bpb"], abs=1e-5)


def test_nan_from_an_absurd_learning_rate_prints_fail_and_exits_nonzero(tmp_path):
    result = run_training(tmp_path, tiny_train_source(MATRIX_LR=1e30, EMBEDDING_LR=1e30))
    assert result.returncode == 1
    assert "FAIL" in result.stdout.splitlines()
    assert "val_bpb" not in result.stdout and not (tmp_path / "run" / "model.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "start" and all(record["type"] != "end" for record in records)


def test_a_bpe_run_on_a_user_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPDECK_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Record {i}: the harness scores bits per byte. " * 3})
                                for i in range(300)), encoding="utf-8")
    result = run_training(tmp_path / "run", tiny_train_source(), LOOPDECK_DATA=str(corpus),
                          LOOPDECK_TOKENIZER="bpe:400", LOOPDECK_TIME_BUDGET="1")
    assert result.returncode == 0, result.stderr
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (start["tokenizer"], start["corpus"], start["config"]["vocab_size"]) == ("bpe-400", str(corpus), 400)
    assert 0 < parse_summary(result.stdout)["val_bpb"] < 8


def test_a_bad_data_setting_stops_the_run_with_one_line(tmp_path):
    result = run_training(tmp_path, tiny_train_source(), LOOPDECK_DATA=str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: data path {tmp_path / 'missing'} does not exist; expected a directory")
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_template_imports_without_training_and_its_model_is_causal(capsys):
    train = import_file(TRAIN_TEMPLATE, "template_train")
    assert capsys.readouterr().out == ""
    torch.manual_seed(0)
    model = train.GPT(train.GPTConfig(sequence_len=32, vocab_size=50, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():  # zero-initialised projections make every block the identity: perturb them
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    idx = torch.randint(0, 50, (2, 32))
    changed = idx.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 50
    logits, logits_changed = model(idx), model(changed)
    assert logits.shape == (2, 32, 50) and logits.dtype == torch.float32
    assert torch.allclose(logits[:, :20], logits_changed[:, :20], atol=1e-6)
    assert not torch.allclose(logits[:, 20:], logits_changed[:, 20:])
    assert logits.abs().max() < train.SOFTCAP
    loss = model(idx, idx)
    assert loss.ndim == 0 and loss.item() > 0


def test_hyperparameter_block_is_plain_literals():
    knobs = hyperparameters(TRAIN_TEMPLATE.read_text(encoding="utf-8"))
    assert list(knobs) == [
        "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MLP_RATIO", "DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE", "MATRIX_LR",
        "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETAS", "MUON_MOMENTUM", "NS_STEPS",
        "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "SOFTCAP", "ROPE_BASE"]
    assert knobs["ADAM_BETAS"] == (0.8, 0.95)
    assert len(re.findall(r"^DEPTH = 2 +# transformer blocks", tiny_train_source(DEPTH=2), re.MULTILINE)) == 1


def test_the_model_config_defaults_are_the_hyperparameter_block():
    train = import_file(TRAIN_TEMPLATE, "template_defaults")
    config = train.GPTConfig()
    assert (config.n_layer, config.mlp_ratio, config.softcap, config.rope_base) == (
        train.DEPTH, train.MLP_RATIO, train.SOFTCAP, train.ROPE_BASE)
    assert config.n_embd == 128 and config.n_head == config.n_embd // train.HEAD_DIM


def test_a_new_workspace_trains_with_python_train_py_where_loopdeck_cannot_be_imported(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    workspace = init_workspace(tmp_path / "ws")
    assert (workspace / "harness.py").read_bytes() == HARNESS_TEMPLATE.read_bytes()
    # -I: no current directory, PYTHONPATH or user site on sys.path; '.' is the workspace, as for `python train.py`.
    code = ("import sys, runpy; sys.modules['loopdeck'] = None; sys.path.insert(0, '.'); sys.argv = ['train.py']; "
            "runpy.run_path('train.py', run_name='__main__'); "
            "assert not [name for name in sys.modules if name.startswith('loopdeck.')]")
    environment = {**os.environ, "LOOPDECK_TIME_BUDGET": str(BUDGET), "LOOPDECK_EVAL_TOKENS": str(EVAL_TOKENS),
                   "LOOPDECK_DEVICE": "cpu", "LOOPDECK_DATA": "", "LOOPDECK_RUN_DIR": str(tmp_path / "run")}
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=workspace, env=environment,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 < parse_summary(result.stdout)["val_bpb"] < 8 and (tmp_path / "run" / "model.pt").is_file()


def loopdeck(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loopdeck.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=240)


def test_bad_data_path_is_a_clear_error_not_a_traceback(tmp_path):
    result = loopdeck("train", "--data", "/nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("loopdeck: error: data path /nope does not exist; expected a directory")
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()  # refused before creating anything


def test_loopdeck_train_runs_the_template_once_and_keeps_its_files(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("\n\n".join(f"Paragraph {i}. " + "Some words here. " * 60
                                                           for i in range(120)), encoding="utf-8")
    result = loopdeck("train", "--budget", "1", "--data", "corpus", "--device", "cpu", "--out", "out", "--clock",
                      "wall", cwd=tmp_path, LOOPDECK_EVAL_TOKENS="1024")
    assert result.returncode == 0, result.stdout[-2000:]
    out = tmp_path / "out"
    assert sorted(path.name for path in out.iterdir()) == ["harness.py", "log.txt", "metrics.jsonl", "model.pt",
                                                           "train.py"]
    assert (out / "train.py").read_text() == TRAIN_TEMPLATE.read_text()
    assert (out / "harness.py").read_text() == HARNESS_TEMPLATE.read_text()
    log = (out / "log.txt").read_text()
    assert log in result.stdout and parse_summary(log)["val_bpb"] > 0
    start = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert start["corpus"] == str(tmp_path / "corpus") and start["budget_seconds"] == 1.0
    assert start["budget_clock"] == "wall" and "(wall clock)" in log


def parse_summary(text: str) -> dict[str, float]:
    """The numbers of a run's summary block, read the way the engine reads them."""
    return summary_numbers(parse_summary_text(text))
