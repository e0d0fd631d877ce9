"""Offline agent: knob discovery and precise edits, learning from history, notes, determinism, and a descent on a
synthetic objective where the test plays the engine (apply, score, keep if better, feed the history back)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, ExperimentSummary, Proposal
from loopdeck.engine.agents.offline.agent import OfflineAgent
from loopdeck.engine.agents.offline.constants import classify, constant_changes, discover, module_constants
from loopdeck.engine.agents.offline.edit import apply_edits, render
from loopdeck.engine.agents.offline.memory import parse_note
from loopdeck.engine.agents.offline.steps import neighbour
from loopdeck.engine.agents.regions import touched
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    Event,
    NoteDelivered,
)

HYPERPARAMETERS = '''\
# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

# Model architecture
ASPECT_RATIO = 64       # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128          # target head dimension for attention
WINDOW_PATTERN = "SSSL" # sliding window pattern: L=full, S=half context

# Optimization
TOTAL_BATCH_SIZE = 2**19 # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6      # learning rate for token embeddings (Adam)
UNEMBEDDING_LR = 0.004  # learning rate for lm_head (Adam)
MATRIX_LR = 0.04        # learning rate for matrix parameters (Muon)
SCALAR_LR = 0.5         # learning rate for per-layer scalars (Adam)
WEIGHT_DECAY = 0.2      # cautious weight decay for Muon
ADAM_BETAS = (0.8, 0.95) # Adam beta1, beta2
WARMUP_RATIO = 0.0      # fraction of time budget for LR warmup
WARMDOWN_RATIO = 0.5    # fraction of time budget for LR warmdown
FINAL_LR_FRAC = 0.0     # final LR as fraction of initial

# Model size
DEPTH = 8               # number of transformer layers
DEVICE_BATCH_SIZE = 128 # per-device batch size (reduce if OOM)
'''

# An autoresearch-shaped train.py: only parsed, never run.
AUTORESEARCH_TRAIN = f'''\
"""Pretraining script, single GPU."""
import os
import time

import torch
from prepare import MAX_SEQ_LEN, TIME_BUDGET, Tokenizer, evaluate_bpb

{HYPERPARAMETERS}
H100_BF16_PEAK_FLOPS = 989.5e12
SEED = 42
EVAL_EVERY = 250
COMPILE = True
DEPTH_CAP = 12
DEPTH_CAP = 16
STEPS_DONE = 0
LOGIT_SOFTCAP = 15.0


def build_model_config(depth):
    LOCAL_LR = 0.1
    base_dim = depth * ASPECT_RATIO
    return ((base_dim + HEAD_DIM - 1) // HEAD_DIM) * HEAD_DIM


def count():
    global STEPS_DONE
    STEPS_DONE += 1


if __name__ == "__main__":
    print("---")
    print(f"val_bpb:          {{1.0:.6f}}")
'''

PREPARE = "MAX_SEQ_LEN = 2048\nTIME_BUDGET = 300\nLOGIT_SOFTCAP = 15.0  # the harness owns this one\n"

# The same block as a plain module the test can execute to read back what a proposal really set.
SIM_TRAIN = f'"""A training file reduced to its hyperparameters."""\nMAX_SEQ_LEN = 2048\n\n{HYPERPARAMETERS}'


def values_of(source: str) -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(compile(source, "train.py", "exec"), namespace)
    return {k: v for k, v in namespace.items() if k.isupper()}


def objective(source: str) -> float | None:
    """A smooth bowl with its optimum (1.0) away from the defaults in several knobs, and an out-of-memory wall."""
    v = values_of(source)
    if v["DEPTH"] >= 10 or v["DEVICE_BATCH_SIZE"] >= 256:
        return None
    log2 = math.log2
    return (1.0 + 0.05 * log2(v["MATRIX_LR"] / 0.02) ** 2 + 0.03 * log2(v["EMBEDDING_LR"] / 0.9) ** 2
            + 0.02 * log2(v["UNEMBEDDING_LR"] / 0.006) ** 2 + 0.04 * ((v["WARMDOWN_RATIO"] - 0.7) / 0.2) ** 2
            + 0.01 * (v["DEPTH"] - 6) ** 2 + 0.01 * log2(v["TOTAL_BATCH_SIZE"] / 2**17) ** 2
            + 0.3 * (v["ADAM_BETAS"][1] - 0.95) ** 2 + 0.01 * log2(v["WEIGHT_DECAY"] / 0.1 + 1e-9) ** 2 / 4)


def flat(source: str) -> float:
    """Nothing ever improves: every proposal is discarded, so the agent keeps working around one incumbent."""
    return 1.5


class Bench:
    """Plays the engine for the agent: applies each proposal, scores it, keeps it if better, records history."""

    def __init__(self, agent: OfflineAgent, source: str, score: Callable[[str], float | None],
                 direction: str = "minimize", history: list[ExperimentSummary] | None = None,
                 workspace: Path = Path("."), protected: tuple[str, ...] = ()) -> None:
        self.agent, self.score, self.direction = agent, score, direction
        self.source = source
        self.workspace, self.protected = workspace, protected
        self.history = history or [ExperimentSummary(0, "keep", score(source), None, "baseline", baseline=True)]
        self.metric = next(r.metric for r in reversed(self.history) if r.status == "keep")
        self.events: list[Event] = []
        self.proposals: list[Proposal] = []
        self.evaluated = {source}

    def turn(self, notes: tuple[str, ...] = (), cancelled: Callable[[], bool] = lambda: False) -> AgentTurn:
        incumbent = next(r for r in reversed(self.history) if r.status == "keep")
        return AgentTurn(experiment=len(self.history), workspace=self.workspace, files={"train.py": self.source},
                         editable=("train.py",), protected=self.protected, program="", metric_name="val_bpb",
                         direction=self.direction, history=tuple(self.history), incumbent=incumbent,
                         notes=notes, emit=self.events.append, cancelled=cancelled)

    def step(self, notes: tuple[str, ...] = ()) -> Proposal:
        proposal = self.agent.propose(self.turn(notes))
        self.proposals.append(proposal)
        new = proposal.files["train.py"]
        diff = "".join(difflib.unified_diff(self.source.splitlines(True), new.splitlines(True),
                                            "a/train.py", "b/train.py"))
        metric = self.score(new)
        self.evaluated.add(new)
        if metric is None:
            status, delta, reason = "crash", None, "torch.OutOfMemoryError: CUDA out of memory."
        else:
            delta = metric - self.metric
            better = delta < 0 if self.direction == "minimize" else delta > 0
            status, reason = ("keep" if better else "discard"), ""
        self.history.append(ExperimentSummary(len(self.history), status, metric, delta, proposal.description,
                                              diff=diff, reason=reason, meta=proposal.meta))
        if status == "keep":
            self.source, self.metric = new, metric
        return proposal

    def run(self, turns: int) -> Bench:
        for _ in range(turns):
            self.step()
        return self


def summary(row_id: int, status: str, delta: float | None, old: str, new: str, source: str,
            reason: str = "") -> ExperimentSummary:
    """A ledger row without meta, as a person's `loopdeck try` leaves it: only the diff says what changed."""
    changed = source.replace(old, new, 1)
    diff = "".join(difflib.unified_diff(source.splitlines(True), changed.splitlines(True), "a/train.py",
                                        "b/train.py"))
    metric = None if delta is None else 1.2 + delta
    return ExperimentSummary(row_id, status, metric, delta, f"{old} -> {new}", diff=diff, reason=reason)


