"""The built-in offline agent: a hyperparameter search over a training file's constants, no API key, no network.

Each turn it scans the editable Python files for knobs (`constants`), reads the history and people's notes back
(`memory`), picks the best-scoring next move (`search`, stepping knobs by `steps`) and rewrites just those
literals (`edit`). The planner's mode steers the pick (`modes`): explore a direction not taken lately, exploit the
kept change's direction, combine the near-misses the engine merged; repeats of ideas tried against the incumbent
are skipped. With `search="tpe"` the configuration comes from Optuna's TPE over the same knobs (`tpe`) instead of
the rules, in every mode but exploit and combine. Its reasoning (the reasons that decided the score) streams as
thinking deltas before the proposal is returned. Given the same seed, history and notes it proposes the same
thing. When nothing is left to try it stops the session with `AgentError(fatal=True, stop_reason="exhausted")`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.machinery
import importlib.util
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from loopdeck.engine.agents.base import AgentCancelled, AgentError, AgentTurn, Proposal
from loopdeck.engine.agents.offline import tpe
from loopdeck.engine.agents.offline.constants import Knob, Value, discover, module_constants
from loopdeck.engine.agents.offline.edit import apply_edits, render
from loopdeck.engine.agents.offline.memory import Directive, Memory, merge_directives, normalise, parse_note
from loopdeck.engine.agents.offline.modes import pick
from loopdeck.engine.agents.offline.search import MAX_FAILURES, Candidate, Search
from loopdeck.engine.agents.offline.steps import SEQUENCE_NAMES
from loopdeck.engine.agents.regions import repeat_of, touched
from loopdeck.engine.events import (
    AgentTextDelta,
    AgentThinkingDelta,
    AgentToolCall,
    AgentToolResult,
    NoteDelivered,
)

_WORDS_PER_DELTA = 4
TPE_ASKS = 8  # configurations asked of TPE per turn, so that repeats can be passed over


class OfflineAgent:
    """A seeded local search over the training file's hyperparameter constants (see the module docstring)."""

    name = "offline"

    def __init__(self, seed: int = 0, stream_delay: float = 0.0, search: str = "rules") -> None:
        self.seed = seed
        self.stream_delay = stream_delay  # seconds between reasoning deltas; 0 streams them at once
        self.search = search  # "rules" | "tpe"
        self._directives: list[Directive] = []
        if search == "tpe":
            tpe.optuna_module()  # a missing extra ends the session before the baseline, with the install command

    def close(self) -> None:
        """Nothing to release: the agent holds no connection or file."""

    def propose(self, turn: AgentTurn) -> Proposal:
        sources = {path: text for path, text in turn.files.items() if path.endswith(".py")}
        turn.emit(AgentToolCall(experiment=turn.experiment, tool="scan", summary=f"ast scan of {_join(sources)}"))
        frame = _frame_constants(turn.workspace, sources, turn.protected)
        knobs = discover(sources, exclude=frame)
        turn.emit(AgentToolResult(experiment=turn.experiment, tool="scan", ok=bool(knobs),
                                  summary=_scan_summary(knobs)))
        if not knobs:
            where = _join(sources) or "the editable files"
            raise AgentError(f"the offline agent found no tunable UPPER_CASE constants in {where}; add a "
                             "hyperparameter block or use --agent claude", fatal=True, stop_reason="exhausted")
        memory = Memory.read(turn.history, knobs, turn.direction)
        new_directives = [d for note in turn.notes for d in parse_note(note, knobs)]
        directives = merge_directives(merge_directives(memory.directives(), self._directives), new_directives)
        for note in turn.notes:
            turn.emit(NoteDelivered(experiment=turn.experiment, text=note))

        context = _context(turn, memory, knobs, new_directives)
        if turn.mode == "combine" and turn.combined:
            return self._combination(turn, knobs, frame, context)
        if self.search == "tpe" and turn.mode != "exploit" and not new_directives:
            proposal = self._tpe(turn, knobs, frame, context)
            if proposal is not None:
                return proposal
        rules = {d.key: d.rule for d in directives}
        running = {move.get("key") for row in turn.running for move in row.meta.get("moves", [])
                   if isinstance(move, Mapping)}
        search = Search(knobs, memory, {**rules, **dict.fromkeys(running, "avoid")},
                        _sequence_length(sources, frame),
                        random.Random(f"offline:{self.seed}:{turn.experiment}:{len(turn.history)}"))

        def files(candidate: Candidate) -> dict[str, str]:
            return _files(turn, knobs, candidate)

        # Knobs distinct from the runs in flight while any are left, then any.
        picked = (pick(turn, search.candidates(), files, search.diagonals)
                  or pick(turn, dataclasses.replace(search, rules=rules).candidates(), files))
        if picked is None:
            raise AgentError("the offline agent has tried every step it knows around the incumbent "
                             f"({len(knobs)} constants); nothing is left to propose", fatal=True,
                             stop_reason="exhausted")
        choice, why = picked
        choice.reasons.extend(why)
        self._directives = _carried_forward(directives, choice)
        return self._proposal(turn, knobs, frame, choice, context)

    def revise(self, draft: Proposal, turn: AgentTurn) -> Proposal:
        """A draft written while the previous experiment ran stands unless the history now argues against it: it
        repeats a configuration that has been evaluated, the planner's mode has changed since (a keep makes the
        next turn exploit it), it moves a knob that the previous experiment moved and crashed, or a note arrived
        meanwhile. Then the search runs again on what is known now."""
        sources = {path: text for path, text in turn.files.items() if path.endswith(".py")}
        frame = _frame_constants(turn.workspace, sources, turn.protected)
        knobs = discover(sources, exclude=frame)
        memory = Memory.read(turn.history, knobs, turn.direction)
        drafted = {path: text for path, text in {**turn.files, **draft.files}.items() if path.endswith(".py")}
        configuration = frozenset((k.key, normalise(k.value)) for k in discover(drafted, exclude=frame))
        moved = {move.get("key") for move in draft.meta.get("moves", []) if isinstance(move, Mapping)}
        last = memory.trials[-1] if memory.trials else None
        crashed = last is not None and last.failed and bool(moved & {m.key for m in last.moves})
        if configuration in memory.evaluated:
            why = "it repeats a configuration that has been evaluated"
        elif draft.meta.get("mode", "") != turn.mode:
            why = f"the planner's mode is now {turn.mode} ({turn.mode_reason})"
        elif crashed:
            why = f"it moves what experiment #{last.id} moved when it {last.outcome()}"
        elif turn.notes:
            why = "a note arrived"
        else:
            return draft
        turn.emit(AgentTextDelta(experiment=turn.experiment, text=f"Revising the draft ({draft.description}): "
                                 f"{why}.\n"))
        return self.propose(turn)

    def _proposal(self, turn: AgentTurn, knobs: Sequence[Knob], frame: Mapping[str, Value], choice: Candidate,
                  context: list[str]) -> Proposal:
        by_key = {k.key: k for k in knobs}
        description = ", ".join(f"{m.key} {by_key[m.key].text} -> {render(by_key[m.key], m.new)}"
                                for m in choice.moves)
        meta = {"moves": [m.to_meta() for m in choice.moves], "directives": [d.to_meta() for d in self._directives],
                "score": round(choice.score, 3)}
        return self._finish(turn, frame, _files(turn, knobs, choice), description,
                            [*context, *choice.reasons], meta)

    def _combination(self, turn: AgentTurn, knobs: Sequence[Knob], frame: Mapping[str, Value],
                     context: list[str]) -> Proposal:
        """Combine mode: the near-misses' changes, which the engine merged onto the incumbent."""
        ids = [summary.id for summary in turn.near_misses]
        description = "combine " + " + ".join(f"#{s.id} ({s.description})" for s in turn.near_misses)
        why = f"Mode combine: {turn.mode_reason}." if turn.mode_reason else "Mode combine."
        return self._finish(turn, frame, dict(turn.combined), description[:200], [*context, why],
                            {"combines": ids})

    def _tpe(self, turn: AgentTurn, knobs: Sequence[Knob], frame: Mapping[str, Value], context: list[str]
             ) -> Proposal | None:
        """TPE's next configuration as a proposal, passing over repeats; None when every one it asks for is the
        incumbent's own or a repeat (the rules search then proposes)."""
        incumbent = turn.incumbent.id if turn.incumbent is not None else None
        space, origin = tpe.space_of(knobs, turn.history, incumbent)
        if not space:
            return None
        by_key = {k.key: k for k in knobs}
        for asked in tpe.ask(space, origin, turn.history, turn.direction, self.seed, count=TPE_ASKS):
            edits = {key: _readable(value, space[key]) for key, value in asked.items() if key in by_key}
            edits = {key: value for key, value in edits.items() if normalise(value) != normalise(by_key[key].value)}
            files = {path: apply_edits(turn.files[path], [(by_key[k], render(by_key[k], v))
                                                          for k, v in edits.items() if by_key[k].path == path])
                     for path in sorted({by_key[k].path for k in edits})}
            if not edits or repeat_of(touched(turn.files, {**turn.files, **files}), turn.history, incumbent):
                continue
            description = ", ".join(f"{k} {by_key[k].text} -> {render(by_key[k], v)}" for k, v in edits.items())
            why = (f"TPE (Optuna) over {len(space)} constants, modelled on the experiments so far, asks for this "
                   "configuration next.")
            return self._finish(turn, frame, files, description[:200], [*context, why],
                                {"space": space, "space_origin": origin})
        return None

    def _finish(self, turn: AgentTurn, frame: Mapping[str, Value], files: dict[str, str], description: str,
                reasons: list[str], meta: dict) -> Proposal:
        """Stream the reasoning and return the proposal, its whole configuration recorded for the TPE search."""
        if turn.mode:
            reasons = [f"Planner: {turn.mode} ({turn.mode_reason}).", *reasons]
        rationale = " ".join([*reasons, f"Proposing {description}."])
        self._stream(turn, rationale)
        turn.emit(AgentTextDelta(experiment=turn.experiment, text=f"Proposal: {description}"))
        sources = {path: text for path, text in {**turn.files, **files}.items() if path.endswith(".py")}
        params = {k.key: k.value for k in discover(sources, exclude=frame) if not isinstance(k.value, str)}
        meta = {"agent": self.name, "search": self.search, "mode": turn.mode, **meta, "params": params}
        return Proposal(description=description, rationale=rationale, files=files, meta=meta)

    def _stream(self, turn: AgentTurn, text: str) -> None:
        words = re.findall(r"\S+\s*", text)
        for start in range(0, len(words), _WORDS_PER_DELTA):
            if turn.cancelled():
                raise AgentCancelled()
            turn.emit(AgentThinkingDelta(experiment=turn.experiment,
                                         text="".join(words[start : start + _WORDS_PER_DELTA])))
            if self.stream_delay > 0:
                time.sleep(self.stream_delay)


