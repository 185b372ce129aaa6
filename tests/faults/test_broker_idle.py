"""An unreachable broker is not a quiet stream: real Kafka (the test's own broker), the embedded ClickHouse.

The idle rule lets a model whose sources are silent for ``idle_seconds`` run on with the wall clock. While
the broker is down the consumer is not paused, its polls just return nothing; if that counted as silence,
the wall clock would close the open window before the rest of its events could be read, and they would all
come late. Here the first quarter of a window is read, the broker is killed for longer than idle + window,
and the rest of the window is produced once it is back: the run must write what a clean run writes.
"""

from __future__ import annotations

import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from fault_harness import PrivateBroker, Stopwatch, compare, finished, hold, pair, send, traffic
from worker_harness import REPO

from driftline.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

IDLE_SECONDS = 2.0
WINDOWS = 4
SPLIT_WINDOW = 1  # the window whose first quarter is read before the outage


@pytest.mark.timeout(240)
def test_a_broker_down_longer_than_idle_plus_window_does_not_close_the_open_window(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started, watch = time.monotonic(), Stopwatch()
    model = f"brokeridle-{unique}"
    home = REPO / ".driftline" / f"fault-brokeridle-{uuid.uuid4().hex[:8]}"
    broker = PrivateBroker(home, REPO / ".driftline" / "kafka-jars")
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
        load = traffic(model, version, windows=WINDOWS, per_window=1_000, seed=5)
        messages = load.messages[:-2]  # no sentinel: the idle rule closes the last window, in both runs
        outage = 2 * (IDLE_SECONDS + load.window_seconds)
        split = [k for k, w in enumerate(load.window_of_message) if w == SPLIT_WINDOW]
        cut = split[0] + len(split) // 4
        args = dict(window_seconds=load.window_seconds, idle_seconds=IDLE_SECONDS)
        send(clean, messages)
        clean.start_worker("clean", f"clean-{unique}", **args)

        fault.start_worker("fault", f"fault-{unique}", **args)
        send(fault, messages[:cut])
        # the windows before the split one close as soon as its first events are read
        fault.wait(lambda: fault.windows_written(model) >= SPLIT_WINDOW, 60, "the first quarter of a window read")
        watch.lap("first quarter read")
        took, _ = broker.stop(signal.SIGKILL)
        watch.lap("broker killed")
        hold(fault, outage, "a broker outage")
        broker.start()
        watch.lap("broker up")
        send(fault, messages[cut:])
        watch.lap("rest sent")

        expected = finished(clean, [load], 120)
        got = finished(fault, [load], 120)
        watch.lap("both runs read")
        compare(
            "broker outage past idle",
            got,
            expected,
            [load],
            started,
            faults=f"broker SIGKILL for {outage:.0f} s with idle {IDLE_SECONDS} s, mid-window",
            seconds_to_stop=round(took, 1),
            laps=watch.laps,
        )
    finally:
        clean.close()
        fault.close()
        broker.close()
        shutil.rmtree(home, ignore_errors=True)
