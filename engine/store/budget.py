"""`--budget` on a repository that keeps its budget in its own code: set the constant by a loopdeck commit.

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


def budget_constant(workspace: Path, experiment: ExperimentSettings, seconds: float) -> BudgetConstant | None:
    """The constant to set for a command-line budget on a repo without a loopdeck.toml: None when no commit is
    needed (the target reads LOOPDECK_TIME_BUDGET); LoopdeckError when the budget cannot take effect."""
    files = [*experiment.editable, *experiment.protected]
    if (workspace / CONFIG_FILE).exists() or reads_variable(workspace, files, BUDGET_VARIABLE):
        return None
    constant = find_budget_constant(workspace, files)
    if constant is None:
        raise LoopdeckError(f"--budget {seconds:g} cannot take effect on {workspace}: its files ({', '.join(files)}) "
                            f"neither read {BUDGET_VARIABLE} nor define a module-level `{BUDGET_CONSTANT} = "
                            "<number>`; change the budget where the training code keeps it and run without --budget")
    return constant


def set_budget(repo: ResearchRepo, constant: BudgetConstant, seconds: float, *, resumed: bool) -> list[str]:
    """Commit `TIME_BUDGET = seconds` on the checked-out research branch (nothing when it already says so); the
    notes for the start of the session. A resumed branch keeps the budget its experiments were measured with."""
    path = repo.path / constant.file
    current = find_budget_constant(repo.path, [constant.file])  # the research branch may differ from the user's
    if current is None:
        raise LoopdeckError(f"{constant.file} on {repo.current_branch()} has no module-level `{BUDGET_CONSTANT} = "
                            "<number>`: --budget cannot take effect there")
    if current.value == seconds:
        return []
    if resumed:
        raise LoopdeckError(f"{repo.current_branch()} measured its experiments with {BUDGET_CONSTANT} = "
                            f"{current.value:g} in {constant.file}: resume it without --budget, or start a new "
                            f"research branch (--tag NAME) for a {seconds:g} s budget")
    text = rewrite_constant(path.read_bytes(), current, seconds)
    commit = repo.commit_files({constant.file: text}, f"loopdeck: {BUDGET_CONSTANT} = {seconds:g} in "
                               f"{constant.file} (--budget {seconds:g}; was {current.value:g})")
    return [f"budget: {BUDGET_CONSTANT} = {seconds:g} set in {constant.file} by loopdeck commit {commit[:8]} on "
            f"{repo.current_branch()} (was {current.value:g}); {constant.file} is hashed after it, so it stays "
            "protected"]


def rewrite_constant(source: bytes, constant: BudgetConstant, seconds: float) -> str:
    """The file's text with the constant's number replaced and every other byte kept."""
    lines = source.split(b"\n")
    line = lines[constant.line - 1]
    number = f"{int(seconds)}" if seconds == int(seconds) else repr(seconds)
    lines[constant.line - 1] = line[:constant.start] + number.encode() + line[constant.end:]
    return b"\n".join(lines).decode("utf-8")
