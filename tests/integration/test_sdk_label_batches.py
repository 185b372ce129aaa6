"""The SDK sends queued labels packed per model as LabelBatch messages (single LabelEvents on request)."""

from __future__ import annotations

import pytest

from driftline.settings import Settings
from driftline.streams.kafka import consume_records, ensure_topics
from driftline.streams.records import LabelBatch, LabelEvent
from driftline.streams.sdk import PredictionLogger

T0 = 1_700_000_000_000

pytestmark = pytest.mark.kafka


def test_labels_travel_as_batches_per_model(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["labels"])
    with PredictionLogger(kafka_settings, linger_ms=60_000, batch_size=3) as logger:
        for i in range(4):
            logger.log_label("a", f"e{i}", i % 2, event_time=T0 + i)
        logger.log_label("b", "x", "fraud", event_time=T0)
        stats = logger.flush(10)
    assert (stats.delivered, stats.failed, stats.dropped) == (5, 0, 0)
    messages = consume_records(kafka_settings, kafka_settings.topic("labels"), 3, timeout=10)
    batches = [m.record for m in messages]
    assert all(isinstance(b, LabelBatch) for b in batches)
    by_model: dict[str, list[LabelEvent]] = {}
    sizes = []
    for b in batches:
        assert isinstance(b, LabelBatch)
        by_model.setdefault(b.model_id, []).extend(b.events())
        sizes.append((b.model_id, b.n))
    assert sorted(sizes) == [("a", 1), ("a", 3), ("b", 1)]  # batch_size bounds a batch
    assert by_model == {
        "a": [LabelEvent(f"e{i}", "a", T0 + i, float(i % 2)) for i in range(4)],
        "b": [LabelEvent("x", "b", T0, "fraud")],
    }


def test_single_events_send_each_label_alone(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["labels"])
    with PredictionLogger(kafka_settings, linger_ms=60_000, single_events=True) as logger:
        logger.log_label("a", "e1", 1, event_time=T0)
        logger.log_label("a", "e2", "x", event_time=T0)
        stats = logger.flush(10)
    assert stats.delivered == 2
    messages = consume_records(kafka_settings, kafka_settings.topic("labels"), 2, timeout=10)
    assert [m.record for m in messages] == [LabelEvent("e1", "a", T0, 1.0), LabelEvent("e2", "a", T0, "x")]
