"""Console preferences remembered between sessions (the theme), in a small JSON file in the user config dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

from platformdirs import user_config_dir

FILENAME = "console.json"


def settings_path() -> Path:
    """`$LOOPDECK_CONFIG_DIR/console.json`, else the platform's config dir (XDG_CONFIG_HOME on Linux)."""
    override = os.environ.get("LOOPDECK_CONFIG_DIR")
    base = Path(override) if override else Path(user_config_dir("loopdeck", appauthor=False))
    return base / FILENAME


def load_settings(path: Path | None = None) -> dict:
    path = path or settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a missing or damaged preferences file only costs the defaults
    return data if isinstance(data, dict) else {}


def save_settings(values: dict, path: Path | None = None) -> None:
    """Merge `values` into the file, atomically; a read-only config dir is not worth failing for."""
    path = path or settings_path()
    data = {**load_settings(path), **values}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError:
        pass
