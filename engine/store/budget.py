"""`--budget` on a repository that keeps its budget in its own code: set the constant by a loopdeck commit; and the
budget clock of a resumed ledger.

An autoresearch repository never reads LOOPDECK_TIME_BUDGET: its budget is `TIME_BUDGET = 300` in the protected
prepare.py. A budget given on the command line takes effect through one commit on the research branch that sets
that constant, made before the protected files are hashed, so the protection holds and the change is in the
history. Where the budget lives nowhere loopdeck can set it, the session is refused before anything runs.
"""

from __future__ import annotations

from pathlib import Path

from loopdeck.engine.config import (
    BUDGET_CONSTANT,
    BUDGET_VARIABLE,
    CONFIG_FILE,
    BudgetConstant,
    ExperimentSettings,
    find_budget_constant,
    reads_variable,
)
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.ledger import LEDGER_FILE, Ledger
from loopdeck.engine.store.results_tsv import RESULTS_FILE


def budget_constant(workspace: Path, experiment: ExperimentSettings, seconds: float | None) -> BudgetConstant | None:
    """Where the budget of a repo without a loopdeck.toml lives when it is a constant loopdeck must follow or set;
    None when there is none or the target reads LOOPDECK_TIME_BUDGET. LoopdeckError when a command-line budget
    (`seconds`) cannot take effect."""
    files = [*experiment.editable, *experiment.protected]
    if (workspace / CONFIG_FILE).exists() or reads_variable(workspace, files, BUDGET_VARIABLE):
        return None
    constant = find_budget_constant(workspace, files)
    if constant is None and seconds is not None:
        raise LoopdeckError(f"--budget {seconds:g} cannot take effect on {workspace}: its files ({', '.join(files)}) "
                            f"neither read {BUDGET_VARIABLE} nor define a module-level `{BUDGET_CONSTANT} = "
                            "<number>`; change the budget where the training code keeps it and run without --budget")
    return constant


def budget_in_force(repo: ResearchRepo, constant: BudgetConstant, seconds: float | None, *,
                    resumed: bool) -> tuple[float, list[str]]:
    """The budget on the checked-out research branch, and the notes for the start of the session.

    With a command-line budget (`seconds`), a commit sets `TIME_BUDGET = seconds` (nothing when it already says
    so); a resumed branch keeps the budget its experiments were measured with. Without one, the branch's own
    constant decides: an earlier --budget may have set it there."""
    branch = repo.current_branch()
    current = find_budget_constant(repo.path, [constant.file])  # the research branch may differ from the user's
    if current is None:
        if seconds is None:
            return constant.value, []
        raise LoopdeckError(f"{constant.file} on {branch} has no module-level `{BUDGET_CONSTANT} = <number>`: "
                            "--budget cannot take effect there")
    if seconds is None or current.value == seconds:
        notes = [] if current.value == constant.value else [
            f"budget: {current.value:g} s ({current.describe()} on {branch}, set by an earlier --budget)"]
        return current.value, notes
    if resumed:
        raise LoopdeckError(f"{branch} measured its experiments with {BUDGET_CONSTANT} = {current.value:g} in "
                            f"{constant.file}: resume it without --budget, or start a new research branch "
                            f"(--tag NAME) for a {seconds:g} s budget")
    text = rewrite_constant((repo.path / constant.file).read_bytes(), current, seconds)
    commit = repo.commit_files({constant.file: text}, f"loopdeck: {BUDGET_CONSTANT} = {seconds:g} in "
                               f"{constant.file} (--budget {seconds:g}; was {current.value:g})")
    return seconds, [f"budget: {BUDGET_CONSTANT} = {seconds:g} set in {constant.file} by loopdeck commit "
                     f"{commit[:8]} on {branch} (was {current.value:g}); {constant.file} is hashed after it, so "
                     "it stays protected"]


def rewrite_constant(source: bytes, constant: BudgetConstant, seconds: float) -> str:
    """The file's text with the constant's number replaced and every other byte kept."""
    lines = source.split(b"\n")
    line = lines[constant.line - 1]
    number = f"{int(seconds)}" if seconds == int(seconds) else repr(seconds)
    lines[constant.line - 1] = line[:constant.start] + number.encode() + line[constant.end:]
    return b"\n".join(lines).decode("utf-8")


def check_budget_clock(ledger: Ledger, clock: str) -> None:
    """Refuse a session whose runs would be timed on another budget clock than its incumbent's: the same code
    scores differently on the two (steps bought by the wall clock depend on the machine's load), so comparing
    them would keep or discard changes for the clock's sake."""
    incumbent = ledger.incumbent()
    if incumbent is None or incumbent.budget_clock == clock:
        return
    raise LoopdeckError(
        f"the incumbent (#{incumbent.id}) was measured on the {incumbent.budget_clock} budget clock, this session "
        f'would time runs on the {clock} clock: set budget_clock = "{incumbent.budget_clock}" in [experiment] of '
        f"{CONFIG_FILE}, or move {LEDGER_FILE} and {RESULTS_FILE} out of {ledger.state_dir} to start a new "
        "baseline")
