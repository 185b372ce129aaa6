"""The Kafka broker stopped for 15 s mid-run (SIGTERM, and separately SIGKILL), then started again on the
same port and data directory: the worker rides it out and writes what a clean run writes.

The broker is the test module's own (the session's broker serves every other test and must not stop);
the clean run reads the same bytes on the session broker.
"""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.settings import Settings
from fault_harness import PrivateBroker, compare, finished, hold, pair, record, send, sized, traffic
from worker_harness import REPO

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

OUTAGE_SECONDS = 15
WINDOWS = sized(12, 24)
PER_WINDOW = sized(1_000, 5_000)


@pytest.fixture(scope="module")
def private_broker() -> Iterator[PrivateBroker]:
    home = REPO / ".driftline" / f"fault-broker-{uuid.uuid4().hex[:8]}"
    broker = PrivateBroker(home, REPO / ".driftline" / "kafka-jars")
    try:
        yield broker
    finally:
        broker.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.timeout(sized(240, 600))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_broker_stopped_for_15_s_then_restarted_changes_nothing(
    sig: signal.Signals, private_broker: PrivateBroker, kafka_settings: Settings, warehouse_server, unique: str,
    tmp_path: Path
) -> None:
    started = time.monotonic()
    model = f"broker-{unique}"
    clean, fault = pair(kafka_settings, warehouse_server.url(f"dl_{unique}_clean"),
                        warehouse_server.url(f"dl_{unique}_fault"), tmp_path, unique,
                        fault_kafka=private_broker.bootstrap)
    try:
        version = clean.register(model)
        assert fault.register(model) == version
        load = traffic(model, version, windows=WINDOWS, per_window=PER_WINDOW, drift_from=WINDOWS // 3, seed=2)
        args = dict(window_seconds=load.window_seconds, idle_seconds="never")
        send(clean, load.messages)
        clean.start_worker("clean", f"clean-{unique}", **args)

        send(fault, load.part(0, 3) + load.part(1, 3))
        worker = fault.start_worker("fault", f"fault-{unique}", **args)
        fault.wait(lambda: fault.windows_written(model) >= 2, 120, "the worker at work")
        took, on_signal = private_broker.stop(sig)
        hold(fault, OUTAGE_SECONDS)
        private_broker.start()
        hold(fault, 2)
        send(fault, load.part(2, 3))

        expected = finished(clean, [load], sized(120, 300))
        got = finished(fault, [load], sized(180, 400))
        assert worker.alive(), "the worker exited"
        compare(f"broker {sig.name} {OUTAGE_SECONDS} s", got, expected, [load], started,
                faults=f"broker {sig.name}, {OUTAGE_SECONDS} s down", broker_stop_seconds=round(took, 1),
                stopped_on_signal=on_signal)
    finally:
        clean.close()
        fault.close()
