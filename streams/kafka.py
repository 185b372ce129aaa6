"""Kafka through confluent-kafka: clients from Settings, topics, publishing, the DLQ and a test/CLI reader.

Topic arguments are full topic names (``settings.topic("predictions")``),
except in :func:`ensure_topics`, which takes the contract's names and adds the
prefix. Message keys are ``model_id`` as UTF-8 (docs/CONTRACTS.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from driftline.redaction import redact
from driftline.settings import TOPIC_NAMES, Settings
from driftline.streams.codec import Codec, DecodeError, Record, default_codec
from driftline.streams.records import ModelEvent
from driftline.streams.supervision import clip, error_detail

log = logging.getLogger(__name__)

DLQ_ERROR_HEADER = "driftline-error"
DLQ_SOURCE_HEADER = "driftline-source-topic"
DLQ_DETAIL_HEADER = "driftline-error-detail"
DLQ_CLASS_HEADER = "driftline-error-class"
# An oversized message is dead-lettered cut short, with what it was: its size and sha256 (and its key's).
DLQ_TRUNCATED_HEADER = "driftline-truncated"
DLQ_SIZE_HEADER = "driftline-original-size"
DLQ_SHA256_HEADER = "driftline-original-sha256"
DLQ_KEY_SIZE_HEADER = "driftline-original-key-size"
DLQ_KEY_SHA256_HEADER = "driftline-original-key-sha256"
_DETAIL_LIMIT = 1000
# What a DLQ message may weigh: under the producer's ``message.max.bytes`` (1,000,000) and the broker's
# default limit (1 MiB), with room for headers. Past it, the value keeps its first DLQ_CUT_BYTES.
DLQ_MAX_BYTES = 900_000
DLQ_CUT_BYTES = 64 * 1024
DLQ_KEY_BYTES = 1024

DeliveryCallback = Callable[[KafkaError | None, Message], None]


def producer(settings: Settings, **conf: Any) -> Producer:
    """A producer for ``settings``; ``conf`` adds or overrides librdkafka settings.

    Keys are librdkafka's dotted names, so pass them as ``**{"linger.ms": 5}``;
    Python callbacks such as ``error_cb`` or ``logger`` pass as they are.

    >>> p = producer(Settings(kafka_bootstrap="127.0.0.1:1"), **{"linger.ms": 5})
    >>> type(p).__name__  # creating it never waits for a broker
    'Producer'
    """
    return Producer({**settings.kafka_config(), **conf})


def consumer(settings: Settings, group_id: str, **conf: Any) -> Consumer:
    """A consumer in ``group_id``; a group without committed offsets starts from the earliest message."""
    return Consumer({**settings.kafka_config(), "group.id": group_id, "auto.offset.reset": "earliest", **conf})


def ensure_topics(
    settings: Settings,
    names: Iterable[str] = TOPIC_NAMES,
    *,
    partitions: int | Mapping[str, int] = 1,
    replication: int = 1,
    timeout: float = 30.0,
) -> list[str]:
    """Create the prefixed topics that do not exist yet; returns the full names it created.

    Idempotent: a topic that already exists is left as it is (its partition count included).
    ``partitions`` is one count for all, or a count per contract name (default 1).
    """
    topics = []
    for name in names:
        count = partitions.get(name, 1) if isinstance(partitions, Mapping) else partitions
        topics.append(NewTopic(settings.topic(name), num_partitions=count, replication_factor=replication))
    if not topics:
        return []
    admin = AdminClient(settings.kafka_config())
    futures = admin.create_topics(topics, operation_timeout=timeout, request_timeout=timeout)
    created = []
    for topic, future in futures.items():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if (
                exc.args
                and isinstance(exc.args[0], KafkaError)
                and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS
            ):
                continue
            raise
        created.append(topic)
    return sorted(created)


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def produce(
    producer: Producer,
    topic: str,
    value: bytes,
    key: str | bytes | None,
    *,
    headers: list[tuple[str, bytes]] | None = None,
    on_delivery: DeliveryCallback | None = None,
    wait_when_full: float = 1.0,
) -> None:
    """``producer.produce``; when the client's queue is full, serve delivery reports for up to
    ``wait_when_full`` seconds and try once more (raising BufferError if it is still full)."""
    kwargs: dict[str, Any] = {"key": _key_bytes(key), "value": value}
    if headers:
        kwargs["headers"] = headers
    if on_delivery is not None:
        kwargs["on_delivery"] = on_delivery
    try:
        producer.produce(topic, **kwargs)
    except BufferError:
        producer.poll(wait_when_full)
        producer.produce(topic, **kwargs)
    producer.poll(0)


def publish(
    producer: Producer,
    topic: str,
    key: str,
    record: Record,
    *,
    codec: Codec | None = None,
    on_delivery: DeliveryCallback | None = None,
) -> bytes:
    """Encode ``record`` (single-object Avro) and produce it with ``key`` (a model id); returns the bytes sent."""
    value = (codec or default_codec()).encode(record)
    produce(producer, topic, value, key, on_delivery=on_delivery)
    return value


class DeliveryError(RuntimeError):
    """Records that :func:`publish_confirmed` could not get delivered: the broker's errors, or a timeout.

    >>> str(DeliveryError([], 2, 30.0)), str(DeliveryError(["Broker: Message too large"], 1, 30.0))
    ('2 undelivered after 30 s', 'Broker: Message too large')
    """

    def __init__(self, errors: list[str], undelivered: int, timeout: float) -> None:
        super().__init__("; ".join(errors) or f"{undelivered} undelivered after {timeout:g} s")
        self.errors = errors
        self.undelivered = undelivered


def publish_confirmed(
    producer: Producer,
    topic: str,
    keyed: Iterable[tuple[str, Record]],
    *,
    codec: Codec | None = None,
    timeout: float,
) -> None:
    """:func:`publish` each ``(key, record)``, then wait up to ``timeout`` seconds until every one is
    delivered; raises :class:`DeliveryError` when one failed or is still undelivered."""
    errors: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    for key, record in keyed:
        publish(producer, topic, key, record, codec=codec, on_delivery=delivered)
    left = producer.flush(timeout)
    if left or errors:
        raise DeliveryError(errors, left, timeout)


def send_to_dlq(
    producer: Producer,
    settings: Settings,
    raw: bytes,
    key: str | bytes | None,
    error: DecodeError | str,
    source_topic: str,
    *,
    on_delivery: DeliveryCallback | None = None,
    error_class: str = "",
    max_bytes: int = DLQ_MAX_BYTES,
) -> None:
    """Put a rejected message on the DLQ topic, its bytes and key unchanged when they fit.

    Headers: ``driftline-error`` (the reason code), ``driftline-source-topic``
    (the full topic it was read from) and, for a DecodeError,
    ``driftline-error-detail`` (its message, cut to 1,000 characters, redacted);
    ``driftline-error-class`` the exception's class when handling raised (reason ``internal_error``).
    A message over ``max_bytes`` would be refused by the broker: its value keeps its first
    64 KiB (its key, 1 KiB), and ``driftline-truncated`` (``value``, ``key`` or ``key,value``),
    ``driftline-original-size``/``-sha256`` (and ``-key-size``/``-key-sha256``) say what it was.
    """
    reason = error.reason if isinstance(error, DecodeError) else str(error)
    headers = [(DLQ_ERROR_HEADER, reason.encode()), (DLQ_SOURCE_HEADER, source_topic.encode())]
    if isinstance(error, DecodeError):
        headers.append((DLQ_DETAIL_HEADER, redact(error.message[:_DETAIL_LIMIT]).encode()))
    if error_class:
        headers.append((DLQ_CLASS_HEADER, error_class[:200].encode()))
    key_bytes = _key_bytes(key)
    if len(raw) + len(key_bytes or b"") > max_bytes:
        cut = []
        if key_bytes is not None:
            key_bytes, about = clip(key_bytes, DLQ_KEY_BYTES)
            if about:
                cut.append("key")
                headers += [
                    (DLQ_KEY_SIZE_HEADER, about["size"].encode()),
                    (DLQ_KEY_SHA256_HEADER, about["sha256"].encode()),
                ]
        raw, about = clip(raw, min(DLQ_CUT_BYTES, max_bytes))
        if about:
            cut.append("value")
            headers += [(DLQ_SIZE_HEADER, about["size"].encode()), (DLQ_SHA256_HEADER, about["sha256"].encode())]
        headers.append((DLQ_TRUNCATED_HEADER, ",".join(cut).encode()))
    produce(producer, settings.topic("dlq"), raw, key_bytes, headers=headers, on_delivery=on_delivery)


@dataclass
class Received:
    """One consumed message, decoded when it could be (else ``error`` says why)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    record: Record | None = None
    error: DecodeError | None = None


