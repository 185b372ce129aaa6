"""The embedded ClickHouse server stopped for 30 s, and separately for 5 minutes (about a minute in the
bounded run), then started again on the same port and data: the worker never exits, waits the outage
out, and writes what a clean run writes.

The server is the test's own; the session's server (shared by every test) holds the clean run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from driftline.settings import Settings
from fault_harness import PrivateWarehouse, compare, finished, hold, pair, send, sized, traffic
from worker_harness import wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = sized(12, 24)
PER_WINDOW = sized(1_000, 5_000)
LONG_OUTAGE = sized(75, 300)


@pytest.mark.timeout(sized(330, 900))
@pytest.mark.parametrize("outage", [30, LONG_OUTAGE], ids=["30s", f"{LONG_OUTAGE}s"])
def test_a_warehouse_outage_is_waited_out_without_a_worker_exit(
    outage: int, kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    model = f"outage-{unique}"
    (tmp_path / "server").mkdir()
    server = PrivateWarehouse(tmp_path / "server")
    clean, fault = pair(kafka_settings, warehouse_server.url(f"dl_{unique}_clean"), server.url(f"dl_{unique}"),
                        tmp_path, unique)
    try:
        version = clean.register(model)
        assert fault.register(model) == version
        load = traffic(model, version, windows=WINDOWS, per_window=PER_WINDOW, drift_from=WINDOWS // 3, seed=3)
        args = dict(window_seconds=load.window_seconds, idle_seconds="never")
        send(clean, load.messages)
        clean.start_worker("clean", f"clean-{unique}", **args)

        send(fault, load.part(0, 3))
        worker = fault.start_worker("fault", f"fault-{unique}", **args)
        fault.wait(lambda: fault.windows_written(model) >= 2, 120, "the worker at work")
        took, on_sigterm = server.stop(signal.SIGTERM, grace=5)
        down = time.monotonic()
        send(fault, load.part(1, 3))  # read, or waiting to be read, while the warehouse is away
        hold(fault, outage - (time.monotonic() - down))
        server.start()
        wait_until(lambda: answers(fault), 30, "the warehouse back")
        send(fault, load.part(2, 3))

        expected = finished(clean, [load], sized(120, 300))
        got = finished(fault, [load], sized(240, 600))
        assert worker.alive(), "the worker exited"
        compare(f"warehouse down {outage} s", got, expected, [load], started,
                faults=f"embedded ClickHouse down {outage} s", server_sigterm_seconds=round(took, 1),
                server_stopped_on_sigterm=on_sigterm)
    finally:
        clean.close()
        fault.close()
        server.close()


def answers(env) -> bool:
    try:
        env.query("SELECT 1 AS one")
    except Exception:
        return False
    return True
