"""A worker killed with SIGKILL again and again, a new one started after each kill, writes what a worker
that never crashed writes: every row of every result table, bit for bit."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from fault_harness import compare, finished, kill_after, pair, send, sized, traffic

from driftline.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

KILLS = sized(3, 10)
WINDOWS = sized(20, 25)
PER_WINDOW = sized(1_000, 8_000)  # 20,000 or 200,000 events


@pytest.mark.timeout(sized(300, 1_200))
def test_a_worker_killed_with_sigkill_again_and_again_writes_what_a_clean_run_writes(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    model = f"kill-{unique}"
    clean, fault = pair(
        kafka_settings,
        warehouse_server.url(f"dl_{unique}_clean"),
        warehouse_server.url(f"dl_{unique}_fault"),
        tmp_path,
        unique,
    )
    try:
        version = clean.register(model)
        assert fault.register(model) == version
        load = traffic(model, version, windows=WINDOWS, per_window=PER_WINDOW, drift_from=WINDOWS // 3)
        args = dict(window_seconds=load.window_seconds, idle_seconds="never")
        send(clean, load.messages)
        clean.start_worker("clean", f"clean-{unique}", **args)

        rng = np.random.default_rng(11)
        for k in range(KILLS):
            send(fault, load.part(k, KILLS + 1))
            before = fault.windows_written(model)
            worker = fault.start_worker(f"w{k}", f"fault-{unique}", **args)
            kill_after(worker, lambda before=before: fault.windows_written(model) > before, fault, rng, 120)
        send(fault, load.part(KILLS, KILLS + 1))
        fault.start_worker(f"w{KILLS}", f"fault-{unique}", **args)

        expected = finished(clean, [load], sized(120, 400))
        got = finished(fault, [load], sized(120, 400))
        compare("worker SIGKILL", got, expected, [load], started, faults=f"{KILLS} x SIGKILL")
    finally:
        clean.close()
        fault.close()
