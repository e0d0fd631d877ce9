"""The `loopdeck` command line: argparse tree, headless printer, workspace commands, console launchers."""
