"""`python -m bench [--quick] [names…]`: run the benchmarks, print one table, record it in bench/RESULTS.md.

Benchmarks, cheapest first: loop_overhead, console_events, channel_latency, reference_gpt, muon_step, duty_cycle,
search_strategies, research_efficiency, soak, scale, load_clock (each module's docstring says what it measures and how). --quick
scales every one down to a minute or two; the full run takes about an hour and a quarter on 2 CPU cores
(load_clock's 20 runs of 60 s, half of them beside a CPU hog, take about 40 minutes). RESULTS.md keeps one section
per date, mode and machine: a run replaces the figures it measured in its own section and leaves the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Figure, load, machine, print_figures

RESULTS = Path(__file__).with_name("RESULTS.md")
ORDER = ("loop_overhead", "console_events", "channel_latency", "reference_gpt", "muon_step", "duty_cycle",
         "search_strategies", "research_efficiency", "soak", "scale", "load_clock")
HEADER = """\
# Benchmark results

Written by `python -m bench` (see `bench/__main__.py`); newest section first. `load` is the machine's 1-minute load
average when the figure was taken: these machines are shared, so a figure taken under load is pessimistic. To check
a regression, run the same command on the same kind of machine and compare with the section of the same mode.
"""


def console_figures(quick: bool) -> list[Figure]:
    """bench/console_events.py's load test at a busy rate and flat out, as figures."""
    from bench import console_events

    seconds = 1.0 if quick else 3.0
    busy = asyncio.run(console_events.load_run(1000.0, seconds))
    flat_out = asyncio.run(console_events.load_run(0.0, seconds))
    now = load()
    return [
        Figure("console", "events/s sustained (flat out)", f"{flat_out['handled_per_s']:,.0f}", load=now,
               note=f"{seconds:g} s at 120×40; worst frame {flat_out['worst_ms']:.0f} ms"),
        Figure("console", "worst frame latency at 1,000 events/s", f"{busy['worst_ms']:.0f} ms", load=now,
               note=f"p99 {busy['p99_ms']:.0f} ms, median {busy['median_ms']:.0f} ms, worst input delay "
               f"{busy['input_worst_ms']:.0f} ms"),
    ]


def runner(name: str) -> Callable[[bool], list[Figure]]:
    if name == "console_events":
        return console_figures
    return importlib.import_module(f"bench.{name}").run  # type: ignore[no-any-return]


def record(figures: list[Figure], mode: str, where: str) -> None:
    """Add the figures to RESULTS.md, replacing earlier ones of the same date, mode and machine."""
    heading = f"## {time.strftime('%Y-%m-%d')} · {mode} · {where}"
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else HEADER
    head, *sections = re.split(r"(?m)^(?=## )", text)
    rows: dict[tuple[str, str], str] = {}
    kept = []
    for section in sections:
        if section.splitlines()[0] == heading:
            for line in section.splitlines()[4:]:
                cells = _cells(line)
                if len(cells) >= 2:
                    rows[(cells[0], cells[1])] = line
        else:
            kept.append(section)
    for f in figures:
        rows[(f.bench, f.name)] = "| " + " | ".join(
            _cell(value) for value in (f.bench, f.name, f.value, f.target, f"{f.load:.2f}", f.note)) + " |"
    table = [heading, "", "| bench | figure | value | target | load | note |", "|---|---|---|---|---|---|",
             *rows.values()]
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + "\n".join(table) + "\n\n" + "".join(kept).rstrip("\n") + "\n",
                       encoding="utf-8")


def _cell(value: str) -> str:
    return value.replace("|", "\\|")


def _cells(line: str) -> list[str]:
    if not line.startswith("| ") or line.startswith("|---"):
        return []
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down settings (a few minutes in all)")
    parser.add_argument("--no-record", action="store_true", help="print only; leave bench/RESULTS.md alone")
    parser.add_argument("names", nargs="*", choices=[[], *ORDER], metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(ORDER)}")
    args = parser.parse_args()
    names = [name for name in ORDER if name in args.names] or list(ORDER)
    where = machine()
    mode = "quick" if args.quick else "full"
    print(f"{where} · {mode} · load {load():.2f}")
    figures: list[Figure] = []
    for name in names:
        began = time.monotonic()
        print(f"\n{name} …", flush=True)
        measured = runner(name)(args.quick)
        print_figures(measured)
        print(f"  ({time.monotonic() - began:.0f} s)", flush=True)
        figures += measured
    print(f"\n{where} · {mode}")
    print_figures(figures)
    if not args.no_record:
        record(figures, mode, where)
        print(f"\nrecorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
