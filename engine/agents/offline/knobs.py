"""Tunable constants of a Python training file: found with `ast`, classified by name, stepped, rewritten in place.

A knob is a module-level UPPER_CASE constant bound once to a literal: a number (`0.04`, `2**19`, `-1e-3`), an
element of a tuple of numbers (`ADAM_BETAS = (0.8, 0.95)` gives `ADAM_BETAS[0]` and `ADAM_BETAS[1]`), or an
attention window pattern string such as `"SSSL"`. Its kind, read from its name, decides how it moves: rates
multiply, depth counts, batch sizes stay powers of two, ratios move by tenths, betas move in `1 - beta`.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

Value = int | float | str

# Step sizes per kind, by level: the usual step, a finer one, a bolder one, the finest. A kind may lack a level
# (depth has no finer step than 1). The search prefers lower levels and moves on when a step is spent.
LEVELS = 4

KIND_LABELS = {
    "lr": "learning rate", "scalar": "scalar setting", "wd": "weight decay", "beta": "momentum/beta",
    "fraction": "schedule fraction", "depth": "depth", "heads": "head count", "batch": "batch size",
    "width": "width", "count": "count", "softcap": "logit soft-cap", "window": "attention window pattern",
}

_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_WINDOW = re.compile(r"^[SL]+$")
_POW2_TEXT = re.compile(r"^2(\s*)\*\*(\s*)\d+$")
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

_MULTIPLY = {"lr": (1.5, 1.25, 2.0, 1.1), "scalar": (1.5, 1.25, 2.0, 1.1), "wd": (2.0, 1.5, None, 1.25)}
_WD_FROM_ZERO = (0.1, 0.05, 0.2, 0.01)
_BETA_FACTORS = (2.0, 1.5, 4.0, 1.25)
_FRACTION_STEPS = (0.1, 0.05, 0.2, 0.025)
_SOFTCAP_SHARES = (1 / 3, 1 / 6, 2 / 3, 1 / 12)


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
    if words & {"BETA", "BETAS", "MOMENTUM", "EMA"}:
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


# --- steps -------------------------------------------------------------------------------------------------------


def neighbour(knob: Knob, direction: int, level: int) -> tuple[Value, str] | None:
    """The value one step from the knob's current value (direction +1 up, -1 down) at `level`, with a label
    for the step ("x1.5", "+1", "-0.1"); None when this kind has no such step or the value would be invalid."""
    value = knob.value
    if isinstance(value, str):
        return _window_step(value, direction, level)
    kind = knob.kind
    if kind in _MULTIPLY:
        return _multiplicative(knob, _MULTIPLY[kind][level], direction, level)
    if kind == "beta":
        return _beta_step(float(value), direction, _BETA_FACTORS[level], knob)
    if kind == "fraction":
        new = min(1.0, max(0.0, round(value + direction * _FRACTION_STEPS[level], 4)))
        new = _same_type(knob, new)
        return None if new == value else (new, f"{direction * _FRACTION_STEPS[level]:+g}")
    if kind == "depth":
        add = (1, None, 2, None)[level]
        return _additive(knob, add, direction, minimum=1)
    if kind in ("heads", "batch"):
        factor = (2, None, 4, None)[level]
        return None if factor is None else _integer_scale(knob, factor, direction)
    if kind == "softcap":
        step = _nice(abs(value) * _SOFTCAP_SHARES[level])
        new = _same_type(knob, _round_sig(value + direction * step))
        return None if new <= 0 or new == value else (new, f"{direction * step:+g}")
    return _count_or_width_step(knob, direction, level)


def _multiplicative(knob: Knob, factor: float | None, direction: int, level: int) -> tuple[Value, str] | None:
    value = float(knob.value)
    if knob.kind == "wd" and value == 0:
        return (_same_type(knob, _WD_FROM_ZERO[level]), "from 0") if direction > 0 else None
    if factor is None:  # weight decay's bold step down is switching it off
        return (_same_type(knob, 0.0), "to 0") if direction < 0 and value > 0 else None
    new = _same_type(knob, _round_sig(value * factor if direction > 0 else value / factor))
    return None if new == knob.value or new <= 0 else (new, f"{'x' if direction > 0 else '/'}{factor:g}")


def _beta_step(value: float, direction: int, factor: float, knob: Knob) -> tuple[Value, str] | None:
    gap = 1.0 - value
    new_gap = _round_sig(gap / factor if direction > 0 else gap * factor)
    new = round(1.0 - new_gap, 10)
    # A beta of 0.9 never drops below 0.5 in one move: past that the optimizer has no memory worth the name.
    if not 0.0 <= new < 1.0 or new == value or (value >= 0.5 > new):
        return None
    return _same_type(knob, new), f"1-beta {'/' if direction > 0 else 'x'}{factor:g}"


def _additive(knob: Knob, add: int | None, direction: int, minimum: int) -> tuple[Value, str] | None:
    if add is None:
        return None
    new = int(knob.value) + direction * add
    return None if new < minimum else (new, f"{direction * add:+d}")


def _integer_scale(knob: Knob, factor: int, direction: int) -> tuple[Value, str] | None:
    value = int(knob.value)
    if direction > 0:
        return value * factor, f"x{factor}"
    if value % factor or value // factor < 1:
        return None
    return value // factor, f"/{factor}"


def _count_or_width_step(knob: Knob, direction: int, level: int) -> tuple[Value, str] | None:
    value = knob.value
    if isinstance(value, float):
        return _multiplicative(knob, (1.5, 1.25, 2.0, 1.1)[level], direction, level)
    if value < 8:
        return _additive(knob, (1, None, 2, None)[level], direction, minimum=1)
    if level in (0, 2):
        return _integer_scale(knob, 2 if level == 0 else 4, direction)
    # Finer steps keep the divisibility the value already has (heads, head_dim, multiples of 64…).
    share = 4 if level == 1 else 8
    if value % share:
        return None
    step = value // share
    return _additive(knob, step, direction, minimum=1)


def _window_step(pattern: str, direction: int, level: int) -> tuple[Value, str] | None:
    """Patterns of sliding (S) and full-context (L) layers; up means more full-context attention. At least one
    L stays, so some layer always sees the whole context."""
    length, full = len(pattern), pattern.count("L")
    if level in (0, 2):
        full += direction * (1 if level == 0 else 2)
    elif level == 1:
        length -= direction
        full = min(full, length)
    else:
        return None
    if length < 1 or not 1 <= full <= length:
        return None
    new = _spread(length, full)
    return None if new == pattern else (new, "more global" if direction > 0 else "more local")


def _spread(length: int, full: int) -> str:
    """`full` L's spread evenly over `length` layers, the last layer always full ("SSSL", "SLSL", …)."""
    return "".join("L" if (i + 1) * full // length > i * full // length else "S" for i in range(length))


def _same_type(knob: Knob, value: float) -> Value:
    """Keep an int knob an int where the new value is whole (a soft-cap of 15 stays `15`, not `15.0`)."""
    if isinstance(knob.value, int) and float(value).is_integer():
        return int(value)
    return float(value)


def _round_sig(value: float, digits: int = 3) -> float:
    return float(f"{value:.{digits}g}")


def _nice(step: float) -> float:
    """The nearest 1, 2, 2.5 or 5 times a power of ten, so soft-cap steps read as 5 or 10, not 4.333."""
    if step <= 0:
        return 0.0
    exponent = math.floor(math.log10(step))
    base = step / 10**exponent
    mantissa = min((1, 2, 2.5, 5, 10), key=lambda m: abs(m - base))
    return _round_sig(mantissa * 10**exponent)


# Names of the sequence length a batch of sequences is multiplied by to count tokens.
SEQUENCE_NAMES = ("MAX_SEQ_LEN", "SEQ_LEN", "SEQUENCE_LEN", "SEQUENCE_LENGTH", "BLOCK_SIZE", "CONTEXT_LEN",
                  "CONTEXT_LENGTH")


def batch_partner(knob: Knob, value: Value, knobs: Sequence[Knob], sequence: int | None
                  ) -> list[tuple[Knob, Value]] | None:
    """Keep the batch arithmetic whole when a batch size moves. With a total batch (tokens or sequences per
    optimizer step) and a per-device micro-batch, the total must be a whole number of micro-batches: a move that
    breaks that brings the other knob along by the same factor (halving the total below one micro-batch halves
    the micro-batch too). [] = the move stands alone; [(other, value)] = move both; None = no valid way."""
    batches = [k for k in knobs if k.kind == "batch" and isinstance(k.value, int)]
    total = _only(k for k in batches if {"TOTAL", "GLOBAL", "EFFECTIVE"} & set(k.constant.split("_")))
    device = _only(k for k in batches if {"DEVICE", "MICRO", "PER", "LOCAL"} & set(k.constant.split("_")))
    if total is None or device is None or knob.key not in (total.key, device.key) or not isinstance(value, int):
        return []
    # A total of at least one micro-batch of full sequences counts tokens; otherwise it counts sequences.
    unit = sequence if sequence and int(total.value) >= int(device.value) * sequence else 1
    new_total, new_device = (value, int(device.value)) if knob.key == total.key else (int(total.value), value)
    if new_total >= new_device * unit and new_total % (new_device * unit) == 0:
        return []
    other = device if knob.key == total.key else total
    scaled = int(other.value) * value / int(knob.value)
    if not scaled.is_integer() or scaled < 1:
        return None
    new_total, new_device = (value, int(scaled)) if knob.key == total.key else (int(scaled), value)
    return [(other, int(scaled))] if new_total % (new_device * unit) == 0 else None


def _only(knobs: Iterable[Knob]) -> Knob | None:
    found = list(knobs)
    return found[0] if len(found) == 1 else None


# --- rewriting ---------------------------------------------------------------------------------------------------


def render(knob: Knob, value: Value) -> str:
    """Source text for `value` in the style of the knob's current literal."""
    if isinstance(value, str):
        quote = knob.text[0] if knob.text[:1] in ("'", '"') else '"'
        return f"{quote}{value}{quote}"
    pow2 = _POW2_TEXT.match(knob.text.strip())
    if pow2 and isinstance(value, int) and value > 0 and value & (value - 1) == 0:
        return f"2{pow2.group(1)}**{pow2.group(2)}{value.bit_length() - 1}"
    if isinstance(value, int):
        return str(value)
    if "e" in knob.text.lower() and value != 0:
        mantissa, exponent = f"{value:.2e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return repr(float(value))


def apply_edits(source: str, edits: Sequence[tuple[Knob, str]]) -> str:
    """Replace each knob's literal with the given text. Everything else stays byte for byte, except the spaces
    before a trailing comment, which absorb the length change so aligned comments stay aligned."""
    by_statement: dict[int, list[tuple[Knob, str]]] = {}
    for knob, text in edits:
        by_statement.setdefault(knob.stmt_end, []).append((knob, text))
    for stmt_end in sorted(by_statement, reverse=True):
        group = sorted(by_statement[stmt_end], key=lambda edit: edit[0].start, reverse=True)
        growth = 0
        for knob, text in group:
            source = source[: knob.start] + text + source[knob.end :]
            growth += len(text) - (knob.end - knob.start)
        source = _realign_comment(source, stmt_end + growth, growth)
    return source


def _realign_comment(source: str, at: int, growth: int) -> str:
    padding = re.match(r"( +)#", source[at:])
    if padding is None or growth == 0:
        return source
    spaces = max(1, len(padding.group(1)) - growth)
    return source[:at] + " " * spaces + source[at + len(padding.group(1)) :]
