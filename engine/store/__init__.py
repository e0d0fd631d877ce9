"""The store layer: the workspace, its git repository, the ledger, results.tsv, the journal, the lock, the
budget constant a `--budget` sets in an autoresearch repository (`budget`), and one worktree per experiment in
flight (`worktrees`)."""
