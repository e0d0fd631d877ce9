"""The guard: refuses an agent's proposal that reaches outside the editable files or cannot run.

`check_proposal` returns the paths a proposal really changes, or raises `GuardRejection` whose `reason` is one
readable line; it goes back to the agent as feedback and to the console, and is recorded in the ledger.
`check_substance` refuses a change that is not an experiment: one that only reseeds, or only touches whitespace,
comments or docstrings (Python files are compared as syntax trees).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.store.workspace import file_hashes

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
    check_protected(workspace, protected_hashes)
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


def check_protected(workspace: Path, protected_hashes: Mapping[str, str]) -> None:
    """GuardRejection when a protected file is missing or changed. Names are workspace-relative, or absolute for
    the installed gpt modules that define the metric (which a training run could overwrite)."""
    for name, expected in protected_hashes.items():
        if Path(name).is_absolute():
            if not Path(name).is_file() or file_hashes(workspace, [name])[name] != expected:
                raise GuardRejection(f"the protected evaluation file {name} changed since the session started (a "
                                     "training run may have written to it): reinstall loopdeck and start a new "
                                     "session")
            continue
        if not (workspace / name).is_file():
            raise GuardRejection(f"protected file {name} is missing: restore it before the next run")
        if file_hashes(workspace, [name])[name] != expected:
            raise GuardRejection(f"protected file {name} was modified since the session started: restore it "
                                 "(git checkout) before the next run")


def check_substance(old: Mapping[str, str], new: Mapping[str, str], *, allow_seed: bool = False,
                    allow_cosmetic: bool = False) -> None:
    """GuardRejection when the change from `old` to `new` (the changed files only) only reseeds, or only touches
    whitespace, comments or docstrings."""
    kinds = {_change_kind(name, old.get(name, ""), text) for name, text in new.items()}
    if kinds == {"cosmetic"} and not allow_cosmetic:
        raise GuardRejection("only whitespace, comments or docstrings change: that is not an experiment (the "
                             "run would measure the same code); [evaluation] allow_cosmetic_changes permits it")
    if kinds <= {"cosmetic", "seed"} and "seed" in kinds and not allow_seed:
        raise GuardRejection("only the random seed changes: a lucky seed is noise, not progress; change the "
                             "model or the training instead ([evaluation] allow_seed_changes permits it)")


def _change_kind(name: str, before: str, after: str) -> str:
    """"cosmetic", "seed" (only seed values differ) or "code"."""
    if not name.endswith(".py"):
        return "cosmetic" if before.split() == after.split() else "code"
    try:
        trees = ast.parse(before), ast.parse(after)
    except (SyntaxError, ValueError):
        return "code"
    if ast.dump(_Unseeded(seeds=False).visit(trees[0])) == ast.dump(_Unseeded(seeds=False).visit(trees[1])):
        return "cosmetic"
    if ast.dump(_Unseeded(seeds=True).visit(trees[0])) == ast.dump(_Unseeded(seeds=True).visit(trees[1])):
        return "seed"
    return "code"


class _Unseeded(ast.NodeTransformer):
    """A syntax tree without docstrings and, with `seeds`, without the values given to seeds: `*SEED* = …`
    assignments and the arguments of calls to `*seed*(…)` functions (torch.manual_seed(42))."""

    def __init__(self, *, seeds: bool) -> None:
        self.seeds = seeds

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
        return super().generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        if self.seeds and any("SEED" in _target_name(target).upper() for target in node.targets):
            node.value = ast.Constant(value="<seed>")
        return self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if self.seeds and node.value is not None and "SEED" in _target_name(node.target).upper():
            node.value = ast.Constant(value="<seed>")
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if self.seeds and "seed" in _target_name(node.func).lower():
            node.args, node.keywords = [], []
        return self.generic_visit(node)


def _target_name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


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
