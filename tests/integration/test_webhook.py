"""The alert webhook against a real local HTTP server."""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest
from http_receiver import Receiver

from driftline.streams.records import Alert
from driftline.streams.webhook import AlertWebhook, WebhookError, post_json, slack_message

ALERT = Alert(
    "al-1",
    "credit",
    "3",
    "critical",
    "performance_drop",
    "accuracy 0.61 < 0.70",
    1_700_000_000_000,
    window_start=1_700_000_000_000 - 60_000,
    window_end=1_700_000_000_000,
)


def test_alerts_are_posted_as_slack_json() -> None:
    server = Receiver()
    try:
        hook = AlertWebhook(server.url)
        hook.send([ALERT, Alert("al-2", "credit", "3", "info", "retrain_requested", "asked", 1_700_000_000_001)])
        hook.close()
        assert [b["text"] for b in server.bodies] == [
            ":rotating_light: [critical] credit v3 performance_drop: accuracy 0.61 &lt; 0.70",  # Slack shows <
            ":information_source: [info] credit v3 retrain_requested: asked",
        ]
        window = [f for f in server.bodies[0]["attachments"][0]["fields"] if f["title"] == "window"]
        assert window == [
            {"title": "window", "value": "2023-11-14 22:12:20 UTC .. 2023-11-14 22:13:20 UTC", "short": False}
        ]
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


# --- a far side that misbehaves -------------------------------------------------------------------------


class RawServer:
    """A real TCP server on 127.0.0.1 whose ``reply(conn)`` does whatever a broken or hostile webhook does.

    Every connection's request is read (up to its blank line and body) before ``reply`` runs.
    """

    def __init__(self, reply: Callable[[socket.socket], None]) -> None:
        self.reply = reply
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/services/T000/B000/sekret-token"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            self.reply(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()


def _trickle(conn: socket.socket) -> None:
    # a valid reply, one byte a second: each read succeeds well within any per-read timeout
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
        conn.sendall(bytes([byte]))
        time.sleep(1.0)


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")


def _bad_status_line(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 OK-ish\r\n\r\n")


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


def _silence(conn: socket.socket) -> None:
    time.sleep(30)


def _endless_headers(conn: socket.socket) -> None:
    # headers that never end: the client's header limit (clickhouse-connect raises http.client's to
    # 10,000 for the whole process) or its deadline must stop it, whichever comes first
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    stop = time.monotonic() + 5
    with contextlib.suppress(OSError):
        for i in itertools.count():
            if time.monotonic() > stop:
                break
            conn.sendall(b"X-%d: y\r\n" % i)
            if i % 1_000 == 999:
                time.sleep(0.01)


def _status(code: int, extra: bytes = b"") -> Callable[[socket.socket], None]:
    def reply(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n%s\r\n" % (code, extra))

    return reply


def test_one_attempt_has_a_total_deadline_not_a_per_read_one() -> None:
    server = RawServer(_trickle)
    try:
        started = time.monotonic()
        with pytest.raises(WebhookError, match="did not answer within 2 s"):
            post_json(server.url, b"{}", deadline=2.0)
        assert time.monotonic() - started < 2.8  # the trickle would take about 40 s
    finally:
        server.close()


def test_redirects_are_not_followed() -> None:
    target = Receiver()
    server = RawServer(_status(302, f"Location: {target.url}\r\n".encode()))
    try:
        hook = AlertWebhook(server.url, attempts=3, backoff=0.05)
        hook.send([ALERT])
        hook.close()
        assert target.calls == 0
        assert server.connections == 1  # a redirect is final: no retry either
        assert hook.stats.dropped == 1 and hook.stats.posted == 0 and hook.stats.failed_attempts == 1
    finally:
        server.close()
        target.shutdown()


def test_retries_are_bounded_and_back_off() -> None:
    server = RawServer(_status(503))
    try:
        hook = AlertWebhook(server.url, attempts=3, backoff=0.3, max_backoff=5.0)
        started = time.monotonic()
        hook.send([ALERT])
        hook.close()
        elapsed = time.monotonic() - started
        assert server.connections == 3
        assert hook.stats.failed_attempts == 3 and hook.stats.dropped == 1
        assert 0.9 - 0.05 <= elapsed < 3.0  # waits of 0.3 s then 0.6 s between the three attempts
    finally:
        server.close()


@pytest.mark.parametrize("misbehaviour", [_garbage, _bad_status_line, _reset, _silence, _endless_headers, _trickle])
def test_the_delivery_thread_survives_any_reply_and_delivers_the_next_alert(misbehaviour, caplog) -> None:
    bad = RawServer(misbehaviour)
    good = Receiver()
    try:
        hook = AlertWebhook(bad.url, attempts=2, timeout=1.0, backoff=0.05)
        hook.send([ALERT])
        deadline = time.monotonic() + 10
        while hook.stats.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hook.stats.dropped == 1 and hook.alive
        hook.url = good.url  # the next alert goes to a healthy receiver through the same thread
        hook.send([Alert("al-2", "credit", "3", "info", "retrain_requested", "asked", 1)])
        hook.close()
        assert [b["attachments"][0]["fields"][3]["value"] for b in good.bodies] == ["al-2"]
        assert hook.stats.posted == 1
        assert "sekret-token" not in caplog.text
    finally:
        bad.close()
        good.shutdown()


def test_an_unexpected_exception_is_counted_and_the_thread_goes_on() -> None:
    good = Receiver()
    try:
        hook = AlertWebhook(good.url)
        hook.send([Alert("al-1", "credit", "3", "no-such-severity", "k", "m", None)])  # type: ignore[arg-type]
        hook.send([ALERT])
        hook.close()
        assert hook.stats.errors == 1 and hook.stats.dropped == 1
        assert [b["attachments"][0]["fields"][3]["value"] for b in good.bodies] == ["al-1"]
    finally:
        good.shutdown()


def test_event_fields_cannot_inject_slack_markup() -> None:
    good = Receiver()
    try:
        hook = AlertWebhook(good.url)
        hook.send([Alert("<@U123>", "<!channel>", "1&2", "warning", "drift>", "<https://evil.example|click>", 0)])
        hook.close()
        body = good.bodies[0]
        assert body["text"] == (
            ":warning: [warning] &lt;!channel&gt; v1&amp;2 drift&gt;: &lt;https://evil.example|click&gt;"
        )
        assert [f["value"] for f in body["attachments"][0]["fields"]] == [
            "&lt;!channel&gt;",
            "1&amp;2",
            "drift&gt;",
            "&lt;@U123&gt;",
        ]
    finally:
        good.shutdown()
