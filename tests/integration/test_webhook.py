"""The alert webhook against a real local HTTP server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from streams.records import Alert
from streams.webhook import AlertWebhook, slack_message


class Receiver(ThreadingHTTPServer):
    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.fail_first = fail_first
        self.calls = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805 - the server is `self`
                self.calls += 1
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                if self.calls <= self.fail_first:
                    handler.send_response(503)
                    handler.end_headers()
                    return
                self.bodies.append(json.loads(body))
                handler.send_response(200)
                handler.end_headers()
                handler.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


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
