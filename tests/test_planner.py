"""The research planner's decisions on synthetic histories, the combine merge, and the research log's repeat test."""

from __future__ import annotations

import pytest
from conftest import git, init_repo

from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.agents.regions import Touch, repeat_of, touched
from loopdeck.engine.config.schema import ResearchSettings
from loopdeck.engine.control import Controller, make_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.research.combine import combined_files
from loopdeck.engine.research.planner import Planner
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.ledger import ExperimentRow


def baseline(metric: float = 1.5) -> ExperimentRow:
    return ExperimentRow(id=0, status="keep", metric=metric, commit="c0", meta={"baseline": True})


def experiment(number: int, status: str, delta: float, region: str, band: float | None = 0.01,
               mode: str = "") -> ExperimentRow:
    return ExperimentRow(id=number, status=status, metric=1.5 + delta, delta=delta, delta_band=band, region=region,
                         commit=f"c{number}", parent_commit="c0", mode=mode)


def planner(k: int = 3, *, ablate: bool = False) -> Planner:
    return Planner(ResearchSettings(plateau_k=k), "minimize", can_ablate=ablate)


def test_a_fresh_gain_outside_the_band_is_exploited():
    rows = [baseline(), experiment(1, "keep", -0.05, "train.py:LR")]
    plan = planner().choose(rows, rows[-1])
    assert plan.mode == "exploit" and "#1" in plan.reason


def test_a_gain_inside_the_band_is_not_exploited():
    rows = [baseline(), experiment(1, "keep", -0.005, "train.py:LR")]
    assert planner().choose(rows, rows[-1]).mode == "explore"


def test_a_plateau_changes_to_explore():
    rows = [baseline(), *(experiment(n, "discard", 0.05, "train.py:LR") for n in (1, 2, 3))]
    plan = planner(k=3).choose(rows, rows[0])
    assert plan.mode == "explore" and "plateau" in plan.reason


def test_keeps_that_gain_less_than_the_noise_are_a_plateau():
    rows = [baseline()]
    for number in (1, 2, 3):
        rows.append(experiment(number, "keep", -0.002, f"train.py:K{number}"))
    plan = planner(k=3).choose(rows, rows[-1])
    assert plan.mode == "explore" and "less than the noise band" in plan.reason


def test_two_near_misses_on_different_code_are_combined_once():
    rows = [baseline(), experiment(1, "discard", -0.002, "train.py:LR"), experiment(2, "discard", 0.3, "train.py:WD"),
            experiment(3, "discard", -0.004, "train.py:DEPTH")]
    plan = planner(k=10).choose(rows, rows[0])
    assert plan.mode == "combine" and plan.near_misses == (3, 1)
    combined = ExperimentRow(id=4, status="discard", delta=0.01, region="train.py:DEPTH train.py:LR", mode="combine",
                             meta={"combines": [3, 1]})
    assert planner(k=10).choose([*rows, combined], rows[0]).mode == "explore"  # that pair was tried
    tried = experiment(4, "discard", 0.01, "train.py:DEPTH train.py:LR", mode="explore")
    assert planner(k=10).choose([*rows, tried], rows[0]).mode == "explore"  # the merge would repeat #4


def test_near_misses_whose_gains_do_not_add_up_to_one_are_not_combined():
    rows = [baseline(), experiment(1, "discard", 0.004, "train.py:LR"), experiment(2, "discard", -0.002, "train.py:WD")]
    assert planner(k=10).choose(rows, rows[0]).mode == "explore"


def test_a_combination_is_not_a_part_and_a_failed_one_is_followed_by_another_mode():
    rows = [baseline(), experiment(1, "discard", -0.004, "train.py:LR"), experiment(2, "discard", -0.003, "train.py:WD"),
            experiment(3, "discard", -0.002, "train.py:DEPTH"),
            ExperimentRow(id=4, status="discard", metric=1.494, delta=-0.006, delta_band=0.01, commit="c4",
                          region="train.py:LR train.py:WD", mode="combine", meta={"combines": [1, 2]})]
    assert planner(k=10).choose(rows, rows[0]).mode == "explore"  # right after a combination that failed
    rows.append(experiment(5, "discard", 0.05, "train.py:HEADS", mode="explore"))
    plan = planner(k=10).choose(rows, rows[0])
    assert plan.mode == "combine" and plan.near_misses == (1, 3)  # #4 is never a part; #1 and #2 were combined


def test_a_keep_that_reverses_an_earlier_keep_is_not_pushed_further():
    rows = [baseline(), ExperimentRow(id=1, status="keep", metric=1.4, delta=-0.1, delta_band=0.01, commit="c1",
                                      region="train.py:LR", signs={"train.py:LR": 1}),
            ExperimentRow(id=2, status="keep", metric=1.35, delta=-0.05, delta_band=0.01, commit="c2",
                          region="train.py:LR", signs={"train.py:LR": -1})]
    assert planner().choose(rows[:2], rows[1]).mode == "exploit"
    plan = planner().choose(rows, rows[2])
    assert plan.mode == "explore"  # the best LR lies between #1's and #2's: a further step down overshoots


def test_near_misses_on_the_same_code_are_not_combined():
    rows = [baseline(), experiment(1, "discard", 0.004, "train.py:LR"), experiment(2, "discard", 0.002, "train.py:LR")]
    assert planner(k=10).choose(rows, rows[0]).mode == "explore"


