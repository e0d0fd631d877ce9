"""The guard: refuses an agent's proposal that reaches outside the editable files or cannot run.

`check_proposal` returns the paths a proposal really changes, or raises `GuardRejection` whose `reason` is one
readable line; it goes back to the agent as feedback and to the console, and is recorded in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from engine.config import STATE_DIR
from engine.workspace import file_hashes

MAX_FILE_BYTES = 1_000_000


class GuardRejection(Exception):
    """A refused proposal; `reason` is one readable line for the agent and the console."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_proposal(files: Mapping[str, str], *, workspace: Path, editable: Iterable[str],
                   protected_hashes: Mapping[str, str], incumbent: Mapping[str, str] | None = None) -> list[str]:
    """Return the sorted paths the proposal really changes, or raise GuardRejection with the reason.

    `incumbent` holds the current contents of the editable files; when omitted they are read from the workspace
    (which then must be at the incumbent commit).
    """
    workspace = Path(workspace)
    editable = tuple(editable)
    for name in files:
        _check_path(name, workspace, editable)
    _check_protected(workspace, protected_hashes)
    changed = []
    for name, content in files.items():
        before = incumbent.get(name) if incumbent is not None else _read(workspace / name)
        if content != before:
            _check_content(name, content)
            changed.append(name)
    if not changed:
        raise GuardRejection("no change: the proposal leaves every file exactly as it is")
    return sorted(changed)


def _check_path(name: object, workspace: Path, editable: tuple[str, ...]) -> None:
    if not isinstance(name, str) or not name:
        raise GuardRejection(f"refused path {name!r}: expected a relative file path such as 'train.py'")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        raise GuardRejection(f"refused path {name!r}: absolute paths are not allowed; use a path relative to "
                             "the workspace such as 'train.py'")
    if ".." in parts:
        raise GuardRejection(f"refused path {name!r}: '..' would leave the workspace")
    if parts[0] == ".git":
        raise GuardRejection(f"refused path {name!r}: the .git directory is off limits")
    if parts[0] == STATE_DIR:
        raise GuardRejection(f"refused path {name!r}: {STATE_DIR}/ holds loopdeck's own state and is off limits")
    if name not in editable:
        raise GuardRejection(f"refused path {name!r}: not an editable file (editable: {', '.join(editable)})")
    # Writing follows symlinks, so an editable name must not lead to another file, inside or out.
    root = workspace.resolve()
    resolved = (workspace / name).resolve()
    if resolved != root / name:
        if root not in resolved.parents:
            raise GuardRejection(f"refused path {name!r}: it is a symlink pointing outside the workspace")
        inside = resolved.relative_to(root).as_posix()
        if inside not in editable:
            raise GuardRejection(f"refused path {name!r}: it is a symlink to {inside}, which is not editable")


def _check_protected(workspace: Path, protected_hashes: Mapping[str, str]) -> None:
    for name, expected in protected_hashes.items():
        if not (workspace / name).is_file():
            raise GuardRejection(f"protected file {name} is missing: restore it before the next run")
        if file_hashes(workspace, [name])[name] != expected:
            raise GuardRejection(f"protected file {name} was modified since the session started: restore it "
                                 "(git checkout) before the next run")


def _check_content(name: str, content: object) -> None:
    if not isinstance(content, str):
        raise GuardRejection(f"refused {name}: binary content; files must be UTF-8 text")
    if "\x00" in content:
        raise GuardRejection(f"refused {name}: contains NUL bytes; files must be text")
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError:
        raise GuardRejection(f"refused {name}: not valid UTF-8 text") from None
    if size > MAX_FILE_BYTES:
        raise GuardRejection(f"refused {name}: {size:,} bytes is over the {MAX_FILE_BYTES:,}-byte limit")
    if name.endswith(".py"):
        try:
            compile(content, name, "exec", dont_inherit=True)
        except SyntaxError as exc:
            where = f"{name}:{exc.lineno}" if exc.lineno else name
            raise GuardRejection(f"refused {name}: does not compile: {where}: {type(exc).__name__}: "
                                 f"{exc.msg}") from None
        except (ValueError, RecursionError, MemoryError) as exc:
            raise GuardRejection(f"refused {name}: does not compile: {type(exc).__name__}: {exc}") from None


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
