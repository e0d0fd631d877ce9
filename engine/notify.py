"""Notifications when you are away: a session's events as short messages through apprise, sent in the background.

`Notifier.for_session` is None unless `[notify] urls` or LOOPDECK_NOTIFY_URLS name somewhere to send (apprise is
an optional extra, needed only then). The session hands it every event (`observe`, which never blocks and never
raises); it decides what is worth a message — a diff waiting for approval longer than `approval_wait_minutes`, a
new best, `crash_streak` failed experiments in a row, a turn lost to an agent outage or refusal, the session's end
— and queues it for one sender thread (a bounded queue: when a service hangs, newer messages are dropped, never
the loop held). A failure to send is one warning Notice. Messages carry descriptions, metrics and reasons; the diff
only with `include_diff = true`; and any value of a credential-like environment variable is masked in every one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopdeck.engine.config import NotifySettings
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.events import (
    ApprovalRequested,
    ChangeProposed,
    ChangeRejected,
    DecisionMade,
    Event,
    ExperimentFinished,
    ExperimentStarted,
    Notice,
    SessionFinished,
    SessionStarted,
)
from loopdeck.engine.run.environment import scrubbed_env

URLS_VARIABLE = "LOOPDECK_NOTIFY_URLS"
INSTALL_HINT = "pip install 'loopdeck[notify]'"
QUEUE_SIZE = 32
TICK_SECONDS = 0.2  # how often the sender looks for approvals waiting too long
CLOSE_SECONDS = 10.0  # how long the end of a session waits for its last messages to go out
DIFF_CHARS = 3000
FAILED = frozenset({"crash", "timeout", "nan", "rejected"})  # what the loop counts as a failed experiment
AGENT_TOPICS = frozenset({"agent_outage", "agent_refusal"})
_STOP = object()  # queued by close(): the sender ends after the messages before it


@dataclass(frozen=True)
class Message:
    title: str
    body: str
    kind: str = "info"  # apprise's notify type: info | success | warning | failure


def notify_urls(settings: NotifySettings, environ: dict[str, str] | None = None) -> list[str]:
    """[notify] urls plus LOOPDECK_NOTIFY_URLS (apprise splits a string of several URLs itself)."""
    extra = (os.environ if environ is None else environ).get(URLS_VARIABLE, "").strip()
    return [*settings.urls, *([extra] if extra else [])]


def apprise_sender(urls: list[str]) -> Any:
    """An apprise object holding every URL; a URL apprise does not understand is named by its scheme only (the
    rest of a URL is often a token)."""
    try:
        import apprise
    except ImportError:
        raise LoopdeckError(f"[notify] urls are set but apprise is not installed: {INSTALL_HINT}") from None
    sender = apprise.Apprise()
    for url in urls:
        with _captured_log():
            added = sender.add(url)
        if not added:
            scheme = url.split("://", 1)[0] if "://" in url else url[:12] + "…"
            raise LoopdeckError(f"[notify] a URL with scheme {scheme!r} is not one apprise understands: fix it in "
                                f"loopdeck.toml or {URLS_VARIABLE} (apprise's URL list: https://appriseit.com)")
    return sender


def _secrets() -> list[str]:
    """Values of credential-like environment variables, longest first, that must never appear in a message."""
    kept = scrubbed_env(os.environ)
    return sorted({value for name, value in os.environ.items() if name not in kept and len(value) >= 6},
                  key=len, reverse=True)


def send_now(sender: Any, message: Message) -> tuple[bool, str]:
    """Send one message in this thread: (sent, apprise's log of what went wrong)."""
    with _captured_log() as log:
        sent = bool(sender.notify(body=message.body, title=message.title, notify_type=message.kind))
    return sent, log.getvalue().strip()


@contextlib.contextmanager
def _captured_log() -> Iterator[io.StringIO]:
    """apprise logs its failures: collect them, rather than let Python's last-resort handler print them over the
    console."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("apprise")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


class Notifier:
    """Turns a session's events into messages and sends them from one background thread."""

    def __init__(self, settings: NotifySettings, workspace: Path, emit: Callable[[Event], None], sender: Any) -> None:
        self.settings = settings
        self.workspace, self.name = workspace, workspace.name
        self._emit, self._sender = emit, sender
        self._secrets = _secrets()
        self._queue: queue.Queue[object] = queue.Queue(QUEUE_SIZE)
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[float, str]] = {}  # experiment -> (asked at, description)
        self._diffs: dict[int, str] = {}
        self._metric = "metric"
        self._failures = 0
        self._agent_down = False
        self._complaints: set[str] = set()
        self._thread = threading.Thread(target=self._send_loop, name="loopdeck-notify", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @classmethod
    def for_session(cls, settings: NotifySettings, workspace: Path,
                    emit: Callable[[Event], None]) -> Notifier | None:
        """A notifier (not yet started), or None when no URL is set. A missing apprise or a bad URL raises
        LoopdeckError."""
        urls = notify_urls(settings)
        return cls(settings, workspace, emit, apprise_sender(urls)) if urls else None

    # --- deciding (the engine's threads) -----------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Called with every event of the session; queues a message when one is due. Never blocks or raises."""
        try:
            message = self._message_for(event)
        except Exception as exc:  # a bug here must not reach the loop
            message = None
            self._complain("bug", f"notifications: {type(exc).__name__}: {exc}")
        if message is not None:
            self.put(message)

    def _message_for(self, event: Event) -> Message | None:
        settings = self.settings
        if isinstance(event, SessionStarted):
            self._metric = event.metric_name
        elif isinstance(event, ChangeProposed):
            self._agent_down = False
            if settings.include_diff:  # this one and, pipelined, the one that trains meanwhile
                self._diffs = {**{n: d for n, d in self._diffs.items() if n >= event.experiment - 1},
                               event.experiment: event.diff}
        elif isinstance(event, ApprovalRequested) and settings.approval_wait_minutes:
            with self._lock:
                self._waiting[event.experiment] = (time.monotonic(), event.description)
        elif isinstance(event, DecisionMade | ExperimentStarted | ChangeRejected):
            with self._lock:
                self._waiting.pop(event.experiment, None)
        elif isinstance(event, Notice) and event.topic in AGENT_TOPICS and settings.agent_outage:
            if not self._agent_down:
                self._agent_down = True
                what = "an outage of its service" if event.topic == "agent_outage" else "a refusal"
                return Message(f"loopdeck {self.name}: the agent is stuck ({what})", event.message, "warning")
        elif isinstance(event, ExperimentFinished):
            return self._finished(event)
        elif isinstance(event, SessionFinished) and settings.session_end:
            with self._lock:
                self._waiting.clear()
            return self._summary(event)
        return None

    def _finished(self, event: ExperimentFinished) -> Message | None:
        with self._lock:
            self._waiting.pop(event.experiment, None)
        diff = self._diffs.pop(event.experiment, "")
        if event.status in FAILED:
            self._failures += 1
            if self._failures == self.settings.crash_streak:
                return Message(f"loopdeck {self.name}: {self._failures} failed experiments in a row",
                               f"the last, #{event.experiment} ({event.description}): {event.status} — "
                               f"{event.reason}", "failure")
        elif event.status in ("keep", "discard"):
            self._failures = 0
        if event.status != "keep" or event.incumbent_metric is None or not self.settings.new_best:
            return None
        assert event.metric is not None
        body = (f"#{event.experiment} {event.description}: {self._metric} {event.metric:.6f} "
                f"({event.metric - event.incumbent_metric:+.4g} vs {event.incumbent_metric:.6f})")
        if diff:
            body += "\n\n" + diff[:DIFF_CHARS]
        return Message(f"loopdeck {self.name}: new best {self._metric} {event.metric:.6f}", body, "success")

    def _summary(self, event: SessionFinished) -> Message:
        body = f"{event.experiments} experiments, {event.kept} kept"
        if event.baseline_metric is not None and event.best_metric is not None:
            body += f"; {self._metric} {event.baseline_metric:.6f} (baseline) → {event.best_metric:.6f}"
        kind = "info" if event.reason in ("max_experiments", "time_limit", "stopped", "exhausted") else "warning"
        return Message(f"loopdeck {self.name}: session finished ({event.reason.replace('_', ' ')})", body, kind)

    def _overdue(self) -> list[Message]:
        """Approvals waiting longer than approval_wait_minutes: one message each."""
        limit = self.settings.approval_wait_minutes * 60
        now = time.monotonic()
        with self._lock:
            due = [(number, what) for number, (asked, what) in self._waiting.items() if now - asked >= limit]
            for number, _ in due:
                del self._waiting[number]
        return [Message(f"loopdeck {self.name}: #{number} waits for your approval",
                        f"#{number} {what} has waited {self.settings.approval_wait_minutes:g} min: approve or veto "
                        f"it in the console, or with `loopdeck ctl {self.workspace} approve|veto`", "warning")
                for number, what in due]

    # --- sending (the sender thread) ---------------------------------------------------------------------------

    def put(self, message: Message) -> None:
        """Queue a message; when the queue is full the message is dropped (said once)."""
        try:
            self._queue.put_nowait(message)
        except queue.Full:
            self._complain("full", f"notifications: {QUEUE_SIZE} messages are waiting to be sent; newer ones are "
                           "dropped")

    def _send_loop(self) -> None:
        while True:
            for due in self._overdue():
                self._send(due)
            try:
                item = self._queue.get(timeout=TICK_SECONDS)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            assert isinstance(item, Message)
            self._send(item)

    def _send(self, message: Message) -> None:
        for secret in self._secrets:
            message = Message(message.title.replace(secret, "[redacted]"), message.body.replace(secret, "[redacted]"),
                              message.kind)
        try:
            sent, _ = send_now(self._sender, message)
        except Exception as exc:  # a plugin's bug: the loop goes on
            sent = False
            self._complain("failed", f"notifications: sending failed ({type(exc).__name__}); `loopdeck "
                           "notify-test DIR` shows why")
        if not sent:
            self._complain("failed", "notifications: a message could not be sent; `loopdeck notify-test DIR` "
                           "shows why (reported once)")

    def _complain(self, problem: str, message: str) -> None:
        """One warning Notice per kind of problem in a session."""
        if problem not in self._complaints:
            self._complaints.add(problem)
            self._emit(Notice(level="warning", message=message))

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Send what is queued (the session's end among it), then stop the sender; gives up after `timeout`."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)
