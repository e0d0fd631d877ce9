"""The research log end to end: repeats flagged and refused before they run, the agents' view of the log and mode,
the offline agent acting on the planner's modes, TPE on a synthetic objective, and a planned loop."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from pathlib import Path

import pytest
from conftest import git
from fake_anthropic import make_turn
from fake_targets import ScriptedAgent, change, fake_train_source

from bench.common import SYNTHETIC_OPTIMUM, synthetic_target
from loopdeck.console.state import SessionView, next_research_mode
from loopdeck.engine import events as ev
from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.agents.claude.context import first_message
from loopdeck.engine.agents.claude.tools import Workbench
from loopdeck.engine.agents.offline import tpe
from loopdeck.engine.agents.offline.agent import OfflineAgent
from loopdeck.engine.agents.regions import touched
from loopdeck.engine.store.ledger import Ledger

TRAIN = "LR = 0.02\nDEPTH = 4\nWEIGHT_DECAY = 0.1\nWARMUP_RATIO = 0.1\n\n\ndef lr():\n    return LR\n"


def ledger_rows(workspace: Path):
    with Ledger(workspace / ".loopdeck") as ledger:
        return ledger.rows()


def test_a_repeat_is_flagged_refused_before_it_runs_and_the_agent_is_told(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5))
    agent = ScriptedAgent([change("LR", 0.6), change("LR", 0.7), change("LR", 0.3)])
    _, recorded = run_session(workspace, agent)

    rows = ledger_rows(workspace)
    assert [(r.id, r.status) for r in rows] == [(0, "keep"), (1, "discard"), (2, "rejected"), (3, "keep")]
    assert (rows[1].region, rows[1].signs) == ("train.py:LR", {"train.py:LR": 1})
    assert rows[2].repeat_of == 1 and not rows[2].commit  # never committed, never run
    assert rows[3].signs == {"train.py:LR": -1} and rows[3].repeat_of is None
    assert any("a repeat of #1" in e.message for e in recorded.of(ev.Notice))
    assert "a repeat of #1" in agent.turns[2].feedback
    assert [e.mode for e in recorded.of(ev.PlanChosen)][:2] == ["explore", "explore"]
    assert rows[1].mode == "explore" and rows[1].mode_reason


def test_with_skip_repeats_off_a_repeat_runs_and_is_only_flagged(make_workspace, run_session):
    workspace = make_workspace(fake_train_source(lr=0.5), research={"skip_repeats": False, "planner": False})
    _, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.6), change("LR", 0.7)]))
    rows = ledger_rows(workspace)
    assert [r.status for r in rows] == ["keep", "discard", "discard"] and rows[2].repeat_of == 1
    assert not recorded.of(ev.PlanChosen) and rows[1].mode == ""


# --- what an API agent sees --------------------------------------------------------------------------------------


def logged(number: int, status: str, old: str, new: str, delta: float) -> ExperimentSummary:
    touch = touched({"train.py": old}, {"train.py": new})
    return ExperimentSummary(id=number, status=status, metric=1.0 + delta, delta=delta, description=f"change {number}",
                             region=touch.region, signs=touch.signs, delta_band=0.004, mode="explore")


def history() -> tuple[ExperimentSummary, ...]:
    base = ExperimentSummary(id=0, status="keep", metric=1.0, delta=None, description="baseline", baseline=True)
    return (base, logged(1, "discard", TRAIN, TRAIN.replace("LR = 0.02", "LR = 0.03"), 0.01),
            logged(2, "discard", TRAIN, TRAIN.replace("DEPTH = 4", "DEPTH = 6"), 0.02))


def test_the_research_log_tool_answers_by_region_and_checks_for_repeats(tmp_path):
    (tmp_path / "train.py").write_text(TRAIN)
    past = history()
    bench = Workbench(make_turn(tmp_path, history=past, incumbent=past[0]))
    answer = bench.run("research_log", {"region": "lr"})
    assert answer.ok and "#1 discard +0.0100 ±0.0040 | train.py:LR up | change 1 (mode explore)" in answer.content
    assert "#2" not in answer.content
    assert "DEPTH" in bench.run("research_log", {}).content

    bench.run("edit_file", {"path": "train.py", "old_string": "LR = 0.02", "new_string": "LR = 0.05"})
    check = bench.run("research_log", {"check": True})
    assert check.summary == "a repeat of #1" and "train.py:LR up" in check.content
    refused = bench.run("propose_experiment", {"description": "raise LR", "rationale": "faster"})
    assert not refused.ok and "repeat of #1" in refused.content
    bench.run("edit_file", {"path": "train.py", "old_string": "LR = 0.05", "new_string": "LR = 0.01"})
    assert bench.run("research_log", {"check": True}).summary == "new idea"
    assert bench.run("propose_experiment", {"description": "lower LR", "rationale": "stabler"}).ok


COMBINED = {"train.py": TRAIN.replace("LR = 0.02", "LR = 0.03").replace("DEPTH = 4", "DEPTH = 6")}


def combine_turn(workspace: Path):
    """A combine-mode turn whose near-misses #1 and #2 were merged into COMBINED."""
    (workspace / "train.py").write_text(TRAIN)
    past = history()
    return make_turn(workspace, history=past, incumbent=past[0], mode="combine", mode_reason="#1 and #2 came close",
                     near_misses=past[1:], combined=COMBINED)


