"""Agents that propose changes: the interface (`base`), the built-in offline search, and Claude.

An agent reads an `AgentTurn` and returns a `Proposal`; it never touches git, the ledger or a training run.
"""
