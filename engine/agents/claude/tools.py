"""The tools Claude uses during a turn, confined to the workspace and applied to an in-memory copy of the files.

Nothing here writes to disk: edits change the turn's copy of the editable files, and the proposal carries their
full new contents back to the engine, which guards and commits them. A refused or failed call is returned to the
model as an error it can act on, never raised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopdeck.engine.agents.base import AgentTurn
from loopdeck.engine.agents.claude.context import cut, experiment_detail, history_overview
from loopdeck.engine.agents.claude.research_log import log_answer, repeat_check

OFF_LIMITS = frozenset({".git", ".loopdeck"})
_SKIPPED_DIRS = frozenset({"__pycache__", "node_modules"})
READ_CHARS = 60_000  # one read_file answer; longer files are read in slices by line
MAX_FILE_BYTES = 2_000_000  # larger files are neither read nor searched
MAX_WRITE_CHARS = 1_000_000
LIST_ENTRIES = 300
SEARCH_MATCHES = 100
SEARCH_LINE_CHARS = 200
DESCRIPTION_CHARS = 200
SUMMARY_CHARS = 160

_PATH = {"type": "string", "description": "path relative to the workspace root, e.g. train.py"}
TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "name": "read_file",
        "description": "Read a text file of the workspace. Editable files show your edits so far. Long files "
        "come in slices: pass start_line to read further.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _PATH, "start_line": {"type": "integer", "minimum": 1}},
            "required": ["path"],
        },
    },
    {
        "name": "list_files",
        "description": "List the files under a directory of the workspace (recursively), marking the editable "
        "and protected ones.",
        "input_schema": {"type": "object", "properties": {"path": {**_PATH, "description": "directory; default ."}}},
    },
    {
        "name": "search_files",
        "description": "Search the workspace's text files for a substring (or a Python regular expression when "
        "regex is true). Returns path:line: text for each match.",
        "input_schema": {
            "type": "object",
            "properties": {
                "pattern": {"type": "string"},
                "regex": {"type": "boolean", "description": "treat pattern as a regular expression"},
                "path": {**_PATH, "description": "directory or file to search; default ."},
            },
            "required": ["pattern"],
        },
    },
    {
        "name": "edit_file",
        "description": "Replace old_string with new_string in an editable file. old_string must match the "
        "current content exactly (whitespace included) and exactly once; include surrounding lines to make it "
        "unique.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _PATH, "old_string": {"type": "string"}, "new_string": {"type": "string"}},
            "required": ["path", "old_string", "new_string"],
        },
    },
    {
        "name": "write_file",
        "description": "Replace the whole content of an editable file. Prefer edit_file for small changes.",
        "input_schema": {
            "type": "object",
            "properties": {"path": _PATH, "content": {"type": "string"}},
            "required": ["path", "content"],
        },
    },
    {
        "name": "read_history",
        "description": "The experiment ledger: without arguments a compact overview of every experiment; with "
        "experiment=N that experiment's diff, outcome, reason and log tail.",
        "input_schema": {"type": "object", "properties": {"experiment": {"type": "integer", "minimum": 0}}},
    },
    {
        "name": "research_log",
        "description": "The structured research log: per experiment the idea, the code region it touched "
        "(file:CONSTANT or file:function), the direction (up/down), the outcome and delta ± noise band. Pass "
        "region (e.g. LR or GPT.forward) to see what was tried there; pass check=true to test your current edits "
        "for a repeat of an idea already tried against the incumbent.",
        "input_schema": {"type": "object", "properties": {
            "region": {"type": "string", "description": "part of a region name, e.g. MATRIX_LR"},
            "check": {"type": "boolean", "description": "check the edits made so far for a repeat"}}},
    },
    {
        "name": "propose_experiment",
        "description": "Finish the turn: your edits so far become the experiment. Call once, after editing.",
        "input_schema": {
            "type": "object",
            "properties": {
                "description": {"type": "string", "description": "one line, imperative, at most 80 characters"},
                "rationale": {"type": "string", "description": "why it should help and what you expect"},
            },
            "required": ["description", "rationale"],
        },
    },
]


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    content: str  # what the model reads
    summary: str  # one line for the console
    proposal: tuple[str, str] | None = None  # (description, rationale) once the turn is finished


class ToolRefused(Exception):
    """A call the tool will not carry out; the message tells the model why and what to do instead."""


class Workbench:
    """One turn's view of the workspace: read-only disk, and an in-memory copy of the editable files."""

    def __init__(self, turn: AgentTurn) -> None:
        self.workspace = Path(turn.workspace).resolve()
        self._original = dict(turn.files)
        self.files = dict(turn.files)
        self.editable = tuple(turn.editable)
        self.protected = tuple(turn.protected)
        self._history = turn.history
        self._incumbent = turn.incumbent
        self._direction = turn.direction
        self._refuse_repeats = turn.refuse_repeats

    def changed_files(self) -> dict[str, str]:
        return {path: text for path, text in self.files.items() if self._original.get(path) != text}

    def run(self, name: str, args: Mapping[str, Any]) -> ToolOutcome:
        handler = getattr(self, f"_tool_{name}", None)
        if handler is None:
            return ToolOutcome(False, f"unknown tool {name!r}", f"unknown tool {name!r}")
        try:
            return handler(args)
        except ToolRefused as refusal:
            reason = str(refusal)
            return ToolOutcome(False, reason, cut(reason, SUMMARY_CHARS))

    # --- tools ------------------------------------------------------------------------------------------------

    def _tool_read_file(self, args: Mapping[str, Any]) -> ToolOutcome:
        rel = self._resolve(args.get("path"))
        text = self._text(rel)
        start = _int_arg(args, "start_line", 1)
        lines = text.splitlines(keepends=True)
        if not 1 <= start <= max(len(lines), 1):
            raise ToolRefused(f"{rel} has {len(lines)} lines; start_line {start} is out of range")
        if start == 1 and len(text) <= READ_CHARS:
            return ToolOutcome(True, text, f"{rel}: {len(lines)} lines")
        chunk: list[str] = []
        size, end = 0, start - 1
        for line in lines[start - 1 :]:
            if chunk and size + len(line) > READ_CHARS:
                break
            chunk.append(line)
            size += len(line)
            end += 1
        header = f"[{rel}: lines {start}-{end} of {len(lines)}; pass start_line={end + 1} to read on]\n"
        return ToolOutcome(True, header + "".join(chunk), f"{rel}: lines {start}-{end} of {len(lines)}")

    def _tool_list_files(self, args: Mapping[str, Any]) -> ToolOutcome:
        rel = self._resolve(args.get("path") or ".")
        entries = []
        for path in self._walk(rel):
            marks = " (editable)" if path in self.editable else " (protected)" if path in self.protected else ""
            entries.append(f"{path}{marks}")
        listing = _first(entries, LIST_ENTRIES, "", "(no files)")
        return ToolOutcome(True, listing, f"{len(entries)} files")

    def _tool_search_files(self, args: Mapping[str, Any]) -> ToolOutcome:
        pattern = args.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ToolRefused("pattern must be a non-empty string")
        try:
            matcher = re.compile(pattern if args.get("regex") else re.escape(pattern))
        except re.error as err:
            raise ToolRefused(f"invalid regular expression {pattern!r}: {err}") from None
        rel = self._resolve(args.get("path") or ".")
        matches = []
        for path in self._walk(rel):
            try:
                text = self._text(path)
            except ToolRefused:
                continue  # binary or oversized files are skipped, not errors
            for number, line in enumerate(text.splitlines(), start=1):
                if matcher.search(line):
                    matches.append(f"{path}:{number}: {cut(line.strip(), SEARCH_LINE_CHARS)}")
        found = _first(matches, SEARCH_MATCHES, " matches; narrow the pattern or the path", "no matches")
        return ToolOutcome(True, found, f"{len(matches)} matches")

    def _tool_edit_file(self, args: Mapping[str, Any]) -> ToolOutcome:
        rel = self._resolve_editable(args.get("path"))
        old, new = args.get("old_string"), args.get("new_string")
        if not isinstance(old, str) or not isinstance(new, str):
            raise ToolRefused("old_string and new_string must be strings")
        if not old:
            raise ToolRefused("old_string is empty; to replace the whole file use write_file")
        if old == new:
            raise ToolRefused("old_string and new_string are identical; nothing would change")
        if rel not in self.files:
            raise ToolRefused(f"{rel} does not exist yet; create it with write_file")
        content = self.files[rel]
        count = content.count(old)
        if count == 0:
            raise ToolRefused(
                f"old_string was not found in {rel}; it must match the current content exactly, whitespace "
                "included (read_file shows the current content)"
            )
        if count > 1:
            raise ToolRefused(
                f"old_string occurs {count} times in {rel}; include more surrounding lines so it matches once"
            )
        self.files[rel] = content.replace(old, new, 1)
        change = f"−{len(old.splitlines())} +{len(new.splitlines())}"
        return ToolOutcome(True, f"edited {rel} ({change} lines){self._syntax_note(rel)}", f"edited {rel} ({change})")

    def _tool_write_file(self, args: Mapping[str, Any]) -> ToolOutcome:
        rel = self._resolve_editable(args.get("path"))
        content = args.get("content")
        if not isinstance(content, str):
            raise ToolRefused("content must be a string")
        if len(content) > MAX_WRITE_CHARS:
            raise ToolRefused(f"content is {len(content)} characters; the limit is {MAX_WRITE_CHARS}")
        if "\x00" in content:
            raise ToolRefused("content contains NUL characters; editable files must be text")
        self.files[rel] = content
        lines = len(content.splitlines())
        return ToolOutcome(True, f"wrote {rel} ({lines} lines){self._syntax_note(rel)}", f"wrote {rel} ({lines} lines)")

    def _tool_read_history(self, args: Mapping[str, Any]) -> ToolOutcome:
        if args.get("experiment") is None:
            overview = history_overview(self._history, self._incumbent, self._direction)
            return ToolOutcome(True, overview, f"{len(self._history)} experiments")
        wanted = _int_arg(args, "experiment", 0)
        for summary in self._history:
            if summary.id == wanted:
                return ToolOutcome(True, experiment_detail(summary), f"#{wanted} {summary.status}")
        ids = f"#{self._history[0].id}–#{self._history[-1].id}" if self._history else "none yet"
        raise ToolRefused(f"no experiment #{wanted} in the history (experiments: {ids})")

    def _tool_research_log(self, args: Mapping[str, Any]) -> ToolOutcome:
        if args.get("check"):
            touch, earlier = repeat_check(self._original, self.changed_files(), self._history, self._incumbent)
            if not touch.region:
                return ToolOutcome(True, "no editable file has changed yet", "nothing to check")
            if earlier is None:
                return ToolOutcome(True, f"a new idea against this incumbent ({touch.describe()})", "new idea")
            return ToolOutcome(True, f"a repeat of #{earlier.id} ({touch.describe()}; {earlier.status}, "
                               f"{earlier.description}): it would be rejected; try another region or direction",
                               f"a repeat of #{earlier.id}")
        region = args.get("region")
        answer = log_answer(self._history, region if isinstance(region, str) else "")
        return ToolOutcome(True, answer, cut(answer.splitlines()[0], SUMMARY_CHARS))

    def _tool_propose_experiment(self, args: Mapping[str, Any]) -> ToolOutcome:
        description, rationale = args.get("description"), args.get("rationale")
        if not isinstance(description, str) or not description.strip():
            raise ToolRefused("description must be a non-empty one-line string")
        if not isinstance(rationale, str) or not rationale.strip():
            raise ToolRefused("rationale must be a non-empty string")
        description = " ".join(description.split())
        if len(description) > DESCRIPTION_CHARS:
            raise ToolRefused(f"description is {len(description)} characters; keep it to one short line")
        changed = self.changed_files()
        if not changed:
            raise ToolRefused("no editable file has changed yet; edit first, then propose")
        for rel in changed:
            if (problem := _syntax_error(rel, changed[rel])) is not None:
                raise ToolRefused(f"{rel} does not compile ({problem}); fix it before proposing")
        touch, earlier = repeat_check(self._original, changed, self._history, self._incumbent)
        if earlier is not None and self._refuse_repeats:
            raise ToolRefused(f"this is a repeat of #{earlier.id} ({touch.describe()}; {earlier.status}): that idea "
                              "was already tried against this incumbent; change another region or direction")
        return ToolOutcome(True, "proposal recorded", cut(f"proposed: {description}", SUMMARY_CHARS),
                           proposal=(description, rationale.strip()))

    # --- confinement ------------------------------------------------------------------------------------------

    def _resolve(self, raw: object) -> str:
        """A workspace-relative posix path ("" for the root), or ToolRefused: no absolute paths, no `..`, nothing
        in .git or .loopdeck, and no symlink that leads out of the workspace."""
        if not isinstance(raw, str) or not raw.strip():
            raise ToolRefused("path must be a non-empty string relative to the workspace root")
        if "\x00" in raw:
            raise ToolRefused("path contains a NUL character")
        text = raw.strip().replace("\\", "/")
        if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text):
            raise ToolRefused(f"{raw}: absolute paths are refused; use a path relative to the workspace root")
        parts = [part for part in text.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise ToolRefused(f"{raw}: '..' is refused; paths must stay inside the workspace")
        if OFF_LIMITS.intersection(parts):
            raise ToolRefused(f"{raw}: .git and .loopdeck are off limits")
        real = (self.workspace / Path(*parts)).resolve() if parts else self.workspace
        if real != self.workspace and self.workspace not in real.parents:
            raise ToolRefused(f"{raw}: resolves outside the workspace (through a symlink); refused")
        if OFF_LIMITS.intersection(real.relative_to(self.workspace).parts):
            raise ToolRefused(f"{raw}: leads into .git or .loopdeck (through a symlink); refused")
        return "/".join(parts)

    def _resolve_editable(self, raw: object) -> str:
        rel = self._resolve(raw)
        if rel in self.protected:
            raise ToolRefused(
                f"{rel} is protected: it must stay byte-identical (loopdeck checks its hash before every run). "
                f"Editable: {', '.join(self.editable)}"
            )
        if rel not in self.editable:
            raise ToolRefused(f"{rel} is not editable. Editable: {', '.join(self.editable) or '(none)'}")
        if (self.workspace / rel).is_symlink():
            raise ToolRefused(f"{rel} is a symlink in the workspace; refused")
        return rel

    def _text(self, rel: str) -> str:
        if rel in self.files:
            return self.files[rel]
        path = self.workspace / rel
        if not path.is_file():
            raise ToolRefused(f"{rel or '.'} is not a file (list_files shows what exists)")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ToolRefused(f"{rel} is larger than {MAX_FILE_BYTES} bytes; not read")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ToolRefused(f"{rel} is not UTF-8 text; not read") from None

    def _walk(self, rel: str) -> Iterator[str]:
        """Files under `rel` (or `rel` itself), sorted, skipping .git, .loopdeck, hidden and cache directories,
        and symlinks that lead out of the workspace."""
        start = self.workspace / rel
        if start.is_file():
            yield rel
            return
        if not start.is_dir():
            raise ToolRefused(f"{rel} does not exist")
        for root, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIPPED_DIRS)
            for name in sorted(files):
                path = Path(root, name)
                real = path.resolve()
                if real == self.workspace or self.workspace not in real.parents:
                    continue
                yield path.relative_to(self.workspace).as_posix()

    def _syntax_note(self, rel: str) -> str:
        problem = _syntax_error(rel, self.files[rel])
        return "" if problem is None else f"\nwarning: {rel} no longer compiles: {problem}"


