"""The research loop with several experiments in flight: each in its own worktree, keeps rebased and confirmed.

`ParallelLoop` is the serial loop (engine/research/loop.py) with one change of shape: an approved change is not
run to the end before the next proposal. It is committed in a fresh worktree of the research branch at the
incumbent it branched from (engine/store/worktrees.py) and run there by a flight thread through the session's
executor, while the main thread asks the agent for the next proposal (it sees the ideas already running in
`AgentTurn.running`), until `[workers] count` experiments are in flight. Guard, approval gate, judging (trusted
score, noise, confirmation, early abort) and recording are the serial loop's own parts, unchanged.

A run is judged against the incumbent it branched from. Verdicts are settled one at a time: a would-be keep whose
incumbent has not moved becomes the incumbent (the research branch fast-forwards to it). If another keep landed
meanwhile, the change is rebased (three-way, per file) onto the new incumbent and measured again there, against it,
before it can be kept: never two keeps that were not measured together. A rebase conflict discards it with that
reason. The baseline (and its noise runs) is measured with the other workers busy running the same commit, so the
noise model sees the contention the experiments will see.

Recovery is the serial loop's (which also removes every worktree and experiment branch a dead engine left).
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loopdeck.engine.agents.base import Agent
from loopdeck.engine.events import ExperimentFinished, Notice
from loopdeck.engine.research.context import LoopContext, LoopStopped
from loopdeck.engine.research.judge import Judge, Verdict, feedback
from loopdeck.engine.research.loop import ResearchLoop, commit_message
from loopdeck.engine.research.pipeline import rebase
from loopdeck.engine.research.record import Recorder
from loopdeck.engine.store.gitops import ResearchRepo
from loopdeck.engine.store.ledger import ExperimentRow

_WAIT = 0.2  # seconds between checks for a free slot or a stop request


@dataclass
class _Flight:
    row: ExperimentRow
    branched: ExperimentRow  # the incumbent the change was made against (moves when it is rebased)
    files: dict[str, str]  # the change's editable files
    thread: threading.Thread | None = None


class ParallelLoop(ResearchLoop):
    """The research loop with up to `workers` experiments in flight."""

    def __init__(self, ctx: LoopContext, agent_factory: Callable[[], Agent], workers: int) -> None:
        super().__init__(ctx, agent_factory)
        self.workers = workers
        self._flights: dict[int, _Flight] = {}
        self._room = threading.Condition()
        self._settle = threading.Lock()  # one verdict at a time: the incumbent moves only under it
        self._crash: BaseException | None = None  # a flight thread's engine error, raised in the main thread

    # --- the session -------------------------------------------------------------------------------------------

    def _finish_session(self, reason: str) -> None:
        self._land_all()
        super()._finish_session(reason)

    def run_baseline(self) -> None:
        """The serial baseline, measured while the other workers run the same commit (discarded load runs)."""
        stop = threading.Event()
        head = self.ctx.repo.head()
        loads = [threading.Thread(target=self._load, args=(index, head, stop), daemon=True,
                                  name=f"loopdeck-load-{index}") for index in range(1, self.workers)]
        for thread in loads:
            thread.start()
        try:
            super().run_baseline()
        finally:
            stop.set()
            for thread in loads:
                thread.join()

    def _load(self, index: int, commit: str, stop: threading.Event) -> None:
        number = -index  # load runs are no experiment: their numbers never collide with one
        run_dir = self.ctx.run_dir(number)
        try:
            judge = self._slot_judge(self.worktrees.add(number, commit))
            while not stop.is_set() and not self.ctx.controller.halted:
                judge.execute(number, commit, run_dir, stream=False, stop=stop)
        except Exception as exc:  # contention for the noise runs is lost, not the session
            self.ctx.emit(Notice(level="warning", message=f"a load run beside the baseline failed: {exc}"))
        finally:
            self.worktrees.remove(number)
            shutil.rmtree(run_dir, ignore_errors=True)

    # --- one proposal ------------------------------------------------------------------------------------------

    def step(self) -> None:
        """Wait for a free worker, then propose, gate and launch one experiment (it runs in the background)."""
        with self._room:
            while len(self._flights) >= self.workers and self._crash is None:
                self.ctx.halt_if_requested()
                self._room.wait(_WAIT)
        self._raise_crash()
        super().step()

    def launch(self, row: ExperimentRow, incumbent: ExperimentRow, new_files: dict[str, str]) -> None:
        """Commit the change in its own worktree at `incumbent` and run it there in a flight thread."""
        checkout = self.worktrees.add(row.id, incumbent.commit)
        row.commit = ResearchRepo(checkout).commit_files(new_files, commit_message(row))
        self.ctx.ledger.update(row.id, commit=row.commit)
        flight = _Flight(row, incumbent, new_files)
        flight.thread = threading.Thread(target=self._fly, args=(flight, checkout), daemon=True,
                                         name=f"loopdeck-flight-{row.id}")
        with self._room:
            self._flights[row.id] = flight
        flight.thread.start()

    # --- one flight --------------------------------------------------------------------------------------------

    def _fly(self, flight: _Flight, checkout: Path) -> None:
        row = flight.row
        try:
            judge = self._slot_judge(checkout)
            verdict = judge.measure(row, flight.branched)
            outcome = None
            while outcome is None:
                with self._settle:
                    outcome = self._try_settle(flight, judge, verdict)
                if outcome is None:  # rebased onto a newer incumbent: measured again there
                    verdict = judge.measure(row, flight.branched)
        except BaseException as exc:
            self._crashed(row, exc)
        finally:
            self.worktrees.remove(row.id)
            with self._room:
                self._flights.pop(row.id, None)
                self._room.notify_all()

    def _try_settle(self, flight: _Flight, judge: Judge, verdict: Verdict) -> ExperimentFinished | None:
        """Record the verdict, or rebase a would-be keep onto an incumbent that moved (None: measure again)."""
        row, ctx = flight.row, self.ctx
        current = ctx.ledger.incumbent()
        assert current is not None
        if verdict.status == "keep" and current.id != flight.branched.id:
            if self._rebase(flight, judge.ctx.repo, current):
                return None
            verdict = Verdict("discard", f"it would have been kept, but it conflicts with #{current.id}, kept while "
                              "it ran", verdict.fields)
        outcome = judge.settle(row, flight.branched, verdict)
        if outcome.status == "keep":
            ctx.repo.reset_to(row.commit)  # a fast-forward: the change was made (or rebased) on this incumbent
            self.integrity.after_record(outcome)
        text = feedback(outcome, self.config.metric.name)
        self.turns.feedback = f"{self.turns.feedback}\n{text}" if self.turns.feedback else text
        return outcome

    def _rebase(self, flight: _Flight, repo: ResearchRepo, current: ExperimentRow) -> bool:
        """Move the change onto `current` (a new commit in its worktree); False on a conflict."""
        ctx, row = self.ctx, flight.row
        editable = ctx.config.experiment.editable
        base = ctx.repo.read_files(editable, at=flight.branched.commit)
        moved = rebase(base, ctx.repo.read_files(editable, at=current.commit), flight.files)
        if moved is None:
            return False
        repo.reset_to(current.commit)
        was = row.commit
        row.commit = repo.commit_files(moved, commit_message(row) + f"\n\nRebased onto #{current.id}.")
        row.parent_commit, row.incumbent_metric = current.commit, current.metric
        flight.branched, flight.files = current, moved
        ctx.ledger.update(row.id, commit=row.commit, parent_commit=row.parent_commit,
                          incumbent_metric=current.metric, meta={**row.meta, "rebased_from": was})
        ctx.emit(Notice(level="info", experiment=row.id, message=f"#{row.id} would be kept, but #{current.id} was "
                        f"kept while it ran: rebased onto #{current.id} and run again there to confirm"))
        return True

    def _slot_judge(self, checkout: Path) -> Judge:
        """A judge whose runs happen in `checkout` (the ledger, events and run directories are the session's)."""
        slot = dataclasses.replace(self.ctx, workspace=checkout, repo=ResearchRepo(checkout))
        return Judge(slot, Recorder(slot, self.tally), shared=self.integrity)

    # --- faults and the end ------------------------------------------------------------------------------------

    def _crashed(self, row: ExperimentRow, exc: BaseException) -> None:
        """An engine error in a flight: its row is closed as interrupted and the session stops."""
        current = self.ctx.ledger.get(row.id)
        if current is not None and current.status == "running":
            self.ctx.ledger.finish(row.id, "interrupted", reason=f"engine error while it ran: {exc}")
        with self._room:
            self._crash = self._crash or exc
            self._room.notify_all()

    def _raise_crash(self) -> None:
        if self._crash is not None:
            crash = self._crash
            if isinstance(crash, Exception):
                raise crash
            raise LoopStopped("error", f"engine error in a run: {crash!r}")

    def _land_all(self) -> None:
        """Wait for every flight to end (an abort has already told their runs to stop)."""
        while True:
            with self._room:
                flights = [flight.thread for flight in self._flights.values() if flight.thread is not None]
            if not flights:
                return
            for thread in flights:
                thread.join()


def make_loop(ctx: LoopContext, agent_factory: Callable[[], Agent], workers: int = 1,
              ablate: Callable[[], object] | None = None) -> ResearchLoop:
    """The research loop for `workers` experiments in flight: the serial one for one. `ablate` is the planner's
    ablate mode; only the serial loop takes it (an ablation measures the incumbent, which flights would move)."""
    if workers > 1:
        return ParallelLoop(ctx, agent_factory, workers)
    return ResearchLoop(ctx, agent_factory, ablate=ablate)
