"""Integrity checks on runs of fake targets: the budget checked from outside, non-experiments refused, early abort."""

from __future__ import annotations

import pytest
from conftest import git, ledger_rows
from fake_targets import ScriptedAgent, change, fake_train_source, set_constant, write_files

from loopdeck.engine.events import (
    ChangeRejected,
    ExperimentFinished,
    ExperimentReverted,
    SessionStarted,
    TrainStep,
)
from loopdeck.engine.research.early_abort import AbortRule, EarlyAbort
from loopdeck.engine.research.guard import GuardRejection, check_substance

# --- the budget, checked from outside -------------------------------------------------------------------------------


def lying_about_time(train: str, seconds: float) -> str:
    """The fake target, printing `seconds` as its training time whatever it really took."""
    return train.replace("training_seconds = time.time() - t0", f"training_seconds = {seconds!r}")


def steps_of(train: str, steps: int, seconds: float) -> str:
    return set_constant(set_constant(train, "STEPS", steps), "STEP_SECONDS", seconds)


def test_a_run_that_ignores_its_budget_is_rejected_whatever_it_prints(make_workspace, run_session):
    # Budget 1 s plus a 0.5 s start-up allowance: a run of 40 × 0.05 s (2 s) is over, though it prints 0.5 s.
    workspace = make_workspace(evaluation={"startup_allowance_seconds": 0.5})
    slow = lying_about_time(steps_of(fake_train_source(lr=0.3), 40, 0.05), 0.5)
    session, recorded = run_session(workspace, ScriptedAgent([write_files({"train.py": slow}, "train on, say not")]))

    assert recorded.finished.reason == "exhausted", session.error
    baseline, slow_row = ledger_rows(workspace)
    assert slow_row.status == "rejected" and slow_row.reason.startswith("over budget: ran "), slow_row.reason
    assert slow_row.wall_seconds > 1.5 and slow_row.metric is None and slow_row.reported_metric is not None
    assert git(workspace, "rev-parse", "HEAD") == baseline.commit  # reverted
    tsv = (session.state_dir / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "crash"]  # it ran: a crash, not a gap
    # A foreign-style target (no harness import) is scored by what it prints, and says so.
    assert recorded.of(SessionStarted)[0].self_reported and baseline.self_reported
    assert [e.evaluation for e in recorded.of(ExperimentFinished)] == ["self_reported", ""]


NO_METRICS_STREAM = '''\
"""A target that writes no metrics stream, only autoresearch's summary."""

print("---")
print("val_bpb:          1.000000")
print("training_seconds: {seconds}")
'''


def test_training_past_the_budget_by_its_own_account_is_rejected(make_workspace, run_session):
    # Within the wall-time allowance, but its step records show training went on well after the 1 s budget
    # (2.5 s, over 1 s + 10% + 1 s); and a target without step records that reports 5 s of training.
    workspace = make_workspace()
    agent = ScriptedAgent([write_files({"train.py": steps_of(fake_train_source(lr=0.3), 50, 0.05)}, "50 steps"),
                           write_files({"train.py": NO_METRICS_STREAM.format(seconds=5.0)}, "report 5 s"),
                           write_files({"train.py": NO_METRICS_STREAM.format(seconds=1.05)}, "report 1.05 s")])
    session, recorded = run_session(workspace, agent)

    assert recorded.finished.reason == "exhausted", session.error
    _, steps, reported, fine = ledger_rows(workspace)
    assert steps.status == "rejected" and "went on training after its 1 s budget" in steps.reason, steps.reason
    assert reported.status == "rejected" and "reports 5.0 s of training for a 1 s budget" in reported.reason
    assert fine.status == "keep"  # 1.000000 beats the fake baseline's 1.3; 1.05 s is within the slack


# --- changes that are not experiments -------------------------------------------------------------------------------


SEEDED = fake_train_source().replace('MODE = "ok"', 'SEED = 1337\nMODE = "ok"')


