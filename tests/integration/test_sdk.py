"""The producer SDK against a real broker, and against no broker at all."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from driftline.settings import Settings
from driftline.stack.process import free_port
from driftline.streams.kafka import consume_records, ensure_topics
from driftline.streams.records import FeatureBatch, FeatureEvent, LabelEvent, PredictionBatch, PredictionEvent
from driftline.streams.sdk import LoggerStats, PredictionLogger

T0 = 1_700_000_000_000


def _features(i: int) -> dict:
    return {
        "age": 20 + i % 50,
        "income": 1000.5 * i,
        "region": ["eu", "us", "apac"][i % 3],
        "score": np.float32(0.5),
        "flag": i % 2 == 0,
        "missing": None,
    }


def test_predictions_are_batched_per_model_version(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions"])
    ids = {}
    # A long linger: only a full batch or the flush sends, so the messages are known in advance.
    with PredictionLogger(kafka_settings, batch_size=1000, linger_ms=60_000) as logger:
        for i in range(2500):
            version = "1" if i % 5 else "2"
            ids[
                logger.log_prediction(
                    "credit",
                    version,
                    features=_features(i),
                    prediction=i / 2500,
                    latency_ms=1.0,
                    attributes={"channel": "web"},
                    event_time=T0 + i,
                )
            ] = i
        stats = logger.flush(10)
    assert stats == LoggerStats(
        logged=2500, sent=2500, delivered=2500, failed=0, dropped=0, buffered=0, last_error=stats.last_error
    )
    received = consume_records(kafka_settings, kafka_settings.topic("predictions"), 3, timeout=10)
    batches = [m.record for m in received]
    assert all(isinstance(b, PredictionBatch) for b in batches)
    assert all(m.key == b"credit" for m in received)
    assert sorted((b.model_version, b.n) for b in batches) == [("1", 1000), ("1", 1000), ("2", 500)]
    for batch in batches:
        rows = np.array([ids[e] for e in batch.event_ids])
        np.testing.assert_array_equal(batch.event_times, T0 + rows)
        np.testing.assert_array_equal(batch.numeric["age"], 20 + rows % 50)
        np.testing.assert_array_equal(batch.numeric["income"], 1000.5 * rows)
        np.testing.assert_array_equal(batch.numeric["flag"], (rows % 2 == 0).astype(float))
        np.testing.assert_array_equal(batch.predictions, rows / 2500)
        assert batch.categorical["region"] == [["eu", "us", "apac"][r % 3] for r in rows]
        assert "missing" not in batch.numeric and "missing" not in batch.categorical
        assert batch.attributes == {"channel": ["web"] * batch.n}
        assert batch.latency_ms is not None and (batch.latency_ms == 1.0).all()


def test_single_events_labels_and_features(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions", "labels", "features"])
    with PredictionLogger(kafka_settings, single_events=True, linger_ms=10) as logger:
        event_id = logger.log_prediction(
            "fraud",
            "7",
            features={"amount": 12.5, "country": "fr"},
            prediction=0.9,
            predicted_label="fraud",
            event_time=T0,
        )
        logger.log_label("fraud", event_id, "fraud", event_time=T0 + 3_600_000)
        logger.log_label("fraud", "other", 1, event_time=T0 + 1)
        logger.log_features("fraud", "7", features={"amount": 3}, event_id="f1", event_time=T0 + 2)
        stats = logger.flush(10)
    assert (stats.delivered, stats.failed, stats.dropped) == (4, 0, 0)
    [prediction] = consume_records(kafka_settings, kafka_settings.topic("predictions"), 1, timeout=10)
    assert prediction.record == PredictionEvent(
        event_id,
        "fraud",
        "7",
        T0,
        numeric={"amount": 12.5},
        categorical={"country": "fr"},
        prediction=0.9,
        predicted_label="fraud",
    )
    labels = consume_records(kafka_settings, kafka_settings.topic("labels"), 2, timeout=10)
    assert [m.record for m in labels] == [
        LabelEvent(event_id, "fraud", T0 + 3_600_000, "fraud"),
        LabelEvent("other", "fraud", T0 + 1, 1.0),
    ]
    [features] = consume_records(kafka_settings, kafka_settings.topic("features"), 1, timeout=10)
    assert features.record == FeatureEvent("f1", "fraud", "7", T0 + 2, numeric={"amount": 3.0})


def test_features_travel_as_batches(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["features"])
    with PredictionLogger(kafka_settings, linger_ms=60_000) as logger:
        for i in range(3):
            logger.log_features("fraud", "7", features={"amount": i, "country": "fr"}, event_time=T0 + i)
        assert logger.flush(10).delivered == 3
    [message] = consume_records(kafka_settings, kafka_settings.topic("features"), 1, timeout=10)
    assert isinstance(message.record, FeatureBatch) and message.record.n == 3
    assert message.record.numeric["amount"].tolist() == [0.0, 1.0, 2.0]
    assert message.record.categorical["country"] == ["fr"] * 3


def test_linger_sends_without_flush(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions"])
    logger = PredictionLogger(kafka_settings, linger_ms=50)
    try:
        for i in range(3):
            logger.log_prediction("m", "1", features={"x": i})
        deadline = time.monotonic() + 10
        while logger.stats().delivered < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert logger.stats().delivered == 3
    finally:
        logger.close(5)
    [message] = consume_records(kafka_settings, kafka_settings.topic("predictions"), 1, timeout=10)
    assert message.record.n == 3


def test_large_batches_are_split_below_the_message_limit(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions"])
    features = {f"f{j}": float(j) for j in range(40)}
    with PredictionLogger(kafka_settings, batch_size=1000, linger_ms=60_000, max_message_bytes=100_000) as logger:
        for _ in range(1000):
            logger.log_prediction("wide", "1", features=features)
        stats = logger.flush(10)
    assert stats.delivered == 1000
    # about 370 kB for 1,000 events: halved twice, to four messages of 250 events
    received = consume_records(kafka_settings, kafka_settings.topic("predictions"), 4, timeout=10)
    assert [m.record.n for m in received] == [250] * 4
    assert all(len(m.value) <= 100_000 for m in received)


def test_unreachable_broker_never_blocks_or_raises() -> None:
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{free_port()}", topic_prefix="down.")
    logger = PredictionLogger(settings, max_buffered=10_000, linger_ms=20)
    features = {f"f{j}": float(j) for j in range(10)} | {"c": "x"}
    slowest = 0.0
    started = time.perf_counter()
    for _ in range(100_000):
        t = time.perf_counter()
        logger.log_prediction("m", "1", features=features, prediction=0.5)
        slowest = max(slowest, time.perf_counter() - t)
    total = time.perf_counter() - started
    assert total < 2.0, total
    assert slowest < 0.5, slowest  # blocking on the network would take seconds
    stats = logger.stats()
    assert stats.logged == 100_000
    assert stats.buffered <= 10_000
    assert stats.dropped >= 90_000
    assert stats.delivered == 0
    t = time.perf_counter()
    stats = logger.flush(timeout=0.5)
    assert time.perf_counter() - t < 1.5
    assert stats.buffered > 0 and stats.sent == stats.buffered
    t = time.perf_counter()
    stats = logger.close(timeout=0.3)
    assert time.perf_counter() - t < 2.0
    assert stats.buffered == 0 and stats.dropped + stats.failed == 100_000
    assert logger.log_prediction("m", "1", features={"x": 1.0}) and logger.stats().dropped == stats.dropped + 1


def test_bad_arguments_raise_at_once() -> None:
    logger = PredictionLogger(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(ValueError, match="'x' is inf"):
            logger.log_prediction("m", "1", features={"x": math.inf})
        with pytest.raises(TypeError, match="'x' must be a number, a string or None"):
            logger.log_prediction("m", "1", features={"x": [1, 2]})
        with pytest.raises(TypeError, match="model_id"):
            logger.log_prediction(None, "1", features={})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="event_time"):
            logger.log_label("m", "e", 1.0, event_time=1.5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="prediction"):
            logger.log_prediction("m", "1", prediction=-math.inf)
        with pytest.raises(TypeError, match="attributes"):
            logger.log_prediction("m", "1", attributes={"region": 3})  # type: ignore[dict-item]
        assert logger.stats().logged == 0
        assert logger.log_prediction("m", "1", features={"x": math.nan}) != ""  # NaN means missing: accepted
    finally:
        logger.close(0.1)
