"""The worker's batch consumer against a real broker: polls, offsets committed only when acknowledged,
and rebalances that neither skip nor keep stale messages."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.batch_consumer import BatchConsumer, contract_topics
from driftline.streams.messages import Incoming, Messages

pytestmark = [pytest.mark.kafka]

TOPICS = ("predictions", "features", "labels")


def _produce(settings: Settings, topic: str, count: int, partitions: int, start: int = 0) -> None:
    producer = kafka.producer(settings)
    for i in range(start, start + count):
        producer.produce(settings.topic(topic), key=b"m", value=f"{topic}-{i}".encode(), partition=i % partitions)
    assert producer.flush(30) == 0


def _produce_100kb(settings: Settings, count: int) -> None:
    producer = kafka.producer(settings)
    for i in range(count):
        producer.produce(settings.topic("predictions"), value=bytes([i]) * 100_000)
    assert producer.flush(30) == 0


def _polls(consumer: BatchConsumer, want: int, timeout: float) -> list[tuple[int, bool, float]]:
    """(messages, backlog, seconds) of each non-empty poll until ``want`` messages came."""
    polls: list[tuple[int, bool, float]] = []
    deadline = time.monotonic() + 60
    while sum(count for count, _, _ in polls) < want and time.monotonic() < deadline:
        started = time.monotonic()
        poll = consumer.poll(timeout)
        if poll.count:
            polls.append((poll.count, poll.backlog, time.monotonic() - started))
    return polls


def _committed(settings: Settings, group: str, topic: str, partitions: int) -> dict[int, int]:
    probe = Consumer({**settings.kafka_config(), "group.id": group})
    try:
        tps = probe.committed([TopicPartition(settings.topic(topic), p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        probe.close()


def _each(messages: Messages | None) -> list[Incoming]:
    """A poll's columns of one topic, message by message (each with its Offset as token)."""
    return [] if messages is None else [messages[i] for i in range(len(messages))]


def _poll_until(consumer: BatchConsumer, want: int, timeout: float = 30) -> list[Incoming]:
    got: list[Incoming] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        poll = consumer.poll(0.5)
        got += [m for messages in poll.by_topic.values() for m in _each(messages)]
    return got


def test_polls_batches_by_topic_and_commits_only_what_was_acknowledged(kafka_settings: Settings, unique: str) -> None:
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=2)
    _produce(kafka_settings, "predictions", 300, 2)
    _produce(kafka_settings, "labels", 10, 2)
    group = f"g-{unique}"
    consumer = BatchConsumer(kafka_settings, group, contract_topics(kafka_settings, TOPICS), max_messages=1000)
    try:
        got = _poll_until(consumer, 310)
        assert len(got) == 310
        assert {m.topic for m in got} == {"predictions", "labels"}
        values = {m.value.decode() for m in got}
        assert values == {f"predictions-{i}" for i in range(300)} | {f"labels-{i}" for i in range(10)}
        for m in got:
            assert m.full_topic == kafka_settings.topic(m.topic)
            assert (m.token.topic, m.token.partition, m.token.offset) == (m.full_topic, m.partition, m.offset)
        # acknowledge the predictions of partition 0 up to offset 41 only, and no label at all
        done = [m.token for m in got if m.topic == "predictions" and m.partition == 0 and m.offset <= 41]
        assert consumer.ack(done) == 1
    finally:
        consumer.close()
    assert _committed(kafka_settings, group, "predictions", 2) == {0: 42, 1: -1001}
    assert _committed(kafka_settings, group, "labels", 2) == {0: -1001, 1: -1001}

    # the next member of the group starts where the acknowledged messages end
    again = BatchConsumer(kafka_settings, group, contract_topics(kafka_settings, TOPICS), max_messages=1000)
    try:
        rest = _poll_until(again, 310 - 42)
    finally:
        again.close()
    assert len(rest) == 310 - 42
    assert not [m for m in rest if m.topic == "predictions" and m.partition == 0 and m.offset < 42]


def test_ack_does_not_wait_for_a_poll_on_another_thread(kafka_settings: Settings, unique: str) -> None:
    # The worker acknowledges on its event loop while the fetch thread waits in a poll; librdkafka's
    # store_offsets would wait for that poll to return, and stall the loop for up to its timeout.
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=1)
    _produce(kafka_settings, "predictions", 20, 1)
    group = f"g-{unique}"
    consumer = BatchConsumer(kafka_settings, group, contract_topics(kafka_settings, TOPICS), max_messages=1000)
    try:
        got = _poll_until(consumer, 20)
        assert len(got) == 20
        waiting = threading.Thread(target=consumer.poll, args=(8.0,))  # nothing more arrives: it waits 8 s
        waiting.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert consumer.ack([m.token for m in got if m.offset < 5]) == 1
        took = time.monotonic() - started
        waiting.join()
        assert took < 4.0, f"ack waited {took:.1f} s for the poll on the other thread"
        consumer.poll(0.1)  # the fetch thread stores what was acknowledged before it polls
        time.sleep(1.5)  # librdkafka commits stored offsets every second
        assert _committed(kafka_settings, group, "predictions", 1) == {0: 5}
    finally:
        consumer.close()
    assert _committed(kafka_settings, group, "predictions", 1) == {0: 5}


def test_a_poll_is_bounded_by_bytes(kafka_settings: Settings, unique: str) -> None:
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=1)
    _produce_100kb(kafka_settings, 40)
    consumer = BatchConsumer(
        kafka_settings, f"g-{unique}", contract_topics(kafka_settings, TOPICS), max_messages=1000, max_bytes=500_000
    )
    try:
        sizes = [count for count, _, _ in _polls(consumer, 40, 0.5)]
    finally:
        consumer.close()
    assert sum(sizes) == 40
    # the first poll takes one message to learn the size; every later one about 500 kB: 5 of 100 kB
    assert sizes[0] == 1 and max(sizes) == 5, sizes


