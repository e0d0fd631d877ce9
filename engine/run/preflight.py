"""Preflight: can this workspace's command run on this machine? Each problem comes with the one command that fixes it.

Checked before the baseline (and alone by `loopdeck doctor`): the command's program is on PATH (for a uv project,
whether `uv` is), the top-level imports of the editable and protected files are installed for the Python that runs
them, code that needs CUDA finds it, and the data cache a protected file names exists. Source is read with `ast`,
never run; the only subprocesses are a Python other than loopdeck's own asked for its imports, and, for code that
needs CUDA on a machine with an NVIDIA driver, the run's Python asked whether torch sees the GPU.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from loopdeck.engine.config import Config

Level = Literal["ok", "warning", "problem"]
Runner = Literal["own", "python", "uv", "other"]

PROBE_TIMEOUT_SECONDS = 60.0  # importing torch on a cold disk can take tens of seconds
INSTALL_UV = "install uv (https://docs.astral.sh/uv/getting-started/installation/)"
GPU_FIX = "needs an NVIDIA GPU: run on a GPU machine"
# A module-level constant naming where prepared data lives: autoresearch's CACHE_DIR, DATA_DIR, TOKENIZER_DIR.
_CACHE_NAME = re.compile(r"[A-Z0-9_]*(CACHE|DATA|TOKENIZER)[A-Z0-9_]*_DIR")
_PYTHON_NAME = re.compile(r"python[0-9.]*")
_IMPORT_PROBE = ("import importlib.util, json, sys\n"
                 "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))")
_CUDA_PROBE = "import torch; print(torch.cuda.is_available())"


@dataclass(frozen=True)
class Check:
    """One thing preflight looked at: what, how it stands, and the one command that fixes a problem."""

    name: str  # "command", "uv", "imports", "cuda", "data"
    level: Level
    message: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.name}: {self.message}"
        return f"{text} — fix: {self.fix}" if self.fix else text


@dataclass(frozen=True)
class Preflight:
    """Every check of one workspace; it can run when none is a problem (warnings are notes)."""

    checks: tuple[Check, ...]

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if check.level == "problem"]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.level == "warning"]

    @property
    def runnable(self) -> bool:
        return not self.problems

    def error_message(self) -> str:
        """The problems as one line, for a LoopdeckError."""
        return "; ".join(check.line() for check in self.problems)


@dataclass(frozen=True)
class _Interpreter:
    """What runs the command: loopdeck's own Python, another Python, `uv run`, or something else."""

    runner: Runner
    executable: str  # the resolved program; "" when it is not on PATH
    uv_project: bool

    @property
    def shown(self) -> str:
        return f"loopdeck's own Python ({self.executable})" if self.runner == "own" else self.executable

    def runs(self, script: str) -> str:
        """How a person runs one of the repo's scripts the way the command does."""
        return f"uv run {script}" if self.runner == "uv" or self.uv_project else f"python {script}"


def preflight(workspace: Path, config: Config) -> Preflight:
    """Check that `workspace`'s command can run here; reads files and asks Pythons, changes nothing."""
    experiment = config.experiment
    sources = _parse(workspace, [name for name in (*experiment.editable, *experiment.protected)
                                 if name.endswith(".py")])
    interpreter, command_check = _interpreter(workspace, config.command_argv())
    checks = [command_check, *_uv_checks(workspace, interpreter)]
    if interpreter.executable:
        imports, missing = _imports_check(workspace, sources, interpreter)
        checks += [imports, _cuda_check(sources, interpreter, torch_missing="torch" in missing)]
    protected = {name: tree for name, tree in sources.items() if name in experiment.protected}
    checks += _data_checks(workspace, protected, interpreter)
    return Preflight(tuple(check for check in checks if check is not None))


# --- the program and the Python ------------------------------------------------------------------------------------


def _interpreter(workspace: Path, argv: list[str]) -> tuple[_Interpreter, Check]:
    uv_project = (workspace / "pyproject.toml").is_file() and (workspace / "uv.lock").is_file()
    program = argv[0]
    if program == sys.executable:
        interpreter = _Interpreter("own", program, uv_project)
        return interpreter, Check("command", "ok", f"`{' '.join(argv)}` runs with {interpreter.shown}")
    name = Path(program).name
    runner: Runner = "uv" if name == "uv" else "python" if _PYTHON_NAME.fullmatch(name) else "other"
    # The run starts in the workspace: a relative program path is the workspace's, not loopdeck's.
    relative = os.sep in program and not os.path.isabs(program)
    found = shutil.which(str(workspace / program) if relative else program) or ""
    interpreter = _Interpreter(runner, found, uv_project)
    if not found:
        fix = (f"{INSTALL_UV}, then `uv sync`" if runner == "uv"
               else f"install {program}, or change [experiment] command in loopdeck.toml")
        return interpreter, Check("command", "problem", f"`{program}` (the run command) is not on PATH", fix)
    return interpreter, Check("command", "ok", f"`{' '.join(argv)}` runs {found}")


