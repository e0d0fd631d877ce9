"""The distribution: everything installs under `loopdeck`, and every package folder is in pyproject's list."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("cli", "console", "engine", "gpt", "themes")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_package_folder_is_listed_under_the_loopdeck_name():
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {"loopdeck." + ".".join(init.parent.relative_to(REPO).parts)
               for top in SOURCE_DIRS for init in (REPO / top).rglob("__init__.py")}
    assert folders == listed, f"missing from pyproject: {sorted(folders - listed)}; stale: {sorted(listed - folders)}"
    assert setuptools["package-dir"] == {f"loopdeck.{top}": top for top in SOURCE_DIRS}


@pytest.mark.slow
def test_the_wheel_puts_only_loopdeck_at_the_top_of_site_packages(tmp_path):
    pytest.importorskip("setuptools", minversion="70")  # builds wheels without the separate `wheel` package
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", *SOURCE_DIRS):
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("loopdeck-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"loopdeck", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    assert "loopdeck/__init__.py" not in names  # a namespace package: nothing generic claims the name
    assert {"loopdeck/engine/session.py", "loopdeck/console/console.tcss", "loopdeck/gpt/train.py",
            "loopdeck/cli/main.py", "loopdeck/themes/__init__.py", "loopdeck/engine/store/templates/program.md",
            "loopdeck/themes/loopdeck.tcss"} <= set(names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "loopdeck = loopdeck.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
