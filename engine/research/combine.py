"""Combine mode's candidate: the changes of near-miss experiments applied together onto the incumbent, three-way.

The merge is line-based like `git merge-file`, with one difference that matters here: changes to adjacent lines
do not conflict. Near-misses in an autoresearch file are typically two constants of the same hyperparameter
block, one line apart, which git's merge would refuse; a hunk conflicts only when the lines it replaces were
changed on the incumbent's side too.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.ledger import ExperimentRow


def combined_files(repo: ResearchRepo, incumbent_files: Mapping[str, str], rows: Sequence[ExperimentRow]
                   ) -> dict[str, str] | None:
    """The editable files with each row's change (its parent commit → its commit) merged in, in order; None when
    two changes conflict or a row's commit is gone. Only files that end up changed are returned."""
    files = dict(incumbent_files)
    for row in rows:
        try:
            base = repo.read_files(files, at=row.parent_commit)
            other = repo.read_files(files, at=row.commit)
        except LoopdeckError:  # a commit that is no longer reachable (a reset branch, a pruned repo)
            return None
        for path in files:
            if base[path] != other[path]:
                merged = merge_text(files[path], base[path], other[path])
                if merged is None:
                    return None
                files[path] = merged
    return {path: text for path, text in files.items() if text != incumbent_files[path]}


def merge_text(current: str, base: str, other: str) -> str | None:
    """`current` with the change from `base` to `other` applied; None when a changed hunk of `other` overlaps
    lines that `current` changed too."""
    base_lines, current_lines, other_lines = (text.splitlines(keepends=True) for text in (base, current, other))
    # Where each unchanged base line sits in `current`.
    where: dict[int, int] = {}
    for tag, i1, i2, j1, _ in difflib.SequenceMatcher(None, base_lines, current_lines, autojunk=False).get_opcodes():
        if tag == "equal":
            where.update((i1 + k, j1 + k) for k in range(i2 - i1))
    result = list(current_lines)
    hunks = [op for op in difflib.SequenceMatcher(None, base_lines, other_lines, autojunk=False).get_opcodes()
             if op[0] != "equal"]
    for _, i1, i2, j1, j2 in reversed(hunks):  # bottom up, so earlier positions stay valid
        if i2 > i1:
            if any(i not in where for i in range(i1, i2)) or where[i2 - 1] - where[i1] != i2 - 1 - i1:
                return None
            start, end = where[i1], where[i2 - 1] + 1
        else:  # a pure insertion: after the base line before it (or at the top)
            if i1 > 0 and i1 - 1 not in where:
                return None
            start = end = where[i1 - 1] + 1 if i1 > 0 else 0
        result[start:end] = other_lines[j1:j2]
    return "".join(result)
