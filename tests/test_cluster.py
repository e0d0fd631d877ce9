"""A real multi-node path on Ray's own stand-in for a cluster (`ray.cluster_utils.Cluster`, two nodes on this
machine): the trusted evaluation runs beside the weights on the node that trained them, a lost node interrupts
only its experiment, and workers on other nodes report their own node's telemetry."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import Recorded, git, ledger_rows
from fake_targets import ScriptedAgent, change
from fault_support import assert_no_leftovers
from test_parallel import exp_branches, two_knob_source
from test_workers import LineSink

from loopdeck.engine.events import Event, TelemetrySample, TrainStep
from loopdeck.engine.run.executor import ExperimentSpec, RunResult
from loopdeck.engine.run.telemetry import NO_GPU

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402 - after the skip: ray is an optional extra

from loopdeck.engine.run.ray_executor import RayExecutor, node_label  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.usefixtures("no_ray_left")]

FAR = {"far": 1.0}  # only the second node has it: a run that asks for it goes there


class TwoNodes:
    """A head node and a second node, each with one CPU; the second also has the custom resource "far"."""

    def __init__(self) -> None:
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        self.far = self.cluster.add_node(num_cpus=1, resources={"far": 2})
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    @property
    def far_label(self) -> str:
        return node_label(self.far.node_id)

    def far_processes(self) -> list[psutil.Process]:
        """Training processes that run on the second node (under its raylet)."""
        raylet = psutil.Process(self.far.all_processes["raylet"][0].process.pid)
        found = []
        for process in raylet.children(recursive=True):
            try:
                if "train.py" in " ".join(process.cmdline()):
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def close(self) -> None:
        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture
def two_nodes() -> Iterator[TwoNodes]:
    nodes = TwoNodes()
    try:
        yield nodes
    finally:
        nodes.close()


def spec(workspace: Path, run_dir: Path, script: str, inputs_from: Path | None = None) -> ExperimentSpec:
    return ExperimentSpec(number=1, commit=git(workspace, "rev-parse", "HEAD"), checkout=workspace,
                          argv=(sys.executable, "-c", script, str(run_dir), str(inputs_from or "")),
                          env={"PATH": "/usr/bin:/bin"}, run_dir=run_dir, budget_seconds=1.0, timeout=60.0,
                          inputs_from=inputs_from)


# Training: the weights name the actor that made them, it changes a file of its checkout, and it runs long enough
# for telemetry.
TRAIN = ("import os, pathlib, sys, time; pathlib.Path(sys.argv[1], 'model.pt').write_text(f'made by {os.getppid()}'); "
         "pathlib.Path('program.md').write_text('changed'); print('trainer', os.getppid(), os.getcwd()); time.sleep(2.5)")
# An evaluation: reads the weights of the run directory it was given, and looks at the checkout it runs in.
EVALUATE = ("import os, pathlib, sys; weights = pathlib.Path(sys.argv[2], 'model.pt'); "
            "print('evaluator', os.getppid(), weights, weights.read_text()); "
            "print('checkout', 'as committed' if pathlib.Path('program.md').read_text() != 'changed' else 'changed')")


def run(executor: RayExecutor, job: ExperimentSpec) -> tuple[RunResult, list[str]]:
    lines: list[str] = []
    result = executor.start(job, LineSink(lines)).wait()
    assert result.returncode == 0, result.log_tail
    return result, lines


def test_an_evaluation_runs_beside_its_weights_on_the_node_that_trained_them(two_nodes, workspace, tmp_path):
    from loopdeck.engine.store.worktrees import Worktrees

    samples: list[TelemetrySample] = []
    executor = RayExecutor(address=two_nodes.address, resources=FAR, on_telemetry=samples.append,
                           pack=lambda s: Worktrees(workspace, "unused").bundle(s.commit))
    run_dir = tmp_path / "runs" / "1"
    try:
        trained, lines = run(executor, spec(workspace, run_dir, TRAIN))
        (trainer,) = [line.split() for line in lines if line.startswith("trainer ")]
        assert (run_dir / "model.pt").read_text() == f"made by {trainer[1]}"  # the run's files came back
        (run_dir / "model.pt").write_text("the copy here")  # so the evaluation can tell where it read them

        evaluated, lines = run(executor, spec(workspace, run_dir / "eval-val", EVALUATE, inputs_from=run_dir))
        (evaluator,) = [line.split() for line in lines if line.startswith("evaluator ")]
        assert evaluated.worker == trained.worker == f"ray node {two_nodes.far_label}"
        assert evaluator[1] == trainer[1] and evaluator[3:] == ["made", "by", trainer[1]]  # same actor, its files
        assert "loopdeck-worker-" in evaluator[2] and str(tmp_path) not in evaluator[2]
        assert "checkout as committed" in lines  # not what the training run left in it
        assert "evaluator" in (run_dir / "eval-val" / "log.txt").read_text()

        # Another run takes that actor: an evaluation after it gets the weights shipped from here instead.
        run(executor, spec(workspace, tmp_path / "runs" / "2", TRAIN))
        _, lines = run(executor, spec(workspace, run_dir / "eval-holdout", EVALUATE, inputs_from=run_dir))
        (evaluator,) = [line.split() for line in lines if line.startswith("evaluator ")]
        assert evaluator[3:] == ["the", "copy", "here"] and "loopdeck-worker-" in evaluator[2]
    finally:
        executor.close()
    assert not Path(trainer[2]).parent.exists()  # the actor cleared its scratch directory before it ended

    # The second node measured itself while it trained: CPU and RAM (no NVML here), tagged with the node.
    assert len(samples) >= 2 and {sample.node for sample in samples} == {two_nodes.far_label}
    assert all(sample.memory_total_mb > 0 and sample.gpu_status in (NO_GPU, "") for sample in samples)
    assert any(sample.process_rss_mb for sample in samples)  # the training process tree, on that node


def test_trusted_scoring_on_a_cluster_happens_where_the_run_trained(two_nodes, make_workspace, run_session):
    support = pytest.importorskip("support_gpt")
    workspace = make_workspace(support.tiny_train_source(), timeout=120, env={"LOOPDECK_EVAL_TOKENS": "4096"},
                               extra_files=support.harness_files(), protected=("harness.py",))
    with (workspace / "loopdeck.toml").open("a") as toml:
        toml.write(f'\n[workers]\nbackend = "ray"\naddress = "{two_nodes.address}"\nresources = {{far = 1}}\n')
    git(workspace, "commit", "-qam", "run on the far node")
    session, recorded = run_session(workspace, ScriptedAgent([]), budget_seconds=1.0)

    (baseline,) = ledger_rows(workspace)
    assert baseline.status == "keep" and not baseline.self_reported, session.error
    assert baseline.worker == f"ray node {two_nodes.far_label}"
    assert baseline.reported_metric == pytest.approx(baseline.metric, abs=1e-6)
    harnesses = set()
    for split in ("val", "holdout"):  # both scored by the workspace's pinned harness, in the far node's checkout
        log = (workspace / ".loopdeck/runs/0" / f"eval-{split}" / "log.txt").read_text()
        answer = json.loads(log.split("loopdeck-evaluation: ")[-1].splitlines()[0])
        assert answer["status"] == "ok" and "loopdeck-worker-" in answer["harness"], answer
        assert answer["harness_sha256"] == session.protected_hashes["harness.py"]
        harnesses.add(answer["harness"])
    assert len(harnesses) == 1  # one checkout: the training run's own, beside its weights (not a fresh one each)
    assert baseline.holdout_metric is not None
    assert any(isinstance(e, TelemetrySample) and e.node == two_nodes.far_label for e in recorded.events)


def test_a_lost_node_interrupts_its_experiment_and_the_loop_goes_on(two_nodes, make_workspace):
    from loopdeck.engine.session import RunOptions, Session

    workspace = make_workspace(two_knob_source(step_seconds=0.25, steps=8))
    with (workspace / "loopdeck.toml").open("a") as toml:
        toml.write(f'\n[workers]\nbackend = "ray"\naddress = "{two_nodes.address}"\n')
    git(workspace, "commit", "-qam", "join the cluster")
    agent = ScriptedAgent([change("LR", 0.3), change("WD", 0.2), change("LR", 0.25), change("WD", 0.15)])
    recorded, removed = Recorded(), threading.Event()

    def on_event(event: Event) -> None:
        recorded(event)
        # The second node goes away while one of the experiments trains there.
        if (isinstance(event, TrainStep) and event.experiment >= 1 and event.step >= 2 and not removed.is_set()
                and two_nodes.far_processes()):
            removed.set()
            two_nodes.cluster.remove_node(two_nodes.far)

    session = Session(workspace, RunOptions(workers=2), on_event=on_event, agent=agent)
    session.run()
    assert removed.is_set() and recorded.finished.reason == "exhausted", session.error

    rows = ledger_rows(workspace)
    assert [row.id for row in rows] == [0, 1, 2, 3, 4]  # every row once, none left running
    tsv = (workspace / ".loopdeck/results.tsv").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[0] for line in tsv) == sorted(row.commit[:7] for row in rows)
    incumbent = max((row for row in rows if row.status == "keep"), key=lambda row: row.finished_at)
    assert git(workspace, "rev-parse", "HEAD") == incumbent.commit and git(workspace, "status", "--porcelain") == ""
    (lost,) = [row for row in rows if row.status == "interrupted"]
    assert "Ray worker died" in lost.reason and lost.worker == f"ray node {two_nodes.far_label}", lost.reason
    assert all(row.status in ("keep", "discard") for row in rows if row is not lost)
    assert max(row.id for row in rows if row.status != "interrupted") > lost.id  # the loop went on after it
    assert exp_branches(workspace) == [] and len(git(workspace, "worktree", "list").splitlines()) == 1
    assert_no_leftovers(workspace)
