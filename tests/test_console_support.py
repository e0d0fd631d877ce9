"""Shared helpers for the console tests: a recording stand-in for engine.session.Session, an app factory with a
frozen clock and a private settings file, and readers for what is on the screen. (No tests in this module.)"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from demo_session import T0
from rich.console import Console

from loopdeck.console.app import LoopdeckApp
from loopdeck.console.bridge import EventBridge
from loopdeck.engine.events import Event

NOW = T0 + 2000.0


class FakeSession:
    """Has Session's control surface and records every call; `finish()` makes `wait()` return True."""

    def __init__(self, approval: str = "ask") -> None:
        self.approval = approval
        self.calls: list[tuple[str, tuple, dict]] = []
        self._done = threading.Event()

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def start(self) -> None:
        self._record("start")

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def finish(self) -> None:
        self._done.set()

    def decide(self, approve: bool, note: str = "", experiment: int | None = None) -> None:
        self._record("decide", approve, note, experiment=experiment)

    def send_note(self, text: str) -> None:
        self._record("send_note", text)

    def pause(self) -> None:
        self._record("pause")

    def resume(self) -> None:
        self._record("resume")

    def stop_after_current(self) -> None:
        self._record("stop_after_current")

    def abort(self) -> None:
        self._record("abort")

    def set_approval(self, policy: str) -> None:
        self._record("set_approval", policy)

    def set_mode(self, mode: str) -> None:
        self._record("set_mode", mode)

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


def make_app(tmp_path: Path, *, session: FakeSession | None = None, watch: bool = False,
             clock: Callable[[], float] = lambda: NOW, **kwargs: Any) -> LoopdeckApp:
    """An app on a fake session (or watch-only), frozen clock, settings under tmp_path, no animations."""
    if session is None and not watch:
        session = FakeSession()
    app = LoopdeckApp(bridge=EventBridge(), session=session, workspace="/home/ada/research", clock=clock,
                      settings_file=tmp_path / "config" / "console.json", **kwargs)
    app.animation_level = "none"
    return app


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coroutine)


async def feed(app: LoopdeckApp, pilot, events: Iterable[Event]) -> None:
    """Emit events through the bridge as the engine would, then wait until they are applied and drawn."""
    app.bridge.emit_many(list(events))
    await settle(app, pilot)


async def settle(app: LoopdeckApp, pilot) -> None:
    for _ in range(100):
        await pilot.pause()
        if not app.bridge.waiting and not app.view.dirty:
            break
        await asyncio.sleep(0.01)
    await app._render()
    await pilot.pause()


def screen_text(app: LoopdeckApp) -> str:
    """The characters on the screen right now, one line per row."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system="truecolor",
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


def footer_actions(app: LoopdeckApp) -> set[str]:
    """Actions the footer shows as enabled on the current screen."""
    return {active.binding.action for active in app.screen.active_bindings.values()
            if active.enabled and active.binding.show}
