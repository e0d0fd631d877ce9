"""The research branch: clean-tree checks, branches, commits, resets, diffs and patches."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.gitops import ResearchRepo, unified_diff

TRAIN = "LR = 0.1\nprint('val_bpb: 1.0')\n"


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ResearchRepo:
    # No global identity or config: loopdeck's commits must not need one.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "-q", "--initial-branch=main")
    research = ResearchRepo(path)
    research.commit_files({"train.py": TRAIN, "prepare.py": "X = 1\n", ".gitignore": "*.log\n.loopdeck/\n"},
                          "initial")
    return research


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(LoopdeckError, match="not a git repository"):
        ResearchRepo(tmp_path)


def test_clean_tree_passes_and_ignored_or_state_files_do_not_count(repo: ResearchRepo) -> None:
    repo.check_clean()
    (repo.path / "run.log").write_text("ignored")
    (repo.path / ".loopdeck").mkdir()
    (repo.path / ".loopdeck" / "ledger.sqlite").write_text("state")
    (repo.path / "__pycache__").mkdir()
    (repo.path / "__pycache__" / "prepare.cpython-311.pyc").write_bytes(b"\0")
    repo.check_clean()
    repo.commit_files({".gitignore": "*.log\n"}, "stop ignoring")  # .loopdeck/ is still not user work
    repo.check_clean()


@pytest.mark.parametrize("dirt", ["modified", "untracked", "staged"])
def test_dirty_tree_is_refused(repo: ResearchRepo, dirt: str) -> None:
    if dirt == "modified":
        (repo.path / "train.py").write_text("LR = 0.2\n")
    elif dirt == "untracked":
        (repo.path / "notes.txt").write_text("mine")
    else:
        (repo.path / "new.py").write_text("x = 1\n")
        _git(repo.path, "add", "new.py")
    with pytest.raises(LoopdeckError, match="uncommitted changes .*commit, stash"):
        repo.check_clean()


def test_detached_head_and_empty_repo_are_refused(repo: ResearchRepo, tmp_path: Path) -> None:
    _git(repo.path, "checkout", "-q", "--detach")
    with pytest.raises(LoopdeckError, match="HEAD is detached .*check out a branch"):
        repo.check_clean()
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    with pytest.raises(LoopdeckError, match="no commits yet"):
        ResearchRepo(empty).check_clean()


def test_branch_is_created_from_the_current_commit_and_resumed(repo: ResearchRepo) -> None:
    base = repo.head()
    assert repo.ensure_branch("night1") == "loopdeck/night1"
    assert repo.current_branch() == "loopdeck/night1" and repo.head() == base
    kept = repo.commit_files({"train.py": TRAIN.replace("0.1", "0.2")}, "raise LR")
    assert _git(repo.path, "rev-parse", "main") == base  # the user's branch never moves
    _git(repo.path, "checkout", "-q", "main")
    assert repo.ensure_branch("night1") == "loopdeck/night1"
    assert repo.head() == kept
    assert repo.ensure_branch("night1") == "loopdeck/night1"
    with pytest.raises(LoopdeckError, match="not a valid branch name"):
        repo.ensure_branch("bad..tag")


def test_commit_stages_exactly_the_given_files(repo: ResearchRepo) -> None:
    repo.ensure_branch("t")
    (repo.path / "other.py").write_text("y = 2\n")
    _git(repo.path, "add", "other.py")
    sha = repo.commit_files({"train.py": "LR = 0.3\n"}, "lower LR")
    assert sha == repo.head() == _git(repo.path, "rev-parse", "HEAD")
    assert _git(repo.path, "show", "--name-only", "--format=%an <%ae>|%s", sha).splitlines() == [
        "loopdeck <loopdeck@localhost>|lower LR", "", "train.py"]
    assert _git(repo.path, "diff", "--cached", "--name-only") == "other.py"
    with pytest.raises(LoopdeckError, match="nothing to commit"):
        repo.commit_files({"train.py": "LR = 0.3\n"}, "same again")


def test_reset_reverts_and_cleans_but_keeps_state_and_ignored_files(repo: ResearchRepo) -> None:
    repo.ensure_branch("t")
    base = repo.head()
    repo.commit_files({"train.py": "LR = 9\n"}, "bad idea")
    (repo.path / "checkpoint.bin").write_bytes(b"\0" * 10)
    (repo.path / "outputs").mkdir()
    (repo.path / "outputs" / "x.txt").write_text("x")
    (repo.path / "run.log").write_text("ignored")
    (repo.path / ".loopdeck").mkdir()
    (repo.path / ".loopdeck" / "ledger.sqlite").write_text("precious")
    repo.reset_to(base)
    assert repo.head() == base and (repo.path / "train.py").read_text() == TRAIN
    assert not (repo.path / "checkpoint.bin").exists() and not (repo.path / "outputs").exists()
    assert (repo.path / "run.log").exists()
    assert (repo.path / ".loopdeck" / "ledger.sqlite").read_text() == "precious"
    repo.check_clean()


def test_reset_never_touches_a_user_branch(repo: ResearchRepo) -> None:
    head = repo.head()
    (repo.path / "train.py").write_text("work in progress\n")
    with pytest.raises(LoopdeckError, match="refusing to reset main"):
        repo.reset_to(head)
    assert (repo.path / "train.py").read_text() == "work in progress\n"


def test_commit_and_reset_are_fast(repo: ResearchRepo) -> None:
    repo.ensure_branch("t")
    base = repo.head()
    started = time.perf_counter()
    for i in range(10):
        repo.commit_files({"train.py": f"LR = {i}\n"}, f"try {i}")
        repo.reset_to(base)
    per_experiment = (time.perf_counter() - started) / 10
    assert per_experiment < 0.25, f"commit + reset took {per_experiment * 1000:.0f} ms"


def test_diff_and_read_files(repo: ResearchRepo) -> None:
    repo.ensure_branch("t")
    base = repo.head()
    new = repo.commit_files({"train.py": TRAIN.replace("0.1", "0.05")}, "halve LR")
    diff = repo.diff(base, new)
    assert "-LR = 0.1\n+LR = 0.05\n" in diff and diff.startswith("diff --git a/train.py b/train.py")
    assert repo.read_files(["train.py"], at=base) == {"train.py": TRAIN}
    assert repo.read_files(["train.py"])["train.py"].startswith("LR = 0.05")
    with pytest.raises(LoopdeckError, match="missing.py not found"):
        repo.read_files(["missing.py"], at=base)


@pytest.mark.parametrize("after", [TRAIN.replace("0.1", "0.2") + "print('done')", "LR = 1\n", TRAIN + "\n# end\n"])
def test_unified_diff_round_trips_through_apply_patch(repo: ResearchRepo, after: str) -> None:
    patch = unified_diff({"train.py": TRAIN}, {"train.py": after})
    assert patch.startswith("diff --git a/train.py b/train.py\n--- a/train.py\n+++ b/train.py\n@@")
    assert repo.apply_patch(patch) == {"train.py": after}
    assert (repo.path / "train.py").read_text() == TRAIN
    repo.check_clean()


def test_apply_patch_accepts_git_diff_output_and_new_files(repo: ResearchRepo) -> None:
    (repo.path / "train.py").write_text(TRAIN.replace("0.1", "0.01"))
    (repo.path / "extra.py").write_text("Z = 3\n")
    _git(repo.path, "add", "-N", "extra.py")
    patch = _git(repo.path, "diff") + "\n"
    _git(repo.path, "reset", "-q", "--hard")
    (repo.path / "extra.py").unlink(missing_ok=True)
    assert repo.apply_patch(patch) == {"train.py": TRAIN.replace("0.1", "0.01"), "extra.py": "Z = 3\n"}
    assert not (repo.path / "extra.py").exists()
    # plain `diff -u old new` output: no git header, no a/ b/ prefixes
    plain = unified_diff({"train.py": TRAIN}, {"train.py": "LR = 2\n"}).split("\n", 1)[1]
    plain = plain.replace("--- a/train.py", "--- train.py").replace("+++ b/train.py", "+++ train.py")
    assert repo.apply_patch(plain) == {"train.py": "LR = 2\n"}


def test_bad_patches_are_refused_and_leave_the_tree_alone(repo: ResearchRepo) -> None:
    stale = unified_diff({"train.py": "LR = 5\nsomething else\n"}, {"train.py": "LR = 6\nsomething else\n"})
    with pytest.raises(LoopdeckError, match="does not apply"):
        repo.apply_patch(stale)
    with pytest.raises(LoopdeckError, match="empty"):
        repo.apply_patch("  \n")
    with pytest.raises(LoopdeckError, match="does not apply"):
        repo.apply_patch("this is not a patch\n")
    _git(repo.path, "rm", "-q", "prepare.py")
    deletion = _git(repo.path, "diff", "--cached") + "\n"
    _git(repo.path, "reset", "-q", "--hard")
    with pytest.raises(LoopdeckError, match="deletes prepare.py"):
        repo.apply_patch(deletion)
    repo.check_clean()
    assert (repo.path / "train.py").read_text() == TRAIN


def test_unified_diff_skips_unchanged_files() -> None:
    assert unified_diff({"a.py": "x\n"}, {"a.py": "x\n"}) == ""
    assert unified_diff({}, {"new.py": "y\n"}).startswith("diff --git a/new.py b/new.py\nnew file mode")
