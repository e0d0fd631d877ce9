"""loopdeck.toml as a file: reading it (or inferring settings for an autoresearch repo), writing the default one,
and pinning a protected file's hash in it with every other line kept."""

from __future__ import annotations

import ast
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from loopdeck.engine.config.schema import (
    AUTORESEARCH_BUDGET,
    CONFIG_FILE,
    Config,
    ExperimentSettings,
    validate,
)
from loopdeck.engine.errors import LoopdeckError

BUDGET_VARIABLE = "LOOPDECK_TIME_BUDGET"
CLOCK_VARIABLE = "LOOPDECK_BUDGET_CLOCK"
SEED_VARIABLE = "LOOPDECK_SEED"
BUDGET_CONSTANT = "TIME_BUDGET"

# --- loading -------------------------------------------------------------------------------------------------------


def parse_config(text: str, source: str = CONFIG_FILE) -> Config:
    """Validate TOML text; any problem raises LoopdeckError naming the field and the allowed values."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LoopdeckError(f"{source}: invalid TOML: {exc}") from None
    return validate(data, source)


def load_config(workspace: Path | str, *, budget_seconds: float | None = None) -> tuple[Config, list[str]]:
    """loopdeck.toml if present, else settings inferred for an autoresearch-style repo (+ notes saying what).
    `budget_seconds` is a command-line budget: the inferred notes then show the budget in force."""
    workspace = Path(workspace)
    if not workspace.is_dir():
        raise LoopdeckError(f"{workspace} is not a directory: create a workspace with `loopdeck init {workspace}`")
    path = workspace / CONFIG_FILE
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LoopdeckError(f"cannot read {path}: {exc}") from None
        config, notes = parse_config(text, str(path)), []
        data = tomllib.loads(text)
        if "baseline_seeds" not in data.get("evaluation", {}):
            config, notes = _default_baseline_runs(workspace, config)
        config = _budget_clock(workspace, config, explicit="budget_clock" in data.get("experiment", {}))
    else:
        config, notes = _infer(workspace, budget_seconds)
    for name in (*config.experiment.editable, *config.experiment.protected):
        if not (workspace / name).is_file():
            raise LoopdeckError(f"{name} not found in {workspace}: it is listed in [experiment] of {CONFIG_FILE}; "
                                "restore the file or fix the setting")
    return config, notes


def _infer(workspace: Path, budget_seconds: float | None) -> tuple[Config, list[str]]:
    """Settings for an autoresearch-layout repo (train.py, prepare.py, program.md) without a loopdeck.toml."""
    if not (workspace / "train.py").is_file():
        raise LoopdeckError(f"{workspace} has no {CONFIG_FILE} and no train.py: run `loopdeck init {workspace}` to "
                            f"create a workspace, or add a {CONFIG_FILE} naming the files to edit and the command")
    protected = ["prepare.py"] if (workspace / "prepare.py").is_file() else []
    uv_project = (workspace / "pyproject.toml").is_file() and (workspace / "uv.lock").is_file()
    command = ["uv", "run", "train.py"] if uv_project and shutil.which("uv") else ["{python}", "train.py"]
    constant = find_budget_constant(workspace, ["train.py", *protected])
    own_budget = constant.value if constant else AUTORESEARCH_BUDGET
    own = constant.describe() if constant else "autoresearch's default"
    budget = budget_seconds or own_budget
    config = Config.model_validate({"experiment": {"editable": ["train.py"], "protected": protected,
                                                   "command": command, "budget_seconds": budget}})
    config = _budget_clock(workspace, config, explicit=False)
    shown_command = " ".join(config.command_argv())
    source = own if budget == own_budget else f"--budget; the repo's own: {own_budget:g} s, {own}"
    notes = [
        f"no {CONFIG_FILE} in {workspace}: settings inferred for an autoresearch-style repository",
        "editable: train.py" + (f"; protected: {', '.join(protected)}" if protected else ""),
        f"command: {shown_command}" + (" (uv project)" if command[0] == "uv" else ""),
        f"metric: {config.metric.name} from lines matching {config.metric.pattern}, lower is better",
        f"budget: {budget:g} s ({source}); runs are killed after {config.timeout():g} s",
    ]
    config, seeding = _default_baseline_runs(workspace, config)
    if config.experiment.budget_clock == "wall":
        notes.append(f"budget clock: wall ({_files(config)} never read {CLOCK_VARIABLE}: a busy machine gives runs "
                     "fewer steps)")
    return config, notes + (seeding or [f"seeding: the repo reads {SEED_VARIABLE}: the baseline runs "
                                        f"{config.evaluation.baseline_seeds} times with different seeds to measure "
                                        "the run-to-run noise"])


def _default_baseline_runs(workspace: Path, config: Config) -> tuple[Config, list[str]]:
    """One baseline run for a target that never reads LOOPDECK_SEED (its repeats cannot change the seed, so
    they would only measure nondeterminism, at the price of whole runs), with the note that says so."""
    if seedable(workspace, config.experiment) or config.evaluation.baseline_seeds == 1:
        return config, []
    return config.updated(baseline_seeds=1), [
        f"seeding: {_files(config)} never read {SEED_VARIABLE}, so runs cannot be seeded: one baseline run, "
        "run-to-run noise not measured (to measure its nondeterminism anyway, set [evaluation] baseline_seeds = 3 "
        f"in a {CONFIG_FILE})"]


def _budget_clock(workspace: Path, config: Config, *, explicit: bool) -> Config:
    """The process clock only for a target whose files read LOOPDECK_BUDGET_CLOCK (one that does not times its
    budget in wall seconds whatever loopdeck asks): by default wall then; asked for, refused."""
    experiment = config.experiment
    if experiment.budget_clock == "wall" or reads_variable(workspace, [*experiment.editable, *experiment.protected],
                                                           CLOCK_VARIABLE):
        return config
    if explicit:
        raise LoopdeckError(f'budget_clock = "process" cannot apply in {workspace}: {_files(config)} never read '
                            f'{CLOCK_VARIABLE}, so the budget is wall time; set budget_clock = "wall" in '
                            f"[experiment] of {CONFIG_FILE}")
    return config.updated(budget_clock="wall")


def _files(config: Config) -> str:
    names = [*config.experiment.editable, *config.experiment.protected]
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else names[0]


# --- what the target's own files say -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetConstant:
    """A module-level `TIME_BUDGET = <number>` in one of the target's files: where its budget lives."""

    file: str
    value: float
    line: int  # 1-based line of the number
    start: int  # byte offsets of the number within that line
    end: int

    def describe(self) -> str:
        return f"{BUDGET_CONSTANT} in {self.file}"


