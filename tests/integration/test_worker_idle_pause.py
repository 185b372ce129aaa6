"""A paused reader is not a quiet stream: real Kafka, the embedded ClickHouse, a SQLite registry.

While the consumer is paused (the warehouse is down, the service is stuck), the events of an open
window may be waiting in Kafka. If the idle rule counted that pause as silence, the wall clock would
close the window before its events were read, and they would all come late: numbers a clean run
does not write. Only silence while the consumer reads counts.
"""

from __future__ import annotations

import time

import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, env, make_batch  # noqa: F401

from driftline.streams.app import build_service
from driftline.streams.codec import default_codec
from driftline.streams.messages import Incoming
from driftline.streams.worker import WorkerOptions

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

IDLE_S = 2.0


def test_a_pause_longer_than_the_idle_time_does_not_close_a_window_whose_events_wait(
    env: WorkerEnv, unique: str
) -> None:
    model = f"paused-{unique}"
    version = env.register(model)
    options = WorkerOptions(
        app_id=f"app-{unique}", window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0, idle_seconds=IDLE_S
    )
    service = build_service(env.settings, options)
    wall = [time.time()]
    service.clock = lambda: wall[0]
    codec = default_codec()
    first = codec.encode(make_batch(model, version, T0, 100, 10))  # the first half of window T0 .. T0 + 2 s
    second = codec.encode(make_batch(model, version, T0 + 1_000, 100, 10, seed=2))  # its second half
    service.handle("predictions", [Incoming("predictions", 0, 0, b"k", first)])
    window = (model, version, T0)

    # a minute paused: the idle rule must not run the model's clock on with the wall clock
    for _ in range(60):
        wall[0] += 1.0
        service.tick(reading=False)
    assert service.monitor.open_windows() == [window]

    # reading again: the second half is in time, and the window holds all 200 predictions
    wall[0] += 0.5
    service.tick()
    service.handle("predictions", [Incoming("predictions", 0, 1, b"k", second)])
    wall[0] += IDLE_S + WINDOW_MS / 1000 + 1.0  # now the stream is quiet: idle, so the window closes
    service.tick()
    assert service.monitor.open_windows() == []
    service.drain()
    rows = env.query("SELECT n_current FROM drift_reports FINAL WHERE model_id = {m:String}", m=model)
    assert [r["n_current"] for r in rows] == [200]