def consume_records(
    settings: Settings,
    topics: str | Sequence[str],
    n: int,
    *,
    timeout: float = 30.0,
    codec: Codec | None = None,
    decode: bool = True,
) -> list[Received]:
    """Read up to ``n`` messages of ``topics`` from their earliest offsets, waiting at most ``timeout`` seconds.

    For tests and the CLI: it assigns every partition directly (no group
    rebalance to wait for) and commits nothing. Topics that do not exist yet
    are waited for. It returns what arrived in time, possibly fewer than ``n``;
    the order is the log order within each partition.
    """
    codec = codec or default_codec()
    names = [topics] if isinstance(topics, str) else list(topics)
    deadline = time.monotonic() + timeout
    client = consumer(settings, f"driftline-read-{uuid.uuid4().hex[:12]}", **{"enable.auto.commit": False})
    received: list[Received] = []
    try:
        client.assign(_all_partitions(client, names, deadline))
        while len(received) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msg = client.poll(min(0.5, remaining))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaException(err)
            value = msg.value() or b""
            item = Received(
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                timestamp_ms=msg.timestamp()[1],
                key=msg.key(),
                value=value,
                headers={k: v for k, v in (msg.headers() or [])},
            )
            if decode:
                try:
                    item.record = codec.decode(value)
                except DecodeError as exc:
                    item.error = exc
            received.append(item)
    finally:
        client.close()
    return received


