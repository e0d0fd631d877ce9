"""`loopdeck init`, the state directory kept out of git, and file hashes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from loopdeck.engine.config import load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.workspace import file_hashes, init_workspace, is_workspace, state_dir

TEMPLATE = "# the editable GPT training file\nprint('val_bpb: 1.0')\n"


@pytest.fixture
def template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "template_train.py"
    path.write_text(TEMPLATE)
    monkeypatch.setattr("loopdeck.gpt.TRAIN_TEMPLATE", path, raising=False)
    # No global identity: init must commit with its own.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return path


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_init_creates_a_committed_workspace(tmp_path: Path, template: Path) -> None:
    workspace = init_workspace(tmp_path / "ws", budget=7, data="corpus/*.txt", agent="offline", approval="auto")
    assert workspace == tmp_path / "ws" and is_workspace(workspace)
    assert (workspace / "train.py").read_text() == TEMPLATE
    program = (workspace / "program.md").read_text()
    assert "7 seconds" in program and "`train.py`" in program and "Simplicity" in program
    assert "${" not in program
    config, notes = load_config(workspace)
    assert notes == []
    assert config.experiment.budget_seconds == 7.0 and config.experiment.data == "corpus/*.txt"
    assert (config.agent.kind, config.loop.approval) == ("offline", "auto")
    assert ".loopdeck/" in (workspace / ".gitignore").read_text().splitlines()
    assert _git(workspace, "branch", "--show-current") == "main"
    assert _git(workspace, "log", "--format=%an <%ae>") == "loopdeck <loopdeck@localhost>"
    assert sorted(_git(workspace, "ls-files").splitlines()) == [".gitignore", "loopdeck.toml", "program.md",
                                                                "train.py"]
    assert (workspace / ".loopdeck").is_dir()
    ResearchRepo(workspace).check_clean()


def test_init_is_idempotent_on_a_workspace(tmp_path: Path, template: Path) -> None:
    workspace = init_workspace(tmp_path / "ws")
    head = _git(workspace, "rev-parse", "HEAD")
    (workspace / "loopdeck.toml").write_text((workspace / "loopdeck.toml").read_text() + "# mine\n")
    assert init_workspace(workspace) == workspace
    assert _git(workspace, "rev-parse", "HEAD") == head
    assert (workspace / "loopdeck.toml").read_text().endswith("# mine\n")


def test_init_accepts_an_empty_directory(tmp_path: Path, template: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert is_workspace(init_workspace(tmp_path / "empty"))


def test_init_refuses_a_foreign_non_empty_directory(tmp_path: Path, template: Path) -> None:
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LoopdeckError, match="not empty and is not a loopdeck workspace"):
        init_workspace(foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(LoopdeckError, match="is a file"):
        init_workspace(tmp_path / "file")


def test_failed_init_leaves_nothing_behind(tmp_path: Path, template: Path) -> None:
    template.unlink()
    with pytest.raises(FileNotFoundError):
        init_workspace(tmp_path / "ws")
    assert not (tmp_path / "ws").exists()


def test_bad_init_setting_is_a_clear_error(tmp_path: Path, template: Path) -> None:
    with pytest.raises(LoopdeckError, match="loop.approval"):
        init_workspace(tmp_path / "ws", approval="sometimes")
    assert not (tmp_path / "ws").exists()


def test_state_dir_of_a_foreign_repo_uses_info_exclude(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("*.log")
    directory = state_dir(repo)
    state_dir(repo)
    assert directory == repo / ".loopdeck" and directory.is_dir()
    (directory / "ledger.sqlite").write_text("x")
    assert (repo / ".gitignore").read_text() == "*.log"
    assert (repo / ".git" / "info" / "exclude").read_text().count(".loopdeck/") == 1
    assert _git(repo, "status", "--porcelain", "--untracked-files=all") == "?? .gitignore"


def test_file_hashes(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_bytes(b"x = 1\n")
    assert file_hashes(tmp_path, ["a.py"]) == {"a.py": hashlib.sha256(b"x = 1\n").hexdigest()}
    with pytest.raises(LoopdeckError, match="cannot read b.py"):
        file_hashes(tmp_path, ["b.py"])
