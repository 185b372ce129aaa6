"""The retrainer's consume loop: a request whose handling raises is dead-lettered and committed, and
the next request is handled (real Kafka, the embedded ClickHouse server, a SQLite registry)."""

from __future__ import annotations

import numpy as np
import pytest
from test_retrainer import env  # noqa: F401 (the fixture)

from driftline.retrainer.service import Retrainer, RetrainerOptions, RetrainerService
from driftline.streams import kafka
from driftline.streams.records import RetrainRequest

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]


def test_a_request_whose_handling_raises_is_dead_lettered_and_the_next_one_handled(env, unique: str) -> None:
    settings, warehouse, a, _ = env
    now = int(np.datetime64("now", "ms").astype(np.int64))
    producer = kafka.producer(settings)
    topic = settings.topic("retrain-requests")
    kafka.publish(producer, topic, a, RetrainRequest(f"boom-{unique}", a, "1", "manual", now))
    # a lone surrogate: a UnicodeEncodeError in the JSON decoder today, a DecodeError once it refuses it cleanly
    kafka.produce(producer, topic, b'{"type":"RetrainRequest","request_id":"\\ud800","model_id":"m"}', a)
    good = RetrainRequest(f"ok-{unique}", a, "1", "drift", now)
    kafka.publish(producer, topic, a, good)
    assert producer.flush(30) == 0

    retrainer = Retrainer.from_settings(settings)
    handle = retrainer.handle

    def faulty(request: RetrainRequest):
        if request.request_id.startswith("boom"):
            raise ZeroDivisionError("division by zero while handling password=hunter2")
        return handle(request)

    retrainer.handle = faulty  # a bug that one request's content triggers
    try:
        summary = RetrainerService(
            settings,
            RetrainerOptions(group_id=f"poison-{unique}", max_requests=3, idle_exit_seconds=60),
            retrainer=retrainer,
        ).run()
    finally:
        retrainer.close()
    assert summary.poison + summary.undecodable == 2 and summary.poison >= 1
    assert [(o.request_id, o.status) for o in summary.outcomes] == [(good.request_id, "rejected")]
    dlq = kafka.consume_records(settings, settings.topic("dlq"), 2, timeout=30, decode=False)
    assert len(dlq) == 2
    first = dlq[0].headers
    assert (first["driftline-error"], first["driftline-error-class"]) == (b"internal_error", b"ZeroDivisionError")
    assert b"hunter2" not in first["driftline-error-detail"]
    assert dlq[1].headers["driftline-error"]  # a reason either way
