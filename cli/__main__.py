"""`python -m loopdeck.cli`: the same as the `loopdeck` command."""

import sys

from loopdeck.cli.main import main

sys.exit(main())
