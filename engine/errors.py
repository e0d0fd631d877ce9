"""User-facing errors: the CLI prints their message and exits non-zero, never a traceback."""


class LoopdeckError(Exception):
    """A problem the user can fix (bad config, dirty tree, missing file, …). The message says what to do."""

    exit_code = 2
