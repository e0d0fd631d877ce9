"""A whole night of the research loop with the Claude agent, compressed: hundreds of turns against the fake Messages
API, with 529s, malformed tool JSON, refusals (some answered by the fallback model), max_tokens cuts, training
crashes and one 30-minute outage injected, on the sleeping fake target (a run takes ~0.1 s) and in virtual time
(the agent's waits are recorded, not slept). The session must end by its max_experiments, with every turn accounted
for in the ledger or the events, results.tsv matching the ledger, and flat memory."""

from __future__ import annotations

import gc
import re
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fake_anthropic import (
    FakeAnthropic,
    Reply,
    malformed_tool_use,
    model_info,
    overloaded,
    rate_limited,
    refusal,
    reply,
    result_text,
    text,
    thinking,
    tool_exchanges,
    tool_use,
    unsigned_thinking,
)
from fake_targets import fake_train_source
from test_claude_agent import KEY

from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings
from loopdeck.engine.events import Event, ExperimentFinished, Notice, SessionFinished, StateChanged
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.ledger import Ledger
from loopdeck.engine.store.results_tsv import results_text

EXPERIMENTS = 125
OUTAGE = range(100, 110)  # ten turns in a row find the service down: 10 × (60 + 120) s of backoff = 30 minutes
FALLBACK = "claude-haiku-5-5"
CRASH_EVERY = 13  # every 13th edit breaks the training run (the fake target's MODE = "crash")
WARM_TURNS = 20  # memory is measured from here to the end


def declined(turn: int) -> bool:
    """Refused by the model, the reworded retry and the fallback model: the turn is dropped as a refusal."""
    return turn % 4 == 3


def unreadable(turn: int) -> bool:
    """Malformed tool JSON on every try: the turn fails like a crash."""
    return turn % 8 == 5


def faults(turn: int) -> list[Any]:
    """The replies a turn meets before the researcher's own (which `Researcher` gives once these are used up)."""
    if turn in OUTAGE:
        return [overloaded()] * 3
    if declined(turn):
        return [refusal(category="cyber", explanation="Refused.")] * 3
    if unreadable(turn):
        return [reply(malformed_tool_use("edit_file"))] * 3
    return [
        [overloaded()],
        [rate_limited(), reply(malformed_tool_use("write_file"))],
        [refusal(category="general_harms", explanation="Declined once.")],
        [refusal(), refusal()],  # the fallback model answers this turn
        [reply(unsigned_thinking("cut short"), stop_reason="max_tokens")],
    ][turn % 5]


class Researcher:
    """The model's side of a good turn, read from the request: read train.py, edit a line it read (LR, or now and
    then MODE into a crash), then propose."""

    def __init__(self) -> None:
        self.edits = 0

    def __call__(self, body: dict[str, Any]) -> Reply:
        calls, results = tool_exchanges(body.get("messages") or [])
        reads = [call_id for call_id, call in calls.items() if call["name"] == "read_file"]
        if not reads:
            return reply(thinking("Reading the training file."), tool_use("read_file", path="train.py"))
        if not any(call["name"] == "edit_file" and not results.get(call_id, {}).get("is_error")
                   for call_id, call in calls.items()):
            source = result_text(results[reads[-1]])
            self.edits += 1
            if self.edits % CRASH_EVERY == 0:
                return reply(tool_use("edit_file", path="train.py", old_string='MODE = "ok"',
                                      new_string='MODE = "crash"'))
            old = re.search(r"^LR = .*$", source, re.MULTILINE).group(0)
            new = f"LR = {0.05 + (self.edits * 7 % 40) * 0.01:.2f}"
            new = new if new != old else f"{new}1"
            return reply(tool_use("edit_file", path="train.py", old_string=old, new_string=new))
        return reply(text("Proposing."), tool_use("propose_experiment", description=f"edit #{self.edits}",
                                                  rationale="A step on LR tells where the optimum lies."))


class Night:
    """The session's event hook: scripts each turn's faults as it starts, and keeps only counts."""

    def __init__(self, api: FakeAnthropic) -> None:
        self.api = api
        self.turns = 0
        self.statuses: Counter[str] = Counter()
        self.notices: Counter[str] = Counter()
        self.finished: SessionFinished | None = None
        self.early = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged) and event.state == "proposing":
            if self.turns == WARM_TURNS:
                gc.collect()
                tracemalloc.start()
                self.early = tracemalloc.get_traced_memory()[0]
            self.api.requests.clear()  # the fake's record of requests is the test's memory, not the engine's
            self.api.script(*faults(self.turns))
            self.turns += 1
        elif isinstance(event, ExperimentFinished):
            self.statuses[event.status] += 1
        elif isinstance(event, Notice):
            for kind, words in (("refusal", "declined this turn"), ("outage", "outage of the agent's service"),
                                ("failed", "the agent failed to propose"), ("fallback", "asking the fallback")):
                if words in event.message:
                    self.notices[kind] += 1
                    break
        elif isinstance(event, SessionFinished):
            self.finished = event


@pytest.mark.slow
def test_a_whole_night_of_the_loop_with_claude(make_workspace: Any, tmp_path: Path) -> None:
    # The researcher steps LR around a cycle whatever it is told: ideas it repeats are not this test's subject.
    workspace = make_workspace(fake_train_source(steps=2, step_seconds=0.01), crashes=5,
                               research={"skip_repeats": False})
    slept: list[float] = []
    with FakeAnthropic() as api:
        api.models[FALLBACK] = model_info(FALLBACK)
        api.responder = Researcher()
        night = Night(api)
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url, fallback_model=FALLBACK), api_key=KEY, max_retries=0,
                            retry_attempts=3, retry_delay=60.0, sleep=slept.append)
        session = Session(workspace, RunOptions(approval="auto", pipeline="off", max_experiments=EXPERIMENTS),
                          on_event=night, agent=agent)
        session.run()
        gc.collect()
        late = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()

    assert night.finished is not None and night.finished.reason == "max_experiments", session.error
    turns = range(night.turns)
    outages = sum(turn in OUTAGE for turn in turns)
    refusals = sum(declined(turn) and turn not in OUTAGE for turn in turns)
    failed = sum(unreadable(turn) and not declined(turn) and turn not in OUTAGE for turn in turns)
    fallbacks = sum(turn not in OUTAGE and (declined(turn) or (turn % 5 == 3 and not unreadable(turn)))
                    for turn in turns)
    assert dict(night.notices) == {"outage": outages, "refusal": refusals, "failed": failed, "fallback": fallbacks}
    assert night.turns == EXPERIMENTS + outages + refusals + failed  # every other turn became an experiment
    assert night.turns >= 200
    with Ledger(workspace / ".loopdeck") as ledger:
        rows = ledger.rows()
    assert len(rows) == EXPERIMENTS + 1 and rows[0].is_baseline
    assert Counter(row.status for row in rows) == night.statuses  # the baseline's event too
    assert night.statuses["crash"] == api.responder.edits // CRASH_EVERY >= 5
    assert night.statuses["keep"] >= 1 and night.statuses["discard"] >= 80
    assert (workspace / ".loopdeck" / "results.tsv").read_text() == results_text(rows)
    assert sum(slept) >= 30 * 60  # the outage alone was waited out for half an hour, none of it for real
    print(f"{night.turns} turns, traced memory grew {(late - night.early) / 1e6:.2f} MB")
    assert late - night.early < 3_000_000
