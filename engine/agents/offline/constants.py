"""Tunable constants of a Python training file, found with `ast` and classified by name (the offline agent's knobs).

A knob is a module-level UPPER_CASE constant bound once to a literal: a number (`0.04`, `2**19`, `-1e-3`), an
element of a tuple of numbers (`ADAM_BETAS = (0.8, 0.95)` gives `ADAM_BETAS[0]` and `ADAM_BETAS[1]`), or an
attention window pattern string such as `"SSSL"`. Its kind, read from its name, decides how it moves (`steps`);
`edit` rewrites its literal in place.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

Value = int | float | str

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_WINDOW = re.compile(r"^[SL]+$")
_BETA = re.compile(r"^(BETAS?\d*|MOMENTUM|EMA)$")  # ADAM_BETA2 is a beta as much as ADAM_BETAS[1] is
# Name words that mark a constant as part of the experiment's fixed frame (budget, data, evaluation, logging,
# hardware guard rails) rather than a hyperparameter: changing them would make runs incomparable or pointless.
_FRAME_WORDS = frozenset({
    "BUDGET", "TIME", "SECONDS", "SECS", "MINUTES", "TIMEOUT", "SEED", "SEEDS", "EVAL", "VAL", "VALID", "VALIDATION",
    "TEST", "VOCAB", "SEQ", "SEQUENCE", "CONTEXT", "CTX", "BLOCK", "LOG", "LOGGING", "PRINT", "INTERVAL", "EVERY",
    "FREQ", "FLOPS", "PEAK", "TEMP", "VRAM", "GPU", "PORT", "VERSION", "VERBOSE", "DEBUG", "WORKERS", "THREADS",
    "CHECKPOINT", "CKPT", "SAVE", "STARTUP", "EXCLUDE", "SLEEP", "ITERS", "ITERATIONS", "TOKENS", "SHARD",
    "SHARDS", "DATA",
})
_FRACTION_WORDS = frozenset({"FRAC", "FRACTION", "WARMUP", "WARMDOWN", "COOLDOWN", "DROPOUT"})
_DEPTH_NAMES = frozenset({"DEPTH", "N_LAYER", "N_LAYERS", "NUM_LAYERS", "LAYERS", "N_BLOCKS", "NUM_BLOCKS"})
_WIDTH_WORDS = frozenset({
    "DIM", "EMBD", "EMBED", "EMBEDDING", "WIDTH", "HIDDEN", "ASPECT", "RATIO", "MLP", "EXPANSION", "MULT", "MODEL",
})


@dataclass(frozen=True)
class Knob:
    key: str  # unique across the files: NAME, NAME[i] for a tuple element, path:NAME when two files share NAME
    name: str  # NAME or NAME[i], as a person reads it
    constant: str  # the module-level name itself
    path: str
    kind: str
    value: Value
    text: str  # the literal's source text
    start: int  # character offsets of the literal in the file's text
    end: int
    stmt_end: int  # where the assignment statement ends: a trailing comment after it is kept in its column


def classify(name: str, value: Value) -> str | None:
    """The kind of a constant from its name and value, or None when it is not a knob."""
    words = set(name.split("_"))
    if isinstance(value, str):
        return "window" if _WINDOW.match(value) and ("WINDOW" in words or "PATTERN" in words) else None
    if words & _FRAME_WORDS:
        return None
    fraction_like = isinstance(value, float) and 0.0 <= value <= 1.0
    if words & _FRACTION_WORDS and (fraction_like or value in (0, 1)):
        return "fraction"
    if "LR" in words or name.endswith("LR") or "LEARNING" in words:
        return "lr" if value > 0 else None
    if any(_BETA.match(word) for word in words):
        return "beta" if 0.0 <= value < 1.0 else None
    if "WD" in words or "DECAY" in words:
        return "wd" if value >= 0 else None
    if "SOFTCAP" in words or "CAP" in words:
        return "softcap" if value > 0 else None
    if name in _DEPTH_NAMES or "LAYERS" in words:
        return "depth" if isinstance(value, int) and value >= 1 else None
    if words & {"HEAD", "HEADS"} and "DIM" not in words:
        return "heads" if isinstance(value, int) and value >= 1 else None
    if "BATCH" in words:
        return "batch" if isinstance(value, int) and value >= 1 else None
    if "RATIO" in words and fraction_like:
        return "fraction"
    if words & _WIDTH_WORDS:
        return "width" if value > 0 else None
    if isinstance(value, float):
        return "scalar" if value > 0 else None
    return "count" if value >= 1 else None


# --- discovery ---------------------------------------------------------------------------------------------------


def discover(files: Mapping[str, str], exclude: Iterable[str] = ()) -> list[Knob]:
    """Every knob in the Python files, in file then source order. Names in `exclude` (the harness's) are skipped."""
    excluded = set(exclude)
    found: list[Knob] = []
    for path in sorted(p for p in files if p.endswith(".py")):
        found.extend(_discover_file(path, files[path], excluded))
    counts: dict[str, int] = {}
    for knob in found:
        counts[knob.name] = counts.get(knob.name, 0) + 1
    return [replace(k, key=f"{k.path}:{k.name}") if counts[k.name] > 1 else k for k in found]


def _discover_file(path: str, source: str, excluded: set[str]) -> list[Knob]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    offsets = _Offsets(source)
    rebound = _rebound_names(tree)
    knobs: list[Knob] = []
    for stmt in tree.body:
        target, value = _single_assignment(stmt)
        if target is None or not _NAME.match(target) or target in excluded or target in rebound:
            continue
        stmt_end = offsets.at(stmt.end_lineno, stmt.end_col_offset)
        elements = value.elts if isinstance(value, ast.Tuple | ast.List) else [value]
        for index, node in enumerate(elements):
            literal = _scalar(node)
            if literal is None or (len(elements) > 1 and isinstance(literal, str)):
                continue
            kind = classify(target, literal)
            if kind is None:
                continue
            name = f"{target}[{index}]" if value is not node else target
            start, end = offsets.at(node.lineno, node.col_offset), offsets.at(node.end_lineno, node.end_col_offset)
            knobs.append(Knob(key=name, name=name, constant=target, path=path, kind=kind, value=literal,
                              text=source[start:end], start=start, end=end, stmt_end=stmt_end))
    return knobs


def _single_assignment(stmt: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        return stmt.targets[0].id, stmt.value
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return stmt.target.id, stmt.value
    return None, None


def _rebound_names(tree: ast.Module) -> set[str]:
    """Names a literal assignment does not settle: bound more than once at module level, imported, or declared
    `global` somewhere (editing the literal would then not change what the program uses)."""
    seen: dict[str, int] = {}
    rebound: set[str] = set()
    for stmt in tree.body:
        for name in _bound_names(stmt):
            seen[name] = seen.get(name, 0) + 1
    rebound.update(name for name, count in seen.items() if count > 1)
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            rebound.update(node.names)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            rebound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return rebound


def _bound_names(stmt: ast.stmt) -> Iterable[str]:
    targets: list[ast.expr] = []
    if isinstance(stmt, ast.Assign):
        targets = list(stmt.targets)
    elif isinstance(stmt, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
        targets = [stmt.target]
    elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [stmt.name]
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


class _Offsets:
    """Turns ast's (line, UTF-8 byte column) positions into character offsets in the source text."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r|\n", source)]

    def at(self, line: int | None, byte_col: int | None) -> int:
        start = self.starts[(line or 1) - 1]
        following = self.starts[line] if line is not None and line < len(self.starts) else len(self.source)
        prefix = self.source[start:following].encode("utf-8")[: byte_col or 0]
        return start + len(prefix.decode("utf-8", errors="ignore"))


# --- literal values ----------------------------------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
}


def _scalar(node: ast.expr) -> Value | None:
    """A number (including constant arithmetic such as `2**19`) or a string literal; None for anything else."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float | str):
            return None
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _scalar(node.operand)
        if isinstance(inner, int | float):
            return -inner if isinstance(node.op, ast.USub) else inner
        return None
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _scalar(node.left), _scalar(node.right)
        if not isinstance(left, int | float) or not isinstance(right, int | float):
            return None
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            return None
        try:
            result = _BINARY[type(node.op)](left, right)
        except (ZeroDivisionError, OverflowError):
            return None
        return result if isinstance(result, int | float) and math.isfinite(result) else None
    return None


def literal_value(node: ast.expr) -> Value | tuple[Value | None, ...] | None:
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_scalar(e) for e in node.elts)
    return _scalar(node)


def module_constants(source: str) -> dict[str, Value]:
    """Literal values of a module's UPPER_CASE constants (a harness's `MAX_SEQ_LEN = 2048`); others are left out."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    constants: dict[str, Value] = {}
    for stmt in tree.body:
        target, value = _single_assignment(stmt)
        literal = _scalar(value) if target is not None and _NAME.match(target) else None
        if target is not None and literal is not None:
            constants[target] = literal
    return constants


def constant_changes(diff: str) -> list[tuple[str, str, Value, Value]]:
    """(path, NAME or NAME[i], old, new) for every literal constant a unified diff changes."""
    removed: dict[tuple[str, str], object] = {}
    added: dict[tuple[str, str], object] = {}
    path = ""
    for line in diff.splitlines():
        if line.startswith("+++ "):
            path = line[4:].strip().split("\t")[0]
            path = path[2:] if path.startswith(("a/", "b/")) else path
        elif line.startswith("--- "):
            continue
        elif line[:1] in "+-":
            parsed = _parse_assignment(line[1:])
            if parsed is not None:
                (removed if line[0] == "-" else added)[(path, parsed[0])] = parsed[1]
    changes: list[tuple[str, str, Value, Value]] = []
    for (file, name), old in removed.items():
        new = added.get((file, name))
        if isinstance(old, tuple) and isinstance(new, tuple) and len(old) == len(new):
            changes.extend((file, f"{name}[{i}]", a, b) for i, (a, b) in enumerate(zip(old, new, strict=True))
                           if a is not None and b is not None and a != b)
        elif new is not None and not isinstance(old, tuple) and not isinstance(new, tuple) and old != new:
            changes.append((file, name, old, new))
    return changes


def _parse_assignment(text: str) -> tuple[str, object] | None:
    try:
        tree = ast.parse(text.strip())
    except SyntaxError:
        return None
    if len(tree.body) != 1:
        return None
    target, value = _single_assignment(tree.body[0])
    if target is None or value is None or not _NAME.match(target):
        return None
    literal = literal_value(value)
    return None if literal is None else (target, literal)
