"""The worker's input topics, consumed in batches: one consumer-group member, many messages per call.

Faust hands its agents one message at a time, at about 65 µs of Python per
message on the event loop (docs/PERFORMANCE.md). A single ``PredictionEvent``
is a message, so that path topped out near 7k events/s. Here
confluent-kafka's ``consume(num_messages=...)`` fetches in librdkafka's
threads, outside the GIL, and returns a whole list of messages per call.

Offsets: nothing is committed on its own. :meth:`BatchConsumer.ack` stores
``offset + 1`` of a released message, and librdkafka commits stored offsets
every second, on a revocation and on :meth:`BatchConsumer.close`. The worker
acknowledges a message only when every window it contributed to is written,
so a commit never gets ahead of ClickHouse.

Rebalances: a revocation calls ``on_revoked`` (the worker drops its state)
before the partitions go, and starts a new *generation*. Messages polled in
an older generation are stale: the caller discards them, and Kafka delivers
them again from the committed offsets. A poll during which the assignment
changed is discarded whole, and every assigned partition is sought back to
its committed offset, so nothing read in that call is skipped.

The input topics must have equal partition counts (``check_copartitioned``):
the ``range`` assignor then gives partition *n* of each topic to one member,
so a model's predictions and features meet in one worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from driftline.settings import Settings
from driftline.streams.messages import Messages, Offset

log = logging.getLogger("driftline.worker")


@dataclass
class Poll:
    """The messages of one ``consume`` call, by contract topic (as columns), tagged with the generation
    they belong to.

    >>> Poll(generation=2).count
    0
    """

    generation: int
    by_topic: dict[str, Messages] = field(default_factory=dict)
    backlog: bool = False  # the poll took a full poll's worth (PollSizer.next): more are probably waiting

    @property
    def count(self) -> int:
        return sum(len(m) for m in self.by_topic.values())


class PollSizer:
    """How many messages the next poll may take: at most ``max_messages``, and about ``max_bytes``.

    A poll's messages are held until the worker releases them, so a poll is
    bounded by bytes as well as by count: 1,000 single events are ~0.3 MB,
    1,000 batches of 1,000 events ~200 MB. The first poll takes one message,
    to learn the size; then the average size of each poll's messages sets
    the next one's count.

    >>> sizer = PollSizer(max_messages=1000, max_bytes=1_000_000)
    >>> sizer.next
    1
    >>> sizer.observe(messages=1, size=300)          # single events
    >>> sizer.next
    1000
    >>> sizer.observe(messages=10, size=2_000_000)   # 200 kB each
    >>> sizer.next
    5
    >>> sizer.observe(messages=5, size=1_500)        # small messages again
    >>> sizer.next
    1000
    """

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("a poll must be allowed at least one message and one byte")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.next = 1

    def observe(self, messages: int, size: int) -> None:
        if messages:
            average = max(size / messages, 1.0)
            self.next = max(1, min(self.max_messages, int(self.max_bytes / average)))


class BatchConsumer:
    """A consumer-group member on the worker's input topics that polls whole lists of messages.

    ``poll`` (and so the rebalance callbacks) runs on one thread, the fetch
    thread; ``ack`` and ``lag`` may be called from any thread. ``ack`` only
    notes the offsets: the fetch thread stores them before its next poll, on a
    revocation and on close, because librdkafka's ``store_offsets`` waits for a
    ``consume`` running on another thread to return (up to its timeout), and
    the worker acknowledges on its event loop. It needs a broker, so it is
    exercised by tests/integration/test_*consumer*.py and test_worker*.py
    rather than by an example here.
    """

    def __init__(
        self,
        settings: Settings,
        group_id: str,
        topics: Mapping[str, str],
        *,
        max_messages: int = 1000,
        max_bytes: int = 16 * 1024 * 1024,
        on_revoked: Callable[[list[TopicPartition]], None] | None = None,
        session_timeout_seconds: float = 30.0,
        conf: Mapping[str, Any] | None = None,
    ) -> None:
        self.topics = dict(topics)  # contract name -> full name
        self._contract = {full: name for name, full in self.topics.items()}
        self.sizer = PollSizer(max_messages, max_bytes)
        self._on_revoked = on_revoked
        self._lock = threading.Lock()
        self._generation = 0
        self._assigned: set[tuple[str, int]] = set()
        self._lag: dict[tuple[str, int], int] = {}
        self._acked: dict[tuple[str, int], int] = {}  # next offset to commit, noted by ack, not yet stored
        self._paused = False
        self._rewind_pending = False  # a rewind is due before the next consume (see replay)
        # Set when librdkafka reports that it lost the brokers, cleared by a message or a probe (see reachable)
        self._unreachable = False
        self._probed = 0.0  # monotonic time of the last probe while unreachable
        session_ms = int(session_timeout_seconds * 1000)
        self._consumer = Consumer(
            {
                **settings.kafka_config(),
                "group.id": group_id,
                # a new group reads from the beginning: events produced before the worker started count
                "auto.offset.reset": "earliest",
                "enable.auto.commit": True,
                "enable.auto.offset.store": False,
                "auto.commit.interval.ms": 1000,
                # partition n of every input topic to one member (co-partitioned topics)
                "partition.assignment.strategy": "range",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(session_ms // 10, 500),
                "max.poll.interval.ms": max(300_000, session_ms),
                # librdkafka prefetches up to 64 MiB by default; the worker's memory is bounded by its polls
                "queued.max.messages.kbytes": max(1024, 2 * max_bytes // 1024),
                # and by count: 100,000 a partition by default, so a backlog of small messages (single
                # labels) was fetched whole at once, in librdkafka's malloc arenas, which keep it once freed
                "queued.min.messages": max(2 * max_messages, 1000),
                # 1 MiB per partition and fetch (the default) is 5 batches of 1,000 events a round trip
                "max.partition.fetch.bytes": max(1024 * 1024, max_bytes // 2),
                "fetch.wait.max.ms": 100,
                # Once the queue above is full, librdkafka waits this long before it fetches again (1 s by
                # default), so a poll that has just emptied it waited out its timeout for a few messages.
                "fetch.queue.backoff.ms": 20,
                # called from consume, on the fetch thread
                "error_cb": self._on_error,
                **(conf or {}),
            }
        )
        self._consumer.subscribe(
            list(self.topics.values()), on_assign=self._assign, on_revoke=self._revoke, on_lost=self._lose
        )

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def reachable(self) -> bool:
        """False from the moment librdkafka reports the brokers lost until a poll returns a message or a
        probe (at most one a second, only while unreachable) reaches the broker again. Empty polls then
        mean nothing about the stream: the caller must not count them as silence. Any thread."""
        return not self._unreachable

    def _on_error(self, error: KafkaError) -> None:
        # librdkafka reports a lost connection as _TRANSPORT and the loss of every broker as
        # _ALL_BROKERS_DOWN; it reports no recovery, so poll clears the mark (see _probe)
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if not self._unreachable:
                log.warning("kafka unreachable: %s", error)
            self._unreachable = True
            self._probed = time.monotonic()
        else:
            log.warning("kafka: %s", error)

    def _probe(self, timeout: float) -> None:
        """While unreachable, ask the broker for the input topics' metadata at most once a second."""
        now = time.monotonic()
        if now - self._probed < 1.0:
            return
        self._probed = now
        topic = next(iter(self.topics.values()))
        try:
            self._consumer.list_topics(topic, timeout=max(min(timeout, 0.5), 0.05))
        except KafkaException:
            return
        self._unreachable = False
        log.info("kafka reachable again")

    def _assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._generation += 1
            self._assigned = {(tp.topic, tp.partition) for tp in partitions}
            self._lag = {}
        log.info(
            "assigned %d partition(s), generation %d",
            len(partitions),
            self._generation,
            extra={
                "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in partitions),
                "generation": self._generation,
            },
        )

    def _revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # still ours until this returns: librdkafka commits what is stored as the partitions go
        self._store_acked()
        self._lose(consumer, partitions)

    def _lose(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._acked = {}
            self._generation += 1
            self._assigned = set()
            self._lag = {}
        log.info(
            "revoked %d partition(s)",
            len(partitions),
            extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)},
        )
        if self._on_revoked is not None:
            self._on_revoked(partitions)

    def pause(self, paused: bool) -> None:
        """Stop (or start again) fetching every assigned partition; polls go on, so the member stays
        in its group, and return nothing while paused. Fetch thread only.

        Resuming fetches from the position after the last message returned, so nothing is skipped.
        """
        self._paused = paused
        assignment = self._consumer.assignment()
        if assignment:
            (self._consumer.pause if paused else self._consumer.resume)(assignment)

    def replay(self) -> None:
        """Drop everything polled so far that is not acknowledged: a new generation starts, and the
        next poll starts every assigned partition again after its last acknowledged message. Any thread."""
        with self._lock:
            self._generation += 1
            self._rewind_pending = True

    def poll(self, timeout: float) -> Poll:
        """The messages that arrive within ``timeout`` seconds (at most ``sizer.next``); fetch thread only.

        Raises KafkaException when a rewind that is due cannot reach the broker; it is tried
        again by the next poll, and nothing is consumed before it is done.
        """
        self._store_acked()
        if self._rewind_pending:
            self._commit_stored()
            self._rewind()
        if self._paused:
            # partitions assigned since the pause started are paused too
            assignment = self._consumer.assignment()
            if assignment:
                self._consumer.pause(assignment)
        before = self._generation
        full = self.sizer.next
        behind = self._behind()
        # At the end of a backlog, ask for what is left: consume then returns as soon as it is here,
        # instead of waiting out the timeout for a full poll's worth that was never produced.
        asked = behind if behind is not None and 0 < behind < full else full
        messages = self._consumer.consume(num_messages=asked, timeout=timeout)
        if self._unreachable:
            if any(m.error() is None for m in messages):
                self._unreachable = False
                log.info("kafka reachable again")
            else:
                self._probe(timeout)
        poll = Poll(self._generation, backlog=len(messages) >= full)
        if self._generation != before:
            # The assignment changed during the call, so some of these messages may come from before it:
            # drop them all, and start every assigned partition again from its committed offset.
            self._rewind_pending = True
            self._rewind()
            return poll
        size = 0
        highest: dict[tuple[str, int], int] = {}
        for full, columns in self._columns(messages).items():
            poll.by_topic[columns.topic] = columns
            size += sum(map(len, columns.values))
            # offsets increase per partition within a poll: the last one seen is the highest
            last = dict(zip(columns.partitions.tolist(), columns.offsets.tolist()))
            highest.update({(full, p): o for p, o in last.items()})
        self.sizer.observe(poll.count, size)
        self._update_lag(highest)
        return poll

    def _columns(self, messages: list[Message]) -> dict[str, Messages]:
        """A poll's messages as columns per full topic name, read with one C-level pass per field (no
        Python code runs per message, unless one is an error or has no value)."""
        errors = list(map(Message.error, messages))
        if errors.count(None) != len(errors):
            for err in errors:
                if err is not None and err.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka: %s", err)
            messages = [msg for msg, err in zip(messages, errors) if err is None]
        if not messages:
            return {}
        names = list(map(Message.topic, messages))
        distinct = list(dict.fromkeys(names))
        if len(distinct) == 1:
            by_full = {distinct[0]: messages}
        else:
            codes = np.fromiter(map(distinct.index, names), dtype=np.int64, count=len(names))
            by_full = {
                full: list(map(messages.__getitem__, np.flatnonzero(codes == c).tolist()))
                for c, full in enumerate(distinct)
            }
        out = {}
        for full, msgs in by_full.items():
            n = len(msgs)
            values = list(map(Message.value, msgs))
            if None in values:  # a tombstone: no bytes, which the codec refuses with a reason
                values = [b"" if v is None else v for v in values]
            out[full] = Messages(
                self._contract[full],
                full,
                np.fromiter(map(Message.partition, msgs), dtype=np.int64, count=n),
                np.fromiter(map(Message.offset, msgs), dtype=np.int64, count=n),
                list(map(Message.key, msgs)),
                values,
            )
        return out

    def _rewind(self) -> None:
        assignment = self._consumer.assignment()
        if assignment:
            for tp in self._consumer.committed(assignment, timeout=30):
                # no committed offset yet: a new group starts from the earliest message
                start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, start))
        self._rewind_pending = False

    def _commit_stored(self) -> None:
        # the acknowledged offsets, committed now: a rewind must start after them, not at the last auto-commit
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if not (exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError._NO_OFFSET):
                raise

    def _update_lag(self, highest: Mapping[tuple[str, int], int]) -> None:
        for (topic, partition), offset in highest.items():
            try:
                _, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                with self._lock:
                    self._lag[(topic, partition)] = max(high - offset - 1, 0)

    def _behind(self) -> int | None:
        """Messages known to wait in the assigned partitions; None if a partition's count is not known."""
        with self._lock:
            assigned, lag = list(self._assigned), dict(self._lag)
        total = 0
        for topic, partition in assigned:
            if (topic, partition) in lag:
                total += lag[(topic, partition)]
                continue
            # not polled from yet: known only if it is empty
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            except KafkaException:
                return None
            if high < 0 or high != low:
                return None
        return total

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the high watermark, per assigned partition, as of each partition's last poll."""
        with self._lock:
            return dict(self._lag)

    def ack(self, offsets: Iterable[Offset]) -> int:
        """Let librdkafka commit past these messages (the highest per partition counts); returns partitions noted.

        The offsets are stored by the fetch thread before its next poll (see the class). A partition
        this member no longer owns is skipped: its new owner starts from the last committed offset,
        which the released messages never went beyond.
        """
        highest: dict[tuple[str, int], int] = {}
        for o in offsets:
            key = (o.topic, o.partition)
            if o.next > highest.get(key, -1):
                highest[key] = o.next
        with self._lock:
            owned = {key: n for key, n in highest.items() if key in self._assigned}
            for key, n in owned.items():
                if n > self._acked.get(key, -1):
                    self._acked[key] = n
        return len(owned)

    def _store_acked(self) -> None:
        with self._lock:
            acked, self._acked = self._acked, {}
            owned = [TopicPartition(t, p, n) for (t, p), n in acked.items() if (t, p) in self._assigned]
        if not owned:
            return
        try:
            self._consumer.store_offsets(offsets=owned)
        except KafkaException as exc:
            # a revocation raced with the release: the partition's next owner replays from the last commit
            log.info("offsets not stored (%s); they will be replayed", exc.args[0] if exc.args else exc)

    def close(self) -> None:
        """Commit what was acknowledged and leave the group (call it from the fetch thread, after the last poll)."""
        self._store_acked()
        self._consumer.close()


def contract_topics(settings: Settings, names: Sequence[str]) -> dict[str, str]:
    """Contract names to this deployment's full topic names.

    >>> contract_topics(Settings(topic_prefix="prod."), ["predictions"])
    {'predictions': 'prod.predictions'}
    """
    return {name: settings.topic(name) for name in names}
