"""`loopdeck ls` (the engines running on this machine) and `loopdeck stop DIR` (ask one to stop)."""

from __future__ import annotations

import argparse

from loopdeck.cli.daemon import find_engine
from loopdeck.cli.paths import user_path
from loopdeck.engine.channel.client import ChannelClient
from loopdeck.engine.channel.registry import EngineRecord, running_engines
from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.control import make_command, send_command
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.store.lock import is_locked

COLUMNS = ("workspace", "pid", "state", "exp", "kept", "uptime")


def ls_command(args: argparse.Namespace) -> int:
    records = running_engines()
    if not records:
        print("no loopdeck engine runs on this machine (start one with `loopdeck run DIR`)")
        return 0
    rows = [_row(record) for record in records]
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(COLUMNS)]
    for row in [COLUMNS, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _row(record: EngineRecord) -> tuple[str, ...]:
    experiment = "-" if record.experiment is None else f"#{record.experiment}"
    return (record.workspace, str(record.pid), record.state, experiment, str(record.kept),
            _duration(record.uptime()))


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{int(seconds) % 60:02d}s"


def stop_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    action = "abort" if args.now else "stop"
    record = find_engine(path)
    if record is None:
        if is_locked(path / STATE_DIR):  # a headless or --foreground session: it reads control.jsonl
            send_command(path, action)
            print(f"asked the session on {path} to {_wording(action)}")
            return 0
        raise LoopdeckError(f"no session runs on {path} (`loopdeck ls` lists the running ones)")
    client = ChannelClient(record.socket)
    try:
        client.connect()
        refusal = client.request(make_command(action))
    except OSError as exc:
        raise LoopdeckError(f"the engine on {path} (pid {record.pid}) did not answer: {exc}") from None
    finally:
        client.close()
    if refusal:
        raise LoopdeckError(refusal)
    print(f"the engine on {path} (pid {record.pid}) will {_wording(action)}; `loopdeck ls` shows it until it ends")
    return 0


def _wording(action: str) -> str:
    return "abort now (the running experiment is recorded as interrupted)" if action == "abort" else \
        "stop after the current experiment"
