"""Ablation and the scale-transfer check on the synthetic fake target, whose metric is a known function of its
constants: ablation must find exactly the changes that matter, transfer the one that helps only the small run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import git
from fake_targets import ScriptedAgent, change, synthetic_source, synthetic_value

from loopdeck.engine.events import StudyFinished, StudyRun, StudyStarted
from loopdeck.engine.research.noise import STUDY_SEED_BASE
from loopdeck.engine.session import Session
from loopdeck.engine.store.ledger import Ledger

STUDY_TOML = """\
[experiment]
editable = ["train.py"]
budget_seconds = 1.0
timeout_seconds = 20.0
scale_knobs = {{ DEPTH = "x" }}

[loop]
approval = "auto"

[agent]
kind = "offline"

[evaluation]
baseline_seeds = 3
early_abort = false
confirm_multiple = 2.0

[research]
study_seeds = {seeds}
"""

# The kept chain: X (later made redundant by Y), Y, Z, TRICK (helps only at DEPTH <= 2).
CHAIN = [("X", 1), ("Y", 1), ("Z", 1), ("TRICK", 1)]


@pytest.fixture(scope="module")
def chain_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose loop kept X, Y, Z and TRICK (in that order) on the synthetic target."""
    from conftest import init_repo

    root = tmp_path_factory.mktemp("studies") / "ws"
    init_repo(root, {"train.py": synthetic_source(), "program.md": "# program\n",
                     "loopdeck.toml": STUDY_TOML.format(seeds=3), ".gitignore": ".loopdeck/\n__pycache__/\n"})
    agent = ScriptedAgent([change(name, value) for name, value in CHAIN])
    session = Session(root, agent=agent)
    session.run()
    with Ledger(root / ".loopdeck") as ledger:
        kept = [row.description for row in ledger.rows() if row.status == "keep" and not row.is_baseline]
    assert kept == [f"{name} {value}" for name, value in CHAIN]
    return root


def _copy(workspace: Path, tmp_path: Path) -> Path:
    """A clone of the workspace with its ledger, so a test that changes it leaves the others alone."""
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(workspace, target, symlinks=True)
    return target


def _run_study(workspace: Path, method: str, **kwargs: object) -> tuple[object, list]:
    events: list = []
    session = Session(workspace, on_event=events.append, study=True)
    result = getattr(session, method)(**kwargs)
    return result, events


@pytest.mark.slow
def test_ablation_finds_exactly_the_changes_that_matter(chain_workspace: Path, tmp_path: Path) -> None:
    workspace = _copy(chain_workspace, tmp_path)
    head_before = git(workspace, "rev-parse", "HEAD")
    branch_before = git(workspace, "branch", "--show-current")
    result, events = _run_study(workspace, "ablate")
    verdicts = {c.change.description: c.verdict for c in result.contributions}
    assert verdicts == {"X 1": "nothing", "Y 1": "matters", "Z 1": "matters", "TRICK 1": "matters"}
    for c in result.contributions:
        if c.verdict == "matters":  # each removal costs 0.02 by construction
            assert c.gain == pytest.approx(0.02, abs=0.003) and c.band is not None and c.band < 0.003
    assert [row.description for row in result.removable] == ["X 1"]
    # progress: one event per run, seeds shared by every variant and far from any experiment's
    runs = [e for e in events if isinstance(e, StudyRun)]
    started = next(e for e in events if isinstance(e, StudyStarted))
    assert len(runs) == 5 * 3 and runs[-1].index == runs[-1].of == 15
    assert all(seed > STUDY_SEED_BASE for seed in started.seeds)
    assert {r.seed for r in runs if r.variant == "incumbent"} == {r.seed for r in runs if r.variant == "without #1"}
    finished = next(e for e in events if isinstance(e, StudyFinished))
    assert finished.removable == (1,) and finished.applied is None and "removable: #1" in finished.summary
    # recorded as study rows, never as experiments; nothing of the user's checkout moved
    with Ledger(workspace / ".loopdeck") as ledger:
        studies = ledger.studies("ablation")
        assert len(ledger.rows()) == 5
    assert {row.label for row in studies} == {"incumbent", "without #1", "without #2", "without #3", "without #4"}
    assert len((workspace / ".loopdeck" / "results.tsv").read_text().splitlines()) == 1 + 5
    assert git(workspace, "rev-parse", "HEAD") == head_before
    assert git(workspace, "branch", "--show-current") == branch_before
    assert git(workspace, "status", "--porcelain") == ""
    assert "study-" not in git(workspace, "worktree", "list")


