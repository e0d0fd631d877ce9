"""The part of `loopdeck report` a researcher hands on: the kept chain, what the studies found, the cost, one patch.

`loopdeck report` (research/report.py) adds these sections to summary.md: the kept chain, each change with its
rationale, delta ± band, ablation contribution and transfer result (when measured) and its diff; the latest
ablation and transfer tables; the cost (agent tokens and dollars, accelerator hours) per unit of improvement. It
draws transfer.png from the transfer studies and writes incumbent.patch: the whole incumbent against the baseline.
"""

from __future__ import annotations

from pathlib import Path

from loopdeck.engine.research.ablation import kept_chain
from loopdeck.engine.research.markdown import cell, number, signed
from loopdeck.engine.store.ledger import ExperimentRow, RunRow, StudyRow

TRANSFER_CHART = "transfer.png"
PATCH_FILE = "incumbent.patch"
IMPROVEMENT_UNIT = 0.01  # costs are per this much improvement of the metric


def latest(studies: list[StudyRow], kind: str, incumbent: int) -> list[StudyRow]:
    """The rows of the latest study of `kind` of this incumbent that measured something ([] when none did)."""
    measured = [row.study for row in studies if row.kind == kind and row.incumbent == incumbent
                and row.gain is not None]
    return [row for row in studies if measured and row.study == measured[-1]]


def handover_sections(rows: list[ExperimentRow], studies: list[StudyRow], runs: list[RunRow], *,
                      improvement: float | None, patch: bool) -> list[str]:
    """The Markdown sections (lines) for the kept chain, the studies and the cost."""
    kept = [row for row in rows if row.status == "keep"]
    if not kept:
        return []
    incumbent = kept[-1]
    ablation = {row.change: row for row in latest(studies, "ablation", incumbent.id) if row.change is not None}
    transfers = [row for row in studies if row.kind == "transfer" and row.incumbent == incumbent.id]
    by_change = {row.change: row for row in transfers if row.change is not None}
    lines = _chain_section(kept_chain(rows, incumbent), ablation, by_change, patch)
    lines += _ablation_section(latest(studies, "ablation", incumbent.id))
    lines += _transfer_section(transfers)
    return lines + _cost_section(rows, runs, improvement)


def _chain_section(chain: list[ExperimentRow], ablation: dict[int | None, StudyRow],
                   transfer: dict[int | None, StudyRow], patch: bool) -> list[str]:
    lines = ["## The kept chain", ""]
    if patch:
        lines += [f"The whole incumbent against the baseline, as one patch: [{PATCH_FILE}]({PATCH_FILE}).", ""]
    if not chain:
        return [*lines, "No change was kept.", ""]
    for row in chain:
        lines += [f"### #{row.id} {cell(row.description)}", ""]
        facts = [f"delta {signed(row.delta)}" + (f" ± {row.delta_band:.6f}" if row.delta_band is not None else "")]
        if row.mode:  # the research planner's mode for the turn that found it
            facts.append(f"found in {row.mode} mode" + (f" ({cell(row.mode_reason)})" if row.mode_reason else ""))
        if row.id in ablation:
            found = ablation[row.id]
            facts.append(f"ablation: contributes {signed(found.gain)}{_band(found.band)} ({found.verdict})")
        if row.id in transfer:
            found = transfer[row.id]
            facts.append(f"at {found.scale:g}x: contributes {signed(found.gain)}{_band(found.band)} "
                         f"({found.verdict})")
        lines += ["; ".join(facts), ""]
        if row.rationale.strip():
            lines += [f"> {' '.join(row.rationale.split())}", ""]
        if row.diff.strip():
            lines += ["```diff", row.diff.rstrip("\n"), "```", ""]
    return lines


