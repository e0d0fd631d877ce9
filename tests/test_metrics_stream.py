"""The one reader of a training run's metrics stream and summary block (engine/run/metrics.py)."""

from __future__ import annotations

import json
from pathlib import Path

from loopdeck.engine.events import TrainStep
from loopdeck.engine.run.metrics import (
    incumbent_curve,
    parse_step,
    parse_summary,
    read_steps,
    summary_numbers,
)


def step(n: int, elapsed: float, loss: object) -> dict:
    return {"type": "step", "step": n, "elapsed_seconds": elapsed, "loss": loss, "progress": 0.5,
            "tokens_per_second": 1000.0, "mfu_percent": None}


def test_parse_step_reads_a_step_record_and_refuses_malformed_ones() -> None:
    parsed = parse_step(step(3, 1.5, 2.25), experiment=7)
    assert parsed == TrainStep(ts=parsed.ts, experiment=7, step=3, elapsed_seconds=1.5, loss=2.25, progress=0.5,
                               tokens_per_second=1000.0, mfu_percent=None)
    assert parse_step({"type": "start", "step": 1}) is None
    assert parse_step(step(1, float("nan"), 2.0)) is None  # elapsed must be a finite number
    assert parse_step(step(1, 1.0, "2.0")) is None  # a loss that is not a number
    assert parse_step({**step(1, 1.0, 2.0), "step": "1"}) is None
    assert parse_step({**step(1, 1.0, 2.0), "progress": "lots"}).progress == 0.0


def test_read_steps_skips_torn_foreign_and_other_records(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"type": "start", "seed": 1}), json.dumps(step(0, 0.1, 3.0)), "not json", "[1, 2]",
             json.dumps(step(1, 0.2, 2.5)), json.dumps({"type": "end"}), '{"type": "step", "step": 2, "ela']
    path.write_text("\n".join(lines))
    assert [(s.step, s.elapsed_seconds, s.loss) for s in read_steps(path, experiment=2)] == [(0, 0.1, 3.0),
                                                                                             (1, 0.2, 2.5)]
    assert read_steps(tmp_path / "missing.jsonl") == []


def test_incumbent_curve_drops_non_finite_losses_and_keeps_the_last_point_when_thinned(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    records = [step(n, n / 10, 5.0 - n / 100) for n in range(101)] + [step(101, 10.2, float("nan"))]
    path.write_text("\n".join(json.dumps(record) for record in records))
    full = incumbent_curve(path, points=None)
    assert len(full) == 101 and full[-1] == (10.0, 4.0)
    thinned = incumbent_curve(path, points=10)
    assert len(thinned) <= 10 and thinned[0] == (0.0, 5.0) and thinned[-1] == (10.0, 4.0)
    assert incumbent_curve(tmp_path / "missing.jsonl") == ()


def test_summary_numbers_keeps_the_finite_values() -> None:
    summary = parse_summary("step 1\n---\nval_bpb: 1.25\ndevice: cpu\ntraining_seconds: 30.0\nmfu: nan\n")
    assert summary == {"val_bpb": "1.25", "device": "cpu", "training_seconds": "30.0", "mfu": "nan"}
    assert summary_numbers(summary) == {"val_bpb": 1.25, "training_seconds": 30.0}