def moved(proposal: Proposal) -> dict[str, object]:
    return {m["key"]: m["new"] for m in proposal.meta["moves"]}


# --- discovery and edits -----------------------------------------------------------------------------------------


def test_discovers_the_autoresearch_block_and_nothing_else():
    knobs = {k.key: k for k in discover({"train.py": AUTORESEARCH_TRAIN})}
    assert {key: k.kind for key, k in knobs.items()} == {
        "ASPECT_RATIO": "width", "HEAD_DIM": "width", "WINDOW_PATTERN": "window", "TOTAL_BATCH_SIZE": "batch",
        "EMBEDDING_LR": "lr", "UNEMBEDDING_LR": "lr", "MATRIX_LR": "lr", "SCALAR_LR": "lr", "WEIGHT_DECAY": "wd",
        "ADAM_BETAS[0]": "beta", "ADAM_BETAS[1]": "beta", "WARMUP_RATIO": "fraction", "WARMDOWN_RATIO": "fraction",
        "FINAL_LR_FRAC": "fraction", "DEPTH": "depth", "DEVICE_BATCH_SIZE": "batch", "LOGIT_SOFTCAP": "softcap",
    }
    assert knobs["TOTAL_BATCH_SIZE"].value == 2**19 and knobs["TOTAL_BATCH_SIZE"].text == "2**19"
    assert knobs["ADAM_BETAS[1]"].value == 0.95
    # the harness's constants are excluded by name when the agent knows them
    assert "LOGIT_SOFTCAP" not in {k.key for k in discover({"train.py": AUTORESEARCH_TRAIN}, {"LOGIT_SOFTCAP"})}


