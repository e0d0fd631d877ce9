"""Where the GPT target keeps derived data (built corpus, trained tokenizers, shards), and atomic file writes."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir() -> Path:
    """$LOOPDECK_CACHE, else the platform's per-user cache folder (as platformdirs would pick it) + loopdeck."""
    override = os.environ.get("LOOPDECK_CACHE", "").strip()
    if override:
        return Path(override).expanduser()
    home = Path.home()
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "loopdeck"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "loopdeck" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "loopdeck"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one step, on failure it is removed.

    Readers therefore see the old file or the complete new one, never a torn write (two runs may build the same
    cache entry at once).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
