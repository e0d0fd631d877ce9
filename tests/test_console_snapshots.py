"""Snapshot tests of the main screen at 80×24 and 120×40 in both loopdeck themes, from fixed data and a frozen clock.

pytest-textual-snapshot pins syrupy 4.8, which needs pytest < 9, so this is a small helper instead: the screen as an
SVG (colours included) plus its plain text (readable in a review diff) are compared with the files committed under
tests/snapshots/. Regenerate after an intended change with `LOOPDECK_UPDATE_SNAPSHOTS=1 python -m pytest
tests/test_console_snapshots.py`, then look at the SVGs before committing them.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from demo_session import demo_session
from test_console_support import feed, make_app, run, screen_text

SNAPSHOTS = Path(__file__).with_name("snapshots")
UPDATE = os.environ.get("LOOPDECK_UPDATE_SNAPSHOTS") == "1"


def check(name: str, text: str, svg: str) -> None:
    text_file, svg_file = SNAPSHOTS / f"{name}.txt", SNAPSHOTS / f"{name}.svg"
    if UPDATE or not text_file.exists():
        SNAPSHOTS.mkdir(exist_ok=True)
        text_file.write_text(text, encoding="utf-8")
        svg_file.write_text(svg, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"no snapshot {text_file.name} yet: written now; look at {svg_file} and commit it")
        return
    expected = text_file.read_text(encoding="utf-8")
    if text != expected:
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), text.splitlines(), "committed", "now",
                                              lineterm=""))
        pytest.fail(f"screen {name} changed (LOOPDECK_UPDATE_SNAPSHOTS=1 to accept):\n{diff}")
    assert svg == svg_file.read_text(encoding="utf-8"), f"colours or styles of {name} changed (same text)"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("theme", ["loopdeck-dark", "loopdeck-light"])
def test_main_screen_snapshot(tmp_path: Path, theme: str, size: tuple[int, int]) -> None:
    async def scenario() -> tuple[str, str]:
        app = make_app(tmp_path)
        async with app.run_test(size=size) as pilot:
            app.theme = theme
            await feed(app, pilot, demo_session())
            await pilot.pause()
            return screen_text(app), app.export_screenshot(title="loopdeck")

    text, svg = run(scenario())
    check(f"main_{theme.removeprefix('loopdeck-')}_{size[0]}x{size[1]}", text, svg)
