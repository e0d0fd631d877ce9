"""The research layer: the loop's state machine and the parts it composes.

- `loop`: the state machine (run, step, run_patch, recover, checkpoint, stop conditions).
- `context`: what every part shares (`LoopContext`, `LoopStopped`, the session's `Tally`).
- `turns`: one agent turn (its `AgentTurn`, `TurnRecord`, notes, feedback) and the agent's lifetime.
- `gate`: guard check, announcement, approval gate and veto.
- `judge`: run → classify → judge → keep/revert → record, every process through the executor; `record` writes
  the final ledger row.
- `pipeline`: drafting the next proposal while an experiment trains (depends on turns and the gate only).
- `parallel`: several experiments in flight, each in its own worktree; concurrent keeps rebased and confirmed.
- `planner`: each turn's mode (explore, exploit, combine, ablate) and why; `combine`: near-misses merged onto the
  incumbent for combine mode.
- `integrity`, `budget_check`, `noise`, `early_abort`, `guard`: the rules a result and a change must pass;
  `history`, `report` (with `handover` and `markdown`).
- `study`, `ablation`, `transfer`: studies of the kept chain in scratch worktrees (`ablate(ctx, apply)`,
  `transfer(ctx, scale, per_change)`), for `loopdeck ablate` / `transfer`, the planner and `transfer_every`.

It may import `agents`, `run`, `store` and everything below them; nothing above (`session`).
"""