def test_classification_by_name():
    assert classify("FINAL_LR_FRAC", 0.0) == "fraction"
    assert classify("N_KV_HEAD", 4) == "heads"
    assert classify("MUON_MOMENTUM", 0.95) == "beta"
    assert classify("ADAM_BETA2", 0.95) == "beta" and classify("ADAM_BETA2", 1.5) is None
    assert classify("N_LAYER", 12) == "depth"
    assert classify("MLP_RATIO", 4) == "width"
    for frame in ("TIME_BUDGET", "SEED", "EVAL_TOKENS", "MAX_SEQ_LEN", "VOCAB_SIZE", "H100_BF16_PEAK_FLOPS"):
        assert classify(frame, 100) is None
    assert classify("WINDOW_PATTERN", "SSSL") == "window" and classify("ACTIVATION", "gelu") is None


def test_step_ladders_keep_values_valid():
    knobs = {k.key: k for k in discover({"train.py": SIM_TRAIN})}
    assert neighbour(knobs["MATRIX_LR"], 1, 0) == (0.06, "x1.5")
    assert neighbour(knobs["DEPTH"], -1, 0) == (7, "-1")
    assert neighbour(knobs["TOTAL_BATCH_SIZE"], -1, 0) == (2**18, "/2")
    assert neighbour(knobs["WARMUP_RATIO"], -1, 0) is None  # already at 0
    assert neighbour(knobs["WARMDOWN_RATIO"], 1, 0) == (0.6, "+0.1")
    assert neighbour(knobs["ADAM_BETAS[1]"], 1, 0) == (0.975, "1-beta /2")
    assert neighbour(knobs["WEIGHT_DECAY"], -1, 2) == (0.0, "to 0")
    assert neighbour(knobs["WINDOW_PATTERN"], 1, 0) == ("SLSL", "more global")
    assert neighbour(knobs["WINDOW_PATTERN"], -1, 0) is None  # one full-context layer always stays
    assert neighbour(knobs["HEAD_DIM"], -1, 1) == (96, "-32")


