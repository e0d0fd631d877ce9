"""What a person typed, as paths and text; a path that cannot be used, as one clear `LoopdeckError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loopdeck.engine.config import STATE_DIR
from loopdeck.engine.errors import LoopdeckError


def user_path(text: str) -> Path:
    """A path as typed, `~` expanded; `~someone` for a user this machine does not know is a LoopdeckError."""
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # pathlib's "Could not determine home directory"
        raise LoopdeckError(f"{text}: {exc} (no such user?): give the path in full") from None


def typed_text(value: str) -> str:
    """An argument as text: bytes that are not UTF-8 (Python decodes them to lone surrogates, which no file, JSON
    line or database can hold) become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@contextmanager
def workspace_path_errors(path: Path) -> Iterator[None]:
    """A workspace path that cannot be one (under a file, too long, not writable, …) as a LoopdeckError."""
    try:
        yield
    except OSError as exc:
        raise LoopdeckError(f"cannot use {path} as a workspace: {exc.strerror or exc}: choose a directory you can "
                            "write to") from None


def existing_state_dir(directory: str) -> Path:
    """DIR/.loopdeck of a workspace something has run in; a LoopdeckError that says what to do otherwise."""
    path = user_path(directory) / STATE_DIR
    try:
        found = path.is_dir()
    except OSError as exc:  # e.g. a name too long for the file system
        raise LoopdeckError(f"{directory}: {exc.strerror or exc}") from None
    if not found:
        raise LoopdeckError(f"{user_path(directory)} has no {STATE_DIR}/: nothing has run there yet "
                            f"(start with `loopdeck run {directory}`)")
    return path
