"""`loopdeck init`, the pinned harness, migrating an older workspace, the state directory kept out of git, hashes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from loopdeck.engine.config import load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.workspace import (
    check_not_legacy,
    file_hashes,
    init_workspace,
    is_workspace,
    migrate_workspace,
    pinned_hashes,
    state_dir,
)

TEMPLATE = "# the editable GPT training file\nprint('val_bpb: 1.0')\n"
HARNESS = "# the protected harness\nMAX_SEQ_LEN = 256\n"
HARNESS_SHA256 = hashlib.sha256(HARNESS.encode()).hexdigest()


@pytest.fixture
def template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "template_train.py"
    path.write_text(TEMPLATE)
    monkeypatch.setattr("loopdeck.gpt.TRAIN_TEMPLATE", path, raising=False)
    harness = tmp_path / "template_harness.py"
    harness.write_text(HARNESS)
    monkeypatch.setattr("loopdeck.gpt.HARNESS_TEMPLATE", harness, raising=False)
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
    assert sorted(_git(workspace, "ls-files").splitlines()) == [".gitignore", "harness.py", "loopdeck.toml",
                                                                "program.md", "train.py"]
    assert (workspace / "harness.py").read_text() == HARNESS
    assert config.experiment.protected == ["harness.py"]
    assert config.experiment.protected_sha256 == {"harness.py": HARNESS_SHA256}
    assert pinned_hashes(workspace, config.experiment) == {"harness.py": HARNESS_SHA256}
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


def test_a_harness_that_differs_from_its_pin_is_refused_in_one_line(tmp_path: Path, template: Path) -> None:
    workspace = init_workspace(tmp_path / "ws")
    (workspace / "harness.py").write_text(HARNESS + "EVAL_TOKENS = 1\n")
    config, _ = load_config(workspace)
    with pytest.raises(LoopdeckError, match=r"harness.py differs from the sha256 pinned in loopdeck.toml") as caught:
        pinned_hashes(workspace, config.experiment)
    assert "\n" not in str(caught.value)


def test_a_pin_must_name_a_protected_file() -> None:
    from loopdeck.engine.config import parse_config

    with pytest.raises(LoopdeckError, match="pins harness.py, which \\[experiment\\] protected does not list"):
        parse_config(f'[experiment]\nprotected_sha256 = {{ "harness.py" = "{HARNESS_SHA256}" }}\n')
    with pytest.raises(LoopdeckError, match="64 lowercase hex digits"):
        parse_config('[experiment]\nprotected = ["harness.py"]\nprotected_sha256 = { "harness.py" = "abc" }\n')


OLD_TRAIN = "import torch\nfrom loopdeck.gpt.harness import (\n    MAX_SEQ_LEN,\n    save_model,\n)\nprint(MAX_SEQ_LEN)\n"


def old_workspace(directory: Path, train: str = OLD_TRAIN) -> Path:
    """A workspace as the previous loopdeck made it: train.py importing the installed harness, no harness.py."""
    from loopdeck.engine.config import default_toml

    directory.mkdir()
    _git(directory, "init", "-q", "--initial-branch=main")
    ResearchRepo(directory).commit_files({"train.py": train, "program.md": "# program\n",
                                          "loopdeck.toml": default_toml(), ".gitignore": ".loopdeck/\n"}, "old init")
    return directory


@pytest.mark.parametrize("module", ["loopdeck.gpt.harness", "gpt.harness"])
def test_a_workspace_made_by_the_previous_version_is_explained_then_migrated(
        tmp_path: Path, template: Path, module: str) -> None:
    workspace = old_workspace(tmp_path / "old", OLD_TRAIN.replace("loopdeck.gpt.harness", module))
    config, _ = load_config(workspace)
    with pytest.raises(LoopdeckError, match=f"run `loopdeck migrate {workspace}`"):
        check_not_legacy(workspace, config.experiment)
    toml_before = (workspace / "loopdeck.toml").read_text()

    commit, archive = migrate_workspace(workspace)
    assert archive is None  # no session had run there
    assert _git(workspace, "rev-parse", "HEAD") == commit and _git(workspace, "branch", "--show-current") == "main"
    assert _git(workspace, "log", "-1", "--format=%s").startswith("loopdeck migrate: train.py")
    assert (workspace / "train.py").read_text() == OLD_TRAIN.replace("from loopdeck.gpt.harness", "from harness")
    assert (workspace / "harness.py").read_text() == HARNESS
    config, _ = load_config(workspace)
    assert config.experiment.protected == ["harness.py"]
    assert config.experiment.protected_sha256 == {"harness.py": HARNESS_SHA256}
    check_not_legacy(workspace, config.experiment)
    ResearchRepo(workspace).check_clean()
    # Only the two settings changed: every comment and other setting of the user's file is kept.
    changed = set((workspace / "loopdeck.toml").read_text().splitlines()) ^ set(toml_before.splitlines())
    assert {line.split(" =")[0] for line in changed} == {"protected", "protected_sha256"}
    with pytest.raises(LoopdeckError, match="needs no migration"):
        migrate_workspace(workspace)


def test_migrating_a_workspace_with_history_archives_it_and_the_next_session_measures_a_new_baseline(
        tmp_path: Path, template: Path) -> None:
    from loopdeck.engine.session import Session
    from loopdeck.engine.store.ledger import ExperimentRow, Ledger
    from loopdeck.engine.store.lock import WorkspaceLock

    workspace = old_workspace(tmp_path / "old")
    state = workspace / ".loopdeck"
    state.mkdir()
    old_head = _git(workspace, "rev-parse", "HEAD")
    ledger = Ledger(state)
    ledger.begin(ExperimentRow(id=0, status="running", description="baseline", commit=old_head,
                               parent_commit=old_head, meta={"baseline": True}))
    ledger.finish(0, "keep", metric=2.5)
    ledger.close()
    (state / "runs" / "0").mkdir(parents=True)

    lock = WorkspaceLock(state)
    lock.acquire()
    try:
        with pytest.raises(LoopdeckError, match="is running on .*stop it first"):
            migrate_workspace(workspace)
    finally:
        lock.release()
    assert not (workspace / "harness.py").exists()

    commit, archive = migrate_workspace(workspace)
    assert archive is not None and archive.parent == state and archive.name.startswith("before-migrate-")
    assert {"ledger.sqlite", "results.tsv", "runs"} <= {entry.name for entry in archive.iterdir()}
    assert Ledger(archive, create=False).incumbent().commit == old_head  # the history is kept
    session = Session(workspace)
    try:  # a fresh ledger: the loop will measure a baseline at the migrated commit instead of resetting to #0's
        assert session.ledger.incumbent() is None and _git(workspace, "rev-parse", "HEAD") == commit
    finally:
        session.close()


def test_loopdeck_migrate_on_the_command_line(tmp_path: Path, template: Path, capsys) -> None:
    from loopdeck.cli.main import main

    workspace = old_workspace(tmp_path / "old")
    assert main(["migrate", str(workspace)]) == 0
    assert "migrated" in capsys.readouterr().out and (workspace / "harness.py").is_file()
    assert main(["migrate", str(workspace)]) == 2
    assert "needs no migration" in capsys.readouterr().err


def test_a_session_on_an_old_workspace_says_how_to_migrate(tmp_path: Path, template: Path) -> None:
    from loopdeck.engine.session import Session

    workspace = old_workspace(tmp_path / "old")
    with pytest.raises(LoopdeckError, match="loopdeck migrate"):
        Session(workspace)
