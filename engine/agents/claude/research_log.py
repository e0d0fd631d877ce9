"""The research log as the API agents read it: the planner's mode for the turn, and the log's entries on demand.

The opening message states the turn's mode and why (and, for combine, the near-misses' merged change); the
`research_log` tool answers "what was tried on this code, which way, with what result" from the structured log
(idea, region, direction, outcome, delta ± band) instead of the model re-reading the whole history, and checks
the turn's edits for a repeat of an idea already tried against the incumbent.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from loopdeck.engine.agents.base import AgentTurn, ExperimentSummary
from loopdeck.engine.agents.regions import Touch, repeat_of, touched

LOG_ENTRIES = 60  # newest entries a research_log answer lists
COMBINED_DIFF_CHARS = 6000
MODE_GUIDE = {
    "explore": "Try a direction the recent experiments have not touched (another part of the code or another "
               "hyperparameter family); use research_log to see what was tried.",
    "exploit": "Refine the incumbent's last kept change: push the same code further in the direction that gained.",
    "combine": "Apply the near-misses' changes together (the merged change is below); keep the combination as is "
               "unless it needs a small fix to run.",
    "ablate": "Simplify: remove or undo one kept change that may not be pulling its weight.",
}


def mode_section(turn: AgentTurn) -> str:
    """The opening message's section on the planner's mode ("" without a planner)."""
    if not turn.mode:
        return ""
    lines = [f"\n## Research mode: {turn.mode}", f"{turn.mode_reason}. {MODE_GUIDE.get(turn.mode, '')}".strip()]
    if turn.mode == "combine" and turn.combined:
        lines.append("Near-misses: " + "; ".join(f"#{s.id} {s.description}" for s in turn.near_misses))
        diff = "".join(
            line for path, text in turn.combined.items()
            for line in difflib.unified_diff(turn.files.get(path, "").splitlines(keepends=True),
                                             text.splitlines(keepends=True), f"a/{path}", f"b/{path}"))
        lines.append("Merged change (apply it with edit_file or write_file):\n" + diff[:COMBINED_DIFF_CHARS])
    return "\n".join(lines)


def log_answer(history: Sequence[ExperimentSummary], region: str = "") -> str:
    """The research log, newest last; `region` keeps the entries whose region contains it (case-insensitive)."""
    wanted = region.strip().lower()
    entries = [s for s in history if not s.baseline and s.region
               and (not wanted or any(wanted in name.lower() for name in s.region))]
    if not entries:
        return f"No experiment touched {region!r} yet." if wanted else "The research log is empty so far."
    shown = entries[-LOG_ENTRIES:]
    head = f"{len(entries)} experiments{f' touching {region!r}' if wanted else ''}"
    lines = [head + (f" (the newest {len(shown)})" if len(shown) < len(entries) else "") + ":"]
    lines.extend(_entry(summary) for summary in shown)
    return "\n".join(lines)


def repeat_check(turn_files: Mapping[str, str], changed: Mapping[str, str], history: Sequence[ExperimentSummary],
                 incumbent: ExperimentSummary | None) -> tuple[Touch, ExperimentSummary | None]:
    """What the turn's edits touch, and the earlier experiment they repeat (None: a new idea)."""
    touch = touched(turn_files, {**turn_files, **changed})
    return touch, repeat_of(touch, history, incumbent.id if incumbent is not None else None)


def _entry(summary: ExperimentSummary) -> str:
    touch = Touch(summary.region, dict(summary.signs))
    delta = "" if summary.delta is None else f" {summary.delta:+.4f}"
    band = "" if summary.delta_band is None else f" ±{summary.delta_band:.4f}"
    extras = [f"mode {summary.mode}"] if summary.mode else []
    if summary.repeat_of is not None:
        extras.append(f"a repeat of #{summary.repeat_of}")
    tail = f" ({', '.join(extras)})" if extras else ""
    return f"#{summary.id} {summary.status}{delta}{band} | {touch.describe()} | {summary.description[:120]}{tail}"
