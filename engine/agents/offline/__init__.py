"""The built-in offline agent: a hyperparameter search over a training file's constants.

`agent` runs a turn; `constants` finds the knobs (ast), `steps` says how each kind moves, `edit` rewrites their
literals; `memory` reads the history and notes back, `search` scores the next move (the rules), `tpe` asks
Optuna's TPE instead (`[agent.offline] search = "tpe"`), `modes` picks by the planner's mode.
"""