def _ablation_section(study: list[StudyRow]) -> list[str]:
    changes = [row for row in study if row.change is not None]
    if not changes:
        return []
    lines = ["## Ablation", "", f"Each kept change removed alone from #{study[0].incumbent} and run on "
             f"{len(study[0].seeds)} shared seeds: its contribution (how much worse the incumbent is without it) "
             "± one standard error.", "", "| change | contribution | ± | verdict | note |", "|---|---:|---:|---|---|"]
    lines += [f"| #{row.change} | {signed(row.gain)} | {number(row.band)} | {row.verdict} | {cell(row.detail)} |"
              for row in changes]
    simplified = [row for row in study if row.label == "simplified"]
    if simplified:
        lines += ["", f"Simpler incumbent: {simplified[0].verdict} — {cell(simplified[0].detail)}"]
    return [*lines, ""]


def _transfer_section(transfers: list[StudyRow]) -> list[str]:
    judged = [row for row in transfers if row.verdict]
    if not judged:
        return []
    lines = ["## Scale transfer", "", "The baseline and the incumbent (and, per change, the incumbent without it) run "
             "at a larger budget and model; the noise band is measured there. A gain holds, shrinks or reverses.",
             "", f"![transfer]({TRANSFER_CHART})", "",
             "| study | scale | what | gain (loop) | gain at scale | ± | verdict |", "|---:|---:|---|---:|---:|---:|---|"]
    lines += [f"| {row.study} | {row.scale:g}x | {'#' + str(row.change) if row.change is not None else row.label} "
              f"| {signed(row.reference_gain)} | {signed(row.gain)} | {number(row.band)} | {row.verdict} |"
              for row in judged]
    return [*lines, ""]


def _cost_section(rows: list[ExperimentRow], runs: list[RunRow], improvement: float | None) -> list[str]:
    seconds = sum(row.wall_seconds or 0.0 for row in rows) + sum(run.wall_seconds or 0.0 for run in runs)
    dollars = sum(row.cost_usd for row in rows)
    tokens = sum(row.input_tokens + row.output_tokens + row.cache_write_tokens + row.cache_read_tokens
                 for row in rows)
    hours = seconds / 3600
    facts = [("agent tokens", f"{tokens:,}"), ("agent cost", f"${dollars:.2f}"),
             ("accelerator hours", f"{hours:.3f} (experiments and their extra runs)")]
    if improvement is not None and improvement > 0:
        units = improvement / IMPROVEMENT_UNIT
        facts += [(f"per {IMPROVEMENT_UNIT:g} improvement", f"${dollars / units:.2f}, {hours / units:.3f} "
                   f"accelerator hours, {tokens / units:,.0f} tokens")]
    return ["## Cost", "", "| | |", "|---|---|", *(f"| {name} | {value} |" for name, value in facts), ""]


def draw_transfer(studies: list[StudyRow], path: Path, *, metric_name: str) -> bool:
    """transfer.png: each transfer study's gain at the loop's scale and at its own, ± the band; False (nothing
    drawn) without a transfer study."""
    overall = [row for row in studies if row.kind == "transfer" and row.label == "incumbent" and row.gain is not None]
    if not overall:
        return False
    from matplotlib.figure import Figure  # here: the engine starts without matplotlib

    fig = Figure(figsize=(10, 5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title("scale transfer: the incumbent's gain over the baseline", fontsize=13)
    ax.set_ylabel(f"{metric_name} gain (higher is better)", fontsize=11)
    ax.grid(True, alpha=0.25, axis="y")
    names = [f"study {row.study}\n#{row.incumbent} at {row.scale:g}x" for row in overall]
    spots = range(len(overall))
    ax.bar([i - 0.2 for i in spots], [row.reference_gain or 0.0 for row in overall], width=0.4, color="#2980b9",
           label="at the loop's scale")
    ax.bar([i + 0.2 for i in spots], [row.gain or 0.0 for row in overall], width=0.4, color="#8e44ad",
           yerr=[row.band or 0.0 for row in overall], capsize=4, label="at the larger scale (± band)")
    for i, row in enumerate(overall):
        ax.annotate(row.verdict, (i + 0.2, row.gain or 0.0), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=9)
    ax.set_xticks(list(spots), names)
    ax.axhline(0.0, color="#999999", linewidth=0.8)
    ax.legend(loc="upper left", fontsize=9)
    fig.savefig(path, format="png")
    return True



def _band(value: float | None) -> str:
    return "" if value is None else f" ± {value:.6f}"
