"""The end of a session: the checkout goes back to the user's branch when nothing was kept, and otherwise a final
notice says which branch it is on and the one git command that gets back."""

from __future__ import annotations

import pytest
from conftest import git, ledger_rows
from fake_targets import ScriptedAgent, change

from loopdeck.cli.printer import HeadlessPrinter
from loopdeck.engine.events import Notice, SessionFinished, StateChanged
from loopdeck.engine.session import Session

pytestmark = pytest.mark.timeout(120)


def _final_notice(recorded) -> Notice:
    """The notice just before the summary (which stays the session's last event)."""
    events = recorded if isinstance(recorded, list) else recorded.events
    assert isinstance(events[-1], SessionFinished)
    notice = events[-2]
    assert isinstance(notice, Notice)
    return notice


def test_nothing_kept_returns_the_checkout_to_the_users_branch(workspace, run_session):
    start = git(workspace, "rev-parse", "HEAD")
    session, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.6, "raise LR")]))
    assert [row.status for row in ledger_rows(workspace)] == ["keep", "discard"]
    assert git(workspace, "branch", "--show-current") == "main" and git(workspace, "rev-parse", "HEAD") == start
    assert git(workspace, "branch", "--list", session.branch)  # the research branch and its record stay
    notice = _final_notice(recorded)
    assert notice.level == "info" and f"back on main ({session.branch} keeps" in notice.message


def test_a_kept_experiment_leaves_the_checkout_on_the_research_branch_and_says_how_to_get_back(
        workspace, run_session):
    session, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.3, "lower LR")]))
    assert [row.status for row in ledger_rows(workspace)] == ["keep", "keep"]
    assert git(workspace, "branch", "--show-current") == session.branch
    notice = _final_notice(recorded)
    assert notice.level == "warning"
    assert notice.message == (f"the checkout of {workspace} is on {session.branch} (1 kept experiment); to get "
                              f"back to your branch: git -C {workspace} switch main")
    assert HeadlessPrinter(workspace).format(notice).endswith(f"git -C {workspace} switch main")


def test_a_session_started_on_its_research_branch_stays_there(workspace, run_session):
    git(workspace, "switch", "-q", "-c", "loopdeck/night")
    session, recorded = run_session(workspace, ScriptedAgent([change("LR", 0.6, "raise LR")]))
    assert session.branch == "loopdeck/night" == git(workspace, "branch", "--show-current")
    assert "stays on loopdeck/night" in _final_notice(recorded).message


def test_a_dirty_tree_is_never_carried_back_to_the_users_branch(workspace):
    recorded: list = []

    def dirty_at_the_end(event) -> None:
        recorded.append(event)
        if isinstance(event, StateChanged) and event.state == "stopped":
            # An experiment's leftover edit, as an engine error between writing a file and its commit leaves it.
            (workspace / "train.py").write_text("half written\n")

    session = Session(workspace, on_event=dirty_at_the_end, agent=ScriptedAgent([change("LR", 0.6, "raise LR")]))
    session.run()
    assert git(workspace, "branch", "--show-current") == session.branch
    notice = _final_notice(recorded)
    assert notice.level == "warning" and "switching back failed" in notice.message
    assert notice.message.endswith(f"git -C {workspace} switch main")
