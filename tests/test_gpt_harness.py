"""The protected harness: evaluate_bpb against a hand computation, the dataloader, weights, environment, summary."""

from __future__ import annotations

import json
import math

import pytest
import torch

from loopdeck.engine.run.metrics import parse_summary as parse_summary_text
from loopdeck.engine.run.metrics import summary_numbers
from loopdeck.gpt import harness
from loopdeck.gpt.harness import (
    MAX_SEQ_LEN,
    ByteTokenizer,
    Data,
    DataError,
    MetricsLog,
    evaluate_bpb,
    format_summary,
    load_data,
    make_train_loader,
)

VOCAB = 6
BOS = 5
TOKEN_BYTES = [1, 2, 3, 1, 4, 0]  # a BPE-like table: tokens stand for 1–4 bytes, BOS for none
FIXED_LOGITS = [0.5, -1.0, 2.0, 0.0, 1.0, -0.5]


class FixedLogits(torch.nn.Module):
    """Predicts the same distribution at every position, so each target's cross-entropy is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(FIXED_LOGITS))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*idx.shape, VOCAB)


def tiny_data(stream: list[int]) -> Data:
    tokens = torch.tensor(stream, dtype=torch.int32)
    return Data("tiny", "0" * 64, ByteTokenizer(), train=tokens, val=tokens, holdout=tokens[:10],
                token_bytes=torch.tensor(TOKEN_BYTES))


def hand_bpb(targets: list[int]) -> float:
    log_normaliser = math.log(sum(math.exp(v) for v in FIXED_LOGITS))
    nats = sum(log_normaliser - FIXED_LOGITS[t] for t in targets if TOKEN_BYTES[t] > 0)
    return nats / (math.log(2) * sum(TOKEN_BYTES[t] for t in targets))


def test_evaluate_bpb_matches_a_hand_computed_value():
    stream = [BOS] + [(i * 7 + i // 3) % VOCAB for i in range(2 * MAX_SEQ_LEN + 40)]  # BOS appears as a target too
    data = tiny_data(stream)
    model = FixedLogits()
    # Two full rows fit (the 40 spare tokens are not enough for a third): targets are stream[1:2T+1].
    assert evaluate_bpb(model, data, torch.device("cpu")) == pytest.approx(hand_bpb(stream[1 : 2 * MAX_SEQ_LEN + 1]),
                                                                          rel=1e-6)
    assert evaluate_bpb(model, data, eval_tokens=MAX_SEQ_LEN + 5) == pytest.approx(
        hand_bpb(stream[1 : MAX_SEQ_LEN + 1]), rel=1e-6)
    assert model.training  # evaluation restores the mode it found
    with pytest.raises(DataError, match="holdout split has 10 tokens"):
        evaluate_bpb(model, data, split="holdout")


def test_an_untrained_byte_model_scores_about_eight_bits_per_byte():
    stream = [256] + list(("plain ascii text " * 40).encode())
    data = Data("ascii", "0" * 64, ByteTokenizer(), train=torch.tensor(stream, dtype=torch.int32),
                val=torch.tensor(stream, dtype=torch.int32), holdout=torch.tensor(stream, dtype=torch.int32),
                token_bytes=torch.tensor(ByteTokenizer().token_bytes()))

    class Uniform(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*idx.shape, 257)

    assert evaluate_bpb(Uniform(), data) == pytest.approx(math.log2(257), rel=1e-6)


def test_train_loader_is_seeded_and_shifts_targets():
    data = tiny_data(list(range(5)) * 300)
    first = make_train_loader(data, 3, 16, seed=7, device=torch.device("cpu"))
    again = make_train_loader(data, 3, 16, seed=7, device=torch.device("cpu"))
    other = make_train_loader(data, 3, 16, seed=8, device=torch.device("cpu"))
    x, y = next(first)
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, next(again)[0])
    assert not torch.equal(torch.cat([next(first)[0] for _ in range(3)]), torch.cat([next(other)[0] for _ in range(3)]))
    with pytest.raises(DataError, match="a batch row needs 257"):
        next(make_train_loader(tiny_data([1] * 100), 2, MAX_SEQ_LEN, 0, torch.device("cpu")))


def test_load_data_streams_start_documents_with_bos(tmp_path):
    (tmp_path / "notes.jsonl").write_text("\n".join(json.dumps({"text": f"note {i} é"}) for i in range(60)),
                                          encoding="utf-8")
    data = load_data(str(tmp_path), "byte")
    assert data.corpus_name == str(tmp_path) and len(data.fingerprint) == 64 and data.tokenizer.name == "byte"
    for stream in (data.train, data.val):
        assert stream.dtype == torch.int32 and stream[0].item() == 256
    documents = (len(data.train) + len(data.val) + len(data.holdout)
                 - sum(len(f"note {i} é".encode()) for i in range(60)))
    assert documents == 60  # one BOS per document
    assert data.token_bytes.tolist() == [1] * 256 + [0]


def test_environment_settings(monkeypatch):
    monkeypatch.setenv("LOOPDECK_DEVICE", "cpu")
    assert harness.pick_device() == torch.device("cpu")
    monkeypatch.setenv("LOOPDECK_DEVICE", "tpu")
    with pytest.raises(DataError, match="expected cpu, cuda, mps or auto"):
        harness.pick_device()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LOOPDECK_DEVICE", "cuda")
        with pytest.raises(DataError, match="no cuda device on this machine"):
            harness.pick_device()
    monkeypatch.setenv("LOOPDECK_SEED", "x")
    with pytest.raises(DataError, match="LOOPDECK_SEED must be an integer"):
        harness.run_seed()
    monkeypatch.setenv("LOOPDECK_TIME_BUDGET", "-3")
    with pytest.raises(DataError, match="LOOPDECK_TIME_BUDGET must be a positive number, got '-3'"):
        harness._env_number("LOOPDECK_TIME_BUDGET", 60.0, float)
    monkeypatch.setenv("LOOPDECK_EVAL_TOKENS", "1.5")
    with pytest.raises(DataError, match="positive whole number"):
        harness._env_number("LOOPDECK_EVAL_TOKENS", 1, int)
    monkeypatch.delenv("LOOPDECK_RUN_DIR", raising=False)
    assert str(harness.run_dir()) == "runs/latest"
    assert harness.peak_flops(torch.device("cpu")) is None
    assert harness.peak_memory_mb(torch.device("cpu")) > 10


def test_summary_block_round_trips_and_metrics_are_strict_json(tmp_path):
    summary = {"val_bpb": 2.3456789, "training_seconds": 60.04, "total_seconds": 71.2, "peak_vram_mb": 512.25,
               "mfu_percent": None, "total_tokens_M": 1.95, "num_steps": 950, "num_params_M": 0.53, "depth": 2}
    text = format_summary(summary)
    assert text.splitlines()[:2] == ["---", "val_bpb:          2.345679"]
    assert parse_summary("noise\n---\nold: 1\n" + text + "\n") == {
        "val_bpb": 2.345679, "training_seconds": 60.0, "total_seconds": 71.2, "peak_vram_mb": 512.2,
        "mfu_percent": 0.0, "total_tokens_M": 1.9, "num_steps": 950.0, "num_params_M": 0.5, "depth": 2.0}

    log = MetricsLog(tmp_path / "m.jsonl")
    log.start(seed=0)
    log.step(step=1, loss=float("nan"), mfu_percent=None)
    log.end(summary)
    log.close()
    records = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records] == ["start", "step", "end"]
    assert records[1]["loss"] is None and records[2]["val_bpb"] == 2.3456789
    MetricsLog(None).step(step=1)  # no stream configured: writes nothing, fails nothing


def parse_summary(text: str) -> dict[str, float]:
    """The numbers of a run's summary block, read the way the engine reads them."""
    return summary_numbers(parse_summary_text(text))