def _uv_checks(workspace: Path, interpreter: _Interpreter) -> list[Check]:
    if not interpreter.uv_project:
        return []
    if interpreter.runner == "uv":
        if interpreter.executable and not (workspace / ".venv").is_dir():
            return [Check("uv", "warning", "no .venv yet: the baseline's `uv run` creates it and installs every "
                          "dependency first, inside its time limit", "`uv sync`")]
        return []
    if shutil.which("uv") is None:
        return [Check("uv", "warning", f"a uv project (pyproject.toml + uv.lock), but `uv` is not on PATH: "
                      f"{interpreter.shown} runs it instead of the project's environment",
                      f"{INSTALL_UV}, then `uv sync`")]
    return []


def _imports_check(workspace: Path, sources: dict[str, ast.Module],
                   interpreter: _Interpreter) -> tuple[Check | None, set[str]]:
    """Whether the Python that runs the command has every module the files import at the top."""
    importers: dict[str, list[str]] = {}
    for name, tree in sources.items():
        for module in _top_level_imports(tree):
            if not _is_local(workspace, module):
                importers.setdefault(module, []).append(name)
    if interpreter.runner == "uv":
        return Check("imports", "ok", "installed by uv from uv.lock"), set()
    if interpreter.runner == "other" or not importers:
        return None, set()
    try:
        missing = _missing_modules(workspace, interpreter, sorted(importers))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return Check("imports", "warning", f"could not ask {interpreter.shown} about the imports: {exc}"), set()
    if not missing:
        return Check("imports", "ok", f"every top-level import of {', '.join(sources)} is installed for "
                     f"{interpreter.shown}"), set()
    where = ", ".join(f"{module} ({', '.join(importers[module])})" for module in missing)
    # Without uv the project's environment is not used; once uv is installed, `uv sync` builds it from uv.lock.
    uv_missing = interpreter.uv_project and shutil.which("uv") is None
    fix = "`uv sync`" if uv_missing else f"`pip install {' '.join(missing)}`"
    return Check("imports", "problem", f"not installed for {interpreter.shown}: {where}", fix), set(missing)


def _top_level_imports(tree: ast.Module) -> list[str]:
    """Absolute modules imported by module-level statements (ones under try/if are optional by design)."""
    modules = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module.split(".")[0])
    return list(dict.fromkeys(module for module in modules if module != "__future__"))


def _is_local(workspace: Path, module: str) -> bool:
    return (workspace / f"{module}.py").is_file() or (workspace / module).is_dir()


def _missing_modules(workspace: Path, interpreter: _Interpreter, modules: list[str]) -> list[str]:
    if interpreter.runner != "own":
        return _ask_for_modules(workspace, interpreter.executable, modules)
    shadowed = [module for module in modules if _shadowed_by_cwd(workspace, module)]
    missing = [module for module in modules if module not in shadowed and not _importable_here(module)]
    if shadowed:  # only a process started in the workspace sees what the run will
        missing += _ask_for_modules(workspace, interpreter.executable, shadowed)
    return sorted(missing)


def _ask_for_modules(workspace: Path, python: str, modules: list[str]) -> list[str]:
    probe = subprocess.run([python, "-c", _IMPORT_PROBE, *modules], cwd=workspace, capture_output=True,
                           text=True, timeout=PROBE_TIMEOUT_SECONDS, check=True)
    missing = json.loads(probe.stdout)
    if not isinstance(missing, list):
        raise ValueError(f"unexpected answer {probe.stdout.strip()!r}")
    return [str(module) for module in missing]


def _shadowed_by_cwd(workspace: Path, module: str) -> bool:
    """A module in loopdeck's current directory while that directory is on loopdeck's sys.path (`python -m`,
    pytest): the run, started in the workspace, may not see it."""
    try:
        here = Path.cwd()
    except OSError:
        return False
    on_path = "" in sys.path or str(here) in sys.path
    return on_path and here != workspace.resolve() and _is_local(here, module)


