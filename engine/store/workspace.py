"""Research workspaces: `loopdeck init`, the `.loopdeck/` state directory, and file hashes."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from string import Template

from loopdeck.engine.config import CONFIG_FILE, STATE_DIR, default_toml, parse_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo

__all__ = ["STATE_DIR", "file_hashes", "init_workspace", "is_workspace", "program_text", "state_dir"]
TEMPLATES = Path(__file__).parent / "templates"
GITIGNORE = f"{STATE_DIR}/\n__pycache__/\nruns/\n"  # runs/: a hand-run `python train.py` writes there


def _train_template() -> Path:
    # Imported here so that `engine` does not load the gpt package (and torch) until a workspace is created.
    from loopdeck.gpt import TRAIN_TEMPLATE

    return Path(TRAIN_TEMPLATE)


def is_workspace(directory: Path | str) -> bool:
    """True for a git repository with a loopdeck.toml at its root."""
    directory = Path(directory)
    return (directory / ".git").exists() and (directory / CONFIG_FILE).is_file()


def program_text(budget_seconds: float, editable: Iterable[str]) -> str:
    """The research instructions the agent reads (program.md) for this budget and these files."""
    names = ", ".join(f"`{name}`" for name in editable)
    return Template((TEMPLATES / "program.md").read_text(encoding="utf-8")).substitute(
        budget=f"{budget_seconds:g}", editable=names)


def init_workspace(directory: Path | str, *, budget: float | None = None, data: str | None = None,
                   agent: str | None = None, approval: str | None = None) -> Path:
    """Create (or return, if it already is one) a committed workspace: train.py, program.md, loopdeck.toml."""
    path = Path(directory).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise LoopdeckError(f"{path} is a file: give `loopdeck init` a new or empty directory")
    if is_workspace(path):
        return path
    if path.exists() and any(path.iterdir()):
        raise LoopdeckError(f"{path} is not empty and is not a loopdeck workspace: give `loopdeck init` a new or "
                            f"empty directory (an existing autoresearch-style repository runs as it is with "
                            f"`loopdeck run {path}`)")
    overrides = {"budget_seconds": budget, "data": data, "kind": agent, "approval": approval}
    toml = default_toml(**{name: value for name, value in overrides.items() if value is not None})
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        _git(path, "init", "-q", "--initial-branch=main")
        config = parse_config(toml)
        files = {
            "train.py": _train_template().read_text(encoding="utf-8"),
            "program.md": program_text(config.experiment.budget_seconds, config.experiment.editable),
            CONFIG_FILE: toml,
            ".gitignore": GITIGNORE,
        }
        ResearchRepo(path).commit_files(files, "loopdeck init: train.py, program.md, loopdeck.toml")
        state_dir(path)
    except BaseException:
        # A half-made workspace would be refused as "not empty" by the next attempt: leave nothing behind.
        if created:
            shutil.rmtree(path, ignore_errors=True)
        else:
            for child in path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    return path


def state_dir(workspace: Path | str) -> Path:
    """`.loopdeck/` inside the workspace, created and kept out of git (via .git/info/exclude if not ignored)."""
    workspace = Path(workspace)
    directory = workspace / STATE_DIR
    directory.mkdir(exist_ok=True)
    ignored = subprocess.run(["git", "-C", str(workspace), "check-ignore", "-q", f"{STATE_DIR}/"],
                             capture_output=True)
    if ignored.returncode == 1:
        # A repository loopdeck did not create: keep our state out of git without touching the user's .gitignore.
        exclude = Path(_git(workspace, "rev-parse", "--path-format=absolute", "--git-path", "info/exclude"))
        exclude.parent.mkdir(parents=True, exist_ok=True)
        existing = exclude.read_text(encoding="utf-8") if exclude.exists() else ""
        separator = "" if not existing or existing.endswith("\n") else "\n"
        exclude.write_text(f"{existing}{separator}{STATE_DIR}/\n", encoding="utf-8")
    return directory


def file_hashes(workspace: Path | str, paths: Iterable[str]) -> dict[str, str]:
    """sha256 hex digest of each file (relative path -> digest); a missing file raises LoopdeckError."""
    hashes = {}
    for name in paths:
        try:
            hashes[name] = hashlib.sha256((Path(workspace) / name).read_bytes()).hexdigest()
        except OSError as exc:
            raise LoopdeckError(f"cannot read {name} in {workspace}: {exc.strerror}") from None
    return hashes


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise LoopdeckError(f"git {args[0]} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()
