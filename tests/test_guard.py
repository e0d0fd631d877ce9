"""The guard refuses every proposal that reaches outside the editable files or cannot run, with one-line reasons."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loopdeck.engine.research.guard import MAX_FILE_BYTES, GuardRejection, check_proposal
from loopdeck.engine.store.workspace import file_hashes

TRAIN = "LR = 0.1\nprint('val_bpb: 1.0')\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "prepare.py").write_text("EVAL_TOKENS = 1000\n")
    (root / "notes.md").write_text("not editable\n")
    return root


def _check(workspace: Path, files: dict, editable: tuple[str, ...] = ("train.py",)) -> list[str]:
    return check_proposal(files, workspace=workspace, editable=editable,
                          protected_hashes=file_hashes(workspace, ["prepare.py"]))


def _reason(workspace: Path, files: dict, editable: tuple[str, ...] = ("train.py",)) -> str:
    with pytest.raises(GuardRejection) as info:
        _check(workspace, files, editable)
    reason = info.value.reason
    assert reason == str(info.value) and "\n" not in reason
    return reason


def test_a_valid_proposal_passes(workspace: Path) -> None:
    changed = TRAIN.replace("0.1", "0.05")
    assert _check(workspace, {"train.py": changed}) == ["train.py"]
    # unchanged files in the proposal are not reported as changes
    assert _check(workspace, {"train.py": changed, "model.py": "x = 1\n"}, ("train.py", "model.py")) == [
        "model.py", "train.py"]


@pytest.mark.parametrize(("path", "expected"), [
    ("/etc/passwd", "absolute paths are not allowed"),
    ("C:\\train.py", "absolute paths are not allowed"),
    ("../train.py", "'..' would leave the workspace"),
    ("sub/../../x.py", "'..' would leave the workspace"),
    (".git/config", "the .git directory is off limits"),
    (".git/hooks/pre-commit", "the .git directory is off limits"),
    (".loopdeck/ledger.sqlite", ".loopdeck/ holds loopdeck's own state"),
    ("notes.md", "not an editable file (editable: train.py)"),
    ("prepare.py", "not an editable file"),
    ("", "expected a relative file path"),
])
def test_paths_outside_the_editable_set_are_refused(workspace: Path, path: str, expected: str) -> None:
    assert expected in _reason(workspace, {path: "x = 1\n", "train.py": TRAIN.replace("0.1", "0.2")})


def test_symlinks_out_of_the_workspace_or_to_other_files_are_refused(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("secret = 1\n")
    os.symlink(outside, workspace / "link.py")
    assert "symlink pointing outside the workspace" in _reason(workspace, {"link.py": "x = 2\n"},
                                                               ("train.py", "link.py"))
    os.symlink(workspace / "prepare.py", workspace / "inner.py")
    assert "symlink to prepare.py, which is not editable" in _reason(workspace, {"inner.py": "x = 2\n"},
                                                                     ("train.py", "inner.py"))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", workspace / "pkg")
    assert "outside the workspace" in _reason(workspace, {"pkg/mod.py": "x = 2\n"}, ("train.py", "pkg/mod.py"))
    assert outside.read_text() == "secret = 1\n"


def test_protected_files_must_be_unchanged(workspace: Path) -> None:
    hashes = file_hashes(workspace, ["prepare.py"])
    (workspace / "prepare.py").write_text("EVAL_TOKENS = 1\n")
    with pytest.raises(GuardRejection, match="protected file prepare.py was modified"):
        check_proposal({"train.py": "LR = 1\n"}, workspace=workspace, editable=["train.py"],
                       protected_hashes=hashes)
    (workspace / "prepare.py").unlink()
    with pytest.raises(GuardRejection, match="protected file prepare.py is missing"):
        check_proposal({"train.py": "LR = 1\n"}, workspace=workspace, editable=["train.py"],
                       protected_hashes=hashes)


@pytest.mark.parametrize(("content", "expected"), [
    ("x = 1\0\n", "contains NUL bytes"),
    ("x = '\udcff'\n", "not valid UTF-8 text"),
    (b"x = 1\n", "binary content"),
    ("# " + "x" * MAX_FILE_BYTES + "\n", "over the 1,000,000-byte limit"),
    ("LR = 0.1\ndef f(:\n    pass\n", "does not compile: train.py:2: SyntaxError"),
    ("if True:\nreturn_value = 1\n", "train.py:2: IndentationError"),
])
def test_content_that_cannot_run_is_refused(workspace: Path, content: object, expected: str) -> None:
    assert expected in _reason(workspace, {"train.py": content})


def test_non_python_files_are_not_compiled(workspace: Path) -> None:
    assert _check(workspace, {"notes.md": "def f(:\n"}, ("train.py", "notes.md")) == ["notes.md"]


def test_no_change_is_refused(workspace: Path) -> None:
    assert "no change" in _reason(workspace, {"train.py": TRAIN})
    assert "no change" in _reason(workspace, {})


def test_incumbent_contents_can_be_given(workspace: Path) -> None:
    incumbent = {"train.py": "LR = 5\n"}
    assert "no change" in _reason_with(workspace, {"train.py": "LR = 5\n"}, incumbent)
    assert check_proposal({"train.py": TRAIN}, workspace=workspace, editable=["train.py"], protected_hashes={},
                          incumbent=incumbent) == ["train.py"]


def _reason_with(workspace: Path, files: dict, incumbent: dict) -> str:
    with pytest.raises(GuardRejection) as info:
        check_proposal(files, workspace=workspace, editable=["train.py"], protected_hashes={}, incumbent=incumbent)
    return info.value.reason
