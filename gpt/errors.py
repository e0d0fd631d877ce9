"""Errors the user can fix (a bad data path, an unreadable corpus): printed as one line, never a traceback."""


class DataError(Exception):
    """Bad or missing training data. The message names the path and what was expected."""