def _files(turn: AgentTurn, knobs: Sequence[Knob], choice: Candidate) -> dict[str, str]:
    """The files a candidate's moves change, with the moves applied."""
    by_key = {k.key: k for k in knobs}
    paths = sorted({m.path for m in choice.moves})
    return {path: apply_edits(turn.files[path], [(by_key[m.key], render(by_key[m.key], m.new))
                                                 for m in choice.moves if m.path == path]) for path in paths}


def _readable(value: Value, bounds: Sequence[object]) -> Value:
    """A TPE value as a person would write it: three significant digits, inside the space."""
    if isinstance(value, int) or bounds[0] == "int":
        return int(value)
    low, high = float(bounds[1]), float(bounds[2])  # type: ignore[arg-type]
    return min(high, max(low, float(f"{float(value):.3g}")))


def _carried_forward(directives: Sequence[Directive], choice: Candidate) -> list[Directive]:
    """Standing rules persist; a preference is spent once a move acts on it."""
    acted = {m.key for m in choice.moves}
    return [d for d in directives if not (d.rule.startswith("prefer") and d.key in acted)]


# --- the experiment's fixed frame --------------------------------------------------------------------------------


def _frame_constants(workspace: Path, sources: Mapping[str, str], protected: Iterable[str]) -> dict[str, Value]:
    """Constants of what experiments must not change: the protected files' and those of modules the editable
    files import UPPER_CASE names from (the harness: `from prepare import MAX_SEQ_LEN`). Read as source, never
    imported, so a foreign repository's code does not run inside the engine."""
    constants: dict[str, Value] = {}
    for relative in protected:
        if relative.endswith(".py"):
            constants.update(module_constants(_read(Path(workspace) / relative) or ""))
    for path, source in sources.items():
        for module in _constant_imports(source):
            constants.update(module_constants(_module_source(module, Path(workspace), path) or ""))
    return constants


