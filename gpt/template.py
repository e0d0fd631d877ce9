"""Read and rewrite a training file's hyperparameter block: its module-level `NAME = literal` constants, via ast."""

from __future__ import annotations

import ast


def _constant_nodes(source: str) -> dict[str, ast.expr]:
    return {node.targets[0].id: node.value for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper()}


def hyperparameters(source: str) -> dict[str, object]:
    """Every module-level UPPER_CASE constant whose value is a literal (numbers, strings, tuples…), in file order."""
    found = {}
    for name, value in _constant_nodes(source).items():
        try:
            found[name] = ast.literal_eval(value)
        except ValueError:  # computed from other names: not a knob
            continue
    return found


def set_hyperparameters(source: str, **overrides: object) -> str:
    """`source` with each named constant's value replaced by repr(new value); everything else byte-identical."""
    values = _constant_nodes(source)
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise KeyError(f"no module-level constant named {', '.join(unknown)}")
    lines = [line.encode("utf-8") for line in source.splitlines(keepends=True)]
    # ast offsets count UTF-8 bytes; edit from the end so earlier offsets stay valid.
    for name in sorted(overrides, key=lambda n: (values[n].lineno, values[n].col_offset), reverse=True):
        value = values[name]
        if value.end_lineno != value.lineno:
            raise ValueError(f"{name} spans several lines; only one-line values can be rewritten")
        line = lines[value.lineno - 1]
        lines[value.lineno - 1] = (line[: value.col_offset] + repr(overrides[name]).encode("utf-8")
                                   + line[value.end_col_offset :])
    return b"".join(lines).decode("utf-8")
