"""The engine: runs the research loop on a workspace and tells the world what happens, as typed events.

Public surface (what the command line and the console use): `session` (start or resume a session, its events,
its control API), `events`, `control`, `config`, `errors`. Below it, layers that import downward only —
checked by import-linter (pyproject.toml):

    session → research → agents | run | store → control → config | events → errors

- `research/`: the loop's state machine, agent turns, the guard and the approval gate, pipelined drafts, and the
  integrity of each result (trusted score, noise, confirmation, early abort, holdout).
- `agents/`: who proposes changes (`base` is the interface; `offline/`, `claude/`).
- `run/`: where an experiment's training process runs (the executor), its sandbox, the trusted evaluator,
  telemetry, and the metrics stream it writes.
- `store/`: the workspace, its git repository, the ledger, results.tsv, the events journal, the lock.

`agents`, `run` and `store` never import each other. Nothing here imports Textual or argparse.
"""
