"""The built-in offline agent: a hyperparameter search over a training file's constants."""
