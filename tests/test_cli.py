"""The command line through `loopdeck`'s own entry point: headless runs, try, status, report, ctl, errors, and
the parser itself (every RunOptions field has a flag, every option has help)."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from pathlib import Path

import pytest
from conftest import git, init_repo, ledger_rows
from fake_targets import expected_metric, fake_train_source, write_autoresearch_repo

from loopdeck.cli.main import build_parser, main
from loopdeck.cli.options import RUN_FLAGS, run_options
from loopdeck.cli.workspace import workspace_for_run
from loopdeck.engine.config import AGENT_KINDS, APPROVALS, PIPELINE_MODES
from loopdeck.engine.control import send_command
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.gitops import unified_diff

pytestmark = pytest.mark.timeout(120)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_headless_prints_one_line_per_experiment_and_a_summary(workspace, capsys):
    code, out, err = run_cli(capsys, "run", workspace, "--headless", "--agent", "offline", "--max-experiments", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("loopdeck: started on loopdeck/") and "approval auto" in lines[0]
    assert lines[1] == f"#0 baseline {expected_metric(0.5):.6f}"
    experiments = [line for line in lines if line.startswith("#")]
    assert len(experiments) == 3
    assert all(line.split()[1] in ("keep", "discard") for line in experiments[1:])
    assert "finished (max_experiments): 2 experiments" in out and "results.tsv" in lines[-1]
    first = ledger_rows(workspace)[1]
    assert experiments[1] == f"#1 {first.status} {first.metric:.6f} ({first.delta:+.4g}) {first.description}"

    code, out, _ = run_cli(capsys, "status", workspace)
    assert code == 0 and "baseline" in out and first.description in out


def test_headless_with_the_ask_policy_takes_decisions_from_loopdeck_ctl(make_workspace, capsys):
    workspace = make_workspace(approval="ask")
    journal = workspace / ".loopdeck/events.jsonl"

    def approve_when_asked() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if journal.exists() and '"kind":"approval_requested"' in journal.read_text():
                send_command(workspace, "decide", approve=True, note="go ahead")
                return
            time.sleep(0.02)

    helper = threading.Thread(target=approve_when_asked)
    helper.start()
    code, out, err = run_cli(capsys, "run", workspace, "--headless", "--max-experiments", "1")
    helper.join()
    assert code == 0, err
    assert f"loopdeck ctl {workspace} approve" in out
    assert "#1 awaiting approval: " in out and "#1 approved: go ahead" in out
    assert [r.status for r in ledger_rows(workspace)][0] == "keep" and len(ledger_rows(workspace)) == 2


def test_try_runs_a_patch_file_through_the_same_path(workspace, tmp_path, capsys):
    old = (workspace / "train.py").read_text()
    patch = tmp_path / "lower-lr.diff"
    patch.write_text(unified_diff({"train.py": old}, {"train.py": old.replace("LR = 0.5", "LR = 0.3")}))
    code, out, err = run_cli(capsys, "try", workspace, patch, "-m", "hand-made: LR 0.3")
    assert code == 0, err
    assert f"#1 keep {expected_metric(0.3):.6f}" in out
    baseline, tried = ledger_rows(workspace)
    assert baseline.status == "keep" and tried.agent == "human" and tried.description == "hand-made: LR 0.3"
    assert "+LR = 0.3" in tried.diff and git(workspace, "rev-parse", "HEAD") == tried.commit

    # The same patch no longer applies to the new incumbent: a clear error, nothing recorded.
    code, _, err = run_cli(capsys, "try", workspace, patch)
    assert code == 2 and "does not apply" in err and len(ledger_rows(workspace)) == 2
    bad = tmp_path / "harness.diff"
    bad.write_text(unified_diff({}, {"prepare.py": "X = 1\n"}))
    code, out, _ = run_cli(capsys, "try", workspace, bad)
    assert code == 1 and "#2 rejected" in out and "not an editable file" in out


def test_report_and_ctl(workspace, tmp_path, capsys):
    code, _, err = run_cli(capsys, "ctl", workspace, "pause")
    assert code == 2 and "no loopdeck session is running" in err
    run_cli(capsys, "run", workspace, "--headless", "--max-experiments", "1")
    code, out, _ = run_cli(capsys, "report", workspace, "--out", tmp_path / "report")
    assert code == 0
    assert (tmp_path / "report/progress.png").stat().st_size > 0 and (tmp_path / "report/summary.md").exists()
    assert "progress.png" in out
    code, _, err = run_cli(capsys, "ctl", workspace, "stop")
    assert code == 2 and "no loopdeck session is running" in err  # the session ended; its lock went with it


def test_an_autoresearch_repository_is_driven_unchanged(tmp_path, capsys):
    repo = tmp_path / "autoresearch"
    write_autoresearch_repo(repo)
    init_repo(repo, {})
    main_head = git(repo, "rev-parse", "main")
    code, out, err = run_cli(capsys, "run", repo, "--headless", "--max-experiments", "2")
    assert code == 0, err
    assert "settings inferred for an autoresearch-style repository" in out and "protected: prepare.py" in out
    assert f"#0 baseline {expected_metric(0.5):.6f}" in out
    assert not (repo / "loopdeck.toml").exists() and not (repo / ".gitignore").exists()
    assert ".loopdeck/" in (repo / ".git/info/exclude").read_text()
    assert git(repo, "rev-parse", "main") == main_head and git(repo, "status", "--porcelain") == ""
    assert git(repo, "branch", "--show-current").startswith("loopdeck/")


def broken(workspace: Path, problem: str) -> None:
    if problem == "dirty tree":
        (workspace / "train.py").write_text("LR = 1\n")
    elif problem == "missing train file":
        git(workspace, "rm", "-q", "train.py")
        git(workspace, "commit", "-q", "-m", "remove train.py")
    elif problem == "bad config value":
        toml = (workspace / "loopdeck.toml").read_text().replace("budget_seconds = 1.0", "budget_seconds = -3")
        (workspace / "loopdeck.toml").write_text(toml)
        git(workspace, "commit", "-qam", "bad budget")
    elif problem == "unknown agent":
        toml = (workspace / "loopdeck.toml").read_text().replace('kind = "offline"', 'kind = "gpt5"')
        (workspace / "loopdeck.toml").write_text(toml)
        git(workspace, "commit", "-qam", "unknown agent")
    elif problem == "metric never printed":
        (workspace / "train.py").write_text(fake_train_source(mode="silent"))
        git(workspace, "commit", "-qam", "silent")


@pytest.mark.parametrize("problem, message", [
    ("not a git repo", "is not a git repository"),
    ("dirty tree", "uncommitted changes"),
    ("missing train file", "train.py not found"),
    ("bad config value", "experiment.budget_seconds: must be > 0, got -3"),
    ("unknown agent", "agent.kind: must be one of"),
    ("metric never printed", "the baseline run failed (metric never printed)"),
])
def test_user_errors_are_one_line_and_exit_2(make_workspace, tmp_path, capsys, problem, message):
    if problem == "not a git repo":
        workspace = tmp_path / "plain"
        workspace.mkdir()
        (workspace / "train.py").write_text("print('val_bpb: 1.0')\n")
    else:
        workspace = make_workspace()
        broken(workspace, problem)
    code, _, err = run_cli(capsys, "run", workspace, "--headless")
    assert code == 2
    assert err.startswith("loopdeck: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_on_a_new_path_creates_the_workspace_first(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    # The claude agent without a key stops it right after init, before any (real, slow) training.
    code, out, err = run_cli(capsys, "run", tmp_path / "new", "--headless", "--agent", "claude")
    assert "did not exist or was empty: created a workspace" in out
    assert code == 2 and "ANTHROPIC_API_KEY" in err
    assert (tmp_path / "new/loopdeck.toml").exists() and (tmp_path / "new/train.py").exists()


def test_init_creates_a_committed_workspace_once(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "init", tmp_path / "fresh", "--budget", "5", "--approve", "auto")
    assert code == 0 and "created a loopdeck workspace" in out
    assert 'approval = "auto"' in (tmp_path / "fresh/loopdeck.toml").read_text()
    assert git(tmp_path / "fresh", "status", "--porcelain") == ""
    code, out, _ = run_cli(capsys, "init", tmp_path / "fresh")
    assert code == 0 and "already a loopdeck workspace" in out


def test_an_unknown_users_home_is_one_clear_line_for_the_console_commands(capsys) -> None:
    for command in ("run", "watch"):
        assert main([command, "~no-such-user-here/ws"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("loopdeck: error: ~no-such-user-here/ws") and "Traceback" not in err


def help_of(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_every_run_option_has_a_flag_on_loopdeck_run(capsys):
    help_text = help_of(capsys, "run")
    for field in dataclasses.fields(RunOptions):
        flag = RUN_FLAGS.get(field.name)
        assert flag and re.search(rf"^  {flag}\b", help_text, re.M), f"RunOptions.{field.name}: no flag on `run`"
        choices = re.search(rf"^  {flag} \{{([^}}]*)\}}", help_text, re.M)
        value = choices.group(1).split(",")[-1] if choices else "2"
        options = run_options(build_parser().parse_args(["run", "DIR", flag, value]))
        assert str(getattr(options, field.name)) in (value, "2.0"), (field.name, options)
        assert all(getattr(options, other.name) is None for other in dataclasses.fields(RunOptions)
                   if other.name != field.name), (field.name, options)
    assert run_options(build_parser().parse_args(["run", "--autonomous"])).approval == "auto"


def test_the_choices_are_the_engines(capsys):
    run_help = help_of(capsys, "run")
    for flag, choices in (("--agent", AGENT_KINDS), ("--approve", APPROVALS), ("--pipeline", PIPELINE_MODES)):
        assert f"{flag} {{{','.join(choices)}}}" in run_help
    assert "--agent {" + ",".join(AGENT_KINDS) + "}" in help_of(capsys, "init")


def test_pipeline_from_the_command_line_reaches_the_session(workspace):
    session = Session(workspace, run_options(build_parser().parse_args(["run", str(workspace), "--pipeline", "off"])))
    try:
        assert session.config.loop.pipeline == "off"
    finally:
        session.close()


def _options_in(help_text: str) -> dict[str, str]:
    """Each argument of a `--help` page (its invocation, e.g. `--budget SECONDS`) and its help text."""
    found: dict[str, str] = {}
    current = ""
    for line in help_text.splitlines():
        if re.match(r"  \S", line):
            current, _, text = re.split(r"(\s{2,}|$)", line.strip(), maxsplit=1)
            found[current] = text.strip()
        elif current and re.match(r" {4,}\S", line):
            found[current] = f"{found[current]} {line.strip()}".strip()
        else:
            current = ""
    return found


def test_every_option_of_every_subcommand_helps_and_states_its_default(capsys):
    subcommands = re.findall(r"^    (\w+) ", help_of(capsys), re.M)
    assert {"train", "init", "run", "watch", "status", "try", "report", "ctl"} <= set(subcommands)
    for name in subcommands:
        for invocation, text in _options_in(help_of(capsys, name)).items():
            assert text, f"loopdeck {name} {invocation}: no help text"
            takes_a_value = invocation.startswith("-") and re.search(r"[A-Z{]", invocation)
            optional_positional = invocation == "DIR" and "DIR]" in help_of(capsys, name)
            if takes_a_value or optional_positional:
                assert "default" in text, f"loopdeck {name} {invocation}: no default stated: {text}"


def test_run_on_a_missing_or_empty_dir_makes_one_workspace_with_the_options(tmp_path):
    (tmp_path / "empty").mkdir()
    for directory in (tmp_path / "new", tmp_path / "empty"):
        path, notes = workspace_for_run(str(directory), RunOptions(budget_seconds=7, approval="auto"))
        assert path == directory.absolute() and "did not exist or was empty" in notes[0]
        toml = (path / "loopdeck.toml").read_text()
        assert "budget_seconds = 7" in toml and 'approval = "auto"' in toml
        assert workspace_for_run(str(directory), RunOptions()) == (directory, [])