def test_the_end_of_a_backlog_is_polled_without_waiting_out_the_timeout(kafka_settings: Settings, unique: str) -> None:
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=1)
    _produce_100kb(kafka_settings, 30)
    consumer = BatchConsumer(
        kafka_settings, f"g-{unique}", contract_topics(kafka_settings, TOPICS), max_messages=1000, max_bytes=2_000_000
    )
    try:
        polls = _polls(consumer, 30, 6.0)
    finally:
        consumer.close()
    # one message to learn the size, 20 (2 MB), then the 9 left: asked for as such, so the poll
    # returns once they are here, and is not a backlog (what it fed is written at once)
    assert [(count, backlog) for count, backlog, _ in polls] == [(1, True), (20, True), (9, False)], polls
    assert polls[-1][2] < 3.0, f"the last poll waited {polls[-1][2]:.1f} s for messages that were never produced"


def test_a_rebalance_drops_state_and_every_message_is_delivered_after_its_last_acknowledgement(
    kafka_settings: Settings, unique: str
) -> None:
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=4)
    _produce(kafka_settings, "predictions", 400, 4)
    group = f"g-{unique}"
    revoked: list[int] = []
    first = BatchConsumer(
        kafka_settings,
        group,
        contract_topics(kafka_settings, TOPICS),
        max_messages=50,
        on_revoked=lambda partitions: revoked.append(len(partitions)),
        session_timeout_seconds=10,
    )
    second = None
    try:
        seen = _poll_until(first, 100)
        generation = first.generation
        # acknowledge only what was seen of the first 10 messages of each partition
        acked = [m.token for m in seen if m.offset < 10]
        first.ack(acked)
        start = {p: 1 + max((t.offset for t in acked if t.partition == p), default=-1) for p in range(4)}
        second = BatchConsumer(
            kafka_settings, group, contract_topics(kafka_settings, TOPICS), max_messages=50, session_timeout_seconds=10
        )
        # both members must poll for the group to rebalance; what a member polled in an older
        # generation is stale (the worker discards it), so only the current generation's polls count
        polls: dict[str, list[tuple[int, list[Incoming]]]] = {"first": [], "second": []}
        members = {"first": first, "second": second}

        def current() -> dict[str, list[Incoming]]:
            return {name: [m for g, ms in polls[name] if g == members[name].generation for m in ms] for name in polls}

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sum(map(len, current().values())) < 400 - sum(start.values()):
            for name, member in members.items():
                poll = member.poll(0.2)
                polls[name].append((poll.generation, _each(poll.by_topic.get("predictions"))))
        after = current()
        assert revoked, "the first member saw no revocation"
        assert first.generation > generation
        assert after["second"], "the second member got no partition"
        # every partition restarts after its last acknowledged offset in the new generation, and the
        # messages after a rebalance cover the rest exactly once, by the member that owns the partition
        firsts: dict[int, int] = {}
        for m in after["first"] + after["second"]:
            firsts[m.partition] = min(firsts.get(m.partition, m.offset), m.offset)
        assert firsts == start
        owners = {p: {n for n, ms in after.items() for m in ms if m.partition == p} for p in range(4)}
        assert all(len(o) == 1 for o in owners.values()), owners
        offsets = sorted((m.partition, m.offset) for ms in after.values() for m in ms)
        assert offsets == sorted((p, o) for p in range(4) for o in range(start[p], 100))
    finally:
        first.close()
        if second is not None:
            second.close()


def test_replay_delivers_again_everything_after_the_last_acknowledgement(kafka_settings: Settings, unique: str) -> None:
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=1)
    _produce(kafka_settings, "predictions", 100, 1)
    group = f"g-{unique}"
    consumer = BatchConsumer(kafka_settings, group, contract_topics(kafka_settings, TOPICS), max_messages=1000)
    try:
        got = _poll_until(consumer, 100)
        assert [m.offset for m in got] == list(range(100))
        generation = consumer.generation
        consumer.ack([m.token for m in got[:30]])
        consumer.replay()  # from the service thread: what was polled is stale at once
        assert consumer.generation == generation + 1
        again = _poll_until(consumer, 70)
        assert [m.offset for m in again] == list(range(30, 100))
        assert _committed(kafka_settings, group, "predictions", 1) == {0: 30}
    finally:
        consumer.close()


def test_a_paused_consumer_keeps_polling_returns_nothing_and_resumes_where_it_was(
    kafka_settings: Settings, unique: str
) -> None:
    kafka.ensure_topics(kafka_settings, TOPICS, partitions=1)
    _produce(kafka_settings, "predictions", 50, 1)
    consumer = BatchConsumer(kafka_settings, f"g-{unique}", contract_topics(kafka_settings, TOPICS), max_messages=20)
    try:
        first = _poll_until(consumer, 1)
        consumer.pause(True)
        _produce(kafka_settings, "predictions", 50, 1, start=50)
        held = []
        for _ in range(6):
            held += [m for ms in consumer.poll(0.5).by_topic.values() for m in _each(ms)]
        consumer.pause(False)
        rest = _poll_until(consumer, 100 - len(first) - len(held))
        offsets = [m.offset for m in first + held + rest]
        assert offsets == list(range(100))  # nothing skipped, nothing twice, whatever the pause held back
        assert len(held) <= 20  # at most what was already on its way when the pause began
    finally:
        consumer.close()
