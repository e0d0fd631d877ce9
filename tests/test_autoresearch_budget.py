"""autoresearch repositories: `--budget` takes effect (or is refused), a run that finishes the step crossing its
budget is not rejected, and a repo that cannot be seeded gets one baseline run (issue 17)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from autoresearch_fixture import make_repo
from conftest import ledger_rows

from loopdeck.engine.config import budget_location, find_budget_constant, load_config, parse_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.research.budget_check import BudgetCheck, last_step_seconds
from loopdeck.engine.run.executor import RunResult
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.budget import rewrite_constant
from loopdeck.engine.store.workspace import file_hashes


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _result(tmp_path: Path, log: str, training_seconds: float, wall: float = 45.0) -> RunResult:
    log_path = tmp_path / "log.txt"
    log_path.write_text(log)
    return RunResult(returncode=0, timed_out=False, aborted=False, wall_seconds=wall, peak_rss_mb=None,
                     log_tail=log[-200:], summary={"val_bpb": "1.0", "training_seconds": str(training_seconds)},
                     log_path=log_path)


# --- the budget check knows the step granularity -------------------------------------------------------------------


def test_last_step_duration_is_read_from_progress_lines() -> None:
    log = "\rstep 00001 (10.0%) | loss: 3.0 | dt: 9100ms | remaining: 20s\rstep 00002 (40.0%) | dt: 8950ms |\n"
    assert last_step_seconds(log) == pytest.approx(8.95)
    assert last_step_seconds("step 3 | dt: 0.5s |") == pytest.approx(0.5)
    assert last_step_seconds("no progress lines\n---\nval_bpb: 1.0\n") is None


def test_a_run_that_finishes_the_step_crossing_its_budget_is_not_rejected(tmp_path: Path) -> None:
    # The numbers: 38.8 s reported for a 30 s budget, steps of ~9 s, no metrics stream.
    check = BudgetCheck(budget=30.0, allowance=60.0, where="TIME_BUDGET in prepare.py")
    progress = "".join(f"\rstep {n:05d} | loss: 3.0 | dt: 9000ms | remaining: 1s" for n in range(6))
    assert check.problem(_result(tmp_path, progress + "\n---\n", 38.8), tmp_path) == ""
    # Without progress lines nothing says how long the last step took: the printed time is all there is.
    problem = check.problem(_result(tmp_path, "---\n", 38.8), tmp_path)
    assert "38.8 s of training" in problem
    # A run that went on for steps after its budget is still rejected, and told where its budget lives.
    problem = check.problem(_result(tmp_path, progress + "\n---\n", 60.0), tmp_path)
    assert "51.0 s before its last step" in problem
    assert "TIME_BUDGET in prepare.py" in problem and "LOOPDECK_TIME_BUDGET" not in problem


def test_budget_location_names_what_a_foreign_repo_reads(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    config, _ = load_config(repo)
    assert budget_location(repo, config.experiment) == "TIME_BUDGET in prepare.py"
    (repo / "prepare.py").write_text('import os\nTIME_BUDGET = float(os.environ["LOOPDECK_TIME_BUDGET"])\n')
    assert budget_location(repo, config.experiment) == "LOOPDECK_TIME_BUDGET"


# --- --budget takes effect ----------------------------------------------------------------------------------------


def test_rewriting_the_constant_keeps_every_other_byte(tmp_path: Path) -> None:
    source = "MAX_SEQ_LEN = 64\nTIME_BUDGET = 300        # training time budget — seconds\nX = 1\n"
    (tmp_path / "prepare.py").write_text(source, encoding="utf-8")
    constant = find_budget_constant(tmp_path, ["prepare.py"])
    assert constant is not None and constant.value == 300.0
    assert rewrite_constant(source.encode(), constant, 30.0) == source.replace("= 300 ", "= 30 ")
    assert rewrite_constant(source.encode(), constant, 2.5) == source.replace("= 300 ", "= 2.5 ")


def test_startup_notes_show_the_budget_in_force(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", time_budget=300)
    config, notes = load_config(repo, budget_seconds=30.0)
    assert config.experiment.budget_seconds == 30.0
    (budget_note,) = [note for note in notes if note.startswith("budget:")]
    assert budget_note.startswith("budget: 30 s (--budget; the repo's own: 300 s, TIME_BUDGET in prepare.py)")
    assert "killed after 180 s" in budget_note


def test_budget_option_commits_the_constant_on_the_research_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", time_budget=300)
    session = Session(repo, RunOptions(budget_seconds=2.0, tag="short", agent="offline"))
    try:
        assert session.config.experiment.budget_seconds == 2.0
        assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "loopdeck/short"
        assert "TIME_BUDGET = 2 " in (repo / "prepare.py").read_text()
        assert "TIME_BUDGET = 300 " in _git(repo, "show", "master:prepare.py")  # the user's branch is untouched
        assert "TIME_BUDGET = 2 in prepare.py" in _git(repo, "log", "-1", "--format=%s")
        # The protected hash is the committed file's: the protection holds over the change.
        assert session.protected_hashes["prepare.py"] == file_hashes(repo, ["prepare.py"])["prepare.py"]
        assert any("loopdeck commit" in note for note in session.config_notes)
        assert any(note.startswith("budget: 2 s (--budget") for note in session.config_notes)
    finally:
        session.close()
    # Back on the user's branch, a later session on the same research branch follows the budget set there.
    _git(repo, "checkout", "-q", "master")
    session = Session(repo, RunOptions(tag="short", agent="offline"))
    session.close()
    assert session.config.experiment.budget_seconds == 2.0
    assert any("set by an earlier --budget" in note for note in session.config_notes)


def test_budget_option_is_refused_when_the_budget_is_not_a_constant(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    prepare = (repo / "prepare.py").read_text()
    (repo / "prepare.py").write_text(prepare.replace("TIME_BUDGET = 1.0", "TIME_BUDGET = int('300')"))
    _git(repo, "-c", "user.name=r", "-c", "user.email=r@example.com", "commit", "-qam", "computed budget")
    with pytest.raises(LoopdeckError, match=r"--budget 5 cannot take effect .*TIME_BUDGET = <number>"):
        Session(repo, RunOptions(budget_seconds=5.0, agent="offline"))
    assert "loopdeck/" not in _git(repo, "branch", "--list")  # refused before anything ran


def test_budget_option_on_a_session_that_reads_loopdeck_time_budget_commits_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text().replace(
        "TIME_BUDGET = 1.0", 'TIME_BUDGET = float(os.environ.get("LOOPDECK_TIME_BUDGET", "1"))'))
    _git(repo, "-c", "user.name=r", "-c", "user.email=r@example.com", "commit", "-qam", "reads the variable")
    head = _git(repo, "rev-parse", "HEAD")
    session = Session(repo, RunOptions(budget_seconds=5.0, agent="offline"))
    session.close()
    assert _git(repo, "rev-parse", "HEAD") == head


# --- seeding ------------------------------------------------------------------------------------------------------


def test_a_repo_that_never_reads_the_seed_gets_one_baseline_run(tmp_path: Path) -> None:
    config, notes = load_config(make_repo(tmp_path / "unseeded"))
    assert config.evaluation.baseline_seeds == 1
    assert any("never read LOOPDECK_SEED" in note and "one baseline run" in note for note in notes)
    config, notes = load_config(make_repo(tmp_path / "seeded", seeded=True))
    assert config.evaluation.baseline_seeds == 3
    assert any("reads LOOPDECK_SEED" in note for note in notes)


def test_a_loopdeck_toml_decides_baseline_runs_when_it_sets_them(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "loopdeck.toml").write_text('[experiment]\nprotected = ["prepare.py"]\n')
    config, notes = load_config(repo)
    assert config.evaluation.baseline_seeds == 1 and any("never read LOOPDECK_SEED" in note for note in notes)
    (repo / "loopdeck.toml").write_text('[experiment]\nprotected = ["prepare.py"]\n\n[evaluation]\n'
                                        "baseline_seeds = 3\n")
    config, _ = load_config(repo)
    assert config.evaluation.baseline_seeds == 3
    assert parse_config("").evaluation.baseline_seeds == 3  # the schema's default is unchanged


# --- end to end ---------------------------------------------------------------------------------------------------


def test_an_autoresearch_repo_runs_with_budget_one_step_overshoot_and_one_baseline_run(tmp_path: Path) -> None:
    # Steps of 1.3 s for a 0.2 s budget: the run reports 1.3 s of training, past budget + 10 % + 1 s. The repo's
    # own budget (300 s) would outlast the test: only --budget makes it finish.
    repo = make_repo(tmp_path / "repo", time_budget=300, step_seconds=1.3)
    session = Session(repo, RunOptions(budget_seconds=0.2, agent="offline", approval="auto", max_experiments=1))
    finished = session.run()
    rows = ledger_rows(repo)
    assert finished.reason == "max_experiments", session.error
    baseline, candidate = rows
    assert baseline.status == "keep" and baseline.metric_runs == 1
    assert candidate.status in ("keep", "discard"), candidate.reason
    # Its experiments were measured with a 0.2 s budget: resuming with another one is refused.
    with pytest.raises(LoopdeckError, match=r"measured its experiments with TIME_BUDGET = 0.2 .*--tag"):
        Session(repo, RunOptions(budget_seconds=0.5, agent="offline"))


def test_the_baseline_is_never_rejected_but_an_overshooting_change_is(tmp_path: Path) -> None:
    # No progress lines: nothing tells the check how long the last step took, so 1.3 s of training is over a
    # 0.2 s budget. The unchanged baseline is the reference (a warning); a change is rejected.
    repo = make_repo(tmp_path / "repo", time_budget=0.2, step_seconds=1.3)
    train = (repo / "train.py").read_text()
    (repo / "train.py").write_text(train.replace("| dt: {dt * 1000:.0f}ms ", ""))
    _git(repo, "-c", "user.name=r", "-c", "user.email=r@example.com", "commit", "-qam", "no step durations")
    recorded: list = []
    session = Session(repo, RunOptions(agent="offline", approval="auto", max_experiments=1), on_event=recorded.append)
    session.run()
    baseline, candidate = ledger_rows(repo)
    assert baseline.status == "keep"
    assert any(getattr(event, "message", "").startswith("the baseline is over budget") for event in recorded)
    assert candidate.status == "rejected" and "TIME_BUDGET in prepare.py" in candidate.reason
    assert "LOOPDECK_TIME_BUDGET" not in candidate.reason


def test_a_headless_run_on_an_inferred_repo_is_unattended(tmp_path: Path) -> None:
    from loopdeck.cli.headless import headless_approval

    repo = make_repo(tmp_path / "repo")  # no loopdeck.toml, and runs cannot be seeded: settings are adjusted
    assert headless_approval(repo) == "auto"
