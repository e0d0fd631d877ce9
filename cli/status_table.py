"""`loopdeck status`: the ledger as a plain-text table no wider than 100 columns, with a baseline/best/kept footer."""

from __future__ import annotations

from loopdeck.engine.store.ledger import ExperimentRow, first_baseline
from loopdeck.engine.store.results_tsv import shown_metric

TABLE_WIDTH = 100
_COLUMNS = (("id", 4, ">"), ("status", 11, "<"), ("metric", 10, ">"), ("delta", 10, ">"),
            ("mem GB", 6, ">"), ("train s", 7, ">"))


def format_status_table(rows: list[ExperimentRow]) -> str:
    """One line per experiment, baselines included, then a footer that counts only the experiments. A rejected or
    interrupted run shows the metric it printed, as results.tsv does."""
    if not rows:
        return "no experiments yet"
    fixed = sum(width + 2 for _, width, _ in _COLUMNS)
    desc_width = TABLE_WIDTH - fixed
    header = "  ".join(f"{name:{align}{width}}" for name, width, align in _COLUMNS) + "  description"
    lines = [header, "-" * min(TABLE_WIDTH, fixed + desc_width)]
    for row in rows:
        cells = (
            str(row.id), row.status, _number(shown_metric(row), "{:.6f}"), _number(row.delta, "{:+.6f}"),
            _number(None if row.peak_memory_mb is None else row.peak_memory_mb / 1024, "{:.1f}"),
            _number(row.training_seconds, "{:.1f}"),
        )
        line = "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, _COLUMNS, strict=True))
        lines.append(f"{line}  {_clip(' '.join(row.description.split()), desc_width)}".rstrip())
    lines.append("")
    lines.append(_footer(rows))
    return "\n".join(lines)


def _footer(rows: list[ExperimentRow]) -> str:
    kept = [row for row in rows if row.status == "keep" and row.metric is not None]
    baseline = first_baseline(rows)
    experiments = [row for row in rows if not row.is_baseline]
    parts = [f"baseline {_number(baseline.metric if baseline else None, '{:.6f}')}"]
    if kept:
        best = kept[-1].metric
        parts.append(f"best {best:.6f} (#{kept[-1].id})")
        if baseline is not None and baseline.metric:
            change = best - baseline.metric
            parts[-1] += f", {change:+.6f} ({100 * change / abs(baseline.metric):+.2f}%) vs baseline"
    else:
        parts.append("best -")
    noun = "experiment" if len(experiments) == 1 else "experiments"
    parts.append(f"kept {sum(row.status == 'keep' for row in experiments)}/{len(experiments)} {noun}")
    return " · ".join(parts)


def _number(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
