"""The research log's key: which code an idea touches and which way, read from two versions of the files.

A region is `path:NAME` for each module-level UPPER_CASE constant whose value changed and `path:Qualified.name`
for each function or class whose code changed (`path` alone when the change is elsewhere in the file, or the file
does not parse). Each named entry also has a direction: +1 / -1 for a constant that moved numerically up / down,
else a fingerprint of its new code (a string constant's new value, a function's new body), so that only the same
rewrite counts as the same direction. Two ideas are the same when they touch the same region in the same
directions; a repeat is the same idea as one that was tried against the current incumbent and not kept. Agents
and the research layer both use this one test.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from loopdeck.engine.agents.base import ExperimentSummary


@dataclass(frozen=True)
class Touch:
    """What one change touches: its regions (sorted) and the direction of each named one."""

    region: tuple[str, ...] = ()
    signs: Mapping[str, int | str] = field(default_factory=dict)  # +1 / -1, or a fingerprint of the new code

    def same_idea(self, region: Sequence[str], signs: Mapping[str, int | str]) -> bool:
        return bool(self.region) and tuple(region) == self.region and dict(signs) == dict(self.signs)

    def describe(self) -> str:
        """'train.py:LR up, train.py:GPT.forward' — how a notice or a prompt names the region."""
        words: dict[int | str, str] = {1: " up", -1: " down"}
        return ", ".join(f"{name}{words.get(self.signs.get(name, 0), '')}" for name in self.region)


def touched(old_files: Mapping[str, str], new_files: Mapping[str, str]) -> Touch:
    """The regions and directions of the change from `old_files` to `new_files` (files absent from either side
    count as changed as a whole)."""
    region: set[str] = set()
    signs: dict[str, int | str] = {}
    for path in sorted(set(old_files) | set(new_files)):
        old, new = old_files.get(path), new_files.get(path)
        if old == new:
            continue
        old_parts, new_parts = _parts(old), _parts(new)
        if old_parts is None or new_parts is None:
            region.add(path)
            continue
        changed = [name for name in set(old_parts) | set(new_parts) if old_parts.get(name) != new_parts.get(name)]
        if not changed:
            region.add(path)  # only comments, blank lines or statements outside any def or constant
        for name in changed:
            region.add(f"{path}:{name}")
            signs[f"{path}:{name}"] = _direction(old_parts.get(name), new_parts.get(name))
    return Touch(tuple(sorted(region)), signs)


def repeat_of(touch: Touch, history: Sequence[ExperimentSummary], incumbent_id: int | None
              ) -> ExperimentSummary | None:
    """The latest experiment since the incumbent `incumbent_id` was kept that tried the same idea, was measured
    and was not kept (a discard), or None. Under a newer incumbent an idea may behave differently, so it is not a
    repeat there; a run that crashed, timed out or was stopped measured nothing about its idea (a full disk or an
    OOM beside other jobs says nothing about LR), so trying it again is not a repeat either."""
    for summary in reversed(history):
        if incumbent_id is not None and summary.id <= incumbent_id:
            return None
        if summary.baseline or summary.status != "discard":
            continue
        if touch.same_idea(summary.region, summary.signs):
            return summary
    return None


def _parts(source: str | None) -> dict[str, str] | None:
    """name -> its code (a constant's value expression) for the module's constants, functions, classes and
    methods; None when the source is missing or does not parse."""
    if source is None:
        return None
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    parts: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper():
                    parts[target.id] = ast.unparse(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts[node.name] = ast.dump(node)
        elif isinstance(node, ast.ClassDef):
            methods = [item for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for method in methods:
                parts[f"{node.name}.{method.name}"] = ast.dump(method)
            rest = [item for item in node.body if item not in methods]
            parts[node.name] = ast.dump(ast.Module(body=rest, type_ignores=[]))
    return parts


def _direction(old: str | None, new: str | None) -> int | str:
    """+1 / -1 when both sides are numeric literals and the value moved; else a fingerprint of the new code."""
    before, after = _number(old), _number(new)
    if before is not None and after is not None and before != after:
        return 1 if after > before else -1
    return "removed" if new is None else hashlib.sha256(new.encode()).hexdigest()[:12]


def _number(expression: str | None) -> float | None:
    if expression is None:
        return None
    try:
        value = ast.literal_eval(expression)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
