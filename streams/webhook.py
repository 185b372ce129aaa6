"""Alerts to a chat webhook (Slack-compatible JSON), posted off the worker's path.

The worker must never wait for, or fail because of, a chat service: alerts go
into a bounded queue that one daemon thread drains. What cannot be delivered
is retried a few times, then dropped and counted, and both are logged.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from streams.records import Alert

log = logging.getLogger("driftline.webhook")

_COLORS = {"info": "#2f80ed", "warning": "#f2994a", "critical": "#eb5757"}


def slack_message(alert: Alert) -> dict:
    """The Slack incoming-webhook body of one alert.

    >>> m = slack_message(Alert("a1", "credit", "2", "warning", "drift", "income drifted", 0))
    >>> m["text"]
    ':warning: [warning] credit v2 drift: income drifted'
    >>> [f["title"] for f in m["attachments"][0]["fields"]]
    ['model', 'version', 'kind', 'alert id']
    """
    icon = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}[alert.severity]
    fields = [
        {"title": "model", "value": alert.model_id, "short": True},
        {"title": "version", "value": alert.model_version, "short": True},
        {"title": "kind", "value": alert.kind, "short": True},
        {"title": "alert id", "value": alert.alert_id, "short": True},
    ]
    if alert.window_start is not None and alert.window_end is not None:
        fields.append({"title": "window", "value": f"{_utc(alert.window_start)} .. {_utc(alert.window_end)}", "short": False})
    return {
        "text": f"{icon} [{alert.severity}] {alert.model_id} v{alert.model_version} {alert.kind}: {alert.message}",
        "attachments": [{"color": _COLORS[alert.severity], "fields": fields, "ts": alert.occurred_at // 1000}],
    }


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


@dataclass
class WebhookStats:
    posted: int = 0
    failed_attempts: int = 0
    dropped: int = 0


class AlertWebhook:
    """Posts alerts to ``url`` from a background thread; ``send`` never blocks.

    >>> hook = AlertWebhook("http://127.0.0.1:9/never", max_queue=1, attempts=1, timeout=0.2)
    >>> hook.send([Alert("a", "m", "1", "info", "k", "x", 0), Alert("b", "m", "1", "info", "k", "y", 0)])
    >>> hook.close(timeout=5)
    >>> hook.stats.dropped   # one did not fit the queue, the other could not be delivered
    2
    """

    def __init__(self, url: str, *, timeout: float = 5.0, attempts: int = 3, max_queue: int = 1000) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"alert webhook must be an http(s) URL, got {url!r}")
        self.url = url
        self.timeout = timeout
        self.attempts = attempts
        self.stats = WebhookStats()
        self._queue: queue.Queue[Alert | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name="driftline-webhook", daemon=True)
        self._thread.start()

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
            self._post(alert)

    def _post(self, alert: Alert) -> None:
        body = json.dumps(slack_message(alert)).encode()
        for attempt in range(1, self.attempts + 1):
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self.stats.posted += 1
                return
            except (urllib.error.URLError, OSError) as exc:
                self.stats.failed_attempts += 1
                log.warning("alert webhook attempt %d/%d for %s failed: %s", attempt, self.attempts, alert.alert_id, exc)
                if attempt < self.attempts:
                    time.sleep(min(0.5 * 2 ** (attempt - 1), 5.0))
        self.stats.dropped += 1
        log.error("alert %s not delivered to the webhook after %d attempts; dropped", alert.alert_id, self.attempts)
