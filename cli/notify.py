"""`loopdeck notify-test DIR`: send one message to every [notify] URL, so a person knows the URLs work."""

from __future__ import annotations

import argparse

from loopdeck.cli.paths import user_path
from loopdeck.engine.config import CONFIG_FILE, load_config
from loopdeck.engine.errors import LoopdeckError
from loopdeck.engine.notify import URLS_VARIABLE, Message, apprise_sender, notify_urls, send_now


def notify_test_command(args: argparse.Namespace) -> int:
    path = user_path(args.dir)
    config, _ = load_config(path)
    urls = notify_urls(config.notify)
    if not urls:
        raise LoopdeckError(f"no notification URL: set [notify] urls in {path / CONFIG_FILE} (e.g. "
                            f"[\"ntfy://ntfy.sh/your-topic\"]) or export {URLS_VARIABLE}")
    sender = apprise_sender(urls)
    message = Message(f"loopdeck {path.name}: test message",
                      f"Notifications from loopdeck on {path} reach you here.")
    sent, log = send_now(sender, message)
    if not sent:
        detail = "; ".join(line for line in log.splitlines() if line.strip()) or "no detail from apprise"
        raise LoopdeckError(f"the test message was not sent ({detail}): check the URLs in [notify] urls or "
                            f"{URLS_VARIABLE}")
    print(f"loopdeck: sent a test message to {len(sender)} notification service{'s' if len(sender) != 1 else ''}")
    return 0
