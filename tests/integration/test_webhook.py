"""The alert webhook against a real local HTTP server."""

from __future__ import annotations

import time

import pytest
from http_receiver import Receiver

from streams.records import Alert
from streams.webhook import AlertWebhook, slack_message


ALERT = Alert("al-1", "credit", "3", "critical", "performance_drop", "accuracy 0.61 < 0.70", 1_700_000_000_000,
              window_start=1_700_000_000_000 - 60_000, window_end=1_700_000_000_000)


def test_alerts_are_posted_as_slack_json() -> None:
    server = Receiver()
    try:
        hook = AlertWebhook(server.url)
        hook.send([ALERT, Alert("al-2", "credit", "3", "info", "retrain_requested", "asked", 1_700_000_000_001)])
        hook.close()
        assert [b["text"] for b in server.bodies] == [
            ":rotating_light: [critical] credit v3 performance_drop: accuracy 0.61 < 0.70",
            ":information_source: [info] credit v3 retrain_requested: asked",
        ]
        window = [f for f in server.bodies[0]["attachments"][0]["fields"] if f["title"] == "window"]
        assert window == [{"title": "window", "value": "2023-11-14 22:12:20 UTC .. 2023-11-14 22:13:20 UTC", "short": False}]
        assert hook.stats.posted == 2 and hook.stats.dropped == 0
    finally:
        server.shutdown()


def test_a_failing_webhook_is_retried_then_counted_never_raised() -> None:
    server = Receiver(fail_first=1)
    try:
        hook = AlertWebhook(server.url, attempts=2)
        hook.send([ALERT])
        hook.close()
        assert hook.stats.posted == 1 and hook.stats.failed_attempts == 1
    finally:
        server.shutdown()
    dead = AlertWebhook(server.url, attempts=2, timeout=0.5)  # the server is gone now
    started = time.monotonic()
    dead.send([ALERT])
    assert time.monotonic() - started < 0.1  # send never waits for the network
    dead.close()
    assert dead.stats.dropped == 1 and dead.stats.posted == 0


def test_bad_url_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertWebhook("hooks.slack.com/x")
    assert slack_message(ALERT)["attachments"][0]["color"] == "#eb5757"
