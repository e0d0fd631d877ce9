"""The Claude agent's tools: confinement to the workspace, edits to the in-memory copy, refusals as messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fake_anthropic import make_turn

from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.agents.claude.tools import Workbench, call_summary

TRAIN = "LR = 0.02\nDEPTH = 4\n\ndef lr():\n    return LR\n\ndef depth():\n    return DEPTH\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "gpt").mkdir(parents=True)
    (ws / "train.py").write_text(TRAIN)
    (ws / "prepare.py").write_text("SEQ_LEN = 256\n")
    (ws / "gpt" / "harness.py").write_text("def evaluate_bpb(model):\n    return 1.0\n")
    (ws / "data.bin").write_bytes(b"\xff\xfe\x00binary")
    (ws / ".git").mkdir()
    (ws / ".git" / "config").write_text("[core]\n")
    (ws / ".loopdeck").mkdir()
    (ws / ".loopdeck" / "ledger.sqlite").write_text("state")
    (tmp_path / "secret.txt").write_text("outside the workspace\n")
    return ws


@pytest.fixture
def bench(workspace: Path) -> Workbench:
    return Workbench(make_turn(workspace))


def refusal(bench: Workbench, tool: str, **args) -> str:
    outcome = bench.run(tool, args)
    assert not outcome.ok, outcome
    assert outcome.summary  # the console gets a one-line reason too
    return outcome.content


@pytest.mark.parametrize(("path", "reason"), [
    ("/etc/passwd", "absolute paths are refused"),
    ("~/.ssh/id_rsa", "absolute paths are refused"),
    ("C:\\Windows\\win.ini", "absolute paths are refused"),
    ("../secret.txt", "'..' is refused"),
    ("gpt/../../secret.txt", "'..' is refused"),
    (".git/config", ".git and .loopdeck are off limits"),
    ("./.loopdeck/ledger.sqlite", ".git and .loopdeck are off limits"),
    ("", "non-empty string"),
    ("train\x00.py", "NUL character"),
    ("missing.py", "is not a file"),
    ("data.bin", "not UTF-8"),
])
def test_reads_outside_the_workspace_or_into_state_are_refused(bench, path, reason):
    assert reason in refusal(bench, "read_file", path=path)


def test_symlinks_leading_out_are_refused(bench, workspace):
    os.symlink(workspace.parent / "secret.txt", workspace / "link.txt")
    os.symlink(workspace / ".git", workspace / "gitlink")
    assert "outside the workspace" in refusal(bench, "read_file", path="link.txt")
    assert "into .git" in refusal(bench, "read_file", path="gitlink/config")
    listing = bench.run("list_files", {}).content
    assert "link.txt" not in listing and "gitlink" not in listing


@pytest.mark.parametrize(("path", "reason"), [
    ("prepare.py", "prepare.py is protected"),
    ("gpt/harness.py", "is not editable"),
    ("program.md", "is not editable"),
    ("../train.py", "'..' is refused"),
    (".git/config", "off limits"),
])
def test_edits_only_to_editable_files(bench, path, reason):
    assert reason in refusal(bench, "edit_file", path=path, old_string="a", new_string="b")
    assert reason in refusal(bench, "write_file", path=path, content="x = 1\n")
    assert bench.changed_files() == {}


def test_a_missing_editable_file_can_be_written_not_edited(workspace):
    bench = Workbench(make_turn(workspace, editable=("train.py", "extra.py")))  # extra.py only in the config
    assert "create it with write_file" in refusal(bench, "edit_file", path="extra.py", old_string="a",
                                                  new_string="b")
    assert bench.run("write_file", {"path": "extra.py", "content": "X = 1\n"}).ok
    assert bench.changed_files() == {"extra.py": "X = 1\n"}


def test_an_editable_path_that_is_a_symlink_is_refused(tmp_path, workspace):
    (workspace / "train.py").unlink()
    os.symlink(workspace.parent / "secret.txt", workspace / "train.py")
    bench = Workbench(make_turn(workspace))
    assert "outside the workspace" in refusal(bench, "write_file", path="train.py", content="x = 1\n")


def test_edit_replaces_exactly_one_match_in_memory(bench, workspace):
    outcome = bench.run("edit_file", {"path": "train.py", "old_string": "LR = 0.02", "new_string": "LR = 0.04"})
    assert outcome.ok and outcome.summary == "edited train.py (−1 +1)"
    assert bench.changed_files() == {"train.py": TRAIN.replace("LR = 0.02", "LR = 0.04")}
    assert (workspace / "train.py").read_text() == TRAIN
    # Later reads see the edit.
    assert "LR = 0.04" in bench.run("read_file", {"path": "./train.py"}).content


def test_edit_mismatches_are_explained(bench):
    assert "was not found" in refusal(bench, "edit_file", path="train.py", old_string="LR=0.02", new_string="x")
    assert "occurs 2 times" in refusal(bench, "edit_file", path="train.py", old_string="    return",
                                       new_string="    return 2 *")
    assert "identical" in refusal(bench, "edit_file", path="train.py", old_string="LR", new_string="LR")
    assert "write_file" in refusal(bench, "edit_file", path="train.py", old_string="", new_string="x")


def test_syntax_errors_are_flagged_and_block_the_proposal(bench):
    outcome = bench.run("edit_file", {"path": "train.py", "old_string": "DEPTH = 4", "new_string": "DEPTH = (4"})
    assert outcome.ok and "no longer compiles" in outcome.content
    reason = refusal(bench, "propose_experiment", description="deeper", rationale="more capacity")
    assert "does not compile" in reason


def test_propose_returns_the_one_line_description(bench):
    bench.run("write_file", {"path": "train.py", "content": TRAIN.replace("4", "6")})
    outcome = bench.run("propose_experiment", {"description": "  depth 4 →\n 6 ", "rationale": " deeper. "})
    assert outcome.ok and outcome.proposal == ("depth 4 → 6", "deeper.")
    assert "one short line" in refusal(bench, "propose_experiment", description="x" * 300, rationale="r")


def test_list_and_search_skip_git_and_state(bench):
    listing = bench.run("list_files", {}).content.splitlines()
    assert listing == ["data.bin", "prepare.py (protected)", "train.py (editable)", "gpt/harness.py"]
    found = bench.run("search_files", {"pattern": "return"}).content.splitlines()
    assert found == ["train.py:5: return LR", "train.py:8: return DEPTH", "gpt/harness.py:2: return 1.0"]
    assert bench.run("search_files", {"pattern": r"^DEP\w+ = \d", "regex": True}).content == "train.py:2: DEPTH = 4"
    assert "invalid regular expression" in refusal(bench, "search_files", pattern="(", regex=True)
    assert bench.run("search_files", {"pattern": "[core]"}).content == "no matches"


def test_long_files_are_read_in_slices(tmp_path):
    (tmp_path / "train.py").write_text("".join(f"X_{i} = {i}  # {'padding ' * 10}\n" for i in range(3000)))
    (tmp_path / "prepare.py").write_text("")
    bench = Workbench(make_turn(tmp_path))
    first = bench.run("read_file", {"path": "train.py"})
    assert first.content.startswith("[train.py: lines 1-") and "X_0 = 0" in first.content
    end = int(first.summary.split("-")[1].split()[0])
    following = bench.run("read_file", {"path": "train.py", "start_line": end + 1}).content
    assert f"X_{end} = {end}" in following
    assert "out of range" in refusal(bench, "read_file", path="train.py", start_line=99999)


def test_read_history_overview_and_detail(workspace):
    history = (
        ExperimentSummary(id=0, status="keep", metric=1.5, delta=None, description="baseline", baseline=True),
        ExperimentSummary(id=1, status="crash", metric=None, delta=None, description="fused attention",
                          diff="-a\n+b\n", reason="exit code 1", log_tail="Traceback…\nRuntimeError: shape"),
    )
    bench = Workbench(make_turn(workspace, history=history, incumbent=history[0]))
    assert "#1 crash no metric — fused attention" in bench.run("read_history", {}).content
    detail = bench.run("read_history", {"experiment": 1}).content
    assert "+b" in detail and "RuntimeError: shape" in detail and "exit code 1" in detail
    assert "experiments: #0–#1" in refusal(bench, "read_history", experiment=7)


def test_unknown_tools_and_bad_arguments_are_errors_not_exceptions(bench):
    assert "unknown tool" in refusal(bench, "run_shell", command="rm -rf /")
    assert "must be an integer" in refusal(bench, "read_file", path="train.py", start_line="10")
    assert "must be strings" in refusal(bench, "edit_file", path="train.py", old_string=1, new_string=2)


def test_call_summaries_are_one_short_line():
    assert call_summary("edit_file", {"path": "train.py", "old_string": "a\nb\nc", "new_string": "x\ny\nz"}) == \
        "edit_file train.py (−3 +3)"
    assert call_summary("search_files", {"pattern": "LR"}) == "search_files 'LR' in ."
    assert call_summary("read_history", {"experiment": 4}) == "read_history #4"
    long = call_summary("propose_experiment", {"description": "word " * 100})
    assert len(long) <= 160 and "\n" not in long
