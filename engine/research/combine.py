"""Combine mode's candidate: the changes of near-miss experiments applied together onto the incumbent, three-way."""

from __future__ import annotations

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
            if base[path] == other[path]:
                continue
            merged = repo.merge_file(files[path], base[path], other[path])
            if merged is None:
                return None
            files[path] = merged
    return {path: text for path, text in files.items() if text != incumbent_files[path]}