def test_seed_only_and_cosmetic_changes_are_refused(make_workspace, run_session):
    workspace = make_workspace(SEEDED)
    commented = SEEDED.replace("LR = 0.5", "LR = 0.5    # tuned by hand\n\n")
    agent = ScriptedAgent([change("SEED", 42, "a luckier seed"), write_files({"train.py": commented}, "tidy up"),
                           change("LR", 0.3, "lower LR")])
    session, recorded = run_session(workspace, agent)

    assert recorded.finished.reason == "exhausted", session.error
    rejected = recorded.of(ChangeRejected)
    assert [e.experiment for e in rejected] == [1, 2]
    assert "only the random seed changes" in rejected[0].reason
    assert "only whitespace, comments or docstrings change" in rejected[1].reason
    assert [row.status for row in ledger_rows(workspace)] == ["keep", "rejected", "rejected", "keep"]
    assert "only the random seed changes" in ledger_rows(workspace)[1].reason


def test_seed_changes_are_allowed_when_configured(make_workspace, run_session):
    workspace = make_workspace(SEEDED, evaluation={"allow_seed_changes": True})
    session, recorded = run_session(workspace, ScriptedAgent([change("SEED", 42, "a luckier seed")]))
    assert not recorded.of(ChangeRejected) and ledger_rows(workspace)[1].status == "discard"


@pytest.mark.parametrize(("before", "after", "refusal"), [
    ("SEED = 1\nx = f(2)\n", "SEED = 7\nx = f(2)\n", "seed"),
    ("torch.manual_seed(0)\nx = 1\n", "torch.manual_seed(1)\nx = 1\n", "seed"),
    ("def f():\n    '''Old.'''\n    return 1\n", "def f():\n    '''New words.'''\n\n    return 1  # same\n", "cosmetic"),
    ("x = 1\n", "x = 1\n\n\n# a comment\n", "cosmetic"),
    ("SEED = 1\nx = 1\n", "SEED = 2  # hmm\nx = 1\n", "seed"),
    ("SEED = 1\nx = 1\n", "SEED = 2\nx = 2\n", None),
    ("x = 1\n", "x = 2\n", None),
    ("DATA_SEED_PATH = 'a'\n", "DATA_SEED_PATH = 'b'\n", "seed"),
])
def test_what_counts_as_a_seed_only_or_cosmetic_change(before, after, refusal):
    if refusal is None:
        check_substance({"train.py": before}, {"train.py": after})
        return
    with pytest.raises(GuardRejection, match="seed" if refusal == "seed" else "whitespace"):
        check_substance({"train.py": before}, {"train.py": after})
    check_substance({"train.py": before}, {"train.py": after}, allow_seed=True, allow_cosmetic=True)


def test_non_python_files_compare_by_whitespace_only():
    with pytest.raises(GuardRejection, match="whitespace"):
        check_substance({"notes.md": "a  b\n"}, {"notes.md": "a b\n\n"})
    check_substance({"notes.md": "a b\n"}, {"notes.md": "a c\n"})


# --- doomed runs stopped early ---------------------------------------------------------------------------------------


def test_the_rule_needs_a_clear_and_lasting_gap_past_the_fraction():
    curve = [(t / 10, 2.0 - t / 10) for t in range(11)]  # loss 2.0 → 1.0 over 1 s
    rule = AbortRule(after_fraction=0.5, margin=0.1, sustain=3)
    watch = EarlyAbort(curve, 1.0, rule)
    assert watch.reference_at(0.25) == pytest.approx(1.75) and watch.reference_at(5.0) == pytest.approx(1.0)
    assert watch.reference_at(-1.0) is None
    assert not any(watch.observe(t / 100, 3.0) for t in range(0, 50))  # far behind, but before half the budget
    assert not watch.observe(0.5, 1.9) and not watch.observe(0.52, 1.9)  # behind twice, then level:
    assert not watch.observe(0.54, 1.45)  # the streak resets
    assert not watch.observe(0.56, 1.9) and not watch.observe(0.58, 1.9) and watch.observe(0.60, 1.9)
    assert watch.stopped_at == 0.60 and watch.reason.startswith("behind incumbent: loss 1.9000 at 0.6 s")
    ahead = EarlyAbort(curve, 1.0, rule)
    assert not any(ahead.observe(t / 100, 0.5) for t in range(101))
    assert not EarlyAbort([], 1.0, rule).observe(0.9, 100.0)
    nan = EarlyAbort(curve, 1.0, AbortRule(0.5, 0.1, 1))
    assert not nan.observe(0.7, float("nan"))


