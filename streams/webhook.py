"""Alerts to a chat webhook (Slack-compatible JSON), posted off the worker's path.

The worker must never wait for, or fail because of, a chat service: alerts go
into a bounded queue that one daemon thread drains. Each attempt has a total
deadline (connect, send and reply together, however slowly the far side
answers); redirects are not followed; a failed attempt is retried a bounded
number of times with exponential backoff, then the alert is dropped and
counted. No reply and no exception ends the delivery thread: it is logged,
counted, and the next alert is delivered. Event fields are escaped for Slack's
mrkdwn, so a model id cannot inject a mention or a link.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import queue
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

from driftline.redaction import redact
from driftline.streams.records import Alert

log = logging.getLogger("driftline.webhook")

_COLORS = {"info": "#2f80ed", "warning": "#f2994a", "critical": "#eb5757"}
_ICONS = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
# Enough of a reply to tell what went wrong; the rest is not read.
_MAX_REPLY_BYTES = 4096


def slack_escape(text: object) -> str:
    """``text`` with Slack's three control characters escaped (``&``, ``<``, ``>``), as Slack asks.

    >>> slack_escape("<!channel> & <https://evil.example|click>")
    '&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;'
    """
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(alert: Alert) -> dict:
    """The Slack incoming-webhook body of one alert; every event field is escaped (:func:`slack_escape`).

    >>> m = slack_message(Alert("a1", "credit", "2", "warning", "drift", "income drifted", 0))
    >>> m["text"]
    ':warning: [warning] credit v2 drift: income drifted'
    >>> [f["title"] for f in m["attachments"][0]["fields"]]
    ['model', 'version', 'kind', 'alert id']
    >>> slack_message(Alert("a1", "<!here>", "2", "info", "drift", "a<b", 0))["text"]
    ':information_source: [info] &lt;!here&gt; v2 drift: a&lt;b'
    """
    e = slack_escape
    severity = alert.severity if alert.severity in _ICONS else "warning"
    fields = [
        {"title": "model", "value": e(alert.model_id), "short": True},
        {"title": "version", "value": e(alert.model_version), "short": True},
        {"title": "kind", "value": e(alert.kind), "short": True},
        {"title": "alert id", "value": e(alert.alert_id), "short": True},
    ]
    if alert.window_start is not None and alert.window_end is not None:
        fields.append(
            {"title": "window", "value": f"{_utc(alert.window_start)} .. {_utc(alert.window_end)}", "short": False}
        )
    return {
        "text": f"{_ICONS[severity]} [{e(alert.severity)}] {e(alert.model_id)} v{e(alert.model_version)} "
        f"{e(alert.kind)}: {e(alert.message)}",
        "attachments": [{"color": _COLORS[severity], "fields": fields, "ts": alert.occurred_at // 1000}],
    }


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


@dataclass
class WebhookStats:
    """What the delivery thread did: alerts posted and dropped, attempts failed, unexpected errors."""

    posted: int = 0
    failed_attempts: int = 0
    dropped: int = 0
    errors: int = 0


class WebhookError(Exception):
    """One delivery attempt failed; ``retry`` says whether another attempt may succeed."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


def post_json(url: str, body: bytes, *, deadline: float) -> int:
    """POST ``body`` to ``url`` within ``deadline`` seconds in all; return the 2xx status.

    The deadline covers connecting, sending and reading the status line and headers: a watchdog
    shuts the socket when it passes, so a reply trickled one byte a second cannot hold the attempt
    longer. Redirects are not followed. Raises :class:`WebhookError` (never the URL's path or password).

    >>> post_json("http://127.0.0.1:9/hook", b"{}", deadline=0.5)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.streams.webhook.WebhookError: cannot reach the webhook at 127.0.0.1:9:
    ConnectionRefusedError: [Errno 111] Connection refused
    """
    parts = urllib.parse.urlsplit(url)
    target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=deadline, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=deadline)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # wakes a read blocked in the delivery thread

    watchdog = threading.Timer(deadline, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json", "Connection": "close"})
        response = conn.getresponse()
        status = response.status
        reply = response.read(_MAX_REPLY_BYTES)
    except Exception as exc:
        if expired.is_set():
            raise WebhookError(f"the webhook at {target} did not answer within {deadline:g} s") from None
        raise WebhookError(f"cannot reach the webhook at {target}: {type(exc).__name__}: {redact(exc)}") from None
    finally:
        watchdog.cancel()
        conn.close()
    if 200 <= status < 300:
        return status
    if 300 <= status < 400:
        raise WebhookError(f"the webhook at {target} answered {status} (a redirect, not followed)", retry=False)
    detail = redact(reply[:200].decode("utf-8", "replace")).strip()
    retry = status >= 500 or status in (408, 429)
    raise WebhookError(f"the webhook at {target} answered {status}{': ' + detail if detail else ''}", retry=retry)


class AlertWebhook:
    """Posts alerts to ``url`` from a background thread; ``send`` never blocks.

    ``timeout`` is the total deadline of one attempt; ``attempts`` bounds the tries per alert, with
    ``backoff`` seconds before the second, doubling up to ``max_backoff``.

    >>> hook = AlertWebhook("http://127.0.0.1:9/never", max_queue=1, attempts=1, timeout=0.2)
    >>> hook.send([Alert("a", "m", "1", "info", "k", "x", 0), Alert("b", "m", "1", "info", "k", "y", 0)])
    >>> hook.close(timeout=5)
    >>> hook.stats.dropped   # one did not fit the queue, the other could not be delivered
    2
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        attempts: int = 3,
        max_queue: int = 1000,
        backoff: float = 0.5,
        max_backoff: float = 5.0,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # the URL itself is a secret for Slack (its path is the token): only its scheme is quoted
            raise ValueError(f"alert webhook must be an http(s) URL with a host, got one with scheme {parts.scheme!r}")
        if attempts < 1 or timeout <= 0:
            raise ValueError(f"alert webhook needs attempts >= 1 and timeout > 0, got {attempts} and {timeout}")
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stats = WebhookStats()
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="driftline-webhook", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"AlertWebhook({parts.scheme}://{parts.hostname}:{parts.port or ''}/..., timeout={self.timeout:g})"

    @property
    def alive(self) -> bool:
        """Whether the delivery thread is running (it stops only on ``close``)."""
        return self._thread.is_alive()

    def send(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            try:
                self._queue.put_nowait(alert)
            except queue.Full:
                self.stats.dropped += 1
                log.warning("alert webhook queue full; dropped alert %s", alert.alert_id)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (within ``timeout``), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self._post(alert)
            except Exception as exc:  # never end the thread: the next alert must still go out
                self.stats.errors += 1
                self.stats.dropped += 1
                log.error(
                    "alert webhook: unexpected %s delivering %s: %s; dropped, delivery goes on",
                    type(exc).__name__,
                    getattr(alert, "alert_id", "?"),
                    redact(exc),
                )

    def _post(self, alert: Alert) -> None:
        body = json.dumps(slack_message(alert)).encode()
        for attempt in range(1, self.attempts + 1):
            try:
                post_json(self.url, body, deadline=self.timeout)
                self.stats.posted += 1
                return
            except WebhookError as exc:
                self.stats.failed_attempts += 1
                log.warning(
                    "alert webhook attempt %d/%d for %s failed: %s", attempt, self.attempts, alert.alert_id, exc
                )
                if not exc.retry:
                    break
                if attempt < self.attempts:
                    time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
        self.stats.dropped += 1
        log.error("alert %s not delivered to the webhook after %d attempt(s); dropped", alert.alert_id, attempt)
