"""The command palette's provider over the action registry: every action that is enabled right now."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from loopdeck.console.actions import ACTIONS, ConsoleAction, action_name

# The palette's own system commands already offer these.
_SYSTEM_DUPLICATES = frozenset({"quit"})


class ConsoleCommands(Provider):
    def _available(self) -> Iterator[ConsoleAction]:
        for action in ACTIONS:
            if action.action in _SYSTEM_DUPLICATES:
                continue
            if self.app.check_action(action_name(action.action), ()):
                yield action

    def _run(self, action: ConsoleAction):
        return partial(self.app.run_action, action.action)

    async def discover(self) -> Hits:
        for action in self._available():
            yield DiscoveryHit(action.command, self._run(action), help=action.tooltip)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for action in self._available():
            score = matcher.match(action.command)
            if score > 0:
                yield Hit(score, matcher.highlight(action.command), self._run(action), help=action.tooltip)