def test_claude_is_told_the_mode_queries_the_log_and_hears_a_repeat_before_proposing(tmp_path):
    from fake_anthropic import FakeAnthropic, reply, tool_use

    from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings

    (tmp_path / "train.py").write_text(TRAIN)
    past = history()
    turn = make_turn(tmp_path, history=past, incumbent=past[0], mode="explore", mode_reason="plateau: no keep in 5")
    with FakeAnthropic() as api:
        api.script(
            reply(tool_use("research_log", region="LR")),
            reply(tool_use("edit_file", path="train.py", old_string="LR = 0.02", new_string="LR = 0.04")),
            reply(tool_use("propose_experiment", description="raise LR", rationale="faster")),
            reply(tool_use("edit_file", path="train.py", old_string="LR = 0.04", new_string="LR = 0.01")),
            reply(tool_use("propose_experiment", description="lower LR", rationale="the raise was tried (#1)")),
        )
        proposal = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key="sk-ant-test").propose(turn)
        bodies = [request.body for request in api.requests if request.path.startswith("/v1/messages")]
    assert proposal.description == "lower LR"
    opening = bodies[0]["messages"][0]["content"]
    opening = opening if isinstance(opening, str) else " ".join(block.get("text", "") for block in opening)
    assert "## Research mode: explore\nplateau: no keep in 5." in opening

    def answer(body: dict) -> str:
        block = next(b for b in body["messages"][-1]["content"] if b.get("type") == "tool_result")
        return json.dumps(block["content"])

    assert "#1 discard +0.0100" in answer(bodies[1]) and "train.py:LR up" in answer(bodies[1])
    assert "repeat of #1" in answer(bodies[3])


def test_the_opening_message_states_the_mode_and_the_merged_near_misses(tmp_path):
    message = first_message(combine_turn(tmp_path))
    assert "## Research mode: combine\n#1 and #2 came close." in message
    assert "-LR = 0.02\n" in message and "+LR = 0.03\n" in message and "+DEPTH = 6\n" in message


# --- the offline agent on the planner's modes ----------------------------------------------------------------------


def test_the_offline_agent_proposes_the_merged_near_misses_in_combine_mode(tmp_path):
    proposal = OfflineAgent().propose(combine_turn(tmp_path))
    assert dict(proposal.files) == COMBINED and proposal.meta["combines"] == [1, 2]
    assert proposal.description.startswith("combine #1 (change 1) + #2 (change 2)")


