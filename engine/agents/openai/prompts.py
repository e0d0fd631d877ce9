"""What a Chat Completions model is offered: the Claude agent's tools in the function format, and the system
prompt, each in a full and a compact form (small local models follow a short prompt and flat schemas better)."""

from __future__ import annotations

from typing import Any

from loopdeck.engine.agents.claude.context import system_prompt as full_system_prompt
from loopdeck.engine.agents.claude.tools import TOOL_SCHEMAS

# The tools a small model is offered: enough to read, change and propose; the workbench still answers any other.
COMPACT_TOOLS = ("read_file", "edit_file", "write_file", "propose_experiment")

COMPACT_RULES = """\
# Your job
Propose ONE small change to the editable files that should improve the metric. loopdeck trains with it for a
fixed time and keeps it only if the metric improves.

# How
1. read_file train.py (or another editable file).
2. edit_file: old_string must be copied exactly from the file; new_string replaces it.
3. propose_experiment with a one-line description and a short rationale.

# Rules
- One idea per experiment. Keep the code runnable.
- Never change the evaluation, the data, the time budget or the random seed.
- Do not repeat an experiment that already failed.
- Follow the human's notes.
"""


def system_prompt(program: str, *, compact: bool) -> str:
    """program.md and loopdeck's rules; the compact form swaps the rules for a few numbered steps."""
    if not compact:
        return full_system_prompt(program)
    program = program.strip() or "(no program.md: improve the metric within the rules below)"
    return f"# Research program\n{program}\n\n{COMPACT_RULES}"


def chat_tools(*, compact: bool) -> list[dict[str, Any]]:
    """The tools as Chat Completions functions. Compact: fewer tools, required parameters only, no bounds, and
    the first sentence of each description."""
    tools = []
    for schema in TOOL_SCHEMAS:
        name, description, parameters = schema["name"], schema["description"], schema["input_schema"]
        if compact:
            if name not in COMPACT_TOOLS:
                continue
            description = description.split(". ")[0].rstrip(".") + "."
            parameters = _required_only(parameters)
        tools.append({"type": "function", "function": {"name": name, "description": description,
                                                       "parameters": parameters}})
    return tools


def _required_only(parameters: dict[str, Any]) -> dict[str, Any]:
    required = list(parameters.get("required", []))
    properties = {name: {"type": spec["type"]} for name, spec in parameters["properties"].items()
                  if name in required}
    return {"type": "object", "properties": properties, "required": required}
