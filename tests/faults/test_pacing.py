"""One model fed by single events and batches interleaved gives the same windows whether the worker reads
the log as a backlog or live, as it is produced; and no event of an in-order stream is late."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_harness import compare, finished, pair, send, sized, traffic

from driftline.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = sized(12, 30)
PER_WINDOW = sized(1_000, 5_000)
PACE_SECONDS = 0.1  # between the four slices of each window, produced live


@pytest.mark.timeout(sized(240, 600))
def test_singles_and_batches_of_one_model_give_the_same_windows_read_as_a_backlog_or_live(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    model = f"pace-{unique}"
    backlog, live = pair(
        kafka_settings,
        warehouse_server.url(f"dl_{unique}_backlog"),
        warehouse_server.url(f"dl_{unique}_live"),
        tmp_path,
        unique,
    )
    try:
        version = backlog.register(model)
        assert live.register(model) == version
        load = traffic(model, version, windows=WINDOWS, per_window=PER_WINDOW, drift_from=WINDOWS // 3, seed=4)
        args = dict(window_seconds=load.window_seconds, idle_seconds="never")
        send(backlog, load.messages)
        backlog.start_worker("backlog", f"backlog-{unique}", **args)

        worker = live.start_worker("live", f"live-{unique}", **args)
        live.wait(lambda: "assigned" in worker.log_tail(50), 60, "the live worker's partitions")
        slices = WINDOWS * 4
        for k in range(slices):
            send(live, load.part(k, slices))
            time.sleep(PACE_SECONDS)

        expected = finished(backlog, [load], sized(120, 300))
        got = finished(live, [load], sized(120, 300))
        compare("backlog vs live", got, expected, [load], started, faults=f"live, {PACE_SECONDS} s between slices")
    finally:
        backlog.close()
        live.close()