def test_the_offline_agent_exploits_the_kept_direction_and_explores_elsewhere(tmp_path):
    kept_source = TRAIN.replace("WEIGHT_DECAY = 0.1", "WEIGHT_DECAY = 0.05")
    (tmp_path / "train.py").write_text(kept_source)
    past = (*history(), logged(3, "keep", TRAIN, kept_source, -0.05))
    exploit = OfflineAgent().propose(make_turn(tmp_path, history=past, incumbent=past[-1], mode="exploit",
                                               mode_reason="#3 gained"))
    assert exploit.description.startswith("WEIGHT_DECAY 0.05 -> ")
    assert float(exploit.description.split("-> ")[1]) < 0.05
    explore = OfflineAgent().propose(make_turn(tmp_path, history=past, incumbent=past[-1], mode="explore",
                                               mode_reason="plateau"))
    took = {(name, sign) for s in past[1:] for name, sign in s.signs.items()}  # LR up, DEPTH up, WEIGHT_DECAY down
    explored = touched({"train.py": kept_source}, dict(explore.files))
    assert explored.region and not set(explored.signs.items()) & took


def synthetic_metric(params: dict) -> float:
    """The synthetic target's clean metric (bench/common.py SYNTHETIC_TARGET)."""
    a = math.log2(params["MATRIX_LR"] * params["DEPTH"] / 0.64)
    w = math.log10(params["WEIGHT_DECAY"] / 0.01)
    return (1.0 + 0.05 * a * a + 0.004 * (params["DEPTH"] - 8) ** 2 + 0.02 * w * w
            + 0.4 * (params["WARMUP_RATIO"] - 0.3) ** 2 + 0.03 * a * (params["DEPTH"] - 8) / 4)


def test_tpe_finds_more_than_random_search_on_the_synthetic_objective():
    from loopdeck.engine.agents.offline.constants import discover

    knobs = discover({"train.py": synthetic_target()})
    space, origin = tpe.space_of(knobs, (), 0)
    start = {k.key: k.value for k in knobs}
    trials = 30

    def tpe_best(seed: int) -> float:
        past = [ExperimentSummary(id=0, status="keep", metric=synthetic_metric(start), delta=None, description="",
                                  baseline=True)]
        for number in range(1, trials + 1):
            asked = tpe.ask(space, origin, past, "minimize", seed)[0]
            params = {**start, **asked}
            past.append(ExperimentSummary(id=number, status="discard", metric=synthetic_metric(params), delta=None,
                                          description="", meta={"params": params, "space": space,
                                                                "space_origin": origin}))
        return min(s.metric for s in past)

    def random_best(seed: int) -> float:
        rng = random.Random(seed)
        best = synthetic_metric(start)
        for _ in range(trials):
            params = dict(start)
            for key, (kind, low, high, _) in space.items():
                value = math.exp(rng.uniform(math.log(low), math.log(high)))
                params[key] = round(value) if kind == "int" else value
            best = min(best, synthetic_metric(params))
        return best

    seeds = range(3)
    tpe_mean = sum(tpe_best(s) for s in seeds) / len(seeds)
    random_mean = sum(random_best(s) for s in seeds) / len(seeds)
    assert tpe_mean < random_mean and tpe_mean < SYNTHETIC_OPTIMUM + 0.05


def test_a_missing_optuna_names_the_install_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_optuna(name, *args, **kwargs):
        if name == "optuna":
            raise ImportError("no optuna")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_optuna)
    with pytest.raises(Exception, match=r"pip install 'loopdeck\[optuna\]'"):
        OfflineAgent(search="tpe")


# --- the console ---------------------------------------------------------------------------------------------------


def test_the_console_shows_the_mode_and_its_key_cycles_through_the_modes():
    view = SessionView()
    view.apply(ev.PlanChosen(experiment=3, mode="combine", reason="#1 and #2 came close", forced=False))
    assert (view.research_mode, view.experiments[3].mode, view.experiments[3].mode_reason) == (
        "combine", "combine", "#1 and #2 came close")
    assert next_research_mode("combine", forced=False) == "explore"
    assert next_research_mode("combine", forced=True) == "ablate"
    assert next_research_mode("ablate", forced=True) == "auto"


