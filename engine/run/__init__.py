"""The run layer: where and how an experiment's training process runs, and what it streams back."""
