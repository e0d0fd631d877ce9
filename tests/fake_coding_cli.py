"""A stand-in for the coding-agent CLIs (`claude`, `codex`): checks its command line, reads the prompt on stdin,
emits the CLI's documented JSON event stream and edits `LR = …` in train.py in its working directory.

Run as `python fake_coding_cli.py claude|codex ARGS…` (tests put `claude` and `codex` wrappers on PATH).
FAKE_CLI_MODE: edit (default) | stray (also edits program.md) | noedit | error | hang (starts a child in its group
and never finishes; pids to FAKE_CLI_PIDS). FAKE_CLI_LR: the new LR (default 0.15). FAKE_CLI_LOG: a JSON line with
argv, cwd, prompt and whether ANTHROPIC_API_KEY reached it is appended there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

CLAUDE_FLAGS = ("-p", "--output-format", "stream-json", "--verbose", "--tools", "--allowedTools")
DESCRIPTION = "raise LR towards 0.2"
FINAL = f"I changed LR.\nDESCRIPTION: {DESCRIPTION}\nRATIONALE: the metric is best near 0.2, so a step towards it helps."


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def check_argv(cli: str, args: list[str]) -> None:
    if cli == "claude":
        missing = [flag for flag in CLAUDE_FLAGS if flag not in args]
        ok = not missing and args[args.index("--output-format") + 1] == "stream-json"
    else:
        ok = args[:2] == ["exec", "--json"] and "--ephemeral" in args and args[-1] == "-" and args[args.index("--cd") + 1] == os.getcwd()
    if not ok:
        print(f"fake {cli}: unexpected arguments {args}", file=sys.stderr)
        sys.exit(2)


def edit(mode: str) -> str:
    train = Path("train.py")
    new_lr = os.environ.get("FAKE_CLI_LR", "0.15")
    train.write_text(re.sub(r"^LR = .*$", f"LR = {new_lr}", train.read_text(), count=1, flags=re.MULTILINE))
    if mode == "stray":
        Path("program.md").write_text("rewritten by the agent\n")
    return str(train.resolve())


def hang() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(os.environ["FAKE_CLI_PIDS"]).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(600)


def claude(mode: str) -> None:
    path = str(Path("train.py").resolve())
    emit({"type": "system", "subtype": "init", "session_id": "s1", "cwd": os.getcwd(), "model": "fake",
          "tools": ["Read", "Edit", "Write"]})
    emit({"type": "assistant", "message": {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "LR looks low.", "signature": "x"},
        {"type": "text", "text": "Let me look at train.py."},
        {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": path}}]}})
    emit({"type": "user", "message": {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t1", "content": "LR = 0.1 ..."}]}})
    if mode == "hang":
        hang()
    if mode == "error":
        emit({"type": "result", "subtype": "success", "is_error": True, "result": "Invalid API key · Please run /login",
              "usage": {"input_tokens": 1, "output_tokens": 0}})
        sys.exit(1)
    if mode != "noedit":
        edit(mode)
        emit({"type": "assistant", "message": {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t2", "name": "Edit", "input": {"file_path": path, "old_string": "LR ="}}]}})
        emit({"type": "user", "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": "edited"}]}]}})
    emit({"type": "assistant", "message": {"role": "assistant", "content": [{"type": "text", "text": FINAL}]}})
    emit({"type": "result", "subtype": "success", "is_error": False, "result": FINAL, "num_turns": 3,
          "total_cost_usd": 0.0123, "usage": {"input_tokens": 100, "output_tokens": 50,
                                               "cache_creation_input_tokens": 10, "cache_read_input_tokens": 5}})


def codex(mode: str) -> None:
    emit({"type": "thread.started", "thread_id": "th1"})
    emit({"type": "turn.started"})
    emit({"type": "item.completed", "item": {"id": "item_0", "type": "reasoning", "text": "**Reading train.py**"}})
    emit({"type": "item.started", "item": {"id": "item_1", "type": "command_execution", "command": "cat train.py",
                                            "aggregated_output": "", "exit_code": None, "status": "in_progress"}})
    emit({"type": "item.completed", "item": {"id": "item_1", "type": "command_execution", "command": "cat train.py",
                                              "aggregated_output": "LR = 0.1", "exit_code": 0, "status": "completed"}})
    if mode == "hang":
        hang()
    if mode == "error":
        emit({"type": "error", "message": "stream disconnected"})
        emit({"type": "turn.failed", "error": {"message": "401 Unauthorized"}})
        sys.exit(1)
    if mode != "noedit":
        path = edit(mode)
        emit({"type": "item.completed", "item": {"id": "item_2", "type": "file_change", "status": "completed",
                                                  "changes": [{"path": path, "kind": "update"}]}})
    emit({"type": "item.completed", "item": {"id": "item_3", "type": "agent_message", "text": FINAL}})
    emit({"type": "turn.completed", "usage": {"input_tokens": 200, "cached_input_tokens": 150, "output_tokens": 40}})


def main() -> None:
    cli, args = sys.argv[1], sys.argv[2:]
    check_argv(cli, args)
    prompt = sys.stdin.read()
    if os.environ.get("FAKE_CLI_LOG"):
        with open(os.environ["FAKE_CLI_LOG"], "a") as log:
            log.write(json.dumps({"cli": cli, "argv": args, "cwd": os.getcwd(), "prompt": prompt,
                                 "api_key": "ANTHROPIC_API_KEY" in os.environ}) + "\n")
    mode = os.environ.get("FAKE_CLI_MODE", "edit")
    (claude if cli == "claude" else codex)(mode)


if __name__ == "__main__":
    main()