# --- a planned loop ------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("search", ["rules", "tpe"])
def test_a_planned_loop_on_the_synthetic_target_improves_and_records_its_modes(make_workspace, run_session, search):
    workspace = make_workspace(synthetic_target(), research={"plateau_k": 3})
    toml = workspace / "loopdeck.toml"
    toml.write_text(toml.read_text().replace('kind = "offline"', f'kind = "offline"\n\n[agent.offline]\n'
                                             f'search = "{search}"').replace("budget_seconds = 1.0",
                                                                             "budget_seconds = 0.05"))
    git(workspace, "commit", "-qam", f"{search} search, 0.05 s runs")
    session, recorded = run_session(workspace, None, max_experiments=10)
    rows = ledger_rows(workspace)
    assert session.finished.best_metric < rows[0].metric - 0.1
    assert all(row.mode in ("explore", "exploit", "combine") for row in rows[1:])
    assert len({row.mode for row in rows[1:]}) >= 2  # the planner changed mode along the way
    assert [e.experiment for e in recorded.of(ev.PlanChosen)][0] == 1
    if search == "tpe":
        assert any(row.meta.get("space") for row in rows[1:])


@pytest.mark.slow
def test_loopdeck_ctl_mode_forces_the_next_turns_of_a_headless_session(make_workspace, capsys):
    from loopdeck.cli.main import main

    workspace = make_workspace(fake_train_source(lr=0.5))
    journal = workspace / ".loopdeck/events.jsonl"
    sent: list[int] = []

    def force_when_planned() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if journal.exists() and '"kind":"plan_chosen"' in journal.read_text():
                sent.append(main(["ctl", str(workspace), "mode", "exploit"]))
                return
            time.sleep(0.02)

    helper = threading.Thread(target=force_when_planned)
    helper.start()
    code = main(["run", str(workspace), "--headless", "--max-experiments", "4"])
    helper.join()
    assert code == 0 and sent == [0]
    journaled = [ev.event_from_dict(json.loads(line)) for line in journal.read_text().splitlines()]
    plans = [e for e in journaled if isinstance(e, ev.PlanChosen)]
    assert plans[0].forced is False
    assert plans[-1].forced and plans[-1].mode == "exploit" and plans[-1].reason == "a person asked to exploit"
    assert "sent mode to the session" in capsys.readouterr().out


def test_the_console_key_forces_the_next_mode_and_the_status_line_shows_it(tmp_path):
    from test_console_support import FakeSession, feed, make_app, run, screen_text, settle

    async def scenario() -> None:
        session = FakeSession()
        app = make_app(tmp_path, session=session)
        async with app.run_test() as pilot:
            await feed(app, pilot, [ev.SessionStarted(workspace="ws", branch="loopdeck/x", agent="offline",
                                                      approval="ask", budget_seconds=1.0, metric_name="val_bpb",
                                                      metric_direction="minimize"),
                                    ev.PlanChosen(experiment=1, mode="exploit", reason="#0 gained")])
            assert "mode exploit" in screen_text(app)
            await pilot.press("r")
            await settle(app, pilot)
            assert session.calls[-1] == ("set_mode", ("explore",), {})
            await feed(app, pilot, [ev.PlanChosen(experiment=2, mode="explore", reason="asked", forced=True)])
            assert "mode explore (forced)" in screen_text(app)
            await pilot.press("r")
            await settle(app, pilot)
            assert session.calls[-1] == ("set_mode", ("exploit",), {})

    run(scenario())


def test_on_a_plateau_the_loop_runs_the_injected_ablation_once_per_incumbent(make_workspace, run_session, monkeypatch):
    import loopdeck.engine.session as session_module

    ablations: list[int] = []
    # The session wires the planner's ablate mode to research/ablation.py's `ablate`; here it only counts.
    monkeypatch.setattr(session_module, "ablate", lambda ctx, apply=False: ablations.append(1))
    workspace = make_workspace(fake_train_source(lr=0.5), research={"plateau_k": 2})
    script = [change("LR", 0.3), change("LR", 0.25), change("STEPS", 5), change("STEP_SECONDS", 0.01),
              change("STEPS", 3)]
    _, recorded = run_session(workspace, ScriptedAgent(script))
    modes = [e.mode for e in recorded.of(ev.PlanChosen)]
    # #3 and #4 change nothing the metric reads: no gain to combine, so the plateau after them is ablated.
    assert modes[:5] == ["explore", "exploit", "exploit", "explore", "ablate"]
    assert modes.count("ablate") == 1 and ablations == [1]
    assert [r.mode for r in ledger_rows(workspace)][1:] == [mode for mode in modes if mode != "ablate"][:5]
