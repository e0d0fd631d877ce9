"""One git worktree per in-flight experiment: `.loopdeck/worktrees/<n>`, on branch `loopdeck/<tag>.exp-<n>`.

Experiments that run at once (engine/research/parallel.py) each get their own checkout of the research branch at
the incumbent commit they branched from, so no run ever touches the user's working tree or another run's files.
The per-experiment branch makes a worktree a research branch like any other (the loop's commits and resets work
there unchanged); both are removed when the experiment is recorded, and `remove_all` clears whatever a dead
engine left behind. `bundle` packs a commit for a node that does not share this disk (a git bundle, read back by
the Ray executor on that node).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path

from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import BRANCH_PREFIX

WORKTREES_DIR = "worktrees"
_EXPERIMENT_BRANCH = ".exp-"


class Worktrees:
    """The worktrees of the research branch `branch` in the repository at `repo_path`."""

    def __init__(self, repo_path: Path, branch: str) -> None:
        self.repo_path = Path(repo_path)
        self.root = self.repo_path / STATE_DIR / WORKTREES_DIR
        self.branch = branch
        # git's worktree bookkeeping is not safe against itself: a prune while another worktree is being added can
        # drop the new one's record, so adds and removes of one repository take turns.
        self._lock = threading.Lock()

    def path(self, number: int) -> Path:
        return self.root / str(number)

    def branch_of(self, number: int) -> str:
        return f"{self.branch}{_EXPERIMENT_BRANCH}{number}"

    def add(self, number: int, commit: str) -> Path:
        """A fresh checkout of `commit` for experiment `number` (any leftover of that number is replaced)."""
        with self._lock:
            self._remove(number)
            self.root.mkdir(parents=True, exist_ok=True)
            where = self.path(number)
            _git(self.repo_path, "worktree", "add", "-q", "-f", "-B", self.branch_of(number), str(where), commit)
        return where

    def remove(self, number: int) -> None:
        """Remove experiment `number`'s worktree and branch, if they exist."""
        with self._lock:
            self._remove(number)

    def _remove(self, number: int) -> None:
        where = self.path(number)
        if where.exists():
            _run(self.repo_path, "worktree", "remove", "--force", "--force", str(where))
            shutil.rmtree(where, ignore_errors=True)
        _run(self.repo_path, "worktree", "prune")
        _run(self.repo_path, "branch", "-q", "-D", self.branch_of(number))

    def leftovers(self) -> list[int]:
        """Experiment numbers that still have a worktree or a branch (a dead engine's)."""
        found_dirs = self.root.glob("*") if self.root.is_dir() else []
        numbers = {int(p.name) for p in found_dirs if p.name.lstrip("-").isdigit()}
        pattern = re.compile(re.escape(self.branch + _EXPERIMENT_BRANCH) + r"(-?\d+)$")
        listed = _run(self.repo_path, "for-each-ref", "--format=%(refname:short)",
                      f"refs/heads/{BRANCH_PREFIX}").stdout.decode().split()
        numbers.update(int(found.group(1)) for name in listed if (found := pattern.match(name)))
        return sorted(numbers)

    def remove_all(self) -> list[int]:
        """Remove every experiment worktree and branch; returns their numbers."""
        numbers = self.leftovers()
        for number in numbers:
            self.remove(number)
        return numbers

    def bundle(self, commit: str) -> bytes:
        """`commit` and its history as a git bundle (everything a node without this repository needs)."""
        ref = f"refs/loopdeck/ship-{uuid.uuid4().hex}"  # a bundle packs refs: a private one, deleted after
        with tempfile.TemporaryDirectory(prefix="loopdeck-bundle-") as scratch:
            target = Path(scratch) / "commit.bundle"
            _git(self.repo_path, "update-ref", ref, commit)
            try:
                _git(self.repo_path, "bundle", "create", "-q", str(target), ref)
            finally:
                _run(self.repo_path, "update-ref", "-d", ref)
            return target.read_bytes()


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True)


def _git(cwd: Path, *args: str) -> None:
    result = _run(cwd, *args)
    if result.returncode != 0:
        error = result.stderr.decode("utf-8", errors="replace").strip()
        raise LoopdeckError(f"git {args[0]} failed in {cwd}: {error}")
