"""Coding-agent CLIs as the agent (Claude Code, Codex): run non-interactively in a scratch copy, diff as proposal.

`agent` drives one turn, `streams` reads each CLI's documented JSON event stream, `scratch` makes the scratch
checkout and reads the diff back, `process` runs the CLI as its own process group. Imports `base`, `claude.context`
(the history summary), config and events only.
"""
