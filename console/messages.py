"""Textual messages the console posts to itself."""

from __future__ import annotations

from textual.message import Message


class EventsPending(Message, bubble=False):
    """Engine events are waiting in the bridge. Carries nothing: the bridge holds the events in order, so a
    newer wake-up can always stand in for an unhandled older one."""

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EventsPending)

