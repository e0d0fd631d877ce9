"""Shared fixtures: temporary research workspaces with a fake training target, and a session runner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_targets import PROGRAM_MD, fake_train_source

from loopdeck.engine.agents.base import Agent
from loopdeck.engine.events import Event, SessionFinished

WORKSPACE_TOML = """\
[experiment]
editable = ["train.py"]
protected = {protected}
budget_seconds = 1.0
timeout_seconds = {timeout}
env = {env}

[loop]
approval = "{approval}"
max_consecutive_crashes = {crashes}

[agent]
kind = "offline"

[evaluation]
{evaluation}

[research]
{research}
"""
# One baseline run and no early stops, so engine tests keep their shape and speed (users get 3 baseline seeds and
# early abort); make_workspace(evaluation={...}) overrides any [evaluation] setting.
TEST_EVALUATION = {"baseline_seeds": 1, "early_abort": False}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def ledger_rows(workspace: Path) -> list:
    """Every ledger row of a workspace, read through a fresh Ledger."""
    from loopdeck.engine.store.ledger import Ledger

    with Ledger(workspace / ".loopdeck") as ledger:
        return ledger.rows()


def init_repo(root: Path, files: dict[str, str]) -> Path:
    """A git repository on branch main holding `files` in one commit, with an identity local to the repo."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "--initial-branch=main")
    git(root, "config", "user.name", "loopdeck tests")
    git(root, "config", "user.email", "tests@loopdeck.invalid")
    git(root, "config", "commit.gpgsign", "false")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture(autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions a test runs (headless ones serve the channel) register in a registry of their own, never in the
    user's (`loopdeck ls`)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Path]:
    """make_workspace(train=…, approval=…, timeout=…, protected=…, crashes=…, extra_files=…, env=…, evaluation=…,
    research=…) -> a committed workspace; `env` becomes [experiment] env, the training process's extra
    environment, `evaluation` overrides [evaluation] settings (TEST_EVALUATION otherwise), `research` sets
    [research] settings."""
    counter = iter(range(1000))

    def make(train: str | None = None, *, approval: str = "auto", timeout: float = 10.0,
             protected: tuple[str, ...] = (), crashes: int = 5, extra_files: dict[str, str] | None = None,
             env: dict[str, str] | None = None, evaluation: dict[str, object] | None = None,
             research: dict[str, object] | None = None) -> Path:
        settings = {**TEST_EVALUATION, **(evaluation or {})}
        files = {
            "train.py": train if train is not None else fake_train_source(),
            "program.md": PROGRAM_MD,
            "loopdeck.toml": WORKSPACE_TOML.format(
                protected=list(protected), timeout=timeout, approval=approval, crashes=crashes,
                env="{" + ", ".join(f'{name} = "{value}"' for name, value in (env or {}).items()) + "}",
                evaluation="\n".join(f"{name} = {json.dumps(value)}" for name, value in settings.items()),
                research="\n".join(f"{name} = {json.dumps(value)}" for name, value in (research or {}).items()),
            ).replace("'", '"'),
            ".gitignore": ".loopdeck/\n__pycache__/\n",
            **(extra_files or {}),
        }
        return init_repo(tmp_path / f"ws{next(counter)}", files)

    return make


@pytest.fixture
def workspace(make_workspace: Callable[..., Path]) -> Path:
    return make_workspace()


class Recorded:
    """The events of one session run, with a few lookups tests need."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event]) -> list:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def finished(self) -> SessionFinished:
        (finished,) = self.of(SessionFinished)
        return finished


@pytest.fixture
def run_session() -> Callable[..., tuple[object, Recorded]]:
    """run_session(workspace, agent, **RunOptions fields) -> (Session after its run, Recorded events)."""
    from loopdeck.engine.session import RunOptions, Session

    def run(path: Path, agent: Agent | None, /, **options: object) -> tuple[Session, Recorded]:
        recorded = Recorded()
        session = Session(path, RunOptions(**options), on_event=recorded, agent=agent)  # type: ignore[arg-type]
        session.run()
        return session, recorded

    return run


@pytest.fixture
def no_ray_left() -> Iterator[None]:
    """The test leaves no Ray instance running in this process (one left behind is stopped, and the test fails)."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("the test left Ray running")
