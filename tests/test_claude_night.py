"""A night of real API behaviour, compressed: hundreds of Claude turns against the fake Messages API with 529s,
malformed tool JSON, refusals, max_tokens cuts and a long outage injected. Every turn is accounted for (a
proposal, or a non-fatal error of a known kind), none ends the session, and memory stays flat."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from fake_anthropic import (
    FakeAnthropic,
    make_turn,
    malformed_tool_use,
    overloaded,
    refusal,
    reply,
    unsigned_thinking,
)
from test_claude_agent import KEY, TRAIN, read_edit_propose

from loopdeck.engine.agents.base import AgentError
from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings

TURNS = 300
OUTAGE = range(150, 160)  # ten turns in a row find the service down (30 minutes and more of virtual backoff)


def night_script(number: int) -> list:
    """The replies of turn `number`: a fault first (one kind per turn, in rotation), then a good turn."""
    if number in OUTAGE:
        return [overloaded()] * 3
    fault = [
        [overloaded()],
        [reply(malformed_tool_use("write_file"))],
        [refusal(category="general_harms", explanation="Refused.")],
        [reply(unsigned_thinking("cut short"), stop_reason="max_tokens")],
        [],
        [refusal(), refusal()],  # two refusals: this turn is declined
    ][number % 6]
    return fault + ([] if number % 6 == 5 else read_edit_propose())


def test_a_night_of_faults_leaves_every_turn_accounted_for(tmp_path: Path):
    (tmp_path / "train.py").write_text(TRAIN)
    (tmp_path / "prepare.py").write_text("EVAL_TOKENS = 1000\n")
    slept: list[float] = []
    outcomes: dict[str, int] = {}
    with FakeAnthropic() as api:
        agent = ClaudeAgent(ClaudeSettings(base_url=api.url), api_key=KEY, max_retries=0, retry_attempts=3,
                            retry_delay=60.0, sleep=slept.append)
        agent.check()
        tracemalloc.start()
        for number in range(TURNS):
            if number == 20:
                gc.collect()
                early, _ = tracemalloc.get_traced_memory()
            api.script(*night_script(number))
            try:
                agent.propose(make_turn(tmp_path))
                kind = "proposal"
            except AgentError as error:
                assert not error.fatal, error
                kind = error.stop_reason
            outcomes[kind] = outcomes.get(kind, 0) + 1
            assert api.pending() == 0, number  # the turn used exactly its replies
            api.requests.clear()  # the fake's record of requests is the test's memory, not the agent's
        gc.collect()
        late, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        agent.close()

    declined = len([n for n in range(TURNS) if n % 6 == 5 and n not in OUTAGE])
    assert outcomes == {"proposal": TURNS - len(OUTAGE) - declined, "outage": len(OUTAGE), "refusal": declined}
    assert sum(slept) >= 30 * 60  # the outage alone was waited out for more than half an hour
    assert late - early < 2_000_000  # flat: no conversation, response or event kept from turn to turn