@pytest.mark.slow
def test_ablation_apply_keeps_a_simpler_incumbent_that_scores_the_same(chain_workspace: Path,
                                                                      tmp_path: Path) -> None:
    workspace = _copy(chain_workspace, tmp_path)
    result, _ = _run_study(workspace, "ablate", apply=True)
    applied = result.applied
    assert applied is not None and applied.status == "keep" and applied.meta["ablation_removes"] == [1]
    assert applied.metric == pytest.approx(synthetic_value(y=1, z=1, trick=1), abs=0.003)
    head = git(workspace, "rev-parse", "HEAD")
    assert head == applied.commit  # the checkout is on the research branch, which now holds the simpler code
    source = git(workspace, "show", f"{head}:train.py")
    assert "X = 0" in source and "Y = 1" in source and "TRICK = 1" in source
    with Ledger(workspace / ".loopdeck") as ledger:
        assert ledger.incumbent().id == applied.id
    # a second ablation sees the simpler chain: X is gone, every remaining change matters
    again, _ = _run_study(workspace, "ablate")
    assert {c.change.description: c.verdict for c in again.contributions} == {
        "Y 1": "matters", "Z 1": "matters", "TRICK 1": "matters"}


@pytest.mark.slow
def test_transfer_flags_the_change_that_helps_only_the_small_run(chain_workspace: Path, tmp_path: Path) -> None:
    workspace = _copy(chain_workspace, tmp_path)
    result, events = _run_study(workspace, "transfer", scale=2.0, per_change=True)
    overall, *changes = result.lines
    # at DEPTH 4 the incumbent beats the baseline by 0.05 (0.09 at DEPTH 2): more than half, so it holds
    assert overall.gain == pytest.approx(synthetic_value(depth=4) - synthetic_value(1, 1, 1, 1, depth=4), abs=0.003)
    assert overall.verdict == "holds"
    verdicts = {line.change.description: line.verdict for line in changes}
    assert verdicts["TRICK 1"] == "reverses" and verdicts["Y 1"] == "holds" and verdicts["Z 1"] == "holds"
    assert verdicts["X 1"] == "shrinks"
    assert "helps only the small run: #4" in result.summary
    started = next(e for e in events if isinstance(e, StudyStarted))
    assert started.scale == 2.0 and len(started.variants) == 6
    with Ledger(workspace / ".loopdeck") as ledger:
        rows = ledger.studies("transfer")
    assert {row.scale for row in rows} == {2.0}


@pytest.mark.slow
def test_the_loop_checks_transfer_every_m_kept_experiments(tmp_path: Path) -> None:
    from conftest import init_repo

    toml = STUDY_TOML.format(seeds=2) + "transfer_every = 2\ntransfer_scale = 2.0\n"
    root = init_repo(tmp_path / "ws", {"train.py": synthetic_source(), "program.md": "# program\n",
                                       "loopdeck.toml": toml, ".gitignore": ".loopdeck/\n__pycache__/\n"})
    events: list = []
    agent = ScriptedAgent([change("Y", 1), change("Z", 1), change("Z", 2)])
    Session(root, agent=agent, on_event=events.append).run()
    studies = [e for e in events if isinstance(e, StudyFinished)]
    assert len(studies) == 1 and studies[0].study_kind == "transfer" and studies[0].scale == 2.0
    assert studies[0].incumbent == 2 and studies[0].lines[0].verdict == "holds"
    # Z 1 then Z 2 touch the same line: removing Z 1 alone conflicts, and is reported as such, not guessed
    result, _ = _run_study(root, "ablate")
    verdicts = {c.change.description: (c.verdict, c.detail) for c in result.contributions}
    assert verdicts["Z 1"][0] == "conflict" and "train.py" in verdicts["Z 1"][1]
    assert verdicts["Y 1"][0] == "matters" and verdicts["Z 2"][0] == "matters"
    assert git(root, "status", "--porcelain") == "" and "study-" not in git(root, "worktree", "list")