def _constant_imports(source: str) -> list[tuple[str, int]]:
    """(module, relative level) of each top-level `from … import` that brings in an UPPER_CASE name."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [(node.module or "", node.level) for node in tree.body if isinstance(node, ast.ImportFrom)
            and any(alias.name.isupper() for alias in node.names)]


def _module_source(module: tuple[str, int], workspace: Path, importer: str) -> str | None:
    name, level = module
    base = workspace / Path(importer).parent
    for _ in range(max(level - 1, 0)):
        base = base.parent
    relative = Path(*name.split(".")) if name else Path()
    roots = [base] if level else [workspace]
    for root in roots:
        for candidate in (root / relative.with_suffix(".py"), root / relative / "__init__.py"):
            if name and candidate.is_file():
                return _read(candidate)
    if level or not name:
        return None
    origin = _installed_origin(name)
    return _read(Path(origin)) if origin and origin.endswith(".py") else None


def _installed_origin(name: str) -> str | None:
    """The file of an installed module such as `loopdeck.gpt.harness`, found without importing it or its parents (a
    dotted find_spec would run the parent package's __init__)."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
        for depth, part in enumerate(parts[1:], start=2):
            if spec is None or not spec.submodule_search_locations:
                return None
            if spec.origin is None:  # a namespace package (`loopdeck`): no code runs, so its own finders may look
                spec = importlib.util.find_spec(".".join(parts[:depth]))
            else:
                spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _sequence_length(sources: Mapping[str, str], frame: Mapping[str, Value]) -> int | None:
    constants = dict(frame)
    for source in sources.values():
        constants.update(module_constants(source))
    for name in SEQUENCE_NAMES:
        value = constants.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


# --- what the reasoning says -------------------------------------------------------------------------------------


def _context(turn: AgentTurn, memory: Memory, knobs: Sequence[Knob], new: Sequence[Directive]) -> list[str]:
    lines = []
    incumbent = turn.incumbent
    baseline = next((row for row in turn.history if row.baseline and row.status == "keep"), None)
    experiments = [row for row in turn.history if not row.baseline]
    kept = sum(1 for row in experiments if row.status == "keep")
    if incumbent is not None and incumbent.metric is not None and not experiments:
        lines.append(f"Only the baseline has run so far ({turn.metric_name} {incumbent.metric:.4f}).")
    elif incumbent is not None and incumbent.metric is not None:
        line = f"Incumbent {turn.metric_name} {incumbent.metric:.4f}"
        if baseline is not None and baseline.metric is not None and baseline.id != incumbent.id:
            line += f" (baseline {baseline.metric:.4f})"
        lines.append(f"{line}; {kept} of {len(experiments)} experiments kept so far.")
    feedback = turn.feedback.strip()[:300]
    if feedback:
        lines.append(f"Last proposal: {feedback}{'' if feedback.endswith(('.', '!', '?')) else '.'}")
    for note in turn.notes:
        rules = [d for d in new if d.note == note.strip()]
        lines.append(f'Note received: "{note.strip()}" — {_read_back(rules, knobs)}')
    for knob in knobs:
        failures = memory.failures(knob.key)
        if len(failures) >= MAX_FAILURES:
            lines.append(f"Leaving {knob.name} alone: it failed {len(failures)} times ({failures[-1].failure()}).")
    return lines


def _read_back(rules: Sequence[Directive], knobs: Sequence[Knob]) -> str:
    if not rules:
        return "it names no constant I can tune, so it does not change the search."
    names = {k.key: k.name for k in knobs}
    phrases = {
        "avoid": "will not touch {}", "forbid_up": "will not raise {}", "forbid_down": "will not lower {}",
        "prefer_up": "will try higher {} next", "prefer_down": "will try lower {} next", "prefer": "will try {} next",
        "allow": "may move {} again",
    }
    grouped: dict[str, list[str]] = {}
    for rule in rules:
        grouped.setdefault(rule.rule, []).append(names.get(rule.key, rule.key))
    return "; ".join(phrases[rule].format(", ".join(keys)) for rule, keys in grouped.items()) + "."


def _scan_summary(knobs: Sequence[Knob]) -> str:
    if not knobs:
        return "no tunable constants"
    shown = ", ".join(k.name for k in knobs[:8])
    return f"{len(knobs)} tunable constants: {shown}{', …' if len(knobs) > 8 else ''}"


def _join(paths: Iterable[str]) -> str:
    return ", ".join(sorted(paths))
