"""Agents that propose changes: the interface (`base`), the research log's key (`regions`), the built-in offline
search, and Claude.

An agent reads an `AgentTurn` and returns a `Proposal`; it never touches git, the ledger or a training run.
"""