def test_a_forced_mode_wins_over_the_history():
    rows = [baseline(), experiment(1, "keep", -0.05, "train.py:LR")]
    plan = planner().choose(rows, rows[-1], forced="explore")
    assert (plan.mode, plan.forced) == ("explore", True)
    assert planner().choose(rows, rows[-1], forced="ablate").mode == "explore"  # no ablation hook: explore


def test_ablate_is_chosen_on_a_plateau_only_with_a_hook_and_once_per_incumbent():
    rows = [baseline(), experiment(1, "keep", -0.05, "train.py:LR"), experiment(2, "keep", -0.05, "train.py:WD"),
            *(experiment(n, "discard", 0.05, "train.py:LR") for n in (3, 4, 5))]
    incumbent = rows[2]
    assert planner(k=3).choose(rows, incumbent).mode == "explore"
    with_hook = planner(k=3, ablate=True)
    assert with_hook.choose(rows, incumbent).mode == "ablate"
    assert with_hook.choose(rows, incumbent).mode == "explore"


# --- the research log --------------------------------------------------------------------------------------------


SOURCE = '''\
LR = 0.5
DEPTH = 4
NAME = "a"


class Block:
    def forward(self, x):
        return x * 2
'''


def test_touched_names_constants_with_their_direction_and_changed_functions():
    new = SOURCE.replace("LR = 0.5", "LR = 0.25").replace("return x * 2", "return x * 3")
    touch = touched({"train.py": SOURCE}, {"train.py": new})
    assert touch.region == ("train.py:Block.forward", "train.py:LR")
    assert touch.signs["train.py:LR"] == -1
    assert touch.describe().startswith("train.py:Block.forward, train.py:LR down")
    comment_only = touched({"train.py": SOURCE}, {"train.py": SOURCE + "# a comment\n"})
    assert comment_only.region == ("train.py",)


def test_a_repeat_is_the_same_region_and_direction_against_the_incumbent_not_kept():
    up = touched({"train.py": SOURCE}, {"train.py": SOURCE.replace("LR = 0.5", "LR = 0.6")})
    further_up = touched({"train.py": SOURCE}, {"train.py": SOURCE.replace("LR = 0.5", "LR = 0.9")})
    down = touched({"train.py": SOURCE}, {"train.py": SOURCE.replace("LR = 0.5", "LR = 0.1")})
    other_value = touched({"train.py": SOURCE}, {"train.py": SOURCE.replace('NAME = "a"', 'NAME = "b"')})

    def tried(number: int, status: str, touch: Touch) -> ExperimentSummary:
        return ExperimentSummary(id=number, status=status, metric=1.0, delta=0.1, description="",
                                 region=touch.region, signs=touch.signs)

    history = (ExperimentSummary(id=0, status="keep", metric=1.0, delta=None, description="", baseline=True),
               tried(1, "discard", up), tried(2, "discard", other_value))
    assert repeat_of(further_up, history, incumbent_id=0).id == 1
    assert repeat_of(down, history, incumbent_id=0) is None
    string_again = touched({"train.py": SOURCE}, {"train.py": SOURCE.replace('NAME = "a"', 'NAME = "c"')})
    assert repeat_of(string_again, history, incumbent_id=0) is None  # a string constant's value is its direction
    assert repeat_of(further_up, history, incumbent_id=1) is None  # under a newer incumbent it may behave otherwise
    kept = (*history[:1], tried(1, "keep", up))
    assert repeat_of(further_up, kept, incumbent_id=0) is None


# --- combine -----------------------------------------------------------------------------------------------------


def test_near_misses_are_merged_three_way_onto_the_incumbent(tmp_path):
    root = init_repo(tmp_path / "ws", {"train.py": SOURCE})
    base = git(root, "rev-parse", "HEAD")

    def commit(text: str) -> str:
        git(root, "checkout", "-q", base)
        (root / "train.py").write_text(text)
        git(root, "commit", "-qam", "change")
        return git(root, "rev-parse", "HEAD")

    lr = commit(SOURCE.replace("LR = 0.5", "LR = 0.6"))
    depth = commit(SOURCE.replace("DEPTH = 4", "DEPTH = 6"))
    clash = commit(SOURCE.replace("LR = 0.5", "LR = 0.1"))
    incumbent = SOURCE.replace("return x * 2", "return x * 4")  # the incumbent moved on since
    rows = [ExperimentRow(id=n, status="discard", parent_commit=base, commit=sha)
            for n, sha in ((1, lr), (2, depth), (3, clash))]
    repo = ResearchRepo(root)
    merged = combined_files(repo, {"train.py": incumbent}, rows[:2])
    assert merged == {"train.py": incumbent.replace("LR = 0.5", "LR = 0.6").replace("DEPTH = 4", "DEPTH = 6")}
    assert combined_files(repo, {"train.py": incumbent}, [rows[0], rows[2]]) is None  # both change LR: a conflict


# --- forcing a mode ----------------------------------------------------------------------------------------------


def test_ctl_mode_forces_and_auto_releases():
    events: list = []
    controller = Controller("auto", events.append)
    controller.put(make_command("mode", mode="combine"))
    assert controller.forced_mode == "combine"
    controller.put(make_command("mode", mode="auto"))
    assert controller.forced_mode == ""
    assert len(events) == 2
    with pytest.raises(LoopdeckError, match="mode must be one of explore, exploit, combine, ablate, auto"):
        make_command("mode", mode="sideways")