def test_edits_replace_only_the_literal_and_keep_comments_aligned():
    source = 'X = 1\nMOMENTUM_BETAS = ("β", 0.9)  # é\nMATRIX_LR = 0.04        # Muon\nTOTAL_BATCH_SIZE = 2 ** 19\n'
    knobs = {k.key: k for k in discover({"train.py": source})}
    edits = [(knobs["MOMENTUM_BETAS[1]"], "0.95"), (knobs["MATRIX_LR"], render(knobs["MATRIX_LR"], 0.0267)),
             (knobs["TOTAL_BATCH_SIZE"], render(knobs["TOTAL_BATCH_SIZE"], 2**18))]
    assert apply_edits(source, edits) == (
        'X = 1\nMOMENTUM_BETAS = ("β", 0.95) # é\nMATRIX_LR = 0.0267      # Muon\nTOTAL_BATCH_SIZE = 2 ** 18\n')


def test_constant_changes_reads_a_diff():
    old = "A_LR = 0.1\nADAM_BETAS = (0.8, 0.95)\nWINDOW_PATTERN = 'SSSL'\n"
    new = "A_LR = 0.2\nADAM_BETAS = (0.8, 0.9)\nWINDOW_PATTERN = 'SSLL'\n"
    diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "a/train.py", "b/train.py"))
    assert constant_changes(diff) == [("train.py", "A_LR", 0.1, 0.2), ("train.py", "ADAM_BETAS[1]", 0.95, 0.9),
                                      ("train.py", "WINDOW_PATTERN", "SSSL", "SSLL")]


def test_proposals_compile_and_change_exactly_their_literals():
    bench = Bench(OfflineAgent(seed=3), SIM_TRAIN, objective)
    for _ in range(30):
        before = bench.source
        proposal = bench.step()
        after = proposal.files["train.py"]
        compile(after, "train.py", "exec")
        old_values, new_values = values_of(before), values_of(after)
        expected = dict(old_values)
        for key, value in moved(proposal).items():
            name, _, index = key.partition("[")
            if index:
                items = list(expected[name])
                items[int(index[:-1])] = value
                expected[name] = tuple(items)
            else:
                expected[name] = value
        assert new_values == expected
        changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
        assert len(changed) == len(proposal.meta["moves"]) or len(changed) == 1  # a tuple edit is one line
        for old_line, new_line in changed:
            assert old_line.split("=")[0] == new_line.split("=")[0]
            assert old_line.partition("#")[2] == new_line.partition("#")[2]


# --- learning from history ---------------------------------------------------------------------------------------


def test_never_evaluates_a_configuration_twice():
    for score in (flat, objective):
        bench = Bench(OfflineAgent(), SIM_TRAIN, score)
        seen = {SIM_TRAIN}
        for _ in range(50):
            proposal = bench.step()
            assert proposal.files["train.py"] not in seen, proposal.description
            seen.add(proposal.files["train.py"])


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_pushes_further_in_a_direction_that_helped(direction):
    sign = 1 if direction == "minimize" else -1
    kept = SIM_TRAIN.replace("MATRIX_LR = 0.04  ", "MATRIX_LR = 0.06  ")
    history = [ExperimentSummary(0, "keep", 1.2, None, "baseline", baseline=True),
               summary(1, "keep", -0.01 * sign, "MATRIX_LR = 0.04", "MATRIX_LR = 0.06", SIM_TRAIN)]
    bench = Bench(OfflineAgent(), kept, flat, direction, history)
    proposal = bench.step()
    assert moved(proposal) == {"MATRIX_LR": 0.09}
    assert f"MATRIX_LR x1.5 helped last time ({-0.01 * sign:+.4f}), pushing further." in proposal.rationale


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_reverses_a_direction_that_hurt(direction):
    sign = 1 if direction == "minimize" else -1
    history = [ExperimentSummary(0, "keep", 1.2, None, "baseline", baseline=True),
               summary(1, "discard", 0.01 * sign, "MATRIX_LR = 0.04", "MATRIX_LR = 0.06", SIM_TRAIN)]
    proposal = Bench(OfflineAgent(), SIM_TRAIN, flat, direction, history).step()
    assert moved(proposal) == {"MATRIX_LR": 0.0267}
    assert f"MATRIX_LR x1.5 hurt ({0.01 * sign:+.4f}), trying the other direction." in proposal.rationale