def call_summary(name: str, args: Mapping[str, Any]) -> str:
    """One line for the console describing a tool call, e.g. `edit_file train.py (−3 +3)`."""
    path = args.get("path")
    if name == "edit_file":
        old, new = str(args.get("old_string", "")), str(args.get("new_string", ""))
        text = f"edit_file {path} (−{len(old.splitlines())} +{len(new.splitlines())})"
    elif name == "write_file":
        text = f"write_file {path} ({len(str(args.get('content', '')).splitlines())} lines)"
    elif name == "read_file":
        start = args.get("start_line")
        text = f"read_file {path}" + (f" from line {start}" if start else "")
    elif name == "search_files":
        text = f"search_files {args.get('pattern')!r} in {path or '.'}"
    elif name == "list_files":
        text = f"list_files {path or '.'}"
    elif name == "read_history":
        number = args.get("experiment")
        text = "read_history" + (f" #{number}" if number is not None else "")
    elif name == "propose_experiment":
        text = f"propose_experiment: {args.get('description', '')}"
    else:
        text = name
    return cut(" ".join(text.split()), SUMMARY_CHARS)


def _first(lines: list[str], limit: int, more: str, empty: str) -> str:
    """At most `limit` lines, then one saying how many more there were."""
    shown = lines[:limit]
    if len(lines) > limit:
        shown.append(f"… {len(lines) - limit} more{more}")
    return "\n".join(shown) or empty


def _syntax_error(rel: str, content: str) -> str | None:
    if not rel.endswith(".py"):
        return None
    try:
        compile(content, rel, "exec")
    except SyntaxError as err:
        return f"line {err.lineno}: {err.msg}"
    except ValueError as err:
        return str(err)
    return None


def _int_arg(args: Mapping[str, Any], name: str, default: int) -> int:
    value = args.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ToolRefused(f"{name} must be an integer, got {value!r}")
    return value
