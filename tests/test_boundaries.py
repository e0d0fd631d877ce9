"""Layer boundaries: import-linter's contracts (pyproject.toml), what fresh interpreters load, no private reach-ins."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("cli", "console", "engine", "gpt", "themes")
# Private names of the standard library that are the documented way to do a thing.
STDLIB_PRIVATE = {"os._exit", "sys._getframe"}


def loaded_after(code: str) -> set[str]:
    """Module names in sys.modules after running `code` in a new interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def tops(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def test_import_linter_contracts_hold():
    pytest.importorskip("importlinter", reason="`pip install -e '.[test]'` installs import-linter")
    # This interpreter's import-linter, so a virtual environment checks its own checkout.
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run([sys.executable, "-c", command, "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def test_no_engine_module_loads_textual_or_rich():
    every_module = (
        "import importlib, pkgutil, loopdeck.engine as engine\n"
        "names = [m.name for m in pkgutil.walk_packages(engine.__path__, 'loopdeck.engine.')]\n"
        "assert {'loopdeck.engine.session', 'loopdeck.engine.research.loop', 'loopdeck.engine.run.runner',\n"
        "        'loopdeck.engine.store.ledger'} <= set(names), names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
    )
    loaded = loaded_after(every_module)
    assert "loopdeck.engine.research.loop" in loaded
    assert not tops(loaded) & {"textual", "rich"}
    assert not any(name.startswith(("loopdeck.console", "loopdeck.cli")) for name in loaded)


def test_a_headless_session_does_not_load_torch_in_the_engine():
    loaded = loaded_after("import loopdeck.cli.headless, loopdeck.cli.workspace, loopdeck.engine.session")
    assert not tops(loaded) & {"textual", "rich", "torch"}


def test_the_console_does_not_load_torch():
    loaded = loaded_after("import loopdeck.console.app")
    assert "textual" in tops(loaded) and "torch" not in tops(loaded)


def test_the_command_line_loads_neither_textual_nor_torch_for_help():
    loaded = loaded_after("import loopdeck.cli.main as m\nm.build_parser().format_help()")
    assert not tops(loaded) & {"textual", "torch"}


def _private_reach_ins(path: Path) -> list[str]:
    """`from loopdeck.x import _name`, and `something._name` for a private name this module does not define."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            defined.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("loopdeck"):
            found += [f"{path}:{node.lineno} imports {alias.name}" for alias in node.names
                      if alias.name.startswith("_")]
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and node.attr not in defined and ast.unparse(node) not in STDLIB_PRIVATE):
            found.append(f"{path}:{node.lineno} reaches {ast.unparse(node)}")
    return found


def test_no_module_uses_a_private_name_of_another():
    found = [hit for top in PACKAGE_DIRS for path in sorted((REPO / top).rglob("*.py"))
             for hit in _private_reach_ins(path)]
    assert not found, "\n".join(found)


def test_every_module_says_its_job_in_a_docstring():
    missing = [str(path.relative_to(REPO)) for top in PACKAGE_DIRS for path in sorted((REPO / top).rglob("*.py"))
               if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert not missing, missing
