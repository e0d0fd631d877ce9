"""A research session on one workspace: the one surface that the console and headless mode drive.

`Session(...)` validates everything a person can get wrong before anything runs (and raises `LoopdeckError`),
takes the workspace's lock, and opens the ledger and the events journal. `run()` (this thread) or `start()` (a
background thread) runs the loop. Every event goes through one `emit`: appended to `.loopdeck/events.jsonl`, then
handed to `on_event`. The control methods are thread-safe and never block; commands appended to
`.loopdeck/control.jsonl` by other processes reach the same controller (polled about 5 times a second).
A background engine also `serve()`s the channel (engine/channel/): consoles replay and follow its events and send
commands over a Unix socket, straight to the controller.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loopdeck.engine.agents.base import Agent
from loopdeck.engine.agents.cli.agent import CLI_KINDS, CodingCliAgent, cli_problem
from loopdeck.engine.channel.protocol import POINTER_FILE, socket_path_for
from loopdeck.engine.channel.replay import ReplayLog
from loopdeck.engine.channel.server import ChannelServer
from loopdeck.engine.config import AGENT_KINDS, APPROVALS, Config, load_config
from loopdeck.engine.control import ControlCalls, ControlCommand, Controller, ControlReader, control_path
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    EngineState,
    Event,
    ExperimentFinished,
    Notice,
    SessionFinished,
    StateChanged,
)
from loopdeck.engine.notify import Notifier
from loopdeck.engine.research.ablation import Ablation, ablate
from loopdeck.engine.research.context import LoopStopped
from loopdeck.engine.research.loop import LoopContext, ResearchLoop
from loopdeck.engine.research.parallel import make_loop
from loopdeck.engine.research.transfer import Transfer, transfer
from loopdeck.engine.run.executor import Executor
from loopdeck.engine.run.preflight import preflight
from loopdeck.engine.run.ray_executor import import_ray
from loopdeck.engine.run.sandbox import check_sandbox
from loopdeck.engine.run.telemetry import TelemetrySampler
from loopdeck.engine.run.warm import make_executor
from loopdeck.engine.run.workers import LocalSlots, open_workers
from loopdeck.engine.store.budget import budget_constant, budget_in_force, check_budget_clock
from loopdeck.engine.store.gitops import BRANCH_PREFIX, ResearchRepo
from loopdeck.engine.store.journal import JournalFollower, JournalWriter, check_journal
from loopdeck.engine.store.ledger import Ledger
from loopdeck.engine.store.lock import WorkspaceLock
from loopdeck.engine.store.workspace import check_not_legacy, pinned_hashes, state_dir
from loopdeck.engine.store.worktrees import Worktrees

JOURNAL_FILE = "events.jsonl"
CONTROL_POLL_SECONDS = 0.2


@dataclass
class RunOptions:
    """Overrides of loopdeck.toml for one session (None = the file's value)."""

    agent: str | None = None
    approval: str | None = None
    max_experiments: int | None = None
    max_hours: float | None = None
    budget_seconds: float | None = None
    tag: str | None = None
    pipeline: str | None = None  # "auto" | "on" | "off": draft the next proposal while an experiment trains
    workers: int | str | None = None  # experiments in flight at once (N or "auto"), [workers] count
    backend: str | None = None  # "local" | "ray", [workers] backend


def resolve_agent_kind(kind: str) -> str:
    """auto → claude when ANTHROPIC_API_KEY is set, else offline; an unknown kind raises LoopdeckError."""
    if kind not in AGENT_KINDS:
        raise LoopdeckError(f"unknown agent {kind!r}: choose one of {', '.join(AGENT_KINDS)}")
    if kind == "auto":
        return "claude" if os.environ.get("ANTHROPIC_API_KEY", "").strip() else "offline"
    return kind


class Session(ControlCalls):
    workspace: Path
    state_dir: Path
    config: Config
    state: EngineState

    def __init__(self, workspace: Path | str, options: RunOptions | None = None,
                 on_event: Callable[[Event], None] | None = None, agent: Agent | None = None,
                 study: bool = False) -> None:
        """`study`: for `ablate` / `transfer`, which run in scratch checkouts: the checkout, its branch and its
        tree are left as they are (no research branch is made or checked out)."""
        options = options or RunOptions()
        path = Path(workspace).expanduser()
        if not path.is_dir():
            raise LoopdeckError(f"{path} is not a directory: create a workspace with `loopdeck init {path}`")
        self.repo = ResearchRepo(path)
        self.workspace = self.repo.path
        config, self.config_notes = load_config(self.workspace, budget_seconds=options.budget_seconds)
        self.config = _apply_options(config, options)
        # Refused here, before anything runs, when --budget cannot take effect; set after the branch exists.
        budget = budget_constant(self.workspace, self.config.experiment, options.budget_seconds)
        self.config_notes += check_sandbox(self.config.sandbox)
        if self.config.workers.backend == "ray":
            import_ray()  # a missing extra is refused before anything runs
        self.agent_kind = agent.name if agent is not None else resolve_agent_kind(options.agent or
                                                                                   self.config.agent.kind)
        if self.agent_kind == "claude" and agent is None and not os.environ.get("ANTHROPIC_API_KEY", "").strip():
            raise LoopdeckError("the claude agent needs ANTHROPIC_API_KEY in the environment: export it, or use "
                                "the built-in offline agent (--agent offline)")
        if self.agent_kind in CLI_KINDS and agent is None:
            problem = cli_problem(self.agent_kind, self.config.agent.cli)
            if problem:  # before the baseline trains, not after
                raise LoopdeckError(problem)
        # A workspace of an earlier loopdeck first: preflight would call its old harness import a missing module.
        check_not_legacy(self.workspace, self.config.experiment)
        self.config_notes += _preflight_notes(self.workspace, self.config)
        # Messages when you are away ([notify]; None when no URL is set): a missing extra fails before anything runs.
        self._notifier = Notifier.for_session(self.config.notify, self.workspace, self.emit)
        self._agent = agent
        self._on_event = on_event
        self.state = "starting"
        self.finished: SessionFinished | None = None
        self.error = ""  # why the session ended, when it ended on an error
        self.state_dir = state_dir(self.workspace)
        self._lock = WorkspaceLock(self.state_dir)
        self._lock.acquire()
        try:
            self.ledger = Ledger(self.state_dir)
            check_budget_clock(self.ledger, self.config.experiment.budget_clock)
            self.user_branch = self.repo.current_branch()  # where the checkout goes back to when nothing is kept
            self._kept_at_start = _kept(self.ledger)
            if study:
                self.branch = self._incumbent_branch()
            else:
                self._check_tree()
                self.branch = self.repo.ensure_branch(self._tag())
            if budget is not None and not study:
                seconds, notes = budget_in_force(self.repo, budget, options.budget_seconds,
                                                 resumed=bool(self.ledger.rows()))
                self.config_notes += notes
                if seconds != self.config.experiment.budget_seconds:
                    self.config = self.config.updated(budget_seconds=seconds)
            self.protected_hashes = pinned_hashes(self.workspace, self.config.experiment)
            self.config_notes += _journal_damage(self.state_dir / JOURNAL_FILE)
            self._journal = JournalWriter(self.state_dir / JOURNAL_FILE)
        except BaseException:
            if hasattr(self, "ledger"):
                self.ledger.close()
            self._lock.release()
            raise
        self._emit_lock = threading.RLock()
        self._checkout_left = False
        self._callback_failed = False
        self._journal_failed = False
        self._closed = False
        self.controller = Controller(self.config.loop.approval, self.emit)
        self._control_reader = ControlReader(control_path(self.state_dir))
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._used = False
        self.channel: ChannelServer | None = None

    @property
    def kept_at_start(self) -> int:
        """Experiments the workspace had kept when this session began."""
        return self._kept_at_start

    @property
    def approval(self) -> str:
        """The approval policy in force: "ask" or "auto" (it changes with set_approval and `loopdeck ctl`)."""
        return self.controller.approval

    def _check_tree(self) -> None:
        """A clean tree on a branch — except our own leftovers: a killed engine's half-made experiment on the
        research branch, which resuming resets anyway."""
        try:
            self.repo.check_clean()
        except LoopdeckError:
            branch = self.repo.current_branch() or ""
            if not (branch.startswith(BRANCH_PREFIX) and self.ledger.unfinished()):
                raise

    def _incumbent_branch(self) -> str:
        """The research branch that holds the incumbent (the checked-out one first), where a study's simpler
        incumbent goes; the current branch when none does."""
        incumbent = self.ledger.incumbent()
        found = self.repo.branches_containing(incumbent.commit) if incumbent and incumbent.commit else []
        return found[0] if found else self.repo.current_branch() or ""

    def _tag(self) -> str:
        """--tag, else loopdeck.toml's tag, else the research branch already checked out, else today's date."""
        if self.config.loop.tag:
            return self.config.loop.tag
        branch = self.repo.current_branch() or ""
        if branch.startswith(BRANCH_PREFIX):
            return branch.removeprefix(BRANCH_PREFIX)
        return time.strftime("%Y%m%d")

    def serve(self) -> ChannelServer:
        """Open the channel for consoles (a background engine); it closes with the session."""
        replay = ReplayLog.from_journal(self.state_dir / JOURNAL_FILE)
        try:
            path = socket_path_for(self.state_dir)
            channel = ChannelServer(path, self.controller.put, self._hello, replay,
                                    pointer=self.state_dir / POINTER_FILE)
            channel.start()
        except OSError as exc:
            raise LoopdeckError(f"cannot open the consoles' channel in {self.state_dir}: {exc.strerror or exc} "
                                "(`loopdeck run --foreground` runs without one)") from None
        self.channel = channel
        return channel

    def _hello(self) -> dict[str, object]:
        return {"pid": os.getpid(), "workspace": str(self.workspace), "approval": self.approval,
                "state": self.state, "notes": list(self.config_notes)}

    # --- events ------------------------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """The one way out for events: the journal first, then the callback. Never raises."""
        if isinstance(event, SessionFinished) and not self._checkout_left:
            # Before the summary, so that the summary stays the last word of the journal and the headless output.
            self._checkout_left = True
            self._leave_checkout(event)
        with self._emit_lock:
            if isinstance(event, StateChanged):
                self.state = event.state
            try:
                if not self._closed:
                    self._journal.append(event)
            except (LoopdeckError, OSError, ValueError) as exc:
                if not self._journal_failed:
                    self._journal_failed = True
                    self.error = (f"{exc}: the session stopped. Free disk space (or make {self.state_dir} "
                                  "writable) and run again: it resumes where it stopped")
                    self.controller.interrupt("error")
            if self.channel is not None:
                self.channel.publish(event)
            if self._notifier is not None:
                self._notifier.observe(event)
            if self._on_event is not None:
                try:
                    self._on_event(event)
                except Exception as exc:
                    if not self._callback_failed:
                        self._callback_failed = True
                        self.emit(Notice(level="error", message=f"the on_event callback raised {type(exc).__name__}:"
                                         f" {exc} (reported once; the session goes on)"))

    def _leave_checkout(self, finished: SessionFinished) -> None:
        """The end of a session: back to the user's branch when this session kept nothing, else a notice that says
        which branch the checkout is on and the one command that gets back. Never raises."""
        user, research, where = self.user_branch, self.branch, self.workspace
        if user is None or user == research:
            self.emit(Notice(level="info", message=f"the checkout of {where} stays on {research}, where this "
                             "session started"))
            return
        if finished.kept == self._kept_at_start:
            try:
                self.repo.switch_to(user)
            except LoopdeckError as exc:
                why = f"nothing was kept, but switching back failed: {exc}"
            else:
                self.emit(Notice(level="info", message=f"nothing was kept: the checkout of {where} is back on "
                                 f"{user} ({research} keeps the session's commits)"))
                return
        else:
            kept = finished.kept - self._kept_at_start
            why = f"{kept} kept experiment{'s' if kept != 1 else ''}"
        self.emit(Notice(level="warning", message=f"the checkout of {where} is on {research} ({why}); to get back "
                         f"to your branch: git -C {where} switch {user}"))

    # --- running -----------------------------------------------------------------------------------------------

    def run(self) -> SessionFinished:
        """Run the loop in this thread until it stops; returns the SessionFinished event."""
        with self._running():
            worktrees = Worktrees(self.workspace, self.branch)
            workers = open_workers(self.config.workers, pack=lambda spec: worktrees.bundle(spec.commit),
                                   on_telemetry=self.emit, serial=self._executor)
            try:
                ctx = self._context(workers.executor)
                loop = make_loop(ctx, self._make_agent, workers.count, ablate=lambda: ablate(ctx))
                self.finished = loop.run()
            finally:
                workers.close()
            self.error = self.error or loop.failure_message
        return self.finished

    def start(self) -> None:
        """Run the loop in a background thread."""
        if self._thread is not None:
            raise RuntimeError("this session was already started")
        self._thread = threading.Thread(target=self.run, name="loopdeck-engine", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a started session to finish; True once it has (or when it was never started)."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def try_patch(self, patch_text: str, description: str) -> ExperimentFinished:
        """`loopdeck try`: run one hand-made unified diff through the loop's own guard → … → record path."""
        with self._running():
            loop = ResearchLoop(self._context(), self._make_agent)
            try:
                return loop.run_patch(patch_text, description)
            finally:
                self.finished = loop.finished

    def ablate(self, apply: bool = False) -> Ablation:
        """`loopdeck ablate`: each kept change's contribution to the incumbent (research/ablation.py)."""
        with self._running(), _stopped_as_error():
            return ablate(self._context(), apply)

    def transfer(self, scale: float, per_change: bool = False) -> Transfer:
        """`loopdeck transfer`: does the incumbent's gain hold at `scale` (research/transfer.py)."""
        with self._running(), _stopped_as_error():
            return transfer(self._context(), scale, per_change)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        """Control poller and telemetry for one run; everything is released however the run ends."""
        if self._used or self._closed:
            raise RuntimeError("a Session runs once; make a new one to resume")
        self._used = True
        self._sampler = TelemetrySampler(self.emit)
        self._executor = make_executor(self.config)
        poller = threading.Thread(target=self._poll_control, name="loopdeck-control", daemon=True)
        try:
            self._sampler.start()
            poller.start()
            if self._notifier is not None:
                self._notifier.start()
            yield
        finally:
            self._stopped.set()
            if poller.is_alive():
                poller.join()
            self._sampler.stop()
            if self._notifier is not None:
                self._notifier.close()
            self._executor.close()
            self.close()

    def close(self) -> None:
        """Release the workspace (lock, ledger, journal). A run does it itself; call it for a session never run."""
        with self._emit_lock:
            if self._closed:
                return
            self._closed = True
            self._journal.close()
            if self.channel is not None:
                self.channel.close()
        self.ledger.close()
        self._lock.release()

    def _context(self, executor: Executor | None = None) -> LoopContext:
        return LoopContext(
            workspace=self.workspace, state_dir=self.state_dir, config=self.config, repo=self.repo,
            ledger=self.ledger, controller=self.controller, emit=self.emit, branch=self.branch,
            protected_hashes=self.protected_hashes, track_pid=self._sampler.track,
            resumed=bool(self.ledger.rows()), agent_kind=self.agent_kind,
            executor=executor or LocalSlots(self._executor))

    def _make_agent(self) -> Agent:
        if self._agent is not None:
            return self._agent
        if self.agent_kind == "offline":
            from loopdeck.engine.agents.offline.agent import OfflineAgent

            return OfflineAgent(seed=self.config.agent.seed, search=self.config.agent.offline.search)
        if self.agent_kind == "openai":
            from loopdeck.engine.agents.openai.agent import OpenAIAgent, OpenAISettings

            return OpenAIAgent(OpenAISettings.from_config(self.config.agent.openai))
        if self.agent_kind in CLI_KINDS:
            return CodingCliAgent(self.agent_kind, self.config.agent.cli)
        # Imported here: the anthropic SDK is only loaded by sessions that use it.
        from loopdeck.engine.agents.claude.agent import ClaudeAgent, ClaudeSettings

        return ClaudeAgent(ClaudeSettings.from_config(self.config.agent.claude))

    def _poll_control(self) -> None:
        while not self._stopped.wait(CONTROL_POLL_SECONDS):
            try:
                commands = self._control_reader.poll()
            except OSError as exc:
                self.emit(Notice(level="warning", message=f"cannot read {self._control_reader.path}: {exc}"))
                continue
            for line in self._control_reader.rejected:
                self.emit(Notice(level="warning", message=f"ignored a malformed control command: {line}"))
            self._control_reader.rejected.clear()
            for command in commands:
                self.controller.put(command)

    # --- control (thread-safe, never blocks): the calls themselves are ControlCalls' ----------------------------

    def deliver(self, command: ControlCommand) -> None:
        self.controller.put(command)

    def interrupt(self) -> None:
        """SIGTERM / Ctrl-C: kill the running training now, record it interrupted, finish as "stopped"."""
        self.controller.interrupt()


@contextlib.contextmanager
def _stopped_as_error() -> Iterator[None]:
    """A study stopped by a person (Ctrl-C, `loopdeck ctl DIR stop`) ends its command with one line."""
    try:
        yield
    except LoopStopped as stop:
        raise LoopdeckError(stop.message or f"the study was {stop.reason} before it finished: nothing was "
                            "recorded (its runs' logs are in .loopdeck/studies/)") from None


def _kept(ledger: Ledger) -> int:
    """Experiments kept so far (baselines change nothing, so they do not count)."""
    return sum(row.status == "keep" and not row.is_baseline for row in ledger.rows())


def _journal_damage(path: Path) -> list[str]:
    """A note for the start of a session when the end of the events journal is damaged (see engine/store/journal.py)."""
    damage = check_journal(path).describe()
    if not damage:
        return []
    return [f"{path}: {damage}. The ledger and results.tsv are not affected and `loopdeck watch` replays around "
            f"the damage; to start a clean journal, move {path.name} aside before the next run"]


def _preflight_notes(workspace: Path, config: Config) -> list[str]:
    """Preflight's warnings as notes; its problems stop the session before anything runs, as one error."""
    report = preflight(workspace, config)
    if not report.runnable:
        raise LoopdeckError(f"{workspace} cannot run here: {report.error_message()} (`loopdeck doctor "
                            f"{workspace}` lists every check)")
    return [check.line() for check in report.warnings]


def _apply_options(config: Config, options: RunOptions) -> Config:
    if options.approval is not None and options.approval not in APPROVALS:
        raise LoopdeckError(f"approval policy must be one of {', '.join(APPROVALS)}, got {options.approval!r}")
    if options.agent is not None:
        resolve_agent_kind(options.agent)
    overrides = {"approval": options.approval, "max_experiments": options.max_experiments,
                 "max_hours": options.max_hours, "budget_seconds": options.budget_seconds, "tag": options.tag,
                 "pipeline": options.pipeline, "count": options.workers, "backend": options.backend}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    return config.updated(**overrides) if overrides else config


def journal_reader(path: Path) -> JournalFollower:
    """A reader of a session's events journal that another process may be writing: `poll()` returns new events."""
    return JournalFollower(path)

