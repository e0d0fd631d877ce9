"""The budget clock: the process clock counts work, not waiting; the setting reaches the harness, the ledger records
it, a foreign repository keeps wall time; and Muon's batched orthogonalisation equals the per-matrix one."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
import torch
from autoresearch_fixture import make_repo
from support_gpt import tiny_train_source
from test_gpt_train import import_file, parse_summary, run_training

from bench.muon_step import plain_orthogonalize
from loopdeck.engine.config import Config, load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.run.environment import budget_clock_env, training_env
from loopdeck.engine.store.budget import check_budget_clock
from loopdeck.engine.store.ledger import MIGRATIONS, ExperimentRow, Ledger
from loopdeck.gpt import TRAIN_TEMPLATE
from loopdeck.gpt.harness import BudgetClock, DataError

STALL = 0.05  # seconds each step of the stalled run sleeps: wall time passes, no work is done


def test_the_process_clock_does_not_count_a_stall_and_counts_work():
    for kind, stall_counts in (("process", False), ("wall", True)):
        clock = BudgetClock(torch.device("cpu"), kind)
        clock.start()
        time.sleep(0.2)
        stalled = clock.stop()
        assert (stalled >= 0.2) is stall_counts, (kind, stalled)
    clock = BudgetClock(torch.device("cpu"), "process")
    clock.start()
    busy_until = time.process_time() + 0.2
    while time.process_time() < busy_until:
        pass
    # One busy thread's CPU seconds shared among torch's threads: the work a step does, not the time it waited.
    assert clock.stop() == pytest.approx(0.2 / torch.get_num_threads(), rel=0.3)
    with pytest.raises(DataError, match="expected process or wall"):
        BudgetClock(torch.device("cpu"), "cpu")


def stalled_source() -> str:
    """The tiny template with a sleep in every step: a run starved of the CPU by a neighbour, exaggerated."""
    source = tiny_train_source()
    anchor = "        clock.start()\n"
    assert anchor in source
    return source.replace(anchor, anchor + f"        time.sleep({STALL})\n")


@pytest.mark.slow
def test_a_stalled_run_trains_for_its_budget_of_work_on_the_process_clock(tmp_path):
    budget = 0.5
    runs = {}
    for clock in ("process", "wall"):
        folder = tmp_path / clock
        result = run_training(folder, stalled_source(), LOOPDECK_TIME_BUDGET=str(budget), **budget_clock_env(clock))
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert records[0]["budget_clock"] == records[-1]["budget_clock"] == clock
        assert f"({clock} clock)" in result.stdout
        runs[clock] = parse_summary(result.stdout), [r for r in records if r["type"] == "step"]
    (process, process_steps), (wall, _) = runs["process"], runs["wall"]
    # Wall time: the stalls use up the budget in about budget / STALL steps.
    assert wall["num_steps"] <= budget / STALL + 4
    # Process time: the stalls cost nothing, so the run goes on until it has done `budget` of work, then stops.
    assert process["num_steps"] > 2 * wall["num_steps"]
    assert process_steps[-2]["elapsed_seconds"] < budget <= process["training_seconds"]
    stalled = process["num_steps"] * STALL
    assert process["total_seconds"] > stalled > process["training_seconds"]


def test_the_setting_reaches_the_training_environment():
    config = Config()
    assert config.experiment.budget_clock == "process"
    env = training_env(config, metrics_path=Path("m.jsonl"), run_dir=Path("run"), base={})
    assert (env["LOOPDECK_BUDGET_CLOCK"], env["OMP_WAIT_POLICY"]) == ("process", "PASSIVE")
    wall = config.updated(budget_clock="wall")
    env = training_env(wall, metrics_path=Path("m"), run_dir=Path("r"), base={})
    assert env["LOOPDECK_BUDGET_CLOCK"] == "wall" and "OMP_WAIT_POLICY" not in env
    # A starved run may take longer than its budget in wall time on the process clock: the timeout allows it.
    assert config.timeout() > wall.timeout() == 2 * 60 + 120


def test_a_foreign_repository_keeps_wall_time_and_refuses_the_process_clock(tmp_path):
    repo = make_repo(tmp_path / "ar")
    config, notes = load_config(repo)
    assert config.experiment.budget_clock == "wall"
    assert any(note.startswith("budget clock: wall (train.py and prepare.py never read LOOPDECK_BUDGET_CLOCK")
               for note in notes)
    (repo / "loopdeck.toml").write_text('[experiment]\nprotected = ["prepare.py"]\nbudget_clock = "process"\n')
    with pytest.raises(LoopdeckError) as refused:
        load_config(repo)
    message = str(refused.value)
    assert "never read LOOPDECK_BUDGET_CLOCK" in message and 'set budget_clock = "wall"' in message
    assert "\n" not in message
    (repo / "loopdeck.toml").write_text('[experiment]\nprotected = ["prepare.py"]\nbudget_clock = "wall"\n')
    assert load_config(repo)[0].experiment.budget_clock == "wall"


def test_a_new_workspace_times_its_budget_on_the_process_clock(tmp_path):
    from loopdeck.engine.store.workspace import init_workspace

    workspace = init_workspace(tmp_path / "ws")
    config, notes = load_config(workspace)
    assert config.experiment.budget_clock == "process"
    assert '# budget_clock = "process"' in (workspace / "loopdeck.toml").read_text()  # the target's default
    assert not any(note.startswith("budget clock") for note in notes)


def test_the_ledger_records_the_clock_and_refuses_to_compare_across_clocks(tmp_path):
    state = tmp_path / ".loopdeck"
    with Ledger(state) as ledger:
        ledger.begin(ExperimentRow(id=0, status="running", meta={"baseline": True}))
        ledger.finish(0, "keep", metric=1.5, budget_clock="process")
        assert ledger.get(0).budget_clock == "process"
        check_budget_clock(ledger, "process")
        with pytest.raises(LoopdeckError, match=r'measured on the process budget clock.*budget_clock = "process"'):
            check_budget_clock(ledger, "wall")


def test_a_ledger_from_before_the_clock_reads_as_wall(tmp_path):
    state = tmp_path / ".loopdeck"
    state.mkdir()
    conn = sqlite3.connect(state / "ledger.sqlite")
    for statements in MIGRATIONS[:-1]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) - 1}")
    conn.execute("INSERT INTO experiments (id, status, meta) VALUES (0, 'keep', '{\"baseline\": true}')")
    conn.commit()
    conn.close()
    with Ledger(state) as ledger:
        assert ledger.incumbent().budget_clock == "wall"
        with pytest.raises(LoopdeckError, match="wall budget clock"):
            check_budget_clock(ledger, "process")


def test_batched_orthogonalisation_equals_the_per_matrix_one():
    train = import_file(TRAIN_TEMPLATE, "template_muon")
    torch.manual_seed(0)
    for shape in ((4, 64, 64), (3, 128, 32), (2, 32, 96)):
        grads = torch.randn(shape)
        batched = train.orthogonalize(grads, train.NS_STEPS)
        one_by_one = torch.stack([plain_orthogonalize(grad, train.polar_express_coeffs[: train.NS_STEPS])
                                  for grad in grads])
        assert batched.shape == grads.shape
        torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)
        singular = torch.linalg.svdvals(batched)  # polar express pulls the singular values towards 1
        assert 0.7 < singular.median() < 1.3 and singular.max() < 1.5


def test_muon_steps_each_matrix_as_if_alone():
    train = import_file(TRAIN_TEMPLATE, "template_muon_step")
    torch.manual_seed(1)
    shapes = [(32, 32), (64, 32), (32, 32), (32, 64), (64, 32)]
    together = [torch.nn.Parameter(torch.randn(shape)) for shape in shapes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in together]
    settings = dict(lr=0.02, momentum=0.95, ns_steps=5, weight_decay=0.1)
    batched = train.Muon(together, **settings)
    singles = [train.Muon([p], **settings) for p in alone]
    for _ in range(3):
        grads = [torch.randn(shape) for shape in shapes]
        for p, q, grad in zip(together, alone, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        batched.step()
        for optimizer in singles:
            optimizer.step()
    for p, q in zip(together, alone, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