def test_backs_off_a_crash_and_leaves_a_twice_failed_knob_alone():
    oom = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    history = [ExperimentSummary(0, "keep", 1.2, None, "baseline", baseline=True),
               summary(1, "crash", None, "DEPTH = 8", "DEPTH = 9", SIM_TRAIN, reason=oom)]
    bench = Bench(OfflineAgent(), SIM_TRAIN, flat, history=history)
    bench.run(40)
    depths = [(p, moved(p)["DEPTH"]) for p in bench.proposals if "DEPTH" in moved(p)]
    assert depths and all(depth < 9 for _, depth in depths)
    assert "DEPTH +1 crashed (out of memory), backing off the other way." in depths[0][0].rationale

    history.append(summary(2, "crash", None, "DEPTH = 8", "DEPTH = 7", SIM_TRAIN, reason=oom))
    bench = Bench(OfflineAgent(), SIM_TRAIN, flat, history=list(history)).run(40)
    assert not any("DEPTH" in moved(p) for p in bench.proposals)
    assert "Leaving DEPTH alone: it failed 2 times (out of memory)." in bench.proposals[0].rationale


def test_combines_two_moves_that_improved_without_being_kept():
    # Both improved, but by less than the loop's minimum improvement, so neither was kept.
    history = [ExperimentSummary(0, "keep", 1.2, None, "baseline", baseline=True),
               summary(1, "discard", -0.0005, "MATRIX_LR = 0.04", "MATRIX_LR = 0.06", SIM_TRAIN),
               summary(2, "discard", -0.0004, "WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.6", SIM_TRAIN)]
    proposal = Bench(OfflineAgent(), SIM_TRAIN, flat, history=history).step()
    assert moved(proposal) == {"MATRIX_LR": 0.06, "WARMDOWN_RATIO": 0.6}
    assert "combining" in proposal.rationale


def test_moves_two_knobs_at_once_when_every_single_move_would_repeat_an_idea():
    source = "MATRIX_LR = 0.04  # rate\nDEPTH = 4  # layers\n"
    history = [ExperimentSummary(0, "keep", 1.5, None, "baseline", baseline=True)]
    for number, (old, new) in enumerate([("MATRIX_LR = 0.04", "MATRIX_LR = 0.06"), ("DEPTH = 4", "DEPTH = 5"),
                                         ("MATRIX_LR = 0.04", "MATRIX_LR = 0.0267"), ("DEPTH = 4", "DEPTH = 3")], 1):
        touch = touched({"train.py": source}, {"train.py": source.replace(old, new)})
        history.append(ExperimentSummary(number, "discard", 1.51, 0.01, f"{old} -> {new}", region=touch.region,
                                         signs=touch.signs))
    proposal = Bench(OfflineAgent(), source, flat, history=history).step()
    assert set(moved(proposal)) == {"MATRIX_LR", "DEPTH"}
    assert "Every single move has been tried from this incumbent" in proposal.rationale


def test_a_draft_is_proposed_again_when_the_planners_mode_has_changed_since():
    bench = Bench(OfflineAgent(), SIM_TRAIN, objective)
    draft = OfflineAgent().propose(dataclasses.replace(bench.turn(), mode="explore", mode_reason="new"))
    assert OfflineAgent().revise(draft, dataclasses.replace(bench.turn(), mode="explore")) is draft
    revised = OfflineAgent().revise(draft, dataclasses.replace(bench.turn(), mode="exploit", mode_reason="#1 gained"))
    assert revised is not draft and revised.meta["mode"] == "exploit"
    assert "Planner: exploit (#1 gained)" in revised.rationale


