"""Every contract record through a real Kafka topic, JSON input, and the DLQ."""

from __future__ import annotations

import json

import numpy as np
from confluent_kafka.admin import AdminClient

from driftline.settings import TOPIC_NAMES, Settings
from driftline.streams.codec import TOPIC_RECORDS, Codec, DecodeError
from driftline.streams.kafka import consume_records, ensure_topics, produce, producer, publish, send_to_dlq
from driftline.streams.records import (
    Alert,
    DriftReport,
    Evidence,
    FeatureBatch,
    FeatureDrift,
    FeatureEvent,
    LabelEvent,
    ModelEvent,
    PredictionBatch,
    PredictionEvent,
    RetrainRequest,
)

T0 = 1_700_000_000_123


def _records() -> list:
    events = [
        PredictionEvent(
            f"e{i}",
            "credit",
            "3",
            T0 + i,
            numeric={"age": 40.0 + i, "income": float(i) * 1e5},
            categorical={"region": "eu" if i % 2 else "us"},
            prediction=i / 10,
            predicted_label="approve" if i % 2 else None,
            latency_ms=1.5 * i,
            attributes={"channel": "web"},
        )
        for i in range(5)
    ]
    return [
        events[0],
        PredictionBatch.from_events(events),
        FeatureEvent("f1", "credit", "3", T0, numeric={"age": 3.0}, categorical={"c": "x"}),
        FeatureBatch.from_events(
            [
                FeatureEvent("f1", "credit", "3", T0, numeric={"age": 3.0}),
                FeatureEvent("f2", "credit", "3", T0 + 1, categorical={"c": "y"}),
            ]
        ),
        LabelEvent("e1", "credit", 2**63 - 1, 1.0),
        LabelEvent("e2", "credit", -1, "approve"),
        RetrainRequest(
            "r1", "credit", "3", "performance", T0, [Evidence("auc", "__prediction__", 0.6, 0.7, T0 - 10, T0)]
        ),
        ModelEvent("rolled_back", "credit", "3", T0, alias="champion"),
        DriftReport(
            "credit",
            "3",
            T0 - 3_600_000,
            T0,
            10,
            20,
            [],
            [FeatureDrift("age", "wasserstein", 0.1, None, 0.5, False)],
            T0,
        ),
        Alert("a1", "credit", "3", "critical", "drift", "psi 0.4 on age", T0, T0 - 3_600_000, T0),
    ]


def _topic_of(record) -> str:
    return next(topic for topic, names in TOPIC_RECORDS.items() if type(record).__name__ in names)


def _assert_same(decoded, original, codec: Codec) -> None:
    assert type(decoded) is type(original)
    if isinstance(original, (PredictionBatch, FeatureBatch)):
        assert decoded.event_ids == original.event_ids
        np.testing.assert_array_equal(decoded.event_times, original.event_times)
        for name, column in original.numeric.items():
            np.testing.assert_array_equal(decoded.numeric[name], column)
        assert decoded.categorical == original.categorical and decoded.attributes == original.attributes
        assert codec.encode(decoded) == codec.encode(original)  # every other column, byte for byte
    else:
        assert decoded == original


def test_ensure_topics_is_idempotent(kafka_settings: Settings) -> None:
    created = ensure_topics(kafka_settings, partitions={"predictions": 2})
    assert created == sorted(kafka_settings.topic(n) for n in TOPIC_NAMES)
    assert ensure_topics(kafka_settings) == []
    metadata = AdminClient(kafka_settings.kafka_config()).list_topics(timeout=10)
    assert len(metadata.topics[kafka_settings.topic("predictions")].partitions) == 2
    assert len(metadata.topics[kafka_settings.topic("labels")].partitions) == 1


def test_every_record_round_trips_through_kafka(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings)
    codec = Codec()
    client = producer(kafka_settings)
    records = _records()
    sent: dict[str, list] = {}
    for record in records:
        topic = kafka_settings.topic(_topic_of(record))
        key = record.model_id
        value = publish(client, topic, key, record, codec=codec)
        sent.setdefault(topic, []).append((record, value))
    assert client.flush(10) == 0
    received = consume_records(kafka_settings, list(sent), len(records), timeout=20, codec=codec)
    assert len(received) == len(records)
    for topic, expected in sent.items():
        messages = [m for m in received if m.topic == topic]
        assert len(messages) == len(expected), topic
        for message, (record, value) in zip(messages, expected):
            assert message.error is None
            assert message.key == b"credit"
            assert message.value == value and message.value[:2] == b"\xc3\x01"
            _assert_same(message.record, record, codec)
            assert codec.decode(message.value, topic=_topic_of(record)) is not None


def test_json_input_is_accepted_from_kafka(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions", "labels"])
    client = producer(kafka_settings)
    prediction = {
        "event_id": "j1",
        "model_id": "credit",
        "model_version": "3",
        "event_time": T0,
        "numeric": {"age": 41},
        "categorical": {"region": "eu"},
    }
    label = {"event_id": "j1", "model_id": "credit", "event_time": T0 + 5, "label": 0}
    produce(client, kafka_settings.topic("predictions"), json.dumps(prediction).encode(), "credit")
    produce(client, kafka_settings.topic("labels"), json.dumps(label).encode(), "credit")
    assert client.flush(10) == 0
    [p] = consume_records(kafka_settings, kafka_settings.topic("predictions"), 1, timeout=20, decode=False)
    [lab] = consume_records(kafka_settings, kafka_settings.topic("labels"), 1, timeout=20)
    codec = Codec()
    # Without "type" and prediction fields it would be a FeatureEvent; the topic says it is a prediction.
    assert codec.decode(p.value, topic="predictions") == PredictionEvent(
        "j1", "credit", "3", T0, numeric={"age": 41.0}, categorical={"region": "eu"}
    )
    assert lab.record == LabelEvent("j1", "credit", T0 + 5, 0.0)


def test_rejected_bytes_go_to_the_dlq_unchanged(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions", "dlq"])
    client = producer(kafka_settings)
    source = kafka_settings.topic("predictions")
    bad = [b"\xc3\x01" + bytes(8) + b"\x02e", b'{"model_id": ', b"\xff\x00\xfe"]
    for value in bad:
        produce(client, source, value, "credit")
    assert client.flush(10) == 0
    received = consume_records(kafka_settings, source, len(bad), timeout=20)
    assert [m.error.reason for m in received] == ["unknown_fingerprint", "json_syntax", "unknown_encoding"]
    for message in received:
        assert isinstance(message.error, DecodeError)
        send_to_dlq(client, kafka_settings, message.value, message.key, message.error, message.topic)
    send_to_dlq(client, kafka_settings, b"raw", None, "unexpected_record", source)  # a bare reason code
    assert client.flush(10) == 0
    dlq = consume_records(kafka_settings, kafka_settings.topic("dlq"), len(bad) + 1, timeout=20, decode=False)
    assert [m.value for m in dlq] == bad + [b"raw"]
    assert [m.key for m in dlq] == [b"credit"] * len(bad) + [None]
    assert [m.headers["driftline-error"] for m in dlq] == [
        b"unknown_fingerprint",
        b"json_syntax",
        b"unknown_encoding",
        b"unexpected_record",
    ]
    assert {m.headers["driftline-source-topic"] for m in dlq} == {source.encode()}
    assert b"fingerprint" in dlq[0].headers["driftline-error-detail"]