def _importable_here(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken package is for the run to report, not a missing one
        return True


# --- CUDA ----------------------------------------------------------------------------------------------------------


def _cuda_check(sources: dict[str, ast.Module], interpreter: _Interpreter, *, torch_missing: bool) -> Check | None:
    """Code that asks for CUDA with no CPU/MPS fallback (no `*.is_available()` anywhere) needs a working GPU."""
    needs = [f"{name}:{line}" for name, tree in sources.items() for line in _cuda_uses(tree)]
    if not needs:
        return None
    if any(_checks_availability(tree) for tree in sources.values()):
        return Check("cuda", "ok", "the code uses CUDA when present and falls back otherwise")
    where = f"CUDA is required ({', '.join(needs[:3])}, no CPU fallback)"
    if not nvidia_driver_present():
        return Check("cuda", "problem", f"{where} and this machine has no NVIDIA driver", GPU_FIX)
    if torch_missing or interpreter.runner not in ("own", "python"):
        return Check("cuda", "ok", f"{where}; an NVIDIA driver is present")
    available = cuda_available(interpreter.executable)
    if available is None:
        return Check("cuda", "warning", f"{where}; could not ask {interpreter.shown} whether torch sees the GPU")
    if not available:
        return Check("cuda", "problem", f"{where}, and torch in {interpreter.shown} cannot use the GPU (a CPU "
                     "build?)", "install a CUDA build of torch (https://pytorch.org/get-started/locally/)")
    return Check("cuda", "ok", f"{where}; torch sees the GPU")


def _cuda_uses(tree: ast.Module) -> list[int]:
    """Lines with a literal "cuda" device or a `.cuda()` call."""
    lines = []
    for node in ast.walk(tree):
        literal = (isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and re.fullmatch(r"cuda(:\d+)?", node.value))
        method = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "cuda")
        if literal or method:
            lines.append(node.lineno)
    return sorted(set(lines))


def _checks_availability(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
               and node.func.attr == "is_available" for node in ast.walk(tree))


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (without it no Python can see a GPU)."""
    return shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia/version").exists()


def cuda_available(python: str) -> bool | None:
    """Whether torch in `python` sees a CUDA device, asked in a subprocess (the engine never imports torch);
    None when it could not tell."""
    try:
        probe = subprocess.run([python, "-c", _CUDA_PROBE], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT_SECONDS)
    except (OSError, subprocess.SubprocessError):
        return None
    answer = probe.stdout.strip().splitlines()[-1:] if probe.returncode == 0 else []
    return {"True": True, "False": False}.get(answer[0]) if answer else None


# --- the data cache ------------------------------------------------------------------------------------------------


def _data_checks(workspace: Path, protected: dict[str, ast.Module], interpreter: _Interpreter) -> list[Check]:
    """Each protected file's data cache (a `CACHE_DIR`-like constant) must exist: the first missing one is reported."""
    checks = []
    for name, tree in protected.items():
        folders = [(constant, Path(path) if Path(path).is_absolute() else workspace / path)
                   for constant, path in _string_constants(tree, workspace / name).items()
                   if _CACHE_NAME.fullmatch(constant)]
        if not folders:
            continue
        missing = next(((constant, path) for constant, path in folders if not path.exists()), None)
        if missing is None:
            checks.append(Check("data", "ok", f"{folders[0][0]} {_shown_path(folders[0][1])} ({name}) exists"))
        else:
            checks.append(Check("data", "problem", f"{missing[0]} {_shown_path(missing[1])} ({name}) does not "
                                "exist: the data is not prepared", f"`{interpreter.runs(name)}`"))
    return checks


def _string_constants(tree: ast.Module, file: Path) -> dict[str, str]:
    """Module-level `NAME = <path expression>` assignments that evaluate to a string without running anything."""
    values: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _path_value(node.value, values, file)
            if value is not None:
                values[node.targets[0].id] = value
    return values


def _path_value(node: ast.expr, names: dict[str, str], file: Path) -> str | None:
    """A string literal, a known name, `__file__`, or os.path.join / expanduser / dirname / abspath,
    Path(...), Path.home() and `/` over those; None for anything else."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.Name):
        return str(file) if node.id == "__file__" else names.get(node.id)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        parts = [_path_value(side, names, file) for side in (node.left, node.right)]
        return os.path.join(*parts) if None not in parts else None  # type: ignore[arg-type]
    if not isinstance(node, ast.Call) or node.keywords:
        return None
    args = [_path_value(arg, names, file) for arg in node.args]
    if None in args:
        return None
    function = ast.unparse(node.func)
    if function in ("os.path.join", "join") and args:
        return os.path.join(*args)  # type: ignore[arg-type]
    if function in ("os.path.expanduser", "expanduser") and len(args) == 1:
        return os.path.expanduser(args[0])  # type: ignore[arg-type]
    if function in ("os.path.dirname", "os.path.abspath") and len(args) == 1:
        return getattr(os.path, function.rsplit(".", 1)[1])(args[0])
    if function in ("Path", "pathlib.Path"):
        return os.path.join(*args) if args else "."  # type: ignore[arg-type]
    if function in ("Path.home", "pathlib.Path.home") and not args:
        return os.path.expanduser("~")
    return None


def _shown_path(path: Path) -> str:
    home = Path(os.path.expanduser("~"))
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) and path != home else str(path)


def _parse(workspace: Path, names: list[str]) -> dict[str, ast.Module]:
    """The files that parse; one that does not is the run's to report (with its traceback)."""
    trees = {}
    for name in names:
        try:
            trees[name] = ast.parse((workspace / name).read_text(encoding="utf-8"), filename=name)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
    return trees
