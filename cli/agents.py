"""`loopdeck agents`: every agent kind, usable here or not, and why — without a single network request."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

from loopdeck.engine.agents.cli.agent import CLI_KINDS, cli_problem
from loopdeck.engine.config import AGENT_KINDS, CONFIG_FILE, Config, load_config
from loopdeck.engine.session import resolve_agent_kind

# Agents on an SDK: kind -> (the package it needs, the variable holding its key).
SDK_AGENTS = {"claude": ("anthropic", "ANTHROPIC_API_KEY"), "openai": ("openai", "OPENAI_API_KEY")}


def agent_status(kind: str, config: Config) -> tuple[bool, str]:
    """(usable, why) for one agent kind, from the environment, PATH and installed packages only."""
    if kind == "auto":
        chosen = resolve_agent_kind(kind)
        usable, why = agent_status(chosen, config)
        return usable, f"resolves to {chosen} here" + ("" if usable else f" ({why})")
    if kind == "offline":
        return True, "built in: a local search over the training file's constants, no key or network"
    if kind in CLI_KINDS:
        program = config.agent.cli.executable or CLI_KINDS[kind].program
        problem = cli_problem(kind, config.agent.cli)
        return not problem, problem or f"`{program}` is on PATH ({_cli_billing(kind, config)})"
    if kind in SDK_AGENTS:
        return _sdk_status(kind, config)
    return False, "loopdeck has no check for this kind"


def _cli_billing(kind: str, config: Config) -> str:
    """Who pays for the CLI's requests: its own login, or the API key loopdeck passes on."""
    key = CLI_KINDS[kind].billing_key
    if key and config.agent.cli.pass_api_key and os.environ.get(key, "").strip():
        return f"it bills {key} per token: [agent.cli] pass_api_key = true"
    return "it uses its own login or subscription" + (f"; {key} is not passed on" if key and os.environ.get(key)
                                                      else "")


def _sdk_status(kind: str, config: Config) -> tuple[bool, str]:
    package, key = SDK_AGENTS[kind]
    if importlib.util.find_spec(package) is None:
        return False, f"the `{package}` package is not installed: pip install {package}"
    if os.environ.get(key, "").strip():
        return True, f"{key} is set (not checked: no network request is made)"
    section = getattr(config.agent, kind, None)
    base_url = getattr(section, "base_url", "") or (os.environ.get("OPENAI_BASE_URL", "") if kind == "openai" else "")
    if kind == "openai" and base_url:
        return True, f"endpoint {base_url} (a local server may need no key; not contacted)"
    return False, f"{key} is not set: export it"


def agents_command(args: argparse.Namespace) -> int:
    """Print one line per agent kind; DIR's loopdeck.toml, when there is one, supplies its [agent] settings."""
    workspace = Path(args.dir)
    config = load_config(workspace)[0] if (workspace / CONFIG_FILE).is_file() else Config()
    width = max(len(kind) for kind in AGENT_KINDS)
    print(f"{'agent':<{width}}  usable  why")
    for kind in AGENT_KINDS:
        usable, why = agent_status(kind, config)
        print(f"{kind:<{width}}  {'yes' if usable else 'no':<6}  {why}")
    print(f"\nchoose one with `loopdeck run --agent KIND` or [agent] kind in {CONFIG_FILE}")
    return 0
