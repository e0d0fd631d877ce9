"""The scratch checkout a CLI works in: a temporary copy of the workspace at the incumbent, never the user's tree.

The copy holds the workspace's tracked files (all files when it is not a git repository), without `.git` and
`.loopdeck`, with the editable files replaced by the incumbent's contents from the turn (the tree may hold a
running experiment's change while a draft is made). After the CLI ran, `changes` reads back what it did.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

SKIPPED_DIRS = frozenset({".git", ".loopdeck"})


@dataclass(frozen=True)
class ScratchChanges:
    """The editable files the CLI changed (path -> new content) and the other files it touched (ignored)."""

    files: dict[str, str]
    ignored: tuple[str, ...]


class ScratchCheckout:
    """A temporary directory with the incumbent's files; `remove()` deletes it."""

    def __init__(self, workspace: Path, incumbent: Mapping[str, str]) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="loopdeck-cli-agent-"))
        self._incumbent = dict(incumbent)
        try:
            for relative in _workspace_files(workspace):
                target = self.path / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(workspace / relative, target)
            for relative, content in self._incumbent.items():
                target = self.path / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content, encoding="utf-8")
            self._before = _digests(self.path)
        except BaseException:
            self.remove()
            raise

    def changes(self) -> ScratchChanges:
        """What differs from the copy as made: editable files as new contents, everything else by name."""
        after = _digests(self.path)
        touched = sorted(path for path in set(self._before) | set(after) if self._before.get(path) != after.get(path))
        files: dict[str, str] = {}
        ignored: list[str] = []
        for relative in touched:
            if relative in self._incumbent and relative in after:
                content = (self.path / relative).read_text(encoding="utf-8", errors="replace")
                if content != self._incumbent[relative]:
                    files[relative] = content
            else:
                ignored.append(relative)
        return ScratchChanges(files=files, ignored=tuple(ignored))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _workspace_files(workspace: Path) -> list[str]:
    """The workspace's tracked files (relative, posix), or every file outside .git/.loopdeck without git."""
    result = subprocess.run(["git", "-C", str(workspace), "ls-files", "-z"], capture_output=True, check=False)
    if result.returncode == 0:
        names = [name for name in result.stdout.decode("utf-8", errors="replace").split("\0") if name]
        return [name for name in names if (workspace / name).is_file()]
    return sorted(path for path in _walk(workspace, workspace))


def _walk(root: Path, directory: Path) -> Iterator[str]:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if entry.name not in SKIPPED_DIRS:
                yield from _walk(root, entry)
        elif entry.is_file():
            yield entry.relative_to(root).as_posix()


def _digests(root: Path) -> dict[str, str]:
    return {relative: hashlib.sha256((root / relative).read_bytes()).hexdigest() for relative in _walk(root, root)}