def test_narrows_the_step_when_the_usual_steps_are_spent():
    bench = Bench(OfflineAgent(), "MATRIX_LR = 0.04  # the only knob\n", flat).run(4)
    assert [moved(p)["MATRIX_LR"] for p in bench.proposals] == [0.06, 0.0267, 0.05, 0.032]
    assert "For MATRIX_LR, x1.5 is already tried from this incumbent, so narrowing to x1.25." in bench.proposals[2].rationale


def test_stops_when_nothing_is_left():
    bench = Bench(OfflineAgent(), "DEPTH = 1  # layers\n", flat).run(2)
    assert [moved(p)["DEPTH"] for p in bench.proposals] == [2, 3]
    with pytest.raises(AgentError) as stop:
        bench.step()
    assert stop.value.fatal and stop.value.stop_reason == "exhausted"
    with pytest.raises(AgentError) as none:
        Bench(OfflineAgent(), "print('no constants')\n", flat).step()
    assert none.value.fatal and none.value.stop_reason == "exhausted"


def test_harness_constants_are_never_knobs(tmp_path):
    (tmp_path / "prepare.py").write_text(PREPARE)
    bench = Bench(OfflineAgent(), AUTORESEARCH_TRAIN, flat, workspace=tmp_path, protected=("prepare.py",))
    bench.run(40)
    touched = {key for p in bench.proposals for key in moved(p)}
    assert "LOGIT_SOFTCAP" not in touched and "MATRIX_LR" in touched
    # MAX_SEQ_LEN from the harness makes the batch arithmetic whole: 2**19 tokens = 2 micro-batches of 128 × 2048
    for proposal in bench.proposals:
        v = {**{"TOTAL_BATCH_SIZE": 2**19, "DEVICE_BATCH_SIZE": 128}, **moved(proposal)}
        assert v["TOTAL_BATCH_SIZE"] % (v["DEVICE_BATCH_SIZE"] * 2048) == 0, proposal.description


# --- notes, streaming, determinism -------------------------------------------------------------------------------


def test_notes_are_delivered_and_respected_across_turns_and_restarts():
    bench = Bench(OfflineAgent(), SIM_TRAIN, flat)
    note = "try lower EMBEDDING_LR and don't touch DEPTH"
    first = bench.step(notes=(note,))
    assert moved(first) == {"EMBEDDING_LR": 0.4}
    assert NoteDelivered(experiment=1, text=note, ts=0) in [
        NoteDelivered(experiment=e.experiment, text=e.text, ts=0) for e in bench.events if isinstance(e, NoteDelivered)]
    assert f'Note received: "{note}" — will try lower EMBEDDING_LR next; will not touch DEPTH.' in first.rationale
    bench.run(30)
    assert not any("DEPTH" in moved(p) for p in bench.proposals)
    # a fresh agent (the engine restarted) reads the standing rule back from the history
    bench.agent = OfflineAgent()
    bench.run(10)
    assert not any("DEPTH" in moved(p) for p in bench.proposals)
    bench.step(notes=("ok, feel free to touch depth again",))
    bench.run(25)
    assert any("DEPTH" in moved(p) for p in bench.proposals[-26:])


def test_note_parsing_rules():
    knobs = discover({"train.py": SIM_TRAIN})
    rules = {(d.key, d.rule) for d in parse_note("stop increasing DEPTH; lower learning rates please", knobs)}
    assert ("DEPTH", "forbid_up") in rules
    assert {("MATRIX_LR", "prefer_down"), ("EMBEDDING_LR", "prefer_down")} <= rules
    assert parse_note("looks good, carry on", knobs) == []
    assert {d.rule for d in parse_note("leave the warmdown alone", knobs)} == {"avoid"}