def test_early_abort_stops_a_run_that_is_clearly_behind_and_keeps_one_that_is_ahead(make_workspace, run_session):
    # 20 steps of 0.05 s: the loss curve spans the 1 s budget; LR 2.0 ends at val_bpb 2.8 against the incumbent's 1.3.
    train = set_constant(set_constant(fake_train_source(lr=0.5), "STEPS", 20), "STEP_SECONDS", 0.05)
    workspace = make_workspace(train, evaluation={"early_abort": True, "abort_sustain_points": 3})
    agent = ScriptedAgent([change("LR", 2.0, "far too high"), change("LR", 0.3, "a bit lower")])
    session, recorded = run_session(workspace, agent)

    assert recorded.finished.reason == "exhausted", session.error
    baseline, behind, ahead = ledger_rows(workspace)
    assert behind.status == "aborted" and behind.reason.startswith("behind incumbent: loss "), behind.reason
    assert 0.5 <= behind.training_seconds < 0.9 and behind.metric is None
    steps = [e for e in recorded.of(TrainStep) if e.experiment == 1]
    assert len(steps) < 20  # it did not train to the end
    assert any(e.experiment == 1 for e in recorded.of(ExperimentReverted))
    assert ahead.status == "keep" and ahead.metric == pytest.approx(1.1)
    assert len([e for e in recorded.of(TrainStep) if e.experiment == 2]) == 20
    assert recorded.finished.kept == 1
    tsv = (session.state_dir / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "discard", "keep"]


# --- how runs are scored --------------------------------------------------------------------------------------------


def test_the_scoring_mode_follows_the_training_file(tmp_path):
    from loopdeck.engine.config import Config
    from loopdeck.engine.run.evaluator import evaluation_plan
    from loopdeck.gpt import HARNESS_TEMPLATE, TRAIN_TEMPLATE

    (tmp_path / "train.py").write_text(TRAIN_TEMPLATE.read_text())
    config = Config()
    plan = evaluation_plan(tmp_path, config)
    assert not plan.trusted and "the workspace has no harness.py" in plan.note
    (tmp_path / "harness.py").write_text(HARNESS_TEMPLATE.read_text())
    assert evaluation_plan(tmp_path, config).trusted
    assert not evaluation_plan(tmp_path, config.updated(mode="self_reported")).trusted
    (tmp_path / "train.py").write_text(TRAIN_TEMPLATE.read_text().replace("save_model(asdict", "print(asdict"))
    plan = evaluation_plan(tmp_path, config)
    assert not plan.trusted and "does not save its weights with save_model" in plan.note
    (tmp_path / "train.py").write_text(fake_train_source())
    plan = evaluation_plan(tmp_path, config.updated(mode="trusted"))
    assert "does not import the workspace's harness" in plan.error


def test_trusted_mode_on_a_foreign_target_stops_with_a_clear_message(make_workspace, run_session):
    workspace = make_workspace(evaluation={"mode": "trusted"})
    session, recorded = run_session(workspace, ScriptedAgent([]))
    assert recorded.finished.reason == "error" and "needs a GPT-target training file" in session.error
    assert ledger_rows(workspace) == []


def test_a_protected_file_outside_the_workspace_is_checked_by_its_hash(tmp_path):
    from loopdeck.engine.research.guard import check_protected
    from loopdeck.engine.store.workspace import file_hashes

    harness = tmp_path / "site" / "harness.py"
    harness.parent.mkdir()
    harness.write_text("EVAL_TOKENS = 131072\n")
    hashes = file_hashes(tmp_path, [str(harness)])
    check_protected(tmp_path / "ws", hashes)
    harness.write_text("EVAL_TOKENS = 1\n")
    with pytest.raises(GuardRejection, match="protected evaluation file .*harness.py changed"):
        check_protected(tmp_path / "ws", hashes)
