"""Research workspaces: `loopdeck init`, migrating an older workspace, the `.loopdeck/` state directory, hashes.

A workspace made here is self-contained: train.py imports `harness` from the harness.py beside it, which is
protected and hash-pinned in loopdeck.toml, so `python train.py` runs where only torch is installed and a loopdeck
upgrade never changes how the workspace is measured.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from string import Template

from loopdeck.engine.config import (
    CONFIG_FILE,
    STATE_DIR,
    ExperimentSettings,
    default_toml,
    load_config,
    parse_config,
    pin_protected_file,
)
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.lock import LOCK_FILE, is_locked

__all__ = ["STATE_DIR", "check_not_legacy", "file_hashes", "init_workspace", "is_workspace", "migrate_workspace",
           "pinned_hashes", "program_text", "state_dir"]
TEMPLATES = Path(__file__).parent / "templates"
GITIGNORE = f"{STATE_DIR}/\n__pycache__/\nruns/\n"  # runs/: a hand-run `python train.py` writes there
# How train.py imported the installed harness before workspaces held their own (`gpt.` before the namespace).
ARCHIVE_PREFIX = "before-migrate-"  # .loopdeck/ folders holding the state of sessions before a migration
LEGACY_IMPORT = re.compile(r"^from (?:loopdeck\.)?gpt\.harness import", re.MULTILINE)


def _gpt_templates() -> tuple[Path, Path, str]:
    """The train.py and harness.py templates and the harness's name in a workspace."""
    # Imported here: the engine needs the gpt package only when it creates or migrates a workspace.
    from loopdeck.gpt import HARNESS_FILE, HARNESS_TEMPLATE, TRAIN_TEMPLATE

    return Path(TRAIN_TEMPLATE), Path(HARNESS_TEMPLATE), HARNESS_FILE


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
    train_template, harness_template, harness_file = _gpt_templates()
    harness = harness_template.read_text(encoding="utf-8")
    overrides = {"budget_seconds": budget, "data": data, "kind": agent, "approval": approval,
                 "protected": [harness_file], "protected_sha256": {harness_file: _sha256(harness)},
                 "scale_knobs": {"DEPTH": "x"}}  # the template's size dial (`loopdeck transfer`)
    toml = default_toml(**{name: value for name, value in overrides.items() if value is not None})
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        _git(path, "init", "-q", "--initial-branch=main")
        config = parse_config(toml)
        files = {
            "train.py": train_template.read_text(encoding="utf-8"),
            harness_file: harness,
            "program.md": program_text(config.experiment.budget_seconds, config.experiment.editable),
            CONFIG_FILE: toml,
            ".gitignore": GITIGNORE,
        }
        ResearchRepo(path).commit_files(files, f"loopdeck init: train.py, {harness_file}, program.md, loopdeck.toml")
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


def _legacy_files(workspace: Path, config_editable: Iterable[str]) -> list[str]:
    """The editable Python files that import the installed harness (a workspace made by an earlier loopdeck)."""
    found = []
    for name in config_editable:
        path = workspace / name
        if name.endswith(".py") and path.is_file() and LEGACY_IMPORT.search(path.read_text(encoding="utf-8",
                                                                                          errors="replace")):
            found.append(name)
    return found


def check_not_legacy(workspace: Path | str, experiment: ExperimentSettings) -> None:
    """LoopdeckError (one line) for a workspace whose training file imports loopdeck's installed harness."""
    workspace = Path(workspace)
    old = _legacy_files(workspace, experiment.editable)
    if old:
        raise LoopdeckError(f"{old[0]} imports the harness installed with loopdeck (a workspace made by an earlier "
                            f"version), so upgrading loopdeck would change how it is measured: run `loopdeck "
                            f"migrate {workspace}` to give it its own pinned harness.py")


def pinned_hashes(workspace: Path | str, experiment: ExperimentSettings) -> dict[str, str]:
    """sha256 of each protected file; LoopdeckError (one line) when one differs from its pin in loopdeck.toml."""
    hashes = file_hashes(workspace, experiment.protected)
    for name, pinned in experiment.protected_sha256.items():
        if hashes[name] != pinned:
            raise LoopdeckError(f"{name} differs from the sha256 pinned in {CONFIG_FILE} ([experiment] "
                                f"protected_sha256): it defines how this workspace is measured; restore it (git "
                                f"checkout -- {name}) or, to adopt the change on purpose, pin {hashes[name]}")
    return hashes


def migrate_workspace(directory: Path | str) -> tuple[str, Path | None]:
    """Give a workspace made by an earlier loopdeck its own harness: copy harness.py, rewrite train.py's harness
    import, protect and pin harness.py in loopdeck.toml, all in one commit on the current branch. Returns that
    commit and where the earlier session state was archived (None when there was none)."""
    path = Path(directory).expanduser().absolute()
    if not is_workspace(path):
        raise LoopdeckError(f"{path} is not a loopdeck workspace (a git repository with a {CONFIG_FILE}): "
                            "nothing to migrate")
    config, _ = load_config(path)
    old = _legacy_files(path, config.experiment.editable)
    if not old:
        raise LoopdeckError(f"{path} needs no migration: no editable file imports loopdeck's installed harness")
    repo = ResearchRepo(path)
    repo.check_clean()
    _, harness_template, harness_file = _gpt_templates()
    if (path / harness_file).exists():
        raise LoopdeckError(f"{path / harness_file} already exists: move it away, then migrate again")
    harness = harness_template.read_text(encoding="utf-8")
    files = {name: LEGACY_IMPORT.sub("from harness import", (path / name).read_text(encoding="utf-8"))
             for name in old}
    files[harness_file] = harness
    files[CONFIG_FILE] = pin_protected_file((path / CONFIG_FILE).read_text(encoding="utf-8"), harness_file,
                                            _sha256(harness))
    state = path / STATE_DIR
    holder = is_locked(state) if state.is_dir() else None
    if holder:
        raise LoopdeckError(f"a loopdeck engine (pid {holder.get('pid', '?')}) is running on {path}: stop it "
                            "first (`loopdeck ctl DIR stop`), then migrate")
    commit = repo.commit_files(files, f"loopdeck migrate: {', '.join(old)} imports its own pinned {harness_file}")
    return commit, _archive_state(state)


def _archive_state(state: Path) -> Path | None:
    """Move the session state (ledger, results.tsv, runs, journal) into `.loopdeck/before-migrate-<time>/`.

    Its scores came from the harness of an earlier loopdeck, so they cannot be compared with what the pinned copy
    measures, and a ledger whose incumbent predates the migration would reset the tree to it at the next start.
    The next session therefore measures a fresh baseline at the migrated commit; the history stays on disk and in
    git."""
    entries = [entry for entry in state.iterdir() if entry.name != LOCK_FILE
               and not entry.name.startswith(ARCHIVE_PREFIX)] if state.is_dir() else []
    if not entries:
        return None
    archive = state / f"{ARCHIVE_PREFIX}{time.strftime('%Y%m%d-%H%M%S')}"
    archive.mkdir()
    for entry in entries:
        entry.rename(archive / entry.name)
    return archive


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise LoopdeckError(f"git {args[0]} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout.strip()
