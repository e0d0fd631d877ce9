"""The store layer: the workspace, its git repository, the ledger, results.tsv, the journal, the lock, and the
budget constant a `--budget` sets in an autoresearch repository (`budget`)."""