def find_budget_constant(workspace: Path | str, files: list[str]) -> BudgetConstant | None:
    """The first module-level `TIME_BUDGET = <positive number>` among `files`, or None."""
    for name in files:
        try:
            tree = ast.parse((Path(workspace) / name).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == BUDGET_CONSTANT
                                                     for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, int | float)
                    and not isinstance(node.value.value, bool) and node.value.value > 0
                    and node.value.lineno == node.value.end_lineno and node.value.end_col_offset is not None):
                return BudgetConstant(name, float(node.value.value), node.value.lineno, node.value.col_offset,
                                      node.value.end_col_offset)
    return None


def reads_variable(workspace: Path | str, files: list[str], variable: str) -> bool:
    """Whether any of the files names the environment variable (a target that never names it cannot read it)."""
    for name in files:
        try:
            if variable in (Path(workspace) / name).read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def seedable(workspace: Path | str, experiment: ExperimentSettings) -> bool:
    """Whether the seed loopdeck passes (LOOPDECK_SEED) can take effect: the target's files read it."""
    return reads_variable(workspace, [*experiment.editable, *experiment.protected], SEED_VARIABLE)


def budget_location(workspace: Path | str, experiment: ExperimentSettings) -> str:
    """Where the target takes its training budget from, for messages that tell a person what to change."""
    files = [*experiment.editable, *experiment.protected]
    if reads_variable(workspace, files, BUDGET_VARIABLE):
        return BUDGET_VARIABLE
    constant = find_budget_constant(workspace, files)
    return constant.describe() if constant else f"its own budget in {', '.join(files)}"


