"""The embedded ClickHouse server stopped for 30 s, and later in the same run for 5 minutes (60 s in the
bounded run), then started again each time on the same port and data: the worker never exits, waits both
outages out, and writes what a clean run writes.

The server is the test's own; the session's server (shared by every test) holds the clean run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from fault_harness import Stopwatch, compare, finished, hold, pair, send, sized, traffic
from worker_harness import PrivateWarehouse, WorkerEnv, wait_until

from driftline.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = sized(12, 24)
PER_WINDOW = sized(1_000, 5_000)
OUTAGES = (30, sized(60, 300))


@pytest.mark.timeout(sized(360, 1_200))
def test_warehouse_outages_of_30_s_and_minutes_are_waited_out_without_a_worker_exit(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started, watch = time.monotonic(), Stopwatch()
    model = f"outage-{unique}"
    (tmp_path / "server").mkdir()
    server = PrivateWarehouse(tmp_path / "server")
    clean, fault = pair(
        kafka_settings, warehouse_server.url(f"dl_{unique}_clean"), server.url(f"dl_{unique}"), tmp_path, unique
    )
    try:
        version = clean.register(model)
        assert fault.register(model) == version
        load = traffic(model, version, windows=WINDOWS, per_window=PER_WINDOW, drift_from=WINDOWS // 3, seed=3)
        args = dict(window_seconds=load.window_seconds, idle_seconds="never")
        send(clean, load.messages)
        clean.start_worker("clean", f"clean-{unique}", **args)

        parts = len(OUTAGES) * 2 + 1
        send(fault, load.part(0, parts))
        worker = fault.start_worker("fault", f"fault-{unique}", **args)
        stops, written = [], 0
        for k, outage in enumerate(OUTAGES):
            fault.wait(lambda written=written: fault.windows_written(model) > written, 120, "the worker at work")
            watch.lap(f"stop {k + 1}")
            took, on_sigterm = server.stop(signal.SIGTERM, grace=5)
            stops.append(
                {"outage_seconds": outage, "sigterm_seconds": round(took, 1), "stopped_on_sigterm": on_sigterm}
            )
            down = time.monotonic()
            send(fault, load.part(2 * k + 1, parts))  # read, or waiting to be read, while the warehouse is away
            hold(fault, outage - (time.monotonic() - down), f"a {outage} s warehouse outage")
            server.start()
            wait_until(lambda: answers(fault), 30, "the warehouse back")
            watch.lap(f"back {k + 1}")
            written = fault.windows_written(model)
            send(fault, load.part(2 * k + 2, parts))

        expected = finished(clean, [load], sized(120, 300))
        watch.lap("clean run read")
        got = finished(fault, [load], sized(240, 600))
        watch.lap("fault run read")
        assert worker.alive(), "the worker exited"
        compare(
            "warehouse outages",
            got,
            expected,
            [load],
            started,
            faults=f"embedded ClickHouse down {' s, then '.join(map(str, OUTAGES))} s",
            server_stops=stops,
            laps=watch.laps,
        )
    finally:
        clean.close()
        fault.close()
        server.close()


def answers(env: WorkerEnv) -> bool:
    try:
        env.query("SELECT 1 AS one")
    except Exception:
        return False
    return True
