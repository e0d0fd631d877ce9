"""The store layer: the workspace, its git repository, the ledger, results.tsv, the journal, the lock."""
