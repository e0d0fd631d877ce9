"""The budget, checked from outside: did a run stop at its budget, allowing for the step that crosses it?

A training loop checks its clock between steps, so its last step may cross the budget by up to one step's
duration (autoresearch finishes the step that crosses it, by design). The check therefore compares the training
time *before* the last step with the budget: from the metrics stream when there is one, else the reported
`training_seconds` less the last step's duration read from the progress lines (autoresearch's `dt: 312ms`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from loopdeck.engine.run.executor import METRICS_FILE, RunResult
from loopdeck.engine.run.metrics import read_steps, summary_numbers

# A target with its own stopping rule gets 10% of the budget plus a second of slack past its last whole step.
TRAINING_OVERRUN = 0.1
TRAINING_SLACK_SECONDS = 1.0
# autoresearch's progress line: `step 00012 (40.0%) | loss: 3.1 | dt: 312ms | … | remaining: 2s`
_STEP_DURATION = re.compile(r"\bdt:\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\b")


@dataclass(frozen=True)
class BudgetCheck:
    budget: float  # training seconds
    allowance: float  # wall seconds a run may take beyond its budget (start-up, compilation, evaluation)
    where: str  # where the target takes its budget from (LOOPDECK_TIME_BUDGET, TIME_BUDGET in prepare.py, …)
    wall_budget: float | None = None  # wall seconds the training may take; more than `budget` on the process clock

    def problem(self, result: RunResult, run_dir: Path) -> str:
        """Why the run is over its budget; "" when it is not."""
        budget, advice = self.budget, f"the training must stop at its budget ({self.where})"
        wall_budget = self.wall_budget or budget
        if result.wall_seconds > wall_budget + self.allowance:
            stretched = f" (at most {wall_budget:g} s of wall time on the process clock)" if wall_budget > budget else ""
            return (f"over budget: ran {result.wall_seconds:.1f} s (measured by loopdeck) for a {budget:g} s budget"
                    f"{stretched} plus a {self.allowance:.0f} s start-up allowance; {advice}")
        limit = budget * (1 + TRAINING_OVERRUN) + TRAINING_SLACK_SECONDS
        steps = [step.elapsed_seconds for step in read_steps(run_dir / METRICS_FILE)][-2:]
        if len(steps) == 2:
            if steps[0] > limit:
                return (f"over budget: the run went on training after its {budget:g} s budget (it had trained "
                        f"{steps[0]:.1f} s before its last step); {advice}")
            return ""
        trained = reported_seconds(result)
        if trained is None:
            return ""
        last_step = last_step_seconds(result.read_log())
        before_last = trained - (last_step or 0.0)
        if before_last > limit:
            shown = f" ({before_last:.1f} s before its last step of {last_step:.1f} s)" if last_step else ""
            return (f"over budget: the run reports {trained:.1f} s of training{shown} for a {budget:g} s budget; "
                    f"{advice}")
        return ""


def last_step_seconds(log: str) -> float | None:
    """The duration of the last step a run's progress lines report (`dt: 312ms` or `dt: 0.3s`), or None."""
    durations = _STEP_DURATION.findall(log)
    if not durations:
        return None
    value, unit = durations[-1]
    return float(value) / 1000 if unit == "ms" else float(value)


def reported_seconds(result: RunResult) -> float | None:
    """The training seconds a run's summary block reports (None: none, or a negative number)."""
    value = summary_numbers(result.summary).get("training_seconds")
    return value if value is not None and value >= 0 else None