# --- the command line and the report ------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from loopdeck.cli.main import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_ablate_transfer_then_report(chain_workspace: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    workspace = _copy(chain_workspace, tmp_path)
    code, out, err = _cli(capsys, "ablate", str(workspace))
    assert code == 0, err
    assert "[1/15] incumbent, seed" in out and "[15/15] without #4" in out  # one line per run
    assert "#1" in out and "nothing" in out and "removable: #1" in out
    code, out, err = _cli(capsys, "transfer", str(workspace), "--scale", "2x", "--per-change")
    assert code == 0, err
    assert "at 2x" in out and "reverses" in out and "helps only the small run: #4" in out
    code, out, err = _cli(capsys, "report", str(workspace), "--out", str(tmp_path / "report"))
    assert code == 0, err
    report = tmp_path / "report"
    summary = (report / "summary.md").read_text()
    for heading in ("## The kept chain", "## Ablation", "## Scale transfer", "## Cost"):
        assert heading in summary
    assert "### #4 TRICK 1" in summary and "(reverses)" in summary and "-TRICK = 0" in summary
    assert "found in explore mode (" in summary  # the planner's mode for the turn that found each kept change
    assert (report / "transfer.png").stat().st_size > 0
    patch = (report / "incumbent.patch").read_text()
    assert "+Y = 1" in patch and "+TRICK = 1" in patch and "-X = 0" in patch
    # the patch applies to the baseline and gives the incumbent's file
    base = git(workspace, "rev-list", "--max-parents=0", "HEAD")
    git(workspace, "worktree", "add", "-q", "--detach", str(tmp_path / "check"), base)
    git(tmp_path / "check", "apply", str(report / "incumbent.patch"))
    assert (tmp_path / "check" / "train.py").read_text() == git(workspace, "show", "HEAD:train.py") + "\n"


def test_cli_studies_refuse_bad_input(make_workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loopdeck.engine.store.lock import WorkspaceLock

    code, _, err = _cli(capsys, "ablate", str(tmp_path / "nowhere"))
    assert code == 2 and "nothing has run there yet" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        _cli(capsys, "transfer", str(tmp_path), "--scale", "3x")
    assert exit_info.value.code == 2 and "choose one of 2x, 4x" in capsys.readouterr().err
    workspace = make_workspace()
    Session(workspace, agent=ScriptedAgent([])).run()  # the baseline only
    for command in ("ablate", "transfer"):
        code, _, err = _cli(capsys, command, str(workspace))
        assert code == 2 and err.count("\n") == 1 and "no kept changes" in err or "is the baseline" in err
    lock = WorkspaceLock(workspace / ".loopdeck")
    lock.acquire()
    try:
        code, _, err = _cli(capsys, "ablate", str(workspace))
    finally:
        lock.release()
    assert code == 2 and "a loopdeck session is running" in err and "ctl" in err


def test_transfer_refuses_a_target_whose_size_cannot_grow(tmp_path: Path) -> None:
    """A foreign repo with its budget fixed in a protected file and no declared size knob: budget only, and that
    is not possible, so one clear line says what to declare."""
    from conftest import init_repo

    from loopdeck.engine.errors import LoopdeckError
    from loopdeck.engine.research.study import scale_problem

    root = init_repo(tmp_path / "ar", {"train.py": "X = 1\n", "prepare.py": "TIME_BUDGET = 300\n"})
    problem = scale_problem(root, ["train.py"], ["prepare.py"], {})
    assert "TIME_BUDGET in prepare.py" in problem and "scale_knobs" in problem
    assert scale_problem(root, ["train.py"], ["prepare.py"], {"DEPTH": "x"}) == ""
    with pytest.raises(LoopdeckError, match="no editable file defines"):
        from loopdeck.engine.research.study import scaled_sources

        scaled_sources(root, ["train.py"], {"DEPTH": "x"}, 2.0)
