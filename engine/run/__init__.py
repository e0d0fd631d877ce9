"""The run layer: where and how an experiment's processes run, and what they stream back.

- `executor`: the boundary — `ExperimentSpec` in, a `RunHandle` (cancel, wait → `RunResult`) out, output streamed
  to a `RunSink`; `classify` turns a result into a status. Executors keep no global state and never write to the
  ledger.
- `runner`: `LocalExecutor`, the first executor: one process group per run on this machine, supervised by a thread.
- `warm`, `zygote`: the warm runner, the session's executor: runs forked from a per-workspace process that has
  imported torch and loaded the harness and data, supervised as `runner` supervises (fresh processes otherwise).
- `processes`: the process tree of a local run, what it leaves behind, orphans of a dead engine.
- `ray_executor`: `RayExecutor`, one Ray actor per run (Ray places it), the local runner on the worker.
- `workers`: `[workers]` resolved to an executor and how many runs it keeps in flight.
- `environment`: the run's environment, scrubbed of credentials, with loopdeck's contract variables.
- `metrics`: the one reader of the metrics stream and the summary block a training run writes.
- `sandbox`, `evaluator` (the trusted scorer's command and answer), `telemetry`.

It may import `config`, `control`, `events` and `errors`; never `research`, `agents` or `store`.
"""