def test_reasoning_streams_before_the_proposal():
    bench = Bench(OfflineAgent(), SIM_TRAIN, flat)
    proposal = bench.step(notes=("hello",))
    kinds = [type(e) for e in bench.events]
    assert kinds[:3] == [AgentToolCall, AgentToolResult, NoteDelivered]
    thinking = [e.text for e in bench.events if isinstance(e, AgentThinkingDelta)]
    assert len(thinking) >= 3 and "".join(thinking) == proposal.rationale
    assert isinstance(bench.events[-1], AgentTextDelta) and proposal.description in bench.events[-1].text
    assert "names no constant" in proposal.rationale
    with pytest.raises(AgentCancelled):
        OfflineAgent().propose(bench.turn(cancelled=lambda: True))


def test_same_seed_same_search_other_seed_other_order():
    def descriptions(seed: int) -> list[str]:
        return [p.description for p in Bench(OfflineAgent(seed), SIM_TRAIN, flat).run(30).proposals]

    assert descriptions(0) == descriptions(0)
    assert descriptions(0) != descriptions(1)


# --- it finds real improvements ----------------------------------------------------------------------------------


def test_descends_a_synthetic_objective():
    bench = Bench(OfflineAgent(), SIM_TRAIN, objective).run(40)
    baseline, optimum = bench.history[0].metric, 1.0
    first_keep = next(r.id for r in bench.history[1:] if r.status == "keep")
    kept_knobs = {key for r in bench.history[1:] if r.status == "keep" for key in moved_keys(r)}
    print(f"\nsynthetic objective: baseline {baseline:.4f}, after 40 experiments {bench.metric:.4f} "
          f"(optimum {optimum}); first keep at experiment {first_keep}; kept {len(kept_knobs)} knobs")
    assert first_keep <= 5
    assert bench.metric - optimum < 0.05 * (baseline - optimum)
    assert len(kept_knobs) >= 4


def test_descends_through_noise():
    noise = random.Random(7)

    def noisy(source: str) -> float | None:
        value = objective(source)
        return None if value is None else value + noise.gauss(0.0, 0.003)

    bench = Bench(OfflineAgent(), SIM_TRAIN, noisy).run(40)
    true_final, true_baseline = objective(bench.source), objective(SIM_TRAIN)
    assert true_final - 1.0 < 0.2 * (true_baseline - 1.0)


def moved_keys(row: ExperimentSummary) -> list[str]:
    return [m["key"] for m in row.meta.get("moves", [])]


def test_gpt_template_is_searchable():
    gpt = pytest.importorskip("loopdeck.gpt")
    if not gpt.TRAIN_TEMPLATE.is_file():
        pytest.skip("gpt/train.py not written yet")
    source = gpt.TRAIN_TEMPLATE.read_text(encoding="utf-8")
    knobs = {k.key: k.kind for k in discover({"train.py": source})}
    assert {"DEPTH", "MATRIX_LR", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE", "WARMDOWN_RATIO"} <= set(knobs)
    assert not {"MAX_SEQ_LEN", "TIME_BUDGET", "EVAL_TOKENS"} & set(knobs)
    # The template's folder plays the workspace: train.py reads MAX_SEQ_LEN from the harness.py beside it.
    bench = Bench(OfflineAgent(), source, flat, workspace=gpt.TRAIN_TEMPLATE.parent).run(40)
    defaults = values_of_constants(source)
    sequence = module_constants(gpt.TRAIN_TEMPLATE.with_name("harness.py").read_text(encoding="utf-8"))["MAX_SEQ_LEN"]
    for proposal in bench.proposals:
        compile(proposal.files["train.py"], "train.py", "exec")
        v = {**defaults, **moved(proposal)}
        # the template's own rule: the total is a whole number of DEVICE_BATCH_SIZE × MAX_SEQ_LEN micro-batches
        assert v["TOTAL_BATCH_SIZE"] % (v["DEVICE_BATCH_SIZE"] * sequence) == 0, proposal.description
    assert any(set(moved(p)) == {"TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE"} for p in bench.proposals)


def values_of_constants(source: str) -> dict[str, object]:
    return {k.key: k.value for k in discover({"train.py": source})}
