"""Soak: one long session of sub-second experiments. The engine's memory, open files and threads must stay flat,
the ledger and journal complete, and the console's state, fed the whole journal, bounded.

The target sleeps 1 ms and prints its metric; the agent answers at once, cycling through a kept change, a reverted
one, one the guard refuses and one that crashes, so every path of the loop runs hundreds of times. Memory is read
after a warm-up (imports, caches, SQLite's page cache, the allocator's arenas all settle in the first experiments):
RSS from the OS, and the number of live Python objects (sys.getallocatedblocks, after a collection), which is exact
where RSS is noisy. (Not tracemalloc: its own bookkeeping grows RSS by several MB over a run like this.) The
console's state is measured with tracemalloc, after the session, by replaying the journal into it.

Run: python -m bench.soak [--count 500]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import re
import sys
import time
import tracemalloc
from dataclasses import dataclass, field

import psutil

from bench.common import Figure, load, scratch_workspace, sleeping_target
from loopdeck.console.state import SessionView
from loopdeck.engine.agents.base import AgentTurn, Proposal
from loopdeck.engine.events import Event, ExperimentFinished
from loopdeck.engine.session import RunOptions, Session
from loopdeck.engine.store.journal import read_journal
from loopdeck.engine.store.ledger import Ledger

TOML = """\
[experiment]
editable = ["train.py"]
budget_seconds = 0.001
timeout_seconds = 30

