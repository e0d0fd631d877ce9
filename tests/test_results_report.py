"""The real status of rejected and interrupted runs in results.tsv, `loopdeck status` and the report; the report's
chart and summary agree with the ledger (worse-edge failure markers, counts, plurals, no negative zero)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loopdeck.cli.status_table import format_status_table
from loopdeck.engine.research.report import progress_figure, write_report
from loopdeck.engine.store.ledger import ExperimentRow, Ledger

OVER_BUDGET = "over budget: the run reports 38.8 s of training for a 30 s budget; the training must stop"


def baseline(id: int = 0, metric: float = 1.0) -> ExperimentRow:
    return ExperimentRow(id=id, status="keep", commit=f"{id:07d}aaaa", metric=metric, description="baseline",
                         meta={"baseline": True})


def rejected(id: int) -> ExperimentRow:
    return ExperimentRow(id=id, status="rejected", commit=f"{id:07d}bbbb", reported_metric=0.987654,
                         peak_memory_mb=2048.0, description="deeper model", reason=OVER_BUDGET)


def interrupted(id: int) -> ExperimentRow:
    return ExperimentRow(id=id, status="interrupted", commit=f"{id:07d}cccc", description="wider model",
                         reason="aborted by a person")


def test_results_tsv_keeps_a_rejected_runs_metric_and_says_what_happened(tmp_path: Path) -> None:
    with Ledger(tmp_path / ".loopdeck") as ledger:
        for row in (baseline(), rejected(1), interrupted(2)):
            final = row.status
            row.status = "running"
            ledger.begin(row)
            ledger.finish(row.id, final)
        lines = ledger.results_path.read_text().splitlines()
    assert lines[1:] == [
        "0000000\t1.000000\t0.0\tkeep\tbaseline",
        "0000001\t0.987654\t2.0\tcrash\tdeeper model [rejected: over budget]",
        "0000002\t0.000000\t0.0\tcrash\twider model [interrupted: aborted by a person]",
    ]


def test_status_table_shows_the_real_status_and_the_printed_metric() -> None:
    table = format_status_table([baseline(), rejected(1), interrupted(2)])
    lines = table.splitlines()
    assert lines[3].split()[:3] == ["1", "rejected", "0.987654"]
    assert lines[4].split()[:3] == ["2", "interrupted", "-"]
    assert lines[-1].endswith("kept 0/2 experiments")
    assert format_status_table([baseline(), rejected(1)]).endswith("kept 0/1 experiment")


def _collection(ax, label: str):
    return next(c for c in ax.collections if c.get_label() == label)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_failure_markers_sit_on_the_worse_edge(direction: str) -> None:
    crash = ExperimentRow(id=2, status="crash", commit="2222222", description="oom", reason="CUDA OOM")
    rows = [baseline(), ExperimentRow(id=1, status="keep", commit="1111111", metric=0.9 if direction == "minimize"
                                      else 1.1, description="better"), crash, rejected(3)]
    ax = progress_figure(rows, direction=direction).axes[0]
    middle = ax.transAxes.transform((0, 0.5))[1]
    for label, ids in (("crashed", [2]), ("rejected", [3])):
        markers = _collection(ax, label)
        points = markers.get_offset_transform().transform(markers.get_offsets())
        assert [round(x) for x in markers.get_offsets()[:, 0]] == ids
        # Display y grows upwards: lower-is-better puts the worse edge at the top.
        assert all((y > middle) == (direction == "minimize") for _, y in points), label


def test_chart_labels_rejected_runs_and_stops_the_running_best_at_the_last_experiment() -> None:
    rows = [baseline(), rejected(1), ExperimentRow(id=2, status="discard", commit="2222222", metric=1.1)]
    ax = progress_figure(rows, title="night").axes[0]
    assert _collection(ax, "rejected").get_offsets().shape[0] == 1
    assert not [c for c in ax.collections if c.get_label() == "crashed"]
    line = next(line for line in ax.lines if line.get_label() == "running best")
    assert max(line.get_xdata()) == 2
    assert ax.get_title() == "night: 2 experiments, 0 kept improvements"
    assert progress_figure(rows[:2]).axes[0].get_title() == "loopdeck progress: 1 experiment, 0 kept improvements"


def _table_rows(text: str, heading: str) -> list[str]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| #")]


def test_summary_counts_agree_with_its_tables_and_never_shows_a_negative_zero(tmp_path: Path) -> None:
    failed_baseline = ExperimentRow(id=0, status="crash", commit="0000000", description="baseline",
                                    reason="ModuleNotFoundError: kernels", meta={"baseline": True})
    crash = ExperimentRow(id=2, status="crash", commit="2222222", description="wider", reason="CUDA OOM")
    rows = [failed_baseline, baseline(1), crash]
    _, summary = write_report(rows, tmp_path / "report")
    text = summary.read_text()
    assert "| kept | 0/1 experiment (baseline not counted) |" in text
    assert "| crashed | 1 |" in text and _table_rows(text, "Crashes") == ["| 2 | crash | CUDA OOM | wider |"]
    assert "| failed baseline runs | 1 |" in text
    assert _table_rows(text, "Failed baseline runs") == ["| 0 | crash | - | ModuleNotFoundError: kernels |"]
    assert "| improvement | 0.000000 (0.00%) |" in text and "-0.0" not in text

    _, summary = write_report([baseline(), rejected(1)], tmp_path / "rejected")
    text = summary.read_text()
    assert "| rejected | 1 (ran, then refused) |" in text and "## Crashes" not in text
    assert _table_rows(text, "Rejected") == [f"| 1 | 0.987654 | {OVER_BUDGET} | deeper model |"]