# --- the default file ----------------------------------------------------------------------------------------------


_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def toml_value(value: Any) -> str:
    """A Python value as a TOML literal (strings escaped, lists and tables inline)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        plain = not any(ord(c) < 32 or ord(c) == 127 for c in value)
        # A literal string keeps regex backslashes readable; anything else gets a basic string with escapes.
        if plain and "\\" in value and "'" not in value:
            return f"'{value}'"
        return '"' + "".join(_ESCAPES.get(c, f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c)
                             for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = [f"{_toml_key(key)} = {toml_value(item)}" for key, item in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_value(key)


_HEADER = """\
# loopdeck.toml: the settings of this research workspace. Every setting is shown, with its default or the value
# chosen at `loopdeck init`. loopdeck reads this file when a session starts.
"""


# Settings whose default depends on how loopdeck runs (console or headless): default_toml writes them commented
# out unless given, so that the mode decides.
_MODE_DEPENDENT = frozenset({"approval"})
# Settings whose default depends on the target (budget_clock: process where the target reads it, else wall):
# written commented out unless given, so that a file stays right for any target.
_TARGET_DEPENDENT = frozenset({"budget_clock"})


def _setting_line(name: str, value: Any, description: str, *, commented: bool = False) -> str:
    line = f"{'# ' if commented else ''}{name} = {toml_value(value)}"
    return f"{line:<40} # {description}" if len(line) < 40 else f"{line}  # {description}"


def _render(model: BaseModel, path: tuple[str, ...], out: list[str], given: frozenset[str]) -> None:
    out += ["", f"# {' '.join((type(model).__doc__ or '').split())}", f"[{'.'.join(path)}]"]  # a docstring may wrap
    nested = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            nested.append((name, value))
            continue
        out.append(_setting_line(name, value, info.description or "",
                                 commented=name in _MODE_DEPENDENT | _TARGET_DEPENDENT and name not in given))
    for name, value in nested:
        _render(value, (*path, name), out, given)


def default_toml(**overrides: Any) -> str:
    """The fully commented loopdeck.toml; overrides by field name (budget_seconds=…, data=…, kind=…, approval=…)."""
    config = Config().updated(**overrides)
    out = [_HEADER.rstrip("\n")]
    for name in Config.model_fields:
        _render(getattr(config, name), (name,), out, frozenset(overrides))
    text = "\n".join(out) + "\n"
    parse_config(text, "default loopdeck.toml")
    return text


def pin_protected_file(text: str, name: str, digest: str) -> str:
    """loopdeck.toml text with `name` added to [experiment] protected and its sha256 pinned; every other line kept."""
    experiment = parse_config(text).experiment
    settings = {"protected": list(dict.fromkeys([*experiment.protected, name])),
                "protected_sha256": {**experiment.protected_sha256, name: digest}}
    lines = text.splitlines()
    header = next((i for i, line in enumerate(lines) if line.strip() == "[experiment]"), None)
    if header is None:
        lines += ["", "[experiment]"]
        header = len(lines) - 1
    end = next((i for i in range(header + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    previous = header
    for key, value in settings.items():
        line = _setting_line(key, value, ExperimentSettings.model_fields[key].description or "")
        found = next((i for i in range(header + 1, end) if re.match(rf"{key}\s*=", lines[i])), None)
        if found is None:
            found = previous + 1
            lines.insert(found, line)
            end += 1
        else:
            lines[found] = line
        previous = found
    result = "\n".join(lines) + "\n"
    parse_config(result)
    return result