[loop]
approval = "auto"
max_consecutive_crashes = 1000
"""
WARMUP = 30  # experiments before the first memory reading


class SoakAgent:
    """Answers at once, cycling: a kept change (LR a little closer to 0.2), a reverted one, one the guard refuses
    (it does not compile), one that crashes."""

    name = "soak"

    def propose(self, turn: AgentTurn) -> Proposal:
        # By experiment number, not by call: a draft made ahead and dropped (the incumbent changed) is made again.
        number = turn.experiment
        kind = ("keep", "discard", "rejected", "crash")[number % 4]
        source = turn.files["train.py"]
        if kind == "keep":
            lr = 0.2 + 0.3 / (number + 1)
            source = re.sub(r"^LR = .*$", f"LR = {lr!r}", source, count=1, flags=re.M)
        elif kind == "discard":
            source = re.sub(r"^LR = .*$", "LR = 0.9", source, count=1, flags=re.M)
        elif kind == "rejected":
            source += "\ndef broken(:\n"
        else:
            source = source.replace("    time.sleep(budget)\n", "    raise SystemExit('soak crash')\n")
        source = re.sub(r"^STEP = .*$", f"STEP = {number}", source, count=1, flags=re.M)
        return Proposal(description=f"{kind} #{number}", rationale="soak", files={"train.py": source})

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class Probe:
    """Engine process readings taken as each experiment finishes."""

    last: int  # the last experiment's number
    process: psutil.Process = field(default_factory=psutil.Process)
    rss_mb: dict[int, float] = field(default_factory=dict)
    blocks: dict[int, int] = field(default_factory=dict)  # Python objects alive (sys.getallocatedblocks)
    fds: dict[int, int] = field(default_factory=dict)
    threads: dict[int, int] = field(default_factory=dict)

    def __call__(self, event: Event) -> None:
        if not isinstance(event, ExperimentFinished):
            return
        number = event.experiment
        if number in (WARMUP, self.last):
            gc.collect()
            self.blocks[number] = sys.getallocatedblocks()
        self.rss_mb[number] = self.process.memory_info().rss / 2**20
        self.fds[number] = self.process.num_fds()
        self.threads[number] = self.process.num_threads()


@dataclass
class SoakReport:
    experiments: int
    seconds: float
    statuses: dict[str, int]
    rss_start_mb: float  # after the warm-up
    rss_end_mb: float
    blocks: tuple[int, int]  # live Python objects after the warm-up, after the last experiment
    fds: tuple[int, int]  # open descriptors after the warm-up, at the end
    threads: tuple[int, int]
    ledger_ok: bool  # ids 0..n-1 once each, none running, results.tsv lists exactly the runs
    journal_events: int
    journal_problems: list[str]  # [] when every line decodes, it starts and ends the session, one finish per row
    view_mb: tuple[float, float]  # the console's state after the warm-up's events and after all of them

    @property
    def rss_growth_mb(self) -> float:
        return self.rss_end_mb - self.rss_start_mb

    @property
    def blocks_per_experiment(self) -> float:
        return (self.blocks[1] - self.blocks[0]) / (self.experiments - 1 - WARMUP)

    def lines(self) -> list[str]:
        return [
            f"experiments       {self.experiments} in {self.seconds:.1f} s ({self.seconds / self.experiments * 1000:.0f}"
            f" ms each): {', '.join(f'{n} {s}' for s, n in sorted(self.statuses.items()))}",
            f"engine RSS        {self.rss_start_mb:.1f} MB after {WARMUP} experiments -> {self.rss_end_mb:.1f} MB "
            f"(growth {self.rss_growth_mb:+.1f} MB)",
            f"python objects    {self.blocks[0]:,} -> {self.blocks[1]:,} ({self.blocks_per_experiment:+.1f} per "
            "experiment)",
            f"open files        {self.fds[0]} -> {self.fds[1]}; threads {self.threads[0]} -> {self.threads[1]}",
            f"ledger            {'consistent' if self.ledger_ok else 'INCONSISTENT'}; journal {self.journal_events} "
            f"events, {'; '.join(self.journal_problems) or 'complete'}",
            f"console state     {self.view_mb[0]:.2f} MB after the warm-up's events -> {self.view_mb[1]:.2f} MB "
            "after all",
        ]


def soak(count: int) -> SoakReport:
    """One session of `count` experiments (the baseline not counted) on a 1 ms target."""
    probe = Probe(last=count)
    with scratch_workspace({"train.py": sleeping_target(), "loopdeck.toml": TOML}) as workspace:
        session = Session(workspace, RunOptions(max_experiments=count), on_event=probe, agent=SoakAgent())
        began = time.monotonic()
        session.run()
        seconds = time.monotonic() - began
        with Ledger(session.state_dir) as ledger:
            rows = ledger.rows()
        tsv = (session.state_dir / "results.tsv").read_text().splitlines()[1:]
        read = read_journal(session.state_dir / "events.jsonl")
    ran = [row for row in rows if row.commit and row.status not in ("rejected", "vetoed", "running")]
    ledger_ok = ([row.id for row in rows] == list(range(len(rows))) and len(tsv) == len(ran)
                 and [line.split("\t")[0] for line in tsv] == [row.commit[:7] for row in ran])
    finished = sorted(e.experiment for e in read.events if isinstance(e, ExperimentFinished))
    kinds = [event.kind for event in read.events]
    journal_problems = [problem for problem, bad in [
        (read.describe(), read.skipped),
        ("an experiment event before session_started", "session_started" not in kinds
         or kinds.index("session_started") > kinds.index("experiment_started")),
        ("not closed by session_finished", kinds[-1] != "session_finished"),
        (f"experiment_finished for {finished[:5]}… vs ledger ids 0..{len(rows) - 1}",
         finished != [row.id for row in rows])] if bad]
    statuses: dict[str, int] = {}
    for row in rows:
        statuses[row.status] = statuses.get(row.status, 0) + 1
    last = max(probe.rss_mb)
    return SoakReport(
        experiments=len(rows), seconds=seconds, statuses=statuses, rss_start_mb=probe.rss_mb[WARMUP],
        rss_end_mb=probe.rss_mb[last], blocks=(probe.blocks[WARMUP], probe.blocks[count]),
        fds=(probe.fds[WARMUP], probe.fds[last]), threads=(probe.threads[WARMUP], probe.threads[last]),
        ledger_ok=ledger_ok, journal_events=len(read.events), journal_problems=journal_problems,
        view_mb=console_memory(read.events))


def console_memory(events: list[Event]) -> tuple[float, float]:
    """Memory (MB) held by the console's SessionView after the warm-up's events and after the whole stream."""
    cut = next(i for i, e in enumerate(events) if isinstance(e, ExperimentFinished) and e.experiment == WARMUP)
    gc.collect()
    tracemalloc.start()
    try:
        view = SessionView(watch=True)
        for event in events[: cut + 1]:
            view.apply(event)
        after_warmup = tracemalloc.get_traced_memory()[0]
        for event in events[cut + 1:]:
            view.apply(event)
        gc.collect()
        after_all = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert view.finished is not None
    return after_warmup / 2**20, after_all / 2**20


def run(quick: bool) -> list[Figure]:
    """`python -m bench soak` figures: 200 experiments quick, 500 otherwise."""
    report = soak(200 if quick else 500)
    now = load()
    return [
        Figure("soak", "experiments, wall time", f"{report.experiments} in {report.seconds:.0f} s", load=now,
               note=", ".join(f"{n} {s}" for s, n in sorted(report.statuses.items()))),
        Figure("soak", "engine RSS growth after warm-up", f"{report.rss_growth_mb:+.1f} MB", load=now,
               note=f"{report.rss_start_mb:.0f} -> {report.rss_end_mb:.0f} MB; python objects "
               f"{report.blocks_per_experiment:+.1f}/experiment; fds {report.fds[0]}->{report.fds[1]}, threads "
               f"{report.threads[0]}->{report.threads[1]}"),
        Figure("soak", "console state", f"{report.view_mb[1]:.1f} MB", load=now,
               note=f"{report.view_mb[0]:.1f} MB after {WARMUP} experiments; {report.journal_events} events"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="experiments (default 500)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    args = parser.parse_args()
    report = soak(args.count)
    print(json.dumps(dataclasses.asdict(report)) if args.json else "\n".join(report.lines()))
    return 0 if report.ledger_ok and not report.journal_problems else 1


if __name__ == "__main__":
    raise SystemExit(main())
