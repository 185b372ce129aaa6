"""A warehouse outage longer than the old retry budget (about 35 s) is waited out, never fatal.

The embedded ClickHouse server of this test is killed for 60 s while ``driftline worker`` has
events to write, and started again on the same port and data directory. The worker must not
exit, must say so in ``/metrics`` (``driftline_warehouse_up`` 0, then 1) and in its log (one
warning, one line at recovery), and must end with the same rows as a clean run of the same input.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from test_worker_poison import _second_env, clean_run, start_half
from worker_harness import (  # noqa: F401 (env: the fixture)
    WINDOW_MS,
    PrivateWarehouse,
    WorkerEnv,
    assert_same_results,
    env,
)

from driftline.settings import Settings
from driftline.streams.codec import default_codec

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

OUTAGE_SECONDS = 60.0


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())


def test_a_warehouse_outage_longer_than_the_old_retry_budget_is_waited_out(
    env: WorkerEnv, kafka_settings: Settings, tmp_path: Path, unique: str
) -> None:
    windows = 6
    singles, batches, version, good, expected = clean_run(env, unique, windows)

    server_root = tmp_path / "outage-server"
    server_root.mkdir()
    server = PrivateWarehouse(server_root)
    outage: WorkerEnv | None = None
    try:
        outage = _second_env(kafka_settings, server.url(f"dl_{unique}"), tmp_path / "outage", "outage")
        worker = start_half(outage, unique, version, (singles, batches), good)
        half = len(good) // 2

        server.stop(signal.SIGKILL)
        down_at = time.monotonic()
        for value in good[half:]:  # the rest arrives while the warehouse is down
            outage.publish_raw("predictions", "k", value)
        outage.flush()
        seen_down = False
        while time.monotonic() - down_at < OUTAGE_SECONDS:
            assert worker.alive(), outage.logs()
            metrics = worker.metrics()
            if _metric(metrics, "driftline_warehouse_up") == 0.0:
                seen_down = True
                assert _metric(metrics, "driftline_warehouse_outage_seconds") > 0
                assert _health(worker.web_port)["warehouse"]["up"] is False
            time.sleep(2)
        assert seen_down, outage.logs()
        assert worker.alive(), outage.logs()
        server.start()

        outage.wait(lambda: outage.windows_written() >= 2 * windows, 180, "every window after the outage")
        assert worker.alive()
        for m in (singles, batches):
            assert_same_results(outage.snapshot(m), expected[m])
        metrics = worker.metrics()
        assert _metric(metrics, "driftline_warehouse_up") == 1.0
        assert _metric(metrics, "driftline_warehouse_outages_total") >= 1.0
        health = _health(worker.web_port)
        assert health["warehouse"]["up"] is True and health["warehouse"]["outages"] >= 1
        assert health["threads"]["driftline-models"]["state"] == "running"
        log = worker.log_path.read_text()
        assert log.count('"outage": "start"') >= 1 and log.count('"outage": "end"') >= 1
        assert "the worker stops" not in log
    finally:
        if outage is not None:
            outage.close()
        server.close()


def test_a_worker_stopped_during_an_outage_exits_at_once_and_commits_nothing_unwritten(
    env: WorkerEnv, kafka_settings: Settings, tmp_path: Path, unique: str
) -> None:
    from test_worker_poison import two_models

    server_root = tmp_path / "outage-server"
    server_root.mkdir()
    server = PrivateWarehouse(server_root)
    outage: WorkerEnv | None = None
    try:
        outage = _second_env(kafka_settings, server.url(f"dl_{unique}"), tmp_path / "outage", "outage")
        _, _, version, good = two_models(outage, unique, 4)
        worker = start_half(outage, unique, version, (), [v for _, v in good])
        server.stop(signal.SIGKILL)
        for _, value in good[len(good) // 2 :]:
            outage.publish_raw("predictions", "k", value)
        outage.flush()
        outage.wait(lambda: _metric(worker.metrics(), "driftline_warehouse_up") == 0.0, 60, "the outage to be seen")
        started = time.monotonic()
        assert worker.stop(timeout=30) == 0  # SIGTERM: a clean stop, not a crash
        assert time.monotonic() - started < 20
        # nothing whose rows were not written was acknowledged: every event before the commit is in
        server.start()
        committed = outage.committed(f"outage-{unique}", "predictions").get(0, -1)
        assert 0 < committed <= len(good) // 2
        codec = default_codec()
        ids = set()
        for _, value in good[:committed]:
            record = codec.decode(value)
            ids.update(record.event_ids if hasattr(record, "event_ids") else [record.event_id])
        stored = {r["event_id"] for r in outage.query("SELECT event_id FROM predictions")}
        assert ids <= stored
    finally:
        if outage is not None:
            outage.workers.clear()  # stopped above
            outage.producer.flush(10)
            outage.warehouse.close()
        server.close()
