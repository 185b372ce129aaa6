"""The worker service's fast paths, driven in-process: real Kafka producer, the embedded ClickHouse, a SQLite registry.

- single PredictionEvents are gathered per model version into one batch; a
  bad event among them is still rejected alone, by its own message;
- a take of many batches is handled in parts of about ``max_take_events``
  events, and windows that close inside the take are written in it;
- raw rows and windows are written on the outbox's thread: ``handle`` does not
  wait for them, and releases a message only once the write covering it has
  landed; while a backlog is read, they gather into one bigger write.
"""

from __future__ import annotations

import threading

import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.streams.app import build_service
from driftline.streams.codec import default_codec
from driftline.streams.messages import Messages
from driftline.streams.records import PredictionEvent
from driftline.streams.worker import Incoming, WorkerOptions

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]


def _messages(records: list, start: int = 0) -> list[Incoming]:
    codec = default_codec()
    return [Incoming("predictions", 0, start + i, b"k", codec.encode(r)) for i, r in enumerate(records)]


def test_single_events_are_one_batch_and_a_bad_one_is_rejected_alone(env: WorkerEnv, unique: str) -> None:
    model = f"single-{unique}"
    version = env.register(model)
    options = WorkerOptions(app_id=f"app-{unique}", window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0)
    service = build_service(env.settings, options)
    events = [
        PredictionEvent(
            f"e{i}",
            model,
            version,
            T0 + i * 5,
            numeric={"a": 0.1 * i, "b": 1.0},
            categorical={"region": "north"},
            prediction=0.5,
        )
        for i in range(300)
    ]
    events[123] = PredictionEvent("bad", model, version, 4_102_444_800_000, numeric={"a": 0.1}, prediction=0.5)
    # one event in the next window closes the first by the watermark
    events.append(PredictionEvent("next", model, version, T0 + WINDOW_MS, numeric={"a": 0.0}, prediction=0.5))
    released = service.handle("predictions", _messages(events)) + service.drain()

    assert env.count("predictions", "model_id = {m:String}", m=model) == 300  # all but the bad one
    assert env.count("predictions", "model_id = {m:String} AND event_id = 'bad'", m=model) == 0
    rejected = env.query("SELECT offset, reason FROM rejected_events FINAL WHERE model_id = {m:String}", m=model)
    assert rejected == [{"offset": 123, "reason": "future_event_time"}]
    assert env.windows_written(model) == 1
    counts = env.query("SELECT DISTINCT n_current FROM drift_metrics FINAL WHERE model_id = {m:String}", m=model)
    assert counts == [{"n_current": 299}]
    # the first window's messages are released, as the last token of each run of messages waiting
    # for the same windows (a commit covers the messages before it); the last one waits for its window
    # the rejected message 123 waits for nothing: a run of its own
    assert [o.offset for o in released] == [122, 123, 299]


def test_connect_opens_the_sessions_of_the_service_and_its_writers_before_the_first_batch(
    env: WorkerEnv, unique: str
) -> None:
    service = build_service(env.settings, WorkerOptions(app_id=f"app-{unique}"))
    try:
        warehouse = service.sinks.warehouse
        before = len(warehouse._clients)  # one client per thread that has used the warehouse
        service_thread = threading.Thread(target=service.connect)
        service_thread.start()
        service_thread.join()
        service.outbox.raw_writer.join()
        service.outbox.window_writer.join()
        assert len(warehouse._clients) == before + 3
        assert service.outbox.written() == [] and len(service.outbox) == 0
    finally:
        service.outbox.close()


def test_a_take_is_handled_in_parts_bounded_by_events(env: WorkerEnv, unique: str) -> None:
    model = f"parts-{unique}"
    version = env.register(model)
    options = WorkerOptions(
        app_id=f"app-{unique}", window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0, max_take_events=250
    )
    service = build_service(env.settings, options)
    per_window, windows = 400, 3
    batches = [
        make_batch(model, version, T0 + w * WINDOW_MS + part * 450, 100, 4, seed=10 * w + part)
        for w in range(windows)
        for part in range(per_window // 100)
    ]
    batches.append(make_batch(model, version, T0 + windows * WINDOW_MS, 1, 1, seed=99))
    parts = list(service._parts("predictions", Messages.of("predictions", _messages(batches), "t.predictions")))
    assert [len(p) for p in parts] == [3, 3, 3, 3, 1]  # 300 events, then the rest

    released = service.handle("predictions", _messages(batches)) + service.drain()
    assert env.count("predictions", "model_id = {m:String}", m=model) == per_window * windows + 1
    assert env.windows_written(model) == windows
    counts = env.query("SELECT DISTINCT n_current FROM drift_metrics FINAL WHERE model_id = {m:String}", m=model)
    assert counts == [{"n_current": per_window}]
    offsets = [o.offset for o in released]
    assert offsets[-1] == len(batches) - 2 and offsets == sorted(offsets)


def test_a_schedule_asks_for_a_retrain_when_its_period_has_passed(env: WorkerEnv, unique: str, tmp_path) -> None:
    from driftline.streams import kafka
    from driftline.streams.records import RetrainRequest

    model = f"sched-{unique}"
    version = env.register(model)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\ndefaults:\n  schedule:\n    every_hours: 1\n")
    options = WorkerOptions(app_id=f"app-{unique}", window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0)
    service = build_service(env.settings.replace(policy=str(policy)), options)
    now = [T0 / 1000 + 10.0]
    service.clock = lambda: now[0]
    # one window closed: the worker now knows which version serves the model
    batches = [make_batch(model, version, T0, 200, 4, seed=1), make_batch(model, version, T0 + WINDOW_MS, 1, 1, seed=2)]
    service.handle("predictions", _messages(batches))
    service.drain()
    assert env.windows_written(model) == 1
    service.tick()
    now[0] += 1800  # half an hour: not yet
    service.tick()
    assert env.count("retrain_requests", "model_id = {m:String}", m=model) == 0
    now[0] += 1801  # past the hour
    service.tick()
    service.tick()  # a second tick in the same period asks nothing more

    requests = [
        r.record for r in kafka.consume_records(env.settings, env.settings.topic("retrain-requests"), 1, timeout=20)
    ]
    assert len(requests) == 1 and isinstance(requests[0], RetrainRequest)
    assert (requests[0].reason, requests[0].model_id, requests[0].model_version) == ("schedule", model, version)
    rows = env.query(
        "SELECT toString(reason) AS reason, toString(status) AS status FROM retrain_requests FINAL "
        "WHERE model_id = {m:String}",
        m=model,
    )
    assert rows == [{"reason": "schedule", "status": "requested"}]


def test_a_backlog_gathers_raw_rows_past_a_tick_but_not_for_ever(env: WorkerEnv, unique: str, monkeypatch) -> None:
    from driftline.streams import worker

    model = f"backlog-{unique}"
    version = env.register(model)
    options = WorkerOptions(app_id=f"app-{unique}", window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0)
    service = build_service(env.settings, options)
    batches = [make_batch(model, version, T0 + i * 100, 100, 4, seed=i) for i in range(3)]
    assert service.handle("predictions", _messages(batches), backlog=True) == []
    assert service.tick() == []  # more is coming: the 300 rows wait for more, or for the gather time
    service.outbox.raw_writer.join()
    assert env.count("predictions", "model_id = {m:String}", m=model) == 0
    monkeypatch.setattr(worker, "BACKLOG_GATHER_SECONDS", 0.0)
    service.tick()  # waited long enough: written, though the backlog did not end
    service.outbox.raw_writer.join()
    assert env.count("predictions", "model_id = {m:String}", m=model) == 300
    service.outbox.close()
