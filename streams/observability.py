"""What the streams worker tells operators: Prometheus metrics and JSON log lines.

Each worker owns a ``CollectorRegistry`` (not the global one), so that
several workers in one test process do not share counters. The Faust app
serves it at ``/metrics`` on the worker's web port.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "JsonFormatter", "WorkerMetrics", "configure_logging"]


class WorkerMetrics:
    """The worker's Prometheus metrics, in their own registry.

    >>> m = WorkerMetrics()
    >>> m.events.labels(topic="predictions", outcome="accepted").inc(3)
    >>> m.dlq.labels(reason="invalid_value").inc()
    >>> b"driftline_worker_dlq_messages_total" in m.exposition()
    True
    >>> m.value("driftline_worker_events_total", topic="predictions", outcome="accepted")
    3.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("driftline_worker_messages", "Kafka messages consumed, by topic", ["topic"], registry=r)
        self.events = Counter(
            "driftline_worker_events",
            "Events (rows) consumed, by topic and outcome: accepted, late, replayed (window already written), "
            "rejected, joined, pending (label waiting for its prediction)",
            ["topic", "outcome"],
            registry=r,
        )
        self.dlq = Counter(
            "driftline_worker_dlq_messages", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r
        )
        self.windows = Counter(
            "driftline_worker_windows_closed",
            "Windows closed and written, by kind (drift, performance)",
            ["kind"],
            registry=r,
        )
        self.flush_seconds = Histogram(
            "driftline_worker_window_flush_seconds",
            "Time to write one closed window to ClickHouse and Kafka",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.batch_seconds = Histogram(
            "driftline_worker_batch_seconds",
            "Time to process one batch of messages, by topic",
            ["topic"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.lag = Gauge(
            "driftline_worker_consumer_lag",
            "Messages not yet consumed, by topic and partition",
            ["topic", "partition"],
            registry=r,
        )
        self.open_windows = Gauge("driftline_worker_open_windows", "Windows open in memory", registry=r)
        self.unacked = Gauge(
            "driftline_worker_unacked_messages",
            "Messages waiting for their windows to be written before commit",
            registry=r,
        )
        self.pending_labels = Gauge(
            "driftline_worker_pending_labels", "Labels waiting for their prediction", registry=r
        )
        self.alerts = Counter("driftline_worker_alerts", "Alerts raised, by kind", ["kind"], registry=r)
        self.retrain_requests = Counter(
            "driftline_worker_retrain_requests", "Retrain requests published, by reason", ["reason"], registry=r
        )
        self.rebalances = Counter(
            "driftline_worker_rebalances", "Partition revocations (state is rebuilt from Kafka)", registry=r
        )
        self.errors = Counter(
            "driftline_worker_errors", "Errors while writing (retried), by sink", ["sink"], registry=r
        )
        self.poison = Counter(
            "driftline_worker_poison_messages",
            "Messages whose handling raised (not a DecodeError): dead-lettered as internal_error, by topic and "
            "exception class",
            ["topic", "error_class"],
            registry=r,
        )
        self.replays = Counter(
            "driftline_worker_replays",
            "Times handling a message raised after state had changed: state dropped, messages delivered again",
            registry=r,
        )
        self.warehouse_up = Gauge(
            "driftline_warehouse_up",
            "1 while the warehouse answers, 0 during an outage (writes wait for it)",
            registry=r,
        )
        self.warehouse_up.set(1)
        self.warehouse_outage_seconds = Gauge(
            "driftline_warehouse_outage_seconds",
            "Seconds the current warehouse outage has lasted (0: none)",
            registry=r,
        )
        self.warehouse_outages = Counter("driftline_warehouse_outages", "Warehouse outages ridden out", registry=r)
        self.fetch_paused = Gauge(
            "driftline_worker_fetch_paused",
            "1 while consumption is paused (the service waits for the warehouse)",
            registry=r,
        )
        self.thread_up = Gauge(
            "driftline_worker_thread_up",
            "1 while a background thread runs, 0 while it restarts or is stopped",
            ["thread"],
            registry=r,
        )
        self.thread_restarts = Counter(
            "driftline_worker_thread_restarts",
            "Background thread failures (each logged, then restarted)",
            ["thread"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's current value (for tests and the CLI)."""
        for suffix in ("_total", ""):
            found = self.registry.get_sample_value(name if name.endswith("_total") else name + suffix, labels or None)
            if found is not None:
                return found
        return None


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with any ``extra=`` fields of the call.

    >>> record = logging.makeLogRecord({"name": "w", "levelname": "INFO", "msg": "closed %s", "args": ("w1",),
    ...                                  "created": 0.0, "window_start": 5})
    >>> json.loads(JsonFormatter().format(record))["window_start"]
    5
    """

    _STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(fmt: str = "json", level: int | str = logging.INFO) -> None:
    """Send every log line of the process to stderr, as JSON (``fmt='json'``) or text."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