def _all_partitions(client: Consumer, topics: list[str], deadline: float) -> list[TopicPartition]:
    """Every partition of ``topics`` at its beginning, once the broker knows them all."""
    while True:
        partitions, missing = [], []
        for topic in topics:
            meta = client.list_topics(topic, timeout=max(0.1, min(5.0, deadline - time.monotonic()))).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                missing.append(topic)
                continue
            partitions += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(meta.partitions)]
        if not missing:
            return partitions
        if time.monotonic() >= deadline:
            raise KafkaException(
                KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART, f"topics not found: {', '.join(missing)}")
            )
        time.sleep(0.1)


def follow_model_events(
    consumer: Consumer,
    stop: threading.Event,
    on_event: Callable[[ModelEvent], None],
    *,
    codec: Codec | None = None,
    poll_seconds: float = 0.5,
    on_poison: Callable[[Message, Exception], None] | None = None,
) -> None:
    """Hand every ``ModelEvent`` that an assigned ``models`` consumer reads to ``on_event``, until ``stop``.

    Undecodable messages are logged and skipped: an event nobody can read must
    not stop a worker from re-baselining, or a service from switching, on the next.
    Any other exception while decoding or handling one message is that message's
    alone: it goes to ``on_poison`` (else it is logged) and the next one is read.
    """
    codec = codec or default_codec()
    while not stop.is_set():
        msg = consumer.poll(poll_seconds)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("models topic: %s", msg.error())
            continue
        try:
            event = codec.decode(msg.value() or b"", topic="models")
            if isinstance(event, ModelEvent):
                on_event(event)
        except DecodeError as exc:
            log.warning("ignoring an undecodable models event: %s", exc)
        except Exception as exc:
            if on_poison is not None:
                on_poison(msg, exc)
            else:
                log.error(
                    "models event %s[%d]@%d skipped: %s: %s",
                    msg.topic(),
                    msg.partition(),
                    msg.offset(),
                    *error_detail(exc),
                )
