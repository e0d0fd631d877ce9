"""The `loopdeck` command line: argparse tree, headless printer, workspace commands, console launchers.

- `main`: the argparse tree and `main()`; each subcommand's module is imported only when it runs.
- `options`: value types, `ctl`'s actions, `run`'s flags (one per `RunOptions` field) and `run_options(args)`.
- `headless`: `run --headless` and its exit codes; `printer`: the terse text it (and `try`) prints.
- `workspace`: init, status, try, report, ctl, and `workspace_for_run` (a new DIR becomes a workspace).
- `launch`: `run` with the console, and `watch`; the only module here that imports Textual (only they load it).
- `paths`, `signals`: typed paths and text, path errors; signal handling for both front ends.
- `train`: `loopdeck train`, the GPT target once, outside any loop.

May import the engine's public surface (`session`, `events`, `control`, `config`, `errors`) and, for the commands
that read a workspace's records, `engine.store` and `engine.research.report`; never the other way round.
"""
