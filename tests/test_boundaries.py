"""Layer boundaries, checked in fresh interpreters: the engine never loads the UI, the console never loads torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def loaded_after(code: str) -> set[str]:
    """Top-level package names in sys.modules after running `code` in a new interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{name.split('.')[0] for name in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def test_no_engine_module_imports_textual_or_rich():
    every_module = (
        "import importlib, pkgutil, engine\n"
        "names = [m.name for m in pkgutil.walk_packages(engine.__path__, 'engine.')]\n"
        "assert {'engine.session', 'engine.loop', 'engine.commands'} <= set(names), names\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
    )
    loaded = loaded_after(every_module)
    assert "engine" in loaded
    assert not loaded & {"textual", "rich"}


def test_a_headless_session_does_not_load_torch_in_the_engine():
    loaded = loaded_after("import engine.commands, engine.session, engine.loop")
    assert not loaded & {"textual", "rich", "torch"}


def test_the_console_does_not_import_torch():
    if not (REPO / "console" / "app.py").exists():
        pytest.skip("console/app.py does not exist yet")
    loaded = loaded_after("import console.app")
    assert "textual" in loaded and "torch" not in loaded
