"""`loopdeck report`: a progress chart (PNG) and a Markdown summary of a session's ledger.

When the incumbent was scored on the holdout split, a second chart (holdout.png) plots the gains since the baseline
on validation and on holdout side by side: the "transfer gap" that shows whether gains hold beyond the text they
were selected on. The sections a researcher hands on — the kept chain with its diffs and studies, the cost per
improvement, transfer.png and incumbent.patch — are research/handover.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loopdeck.engine.research.handover import PATCH_FILE, TRANSFER_CHART, draw_transfer, handover_sections
from loopdeck.engine.research.markdown import cell, fixed, number, signed
from loopdeck.engine.store.ledger import ExperimentRow, RunRow, StudyRow, first_baseline
from loopdeck.engine.store.results_tsv import shown_metric

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CRASH_STATUSES = frozenset({"crash", "timeout", "nan", "interrupted"})
NOT_RUN_STATUSES = frozenset({"rejected", "vetoed", "running"})
NEAR_MISSES = 5
ANNOTATION_CHARS = 40
HOLDOUT_CHART = "holdout.png"


@dataclass
class _Outcome:
    """The facts both the chart and the summary are drawn from."""

    rows: list[ExperimentRow]
    minimize: bool
    baseline: ExperimentRow | None
    kept: list[ExperimentRow]  # kept experiments with a metric, baseline included, by id
    discarded: list[ExperimentRow]  # ran to a metric and was not kept
    crashed: list[ExperimentRow]  # failed or was stopped while it ran, baselines included
    rejected: list[ExperimentRow]  # ran, then was refused (over budget, a changed evaluation)
    not_run: list[ExperimentRow]

    @property
    def best(self) -> ExperimentRow | None:
        pick = min if self.minimize else max
        return pick(self.kept, key=lambda row: row.metric, default=None)

    def improvement(self) -> float | None:
        """How much better the best is than the baseline (positive = better, in either direction)."""
        best = self.best
        if best is None or self.baseline is None or self.baseline.metric is None:
            return None
        change = best.metric - self.baseline.metric
        return -change if self.minimize else change

    def experiments(self) -> list[ExperimentRow]:
        """Every row but the baselines (a failed first baseline is not an experiment either)."""
        return [row for row in self.rows if not row.is_baseline]


def write_report(
    rows: list[ExperimentRow],
    out_dir: Path,
    *,
    metric_name: str = "val_bpb",
    direction: str = "minimize",
    title: str = "",
    studies: list[StudyRow] | None = None,
    runs: list[RunRow] | None = None,
    patch: str = "",
) -> tuple[Path, Path]:
    """Write out_dir/progress.png and out_dir/summary.md (and holdout.png, transfer.png, incumbent.patch when
    there is something to show); return the first two paths. `studies` and `runs` are the ledger's; `patch` the
    incumbent against the baseline."""
    outcome = _outcome(rows, minimize=_minimize(direction))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "progress.png"
    summary = out_dir / "summary.md"
    _progress_figure(outcome, metric_name=metric_name, title=title).savefig(png, format="png")
    if _holdout_rows(outcome):
        _draw_transfer(outcome, out_dir / HOLDOUT_CHART, metric_name=metric_name)
    draw_transfer(studies or [], out_dir / TRANSFER_CHART, metric_name=metric_name)
    if patch:
        (out_dir / PATCH_FILE).write_text(patch, encoding="utf-8")
    text = _summary_markdown(outcome, metric_name=metric_name, title=title, chart=png.name, runs=runs or [])
    if outcome.rows:
        text += "\n".join(handover_sections(outcome.rows, studies or [], runs or [],
                                            improvement=outcome.improvement(), patch=bool(patch)))
    summary.write_text(text, encoding="utf-8")
    return png, summary


def progress_figure(rows: list[ExperimentRow], *, metric_name: str = "val_bpb", direction: str = "minimize",
                    title: str = "") -> Figure:
    """The progress chart of write_report, as a matplotlib Figure (not saved)."""
    return _progress_figure(_outcome(rows, minimize=_minimize(direction)), metric_name=metric_name, title=title)


def _minimize(direction: str) -> bool:
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    return direction == "minimize"


def _outcome(rows: list[ExperimentRow], *, minimize: bool) -> _Outcome:
    rows = sorted(rows, key=lambda row: row.id)
    kept = [row for row in rows if row.status == "keep" and row.metric is not None]
    baseline = first_baseline(rows)
    crashed = [row for row in rows if row.status in CRASH_STATUSES]
    # A rejected row with a commit ran and was then refused; one without never ran (the guard refused it).
    rejected = [row for row in rows if row.status == "rejected" and row.commit]
    not_run = [row for row in rows if row.status in NOT_RUN_STATUSES and row not in rejected]
    discarded = [row for row in rows if row.status not in CRASH_STATUSES | NOT_RUN_STATUSES | {"keep"}
                 and row.metric is not None]
    return _Outcome(rows, minimize, baseline, kept, discarded, crashed, rejected, not_run)


# --- chart --------------------------------------------------------------------------------------------------------


def _progress_figure(outcome: _Outcome, *, metric_name: str, title: str) -> Figure:
    # Imported here: the engine must start without paying for matplotlib, and Figure needs no pyplot state.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory

    fig = Figure(figsize=(14, 7), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    experiments = outcome.experiments()
    heading = title or "loopdeck progress"
    kept_count = sum(row.status == "keep" for row in experiments)
    ax.set_title(f"{heading}: {_count(len(experiments), 'experiment')}, "
                 f"{_count(kept_count, 'kept improvement')}", fontsize=14)
    ax.set_xlabel("experiment #", fontsize=12)
    better = "lower" if outcome.minimize else "higher"
    ax.set_ylabel(f"{metric_name} ({better} is better)", fontsize=12)
    ax.grid(True, alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    low, high = _y_window(outcome)
    if low is None:
        ax.text(0.5, 0.5, "no experiment has produced a metric yet", transform=ax.transAxes, ha="center",
                va="center", fontsize=13, color="#666666")
    else:
        ax.set_ylim(low, high)
        worse_edge = high if outcome.minimize else low
        inside = [row for row in outcome.discarded if low <= row.metric <= high]
        beyond = [row for row in outcome.discarded if not low <= row.metric <= high]
        ax.scatter([r.id for r in inside], [r.metric for r in inside], s=14, c="#b0b0b0", alpha=0.6, zorder=2,
                   label="discarded")
        if beyond:
            ax.scatter([r.id for r in beyond], [worse_edge] * len(beyond), s=22, c="#b0b0b0",
                       marker="^" if outcome.minimize else "v", zorder=2, clip_on=False,
                       label="discarded, off the chart")
        ids, best = _running_best(outcome)
        ax.step(ids, best, where="post", color="#27ae60", linewidth=2, alpha=0.75, zorder=3, label="running best")
        ax.scatter([r.id for r in outcome.kept], [r.metric for r in outcome.kept], s=55, c="#2ecc71",
                   edgecolors="black", linewidths=0.6, zorder=4, label="kept")
        for row in outcome.kept:
            ax.annotate(_shorten(row.description or ("baseline" if row.is_baseline else f"#{row.id}")),
                        (row.id, row.metric), textcoords="offset points", xytext=(6, 6), fontsize=8,
                        color="#1a7a3a", rotation=30, ha="left", va="bottom", zorder=5)
    # Failures have no metric (a rejected run's printed one decides nothing): they sit on the worse edge, so a run
    # of failures still shows and never looks like progress.
    worse = blended_transform_factory(ax.transData, ax.transAxes)
    edge = 0.98 if outcome.minimize else 0.02
    for rows, marker, colour, label in ((outcome.crashed, "x", "#e74c3c", "crashed"),
                                        (outcome.rejected, "D", "#e67e22", "rejected")):
        if rows:
            ax.scatter([r.id for r in rows], [edge] * len(rows), transform=worse, marker=marker, s=30, c=colour,
                       zorder=4, label=label, clip_on=False)
    if outcome.rows:
        ax.set_xlim(min(r.id for r in outcome.rows) - 0.5, max(r.id for r in outcome.rows) + 1.5)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left" if outcome.minimize else "upper left", fontsize=9)
    return fig


def _holdout_rows(outcome: _Outcome) -> list[ExperimentRow]:
    """Rows scored on the holdout split, when the baseline was too (the gains are measured from it)."""
    base = outcome.baseline
    if base is None or base.holdout_metric is None or base.holdout_val_metric is None:
        return []
    return [row for row in outcome.rows if row.holdout_metric is not None and row.holdout_val_metric is not None]


def _gains(outcome: _Outcome, row: ExperimentRow) -> tuple[float, float]:
    """(validation gain, holdout gain) of `row`'s weights since the baseline's, positive = better."""
    base = outcome.baseline
    assert base is not None and base.holdout_metric is not None and base.holdout_val_metric is not None
    assert row.holdout_metric is not None and row.holdout_val_metric is not None
    sign = -1.0 if outcome.minimize else 1.0
    return sign * (row.holdout_val_metric - base.holdout_val_metric), sign * (row.holdout_metric - base.holdout_metric)


def _draw_transfer(outcome: _Outcome, path: Path, *, metric_name: str) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = _holdout_rows(outcome)
    gains = [_gains(outcome, row) for row in rows]
    fig = Figure(figsize=(10, 5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("transfer: gains since the baseline, validation vs holdout", fontsize=13)
    ax.set_xlabel("experiment # (incumbent when scored)", fontsize=11)
    ax.set_ylabel(f"{metric_name} gain since the baseline (higher is better)", fontsize=11)
    ax.grid(True, alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ids = [row.id for row in rows]
    ax.plot(ids, [v for v, _ in gains], marker="o", color="#2980b9", label="validation (used to keep)")
    ax.plot(ids, [h for _, h in gains], marker="s", color="#8e44ad", label="holdout (never used)")
    ax.axhline(0.0, color="#999999", linewidth=0.8)
    ax.legend(loc="upper left", fontsize=9)
    fig.savefig(path, format="png")


def _y_window(outcome: _Outcome) -> tuple[float | None, float | None]:
    """The interesting band: from just beyond the best to just beyond the baseline, as autoresearch's chart does;
    discarded runs far worse than the baseline are pinned to the edge instead of squashing the band."""
    anchors = [row.metric for row in outcome.kept]
    if not anchors:
        anchors = [row.metric for row in outcome.discarded]
    if not anchors:
        return None, None
    low, high = min(anchors), max(anchors)
    reach = (high - low) or 0.05 * abs(high) or 0.05
    near = [row.metric for row in outcome.discarded if low - reach <= row.metric <= high + reach]
    low, high = min([low, *near]), max([high, *near])
    pad = 0.12 * (high - low) or 0.01 * abs(high) or 0.01
    return low - pad, high + pad


def _running_best(outcome: _Outcome) -> tuple[list[int], list[float]]:
    better: Callable[[float, float], bool] = (lambda a, b: a < b) if outcome.minimize else (lambda a, b: a > b)
    ids: list[int] = []
    best: list[float] = []
    for row in outcome.kept:
        current = row.metric if not best or better(row.metric, best[-1]) else best[-1]
        ids.append(row.id)
        best.append(current)
    last = max(row.id for row in outcome.rows)
    if ids and last > ids[-1]:  # the line holds its level up to the last experiment, and stops there
        ids.append(last)
        best.append(best[-1])
    return ids, best


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ANNOTATION_CHARS else text[: ANNOTATION_CHARS - 1] + "…"


# --- summary ------------------------------------------------------------------------------------------------------


def integrity_cost(runs: Sequence[RunRow], kept: int) -> str:
    """What the extra runs cost: noise and confirmation runs (with incumbent re-runs), their training time, and
    the confirmation time per kept experiment ("" without extra runs)."""
    if not runs:
        return ""
    seconds = {role: sum(r.training_seconds or 0.0 for r in runs if r.role == role)
               for role in ("noise", "confirm", "incumbent")}
    counts = {role: sum(r.role == role for r in runs) for role in seconds}
    confirming = seconds["confirm"] + seconds["incumbent"]
    text = (f"{_count(counts['noise'], 'noise run')} ({seconds['noise']:.0f} s of training), "
            f"{_count(counts['confirm'] + counts['incumbent'], 'confirmation run')} ({confirming:.0f} s)")
    if kept:
        text += f"; confirmation per kept experiment: {confirming / kept:.0f} s"
    return text


def _summary_markdown(outcome: _Outcome, *, metric_name: str, title: str, chart: str,
                      runs: Sequence[RunRow] = ()) -> str:
    lines = [f"# {title or 'loopdeck report'}", ""]
    if not outcome.rows:
        return "\n".join([*lines, "No experiments yet.", ""])
    baseline, best = outcome.baseline, outcome.best
    experiments = outcome.experiments()
    kept_count = sum(row.status == "keep" for row in experiments)
    facts = [
        ("metric", f"{metric_name}, {'lower' if outcome.minimize else 'higher'} is better"),
        ("baseline", _metric_with_id(baseline)),
        ("best", _metric_with_id(best) + (f": {cell(best.description)}" if best and not best.is_baseline else "")),
    ]
    improvement = outcome.improvement()
    if improvement is not None and baseline is not None and baseline.metric:
        share = 100 * improvement / abs(baseline.metric)
        facts.append(("improvement", f"{fixed(improvement, 6)} ({fixed(share, 2)}%)"))
    facts.append(("kept", f"{kept_count}/{_count(len(experiments), 'experiment')} (baseline not counted)"))
    crashed, rejected, failed_baselines = _failures(outcome)
    # Each count is the number of rows of its table below: a failed baseline run is not an experiment.
    facts.append(("crashed", str(len(crashed))))
    if rejected:
        facts.append(("rejected", f"{len(rejected)} (ran, then refused)"))
    if failed_baselines:
        facts.append(("failed baseline runs", str(len(failed_baselines))))
    if outcome.not_run:
        facts.append(("not run", f"{len(outcome.not_run)} (rejected by the guard, vetoed, or in flight)"))
    if baseline is not None and baseline.noise_std is not None:
        facts.append(("noise", f"run-to-run σ {baseline.noise_std:.6f} ({baseline.metric_runs} baseline seeds); "
                      "gains within the noise were re-run before they were kept"))
    cost = integrity_cost(runs, kept_count)
    if cost:
        facts.append(("integrity runs", cost))
    usage = _usage(outcome.rows)
    if usage:
        facts.append(("agent usage", usage))
    lines += ["| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in facts), ""]
    lines += [f"![progress]({chart})", ""]

    lines += ["## Kept experiments", "", "| # | metric | delta | description |", "|---:|---:|---:|---|"]
    lines += [f"| {r.id} | {r.metric:.6f} | {signed(r.delta)} | {cell(r.description)} |" for r in outcome.kept]
    lines.append("")

    if outcome.discarded:
        misses = sorted(outcome.discarded, key=lambda r: _closeness(r, outcome.minimize))[:NEAR_MISSES]
        lines += ["## Near misses", "", "The discarded experiments that came closest to the incumbent.", "",
                  "| # | metric | delta | description |", "|---:|---:|---:|---|"]
        lines += [f"| {r.id} | {r.metric:.6f} | {signed(r.delta)} | {cell(r.description)} |" for r in misses]
        lines.append("")

    lines += _failure_sections(crashed, rejected, failed_baselines)
    lines += _holdout_section(outcome)
    return "\n".join(lines)


def _failures(outcome: _Outcome) -> tuple[list[ExperimentRow], list[ExperimentRow], list[ExperimentRow]]:
    """(crashed experiments, rejected experiments, failed baseline runs): the rows of the three failure tables."""
    failed_baselines = sorted((row for row in outcome.crashed + outcome.rejected if row.is_baseline),
                              key=lambda row: row.id)
    return ([row for row in outcome.crashed if not row.is_baseline],
            [row for row in outcome.rejected if not row.is_baseline], failed_baselines)


def _failure_sections(crashed: list[ExperimentRow], rejected: list[ExperimentRow],
                      failed_baselines: list[ExperimentRow]) -> list[str]:
    lines: list[str] = []
    if crashed:
        lines += ["## Crashes", "", "| # | status | reason | description |", "|---:|---|---|---|"]
        lines += [f"| {r.id} | {r.status} | {cell(r.reason)} | {cell(r.description)} |" for r in crashed]
        lines.append("")
    if rejected:
        lines += ["## Rejected", "", "Runs that finished and were then refused; the metric is the one they printed.",
                  "", "| # | printed metric | reason | description |", "|---:|---:|---|---|"]
        lines += [f"| {r.id} | {number(shown_metric(r))} | {cell(r.reason)} | {cell(r.description)} |"
                  for r in rejected]
        lines.append("")
    if failed_baselines:
        lines += ["## Failed baseline runs", "", "Runs of the unchanged code that gave no baseline; the next "
                  "baseline run was measured instead.", "", "| # | status | printed metric | reason |",
                  "|---:|---|---:|---|"]
        lines += [f"| {r.id} | {r.status} | {number(shown_metric(r))} | {cell(r.reason)} |"
                  for r in failed_baselines]
        lines.append("")
    return lines


def _holdout_section(outcome: _Outcome) -> list[str]:
    """The incumbent's holdout scores and how much of each validation gain carried over (none: no section)."""
    holdout = _holdout_rows(outcome)
    if not holdout:
        return []
    lines = ["## Holdout", "", "The incumbent's weights scored on the holdout split, which never decides what is "
             "kept. Transfer = holdout gain / validation gain since the baseline; well below 1, the gains fit "
             "the validation text rather than the task.", "", f"![transfer]({HOLDOUT_CHART})", "",
             "| # | validation | holdout | validation gain | holdout gain | transfer |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in holdout:
        val_gain, holdout_gain = _gains(outcome, row)
        if row is outcome.baseline:
            lines.append(f"| {row.id} | {row.holdout_val_metric:.6f} | {row.holdout_metric:.6f} | - | - | - |")
            continue
        transfer = f"{holdout_gain / val_gain:.0%}" if val_gain > 0 else "-"
        lines.append(f"| {row.id} | {row.holdout_val_metric:.6f} | {row.holdout_metric:.6f} | "
                     f"{val_gain:+.6f} | {holdout_gain:+.6f} | {transfer} |")
    lines.append("")
    return lines


def _closeness(row: ExperimentRow, minimize: bool) -> float:
    """How far a discarded run fell short of the incumbent it was measured against (smaller = nearer)."""
    if row.delta is None:
        return float("inf")
    return row.delta if minimize else -row.delta


def _usage(rows: list[ExperimentRow]) -> str:
    totals = {
        "input": sum(r.input_tokens for r in rows),
        "output": sum(r.output_tokens for r in rows),
        "cache write": sum(r.cache_write_tokens for r in rows),
        "cache read": sum(r.cache_read_tokens for r in rows),
    }
    cost = sum(r.cost_usd for r in rows)
    if not any(totals.values()) and not cost:
        return ""
    tokens = ", ".join(f"{count:,} {name}" for name, count in totals.items() if count)
    return f"{tokens} tokens; ${cost:.2f} (estimate)" if cost else f"{tokens} tokens"


def _metric_with_id(row: ExperimentRow | None) -> str:
    return "-" if row is None or row.metric is None else f"{row.metric:.6f} (#{row.id})"


def _count(amount: int, noun: str) -> str:
    return f"{amount} {noun}" if amount == 1 else f"{amount} {noun}s"
