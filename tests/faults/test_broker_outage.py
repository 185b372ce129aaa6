"""The Kafka broker stopped for 15 s mid-run with SIGTERM, and later in the same run with SIGKILL, then
started again each time on the same ports and data directory: the worker rides both out and writes what a
clean run writes.

The broker is the test's own (the session's broker serves every other test and must not stop); the
clean run reads the same bytes on the session broker.
"""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from fault_harness import PrivateBroker, Stopwatch, compare, finished, hold, pair, send, sized, traffic
from worker_harness import REPO

from driftline.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

OUTAGE_SECONDS = 15
WINDOWS = sized(12, 24)
PER_WINDOW = sized(1_000, 5_000)


@pytest.mark.timeout(sized(300, 900))
def test_a_broker_stopped_for_15_s_by_sigterm_then_by_sigkill_changes_nothing(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started, watch = time.monotonic(), Stopwatch()
    model = f"broker-{unique}"
    home = REPO / ".driftline" / f"fault-broker-{uuid.uuid4().hex[:8]}"
    broker = PrivateBroker(home, REPO / ".driftline" / "kafka-jars")
    watch.lap("broker up")
    clean, fault = pair(
        kafka_settings,
        warehouse_server.url(f"dl_{unique}_clean"),
        warehouse_server.url(f"dl_{unique}_fault"),
        tmp_path,
        unique,
        fault_kafka=broker.bootstrap,
    )
    try:
        version = clean.register(model)
        assert fault.register(model) == version
        load = traffic(model, version, windows=WINDOWS, per_window=PER_WINDOW, drift_from=WINDOWS // 3, seed=2)
        args = dict(window_seconds=load.window_seconds, idle_seconds="never")
        send(clean, load.messages)
        clean.start_worker("clean", f"clean-{unique}", **args)

        send(fault, load.part(0, 3))
        worker = fault.start_worker("fault", f"fault-{unique}", **args)
        stops, written = {}, 0
        for k, sig in enumerate((signal.SIGTERM, signal.SIGKILL)):
            fault.wait(lambda written=written: fault.windows_written(model) > written, 120, "the worker at work")
            watch.lap(f"{sig.name} sent")
            took, on_signal = broker.stop(sig)
            stops[sig.name] = {"seconds_to_stop": round(took, 1), "stopped_on_signal": on_signal}
            hold(fault, OUTAGE_SECONDS, f"a broker outage ({sig.name})")
            broker.start()
            watch.lap(f"broker up after {sig.name}")
            written = fault.windows_written(model)
            send(fault, load.part(k + 1, 3))

        expected = finished(clean, [load], sized(120, 300))
        watch.lap("clean run read")
        got = finished(fault, [load], sized(180, 600))
        watch.lap("fault run read")
        assert worker.alive(), "the worker exited"
        compare(
            "broker outages",
            got,
            expected,
            [load],
            started,
            faults=f"broker SIGTERM then SIGKILL, {OUTAGE_SECONDS} s down each",
            broker_stops=stops,
            laps=watch.laps,
        )
    finally:
        clean.close()
        fault.close()
        broker.close()
        shutil.rmtree(home, ignore_errors=True)
