"""The broker stopped for 15 s (SIGTERM, and separately SIGKILL) and started again: ``driftline worker``
rides it out, and ends with the same rows as a clean run of the same input.

The test has a broker of its own (the session's is shared), on a fixed port and data directory, so
that it can be stopped and started again where the worker expects it.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from test_worker_poison import clean_run, start_half
from worker_harness import REPO, WorkerEnv, assert_same_results, env  # noqa: F401 (env: the fixture)

from driftline.settings import Settings
from driftline.stack.kafka_local import KafkaBroker
from driftline.stack.process import free_port
from driftline.streams import kafka

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

DOWN_SECONDS = 15.0


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_broker_down_for_15_seconds_is_ridden_out(
    env: WorkerEnv, warehouse_url: str, tmp_path: Path, unique: str, how: str
) -> None:
    windows = 6
    singles, batches, version, good, expected = clean_run(env, unique, windows)

    home = REPO / ".driftline" / f"test-broker-{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker(home, port=free_port(), controller_port=free_port(), jars=REPO / ".driftline" / "kafka-jars")
    broker.start()
    outage: WorkerEnv | None = None
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix=f"b{unique}.")
        (tmp_path / "outage").mkdir()
        outage = WorkerEnv.create(settings, f"{warehouse_url}_broker", tmp_path / "outage")
        worker = start_half(outage, unique, version, (singles, batches), good)
        half = len(good) // 2

        if how == "SIGKILL":
            pid = broker.process.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            broker.process.stop(5)  # reaps it
        else:
            broker.stop(30)
        down_at = time.monotonic()
        for value in good[half:]:  # queued by the test's producer, sent once the broker is back
            kafka.produce(outage.producer, outage.settings.topic("predictions"), value, "k")
        while time.monotonic() - down_at < DOWN_SECONDS:
            assert worker.alive(), outage.logs()
            time.sleep(1)
        broker.start()
        outage.flush()

        outage.wait(lambda: outage.windows_written() >= 2 * windows, 180, "every window after the broker came back")
        assert worker.alive()
        for m in (singles, batches):
            assert_same_results(outage.snapshot(m), expected[m])
        assert "the worker stops" not in worker.log_path.read_text()
    finally:
        if outage is not None:
            outage.close()
        broker.stop(10)
        shutil.rmtree(home, ignore_errors=True)
