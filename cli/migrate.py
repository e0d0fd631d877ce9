"""`loopdeck migrate DIR`: give a workspace made by an earlier loopdeck its own pinned harness.py."""

from __future__ import annotations

import argparse

from loopdeck.cli.paths import user_path
from loopdeck.engine.store.workspace import migrate_workspace


def migrate_command(args: argparse.Namespace) -> int:
    """Migrate in one commit on the current branch and say so; a workspace that needs none is an error."""
    commit, archive = migrate_workspace(user_path(args.dir))
    print(f"migrated {args.dir}: harness.py copied, protected and pinned in loopdeck.toml; train.py imports it "
          f"(commit {commit[:12]})")
    if archive is not None:
        print(f"the earlier sessions' ledger, results.tsv and runs are in {archive}: their scores came from an "
              "earlier harness, so the next run measures a fresh baseline at the migrated commit")
    return 0
