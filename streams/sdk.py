"""The producer SDK: services log predictions, labels and features without waiting for Kafka.

A log call validates its arguments, appends one record to an in-memory
buffer and returns; it never touches the network. A background thread
groups predictions (and features) per model version into ``PredictionBatch``
(``FeatureBatch``) messages, and labels per model into ``LabelBatch``
messages, of at most ``batch_size`` events, sent when full or ``linger_ms``
after the first event of the group, and hands them to confluent-kafka, which
sends them and reports each delivery.

Bound: at most ``max_buffered`` events are held (in this buffer and in the
Kafka client's queue together) before they are delivered or have failed.
A log call beyond that bound drops its event and counts it in
``stats().dropped``: when the broker is down, memory stays bounded and the
caller is never blocked. Invalid arguments (a feature value that is neither
a number nor a string, ±inf, a non-string id) raise TypeError or ValueError
at once, because they are bugs in the calling code, not outages (except
when the bound is reached: then a call only counts its drop and returns).

Create the logger after a process forks (e.g. in a gunicorn ``post_fork``
hook): its thread and Kafka client do not survive a fork.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import numbers
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message

from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.codec import Codec, default_codec
from driftline.streams.records import (
    FeatureBatch,
    FeatureEvent,
    LabelBatch,
    LabelEvent,
    PredictionBatch,
    PredictionEvent,
)

log = logging.getLogger(__name__)

_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_NUMBER_TYPES = (int, float)


# The batch record each kind of buffer is sent as (one model version, or one model for labels).
_BATCH_OF: dict[str, type[PredictionBatch] | type[FeatureBatch] | type[LabelBatch]] = {
    "predictions": PredictionBatch,
    "features": FeatureBatch,
    "labels": LabelBatch,
}


@dataclass(frozen=True)
class LoggerStats:
    """Event counts of a PredictionLogger; ``logged = delivered + failed + dropped + buffered``.

    - ``sent``: handed to the Kafka client;
    - ``delivered``: acknowledged by the broker;
    - ``failed``: the client gave up (e.g. broker unreachable for ``message.timeout.ms``);
    - ``dropped``: never sent, because the buffer or the client's queue was full,
      or still unsent when the logger closed;
    - ``buffered``: accepted and not yet delivered, failed or dropped.

    >>> LoggerStats(logged=3, delivered=2, dropped=1).buffered
    0
    """

    logged: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    dropped: int = 0
    buffered: int = 0
    last_error: str | None = None


@dataclass
class _Buffer:
    started: float
    records: list = field(default_factory=list)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    number = float(value)
    if math.isinf(number):
        raise ValueError(f"{what} is {number}; driftline rejects ±inf (use None or NaN for missing)")
    return number


def _optional_number(value: Any, what: str) -> float | None:
    return None if value is None else _finite(value, what)


def _event_time(value: Any) -> int:
    if value is None:
        return _now_ms()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"event_time must be integer epoch milliseconds, got {value!r}")
    return int(value)


def _split_features(features: Mapping[str, Any] | None) -> tuple[dict[str, float], dict[str, str]]:
    """Numbers (and booleans, as 0/1) become numeric inputs, strings categorical ones; None is missing."""
    numeric: dict[str, float] = {}
    categorical: dict[str, str] = {}
    if not features:
        return numeric, categorical
    for name, value in features.items():
        if type(name) is not str:
            raise TypeError(f"feature names must be strings, got {name!r}")
        kind = type(value)
        if kind is float or kind is int:
            number = float(value)
        elif kind is str:
            categorical[name] = value
            continue
        elif value is None:
            continue
        elif isinstance(value, numbers.Real):  # numpy scalars, bool, Decimal, Fraction
            number = float(value)
        else:
            raise TypeError(f"feature {name!r} must be a number, a string or None, got {kind.__name__}")
        if math.isinf(number):
            raise ValueError(f"feature {name!r} is {number}; driftline rejects ±inf (use None or NaN for missing)")
        numeric[name] = number
    return numeric, categorical


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    if not attributes:
        return {}
    for name, value in attributes.items():
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"attributes map strings to strings, got {name!r}: {value!r}")
    return dict(attributes)


def _input_fields(
    model_id: Any,
    model_version: Any,
    features: Mapping[str, Any] | None,
    attributes: Mapping[str, Any] | None,
    event_id: Any,
    event_time: Any,
) -> dict[str, Any]:
    """The validated fields that a prediction and logged features share; a new uuid4 event id unless given."""
    numeric, categorical = _split_features(features)
    return {
        "event_id": str(uuid.uuid4()) if event_id is None else _text(event_id, "event_id"),
        "model_id": _text(model_id, "model_id"),
        "model_version": _text(model_version, "model_version"),
        "event_time": _event_time(event_time),
        "numeric": numeric,
        "categorical": categorical,
        "attributes": _attributes(attributes),
    }


class PredictionLogger:
    """Logs predictions, labels and features to Kafka without blocking the caller (module docstring).

    ``target`` is a Settings object or a bootstrap address. Messages go to the
    settings' ``predictions``, ``features`` and ``labels`` topics, keyed by model id.
    ``single_events`` sends each prediction (feature event, label) as its own
    PredictionEvent (FeatureEvent, LabelEvent) instead of batches, for consumers
    that read only those. ``producer_config`` adds librdkafka settings, e.g.
    ``{"message.timeout.ms": 30000}`` to count events as failed after 30 s of
    outage instead of librdkafka's 5 minutes.

    >>> logger = PredictionLogger("127.0.0.1:1", linger_ms=10)  # nothing listens on port 1
    >>> logger.log_prediction("credit", "3", features={"age": 41, "region": "eu"}, prediction=0.83, event_id="e1")
    'e1'
    >>> stats = logger.flush(timeout=0.2)  # returns in time although the broker is unreachable
    >>> stats.logged, stats.sent, stats.delivered, stats.buffered
    (1, 1, 0, 1)
    >>> logger.close(timeout=0.2).dropped  # what it could not send by then
    1

    In a service, ``with PredictionLogger(settings) as logger:`` closes it on exit.
    """

    def __init__(
        self,
        target: Settings | str,
        *,
        batch_size: int = 1000,
        linger_ms: float = 100,
        max_buffered: int = 100_000,
        single_events: bool = False,
        max_message_bytes: int = 900_000,
        producer_config: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
    ) -> None:
        if batch_size < 1 or max_buffered < 1 or linger_ms < 0:
            raise ValueError("batch_size and max_buffered must be positive and linger_ms not negative")
        self.settings = Settings(kafka_bootstrap=target) if isinstance(target, str) else target
        self.batch_size = batch_size
        self.linger = linger_ms / 1000
        self.max_buffered = max_buffered
        self.single_events = single_events
        self.max_message_bytes = max_message_bytes
        self._codec = codec or default_codec()
        self._topics = {name: self.settings.topic(name) for name in ("predictions", "features", "labels")}
        conf: dict[str, Any] = {
            # Our own buffer batches; the client only adds a short linger for many small messages.
            "linger.ms": 5,
            "compression.type": "lz4",
            # Above our bound, so that the client's queue never refuses what our bound admits.
            "queue.buffering.max.messages": max(100_000, max_buffered + 1),
            "error_cb": self._client_error,
            "logger": log,
        }
        conf.update(producer_config or {})
        self._producer = kafka.producer(self.settings, **conf)
        self._lock = threading.Lock()  # guards the buffers and the counters
        self._send_lock = threading.Lock()  # one sender at a time, so that batches keep their order
        self._wake = threading.Event()
        self._buffers: dict[tuple[str, str, str], _Buffer] = {}
        self._logged = self._sent = self._delivered = self._failed = self._dropped = 0
        self._pending = 0
        self._last_error: str | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="driftline-sdk", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # -- the caller's side: validate, append, return

    def log_prediction(
        self,
        model_id: str,
        model_version: str,
        *,
        features: Mapping[str, Any] | None = None,
        prediction: float | None = None,
        predicted_label: str | None = None,
        latency_ms: float | None = None,
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        event_time: int | None = None,
    ) -> str:
        """Queue one prediction; returns its event id (a new uuid4 unless given), also when it was dropped."""
        if self._full():
            return str(uuid.uuid4()) if event_id is None else event_id
        event = PredictionEvent(
            **_input_fields(model_id, model_version, features, attributes, event_id, event_time),
            prediction=_optional_number(prediction, "prediction"),
            predicted_label=None if predicted_label is None else _text(predicted_label, "predicted_label"),
            latency_ms=_optional_number(latency_ms, "latency_ms"),
        )
        self._append(("predictions", event.model_id, event.model_version), event)
        return event.event_id

    def log_features(
        self,
        model_id: str,
        model_version: str,
        *,
        features: Mapping[str, Any],
        attributes: Mapping[str, str] | None = None,
        event_id: str | None = None,
        event_time: int | None = None,
    ) -> str:
        """Queue model inputs logged without a prediction; returns the event id."""
        if self._full():
            return str(uuid.uuid4()) if event_id is None else event_id
        event = FeatureEvent(**_input_fields(model_id, model_version, features, attributes, event_id, event_time))
        self._append(("features", event.model_id, event.model_version), event)
        return event.event_id

    def log_label(self, model_id: str, event_id: str, label: float | str, event_time: int | None = None) -> None:
        """Queue the ground truth of an earlier prediction (joined by ``event_id``)."""
        if self._full():
            return
        if not isinstance(label, str):
            label = _finite(label, "label")
        event = LabelEvent(_text(event_id, "event_id"), _text(model_id, "model_id"), _event_time(event_time), label)
        self._append(("labels", event.model_id, ""), event)

    def _full(self) -> bool:
        """Count a drop when the bound is reached, before any validation: the cheapest path during an outage."""
        # An unlocked read: a stale value moves the cut-off by a few events at most; _append checks again.
        if self._pending < self.max_buffered and not self._closed:
            return False
        with self._lock:
            self._logged += 1
            self._dropped += 1
        return True

    def _append(self, key: tuple[str, str, str], record: Any) -> None:
        with self._lock:
            self._logged += 1
            if self._closed or self._pending >= self.max_buffered:
                self._dropped += 1
                return
            self._pending += 1
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = _Buffer(time.monotonic())
            buffer.records.append(record)
            full = len(buffer.records) == self.batch_size
        if full:
            self._wake.set()

    # -- the background side: group, encode, produce

    def _run(self) -> None:
        while not self._closed:
            try:
                timeout = self._send_ready(force=False)
                self._producer.poll(0)
            except Exception:  # keep sending: a dead thread would silently turn every event into a drop
                log.exception("driftline SDK sender failed; retrying")
                timeout = self.linger or 0.1
            self._wake.wait(timeout)
            self._wake.clear()

    def _take(self, force: bool) -> tuple[list[tuple[tuple[str, str, str], list]], float]:
        """The buffers due now, and the seconds until the next one is due."""
        now = time.monotonic()
        taken = []
        wait = self.linger
        with self._lock:
            for key, buffer in list(self._buffers.items()):
                due = buffer.started + self.linger
                if force or due <= now:
                    taken.append((key, self._buffers.pop(key).records))
                    continue
                full = len(buffer.records) // self.batch_size * self.batch_size
                if full:
                    # Only whole batches: the rest waits for more events or for its linger.
                    taken.append((key, buffer.records[:full]))
                    del buffer.records[:full]
                    if not buffer.records:
                        del self._buffers[key]
                        continue
                wait = min(wait, due - now)
        return taken, max(wait, 0.001)

    def _send_ready(self, force: bool) -> float:
        with self._send_lock:
            taken, wait = self._take(force)
            for (kind, model_id, _), records in taken:
                for start in range(0, len(records), self.batch_size):
                    self._send(kind, model_id, records[start : start + self.batch_size])
        return wait

    def _send(self, kind: str, model_id: str, records: list) -> None:
        topic = self._topics[kind]
        if self.single_events:
            for record in records:
                self._produce(topic, model_id, self._encode_one(record), 1)
            return
        try:
            value = self._codec.encode(_BATCH_OF[kind].from_events(records))
        except Exception as exc:  # arguments were validated; this is a bug, counted rather than raised in a thread
            self._resolve(len(records), failed=True, error=f"cannot encode a {kind} batch: {exc}")
            log.exception("driftline SDK could not encode a %s batch", kind)
            return
        if len(value) > self.max_message_bytes and len(records) > 1:
            half = len(records) // 2
            self._send(kind, model_id, records[:half])
            self._send(kind, model_id, records[half:])
            return
        self._produce(topic, model_id, value, len(records))

    def _encode_one(self, record: Any) -> bytes | None:
        try:
            return self._codec.encode(record)
        except Exception as exc:
            self._resolve(1, failed=True, error=f"cannot encode {type(record).__name__}: {exc}")
            log.exception("driftline SDK could not encode a %s", type(record).__name__)
            return None

    def _produce(self, topic: str, model_id: str, value: bytes | None, n: int) -> None:
        if value is None:
            return
        try:
            self._producer.produce(topic, value, model_id.encode(), on_delivery=functools.partial(self._on_delivery, n))
        except BufferError:
            self._resolve(n, dropped=True, error="the Kafka client's queue is full")
            return
        except KafkaException as exc:  # e.g. a message larger than message.max.bytes
            self._resolve(n, failed=True, error=str(exc))
            return
        with self._lock:
            self._sent += n

    def _on_delivery(self, n: int, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._resolve(n)
        elif err.code() in _PURGED:
            self._resolve(n, dropped=True, error=str(err))
        else:
            self._resolve(n, failed=True, error=str(err))

    def _resolve(self, n: int, *, failed: bool = False, dropped: bool = False, error: str | None = None) -> None:
        with self._lock:
            self._pending -= n
            if failed:
                self._failed += n
            elif dropped:
                self._dropped += n
            else:
                self._delivered += n
            if error:
                self._last_error = error

    def _client_error(self, err: KafkaError) -> None:
        with self._lock:
            self._last_error = str(err)

    # -- control

    def stats(self) -> LoggerStats:
        with self._lock:
            return LoggerStats(
                self._logged, self._sent, self._delivered, self._failed, self._dropped, self._pending, self._last_error
            )

    def flush(self, timeout: float = 10.0) -> LoggerStats:
        """Send everything buffered and wait up to ``timeout`` seconds for deliveries; returns the stats.

        Returns within about ``timeout`` even when the broker is down (``stats.buffered`` then says what is left).
        """
        deadline = time.monotonic() + timeout
        self._send_ready(force=True)
        self._producer.flush(max(deadline - time.monotonic(), 0))
        return self.stats()

    def close(self, timeout: float = 5.0) -> LoggerStats:
        """Flush for up to ``timeout`` seconds, then stop; what is still unsent counts as dropped."""
        with self._lock:
            already_closed, self._closed = self._closed, True
        if already_closed:
            return self.stats()
        atexit.unregister(self.close)
        self._wake.set()
        self._thread.join(timeout)
        self.flush(timeout)
        self._producer.purge()
        self._producer.poll(0)  # serve the purged messages' reports
        with self._lock:
            if self._pending:
                log.warning("driftline SDK closed with %d undelivered events", self._pending)
                self._dropped += self._pending
                self._pending = 0
        return self.stats()

    def __enter__(self) -> PredictionLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
