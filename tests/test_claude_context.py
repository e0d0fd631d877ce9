"""What Claude reads each turn: bounded history summaries, grouped dead ends, notes; and the price table."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_anthropic import make_turn

from loopdeck.engine.agents.base import ExperimentSummary
from loopdeck.engine.agents.claude.context import first_message, history_overview, system_prompt
from loopdeck.engine.agents.claude.pricing import PRICES, TokenUsage, price_for

STATUSES = ("discard", "crash", "keep", "discard", "timeout", "rejected", "vetoed", "nan", "aborted", "discard")


def history(count: int) -> tuple[ExperimentSummary, ...]:
    rows = [ExperimentSummary(id=0, status="keep", metric=2.0, delta=None, description="baseline",
                              baseline=True)]
    for i in range(1, count):
        status = STATUSES[i % len(STATUSES)]
        failed = status in ("crash", "timeout", "nan")
        rows.append(ExperimentSummary(
            id=i, status=status, metric=None if failed else 2.0 - i / 10_000, delta=None if failed else -0.0001,
            description=f"idea number {i} " + "with a long explanation " * 20,
            diff="".join(f"-OLD_{i}_{n} = 1\n+OLD_{i}_{n} = 2\n" for n in range(200)),
            reason="exit code 1" if failed else "", log_tail="Traceback\n" * 500 if failed else "",
        ))
    return tuple(rows)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("LR = 1\n")
    return tmp_path


def test_summary_size_is_bounded_however_long_the_night(workspace):
    sizes = []
    for count in (50, 500, 5000):
        rows = history(count)
        turn = make_turn(workspace, history=rows, incumbent=rows[-8])
        sizes.append(len(first_message(turn)))
    assert sizes[0] < sizes[1]  # more experiments fill the groups up to their caps…
    assert sizes[1] == pytest.approx(sizes[2], rel=0.02)  # …and then the size stops growing
    assert sizes[2] < 40_000


def test_summary_groups_dead_ends_and_details_the_latest(workspace):
    rows = history(500)
    text = history_overview(rows, rows[-8], "minimize")
    assert "Baseline #0: 2.000000" in text
    assert f"Incumbent #{rows[-8].id}" in text
    for heading in ("Kept changes", "ran but did not improve", "broke the run", "refused before running"):
        assert heading in text
    assert "older ones not shown" in text
    latest = rows[-1]
    assert f"#{latest.id} " in text and f"OLD_{latest.id}_0" in text  # the newest in detail, diff included
    assert "OLD_3_0" not in text  # old diffs are compacted away; their one-liners stay in the groups


def test_first_message_carries_notes_feedback_and_files(workspace):
    turn = make_turn(workspace, notes=("stop touching the optimizer",), feedback="#4 crashed: NameError")
    text = first_message(turn)
    assert "Notes from the human supervisor" in text and "- stop touching the optimizer" in text
    assert "#4 crashed: NameError" in text
    assert "- train.py (1 lines)" in text and "lower is better" in text


def test_system_prompt_is_program_then_rules():
    prompt = system_prompt("Beat the baseline on val_bpb.\n")
    assert prompt.startswith("# Research program (program.md)\nBeat the baseline on val_bpb.")
    for rule in ("One idea per experiment", "Simplicity criterion", "propose_experiment", "dead end"):
        assert rule in prompt
    assert "no program.md" in system_prompt("  ")


def test_cost_uses_the_dated_table_and_overrides():
    usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, cache_write_tokens=1_000_000,
                       cache_read_tokens=1_000_000)
    sonnet = PRICES["claude-sonnet-5-5"]
    assert usage.cost(price_for("claude-sonnet-5-5")) == pytest.approx(
        sonnet.input + sonnet.output + sonnet.cache_write + sonnet.cache_read)
    assert price_for("claude-haiku-4-5-20251001") == PRICES["claude-haiku-4-5"]  # dated id → alias
    assert price_for("claude-sonnet-5-5", {"output": 99}).output == 99
    assert price_for("claude-unknown-9") is None
    full = {"input": 1, "output": 2, "cache_write": 3, "cache_read": 4}
    assert usage.cost(price_for("claude-unknown-9", full)) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="allowed: input, output, cache_write, cache_read"):
        price_for("claude-sonnet-5-5", {"inputs": 1})
    assert (usage + usage).total == 8_000_000


def test_the_opening_message_lists_the_ideas_already_running():
    from loopdeck.engine.agents.base import AgentTurn, ExperimentSummary
    from loopdeck.engine.agents.claude.context import first_message

    running = (ExperimentSummary(id=4, status="running", metric=None, delta=None, description="raise LR to 0.06"),)
    turn = AgentTurn(experiment=5, workspace=Path("."), files={"train.py": "LR = 0.04\n"}, editable=("train.py",),
                     protected=(), program="", metric_name="val_bpb", direction="minimize", history=(),
                     incumbent=None, running=running)
    text = first_message(turn)
    assert "## Already running" in text and "#4 raise LR to 0.06" in text
    assert "Already running" not in first_message(AgentTurn(**{**turn.__dict__, "running": ()}))
