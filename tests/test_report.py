"""`loopdeck report`: the progress chart is a real PNG and the summary states the outcome."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from loopdeck.engine.research.report import write_report
from loopdeck.engine.store.ledger import ExperimentRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def session_rows(seed: int = 3, count: int = 40) -> list[ExperimentRow]:
    """A plausible night: a baseline, mostly discards, some keeps, crashes, a veto and a far-off outlier."""
    rng = random.Random(seed)
    incumbent = 1.80
    rows = [ExperimentRow(id=0, status="keep", commit="0" * 40, metric=incumbent, description="baseline",
                          input_tokens=1000, output_tokens=200, cost_usd=0.01)]
    for i in range(1, count):
        roll = rng.random()
        description = f"experiment {i}: tweak knob {rng.choice(['LR', 'DEPTH', 'WARMUP', 'BATCH'])}"
        if roll < 0.1:
            rows.append(ExperimentRow(id=i, status=rng.choice(["crash", "timeout", "nan"]), description=description,
                                      reason="Traceback: RuntimeError"))
        elif roll < 0.15:
            rows.append(ExperimentRow(id=i, status="vetoed", description=description, reason="too risky"))
        else:
            metric = incumbent + rng.gauss(0.01, 0.02)
            if i == 7:
                metric = incumbent + 3.0  # diverged: must not squash the interesting band
            status = "keep" if metric < incumbent else "discard"
            rows.append(ExperimentRow(id=i, status=status, metric=metric, delta=metric - incumbent,
                                      incumbent_metric=incumbent, description=description, commit=f"{i:040d}",
                                      input_tokens=1000, output_tokens=300, cost_usd=0.02))
            if status == "keep":
                incumbent = metric
    return rows


def test_report_writes_chart_and_summary(tmp_path: Path) -> None:
    rows = session_rows()
    png, summary = write_report(rows, tmp_path / "report", title="overnight")
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 30_000

    kept = [r for r in rows if r.status == "keep"]
    best = min(kept, key=lambda r: r.metric)
    assert best.id != 0
    text = summary.read_text()
    assert text.startswith("# overnight")
    assert f"| best | {best.metric:.6f} (#{best.id})" in text
    assert "| baseline | 1.800000 (#0) |" in text
    improvement = 1.8 - best.metric
    assert f"| improvement | {improvement:.6f} ({100 * improvement / 1.8:.2f}%) |" in text
    experiments = len(rows) - 1
    assert f"| kept | {len(kept) - 1}/{experiments} experiments" in text
    crashes = sum(r.status in ("crash", "timeout", "nan") for r in rows)
    assert f"| crashed | {crashes} |" in text
    assert "## Near misses" in text and "## Crashes" in text
    for row in kept:
        assert f"| {row.id} | {row.metric:.6f} |" in text
    tokens_in = sum(r.input_tokens for r in rows)
    assert f"{tokens_in:,} input" in text and "(estimate)" in text


def test_report_for_maximize_and_for_an_empty_or_failed_session(tmp_path: Path) -> None:
    rows = [ExperimentRow(id=0, status="keep", commit="a", metric=0.50, description="baseline"),
            ExperimentRow(id=1, status="keep", commit="b", metric=0.62, delta=0.12, description="bigger"),
            ExperimentRow(id=2, status="discard", commit="c", metric=0.55, delta=-0.07, description="smaller")]
    _, summary = write_report(rows, tmp_path / "max", metric_name="accuracy", direction="maximize")
    text = summary.read_text()
    assert "| best | 0.620000 (#1): bigger |" in text and "| improvement | 0.120000 (24.00%) |" in text
    assert "accuracy, higher is better" in text

    png, summary = write_report([], tmp_path / "empty")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert "No experiments yet." in summary.read_text()

    crashed = [ExperimentRow(id=0, status="crash", commit="a", description="baseline", reason="no metric")]
    png, summary = write_report(crashed, tmp_path / "crashed")
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert "| baseline | - |" in summary.read_text()


def test_engine_import_does_not_load_matplotlib() -> None:
    code = ("import sys, loopdeck.engine.research.report, loopdeck.engine.store.ledger, loopdeck.engine.store.journal; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
