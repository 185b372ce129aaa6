"""Idle model versions release their state (issue 15, item 4), through real Kafka and ClickHouse.

Two runs read the same events, produced at the same moments, on their own topics into their own
ClickHouse databases: one worker keeps every model version in memory, the other releases a version
silent for ``RELEASE_S`` (``--release-idle-seconds``). Model ``busy`` sends a message every half second
throughout; model ``quiet`` sends four windows, is silent for far longer than the release time, then
resumes. The releasing worker must say it released ``quiet`` and resumed its change detectors from the
warehouse, and both runs must write the same rows, bit for bit.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from worker_harness import T0, WINDOW_MS, RunResults, WorkerEnv, make_batch

from driftline.settings import Settings
from driftline.streams.records import PredictionBatch

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

PER_MESSAGE = 250  # 1,000 events per 2-second window, one every 2 ms
IDLE_S = 5.0  # an idle model's last window closes after this long
RELEASE_S = 12.0
SILENCE_S = 25.0  # how long "quiet" is silent, with "busy" going on
# An idle model's event clock runs on with the wall clock, so each model comes back far ahead in event
# time (of any wall-clock wait): no event of either run is late, whatever the pace of the machine.
BUSY_BACK = 240  # message index (2 minutes of event time) where "busy" goes on after the first windows
QUIET_BACK = 600  # where "quiet" comes back (5 minutes)


def message(model: str, version: str, i: int) -> PredictionBatch:
    # the score shifts (feature "a") after the first windows, so the detectors carry state across the silence
    return make_batch(
        model, version, T0 + i * PER_MESSAGE * 2, PER_MESSAGE, 2, drift=("a", "b") if i >= 16 else (), seed=i
    )


def test_a_silent_version_is_released_and_resumes_with_identical_rows(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    busy, quiet = f"busy-{unique}", f"quiet-{unique}"
    runs = {}
    for name in ("kept", "released"):
        (tmp_path / name).mkdir()
        runs[name] = WorkerEnv.create(
            kafka_settings.replace(topic_prefix=f"t{unique}{name[0]}."),
            warehouse_server.url(f"dl_{unique}_{name}"),
            tmp_path / name,
        )
    kept, released = runs["kept"], runs["released"]
    versions = {}
    try:
        for env in runs.values():
            versions = {model: env.register(model, seed=k) for k, model in enumerate((busy, quiet))}

        def publish(model: str, messages: range) -> None:
            for env in runs.values():
                for i in messages:
                    env.publish("predictions", model, message(model, versions[model], i))
                env.flush()

        publish(busy, range(16))  # windows 0-3 of both
        publish(quiet, range(16))
        args = dict(window_seconds=WINDOW_MS / 1000, idle_seconds=IDLE_S)
        kept.start_worker("kept", f"kept-{unique}", **args)
        worker = released.start_worker(
            "released", f"released-{unique}", "--release-idle-seconds", str(RELEASE_S), **args
        )
        for env in runs.values():
            env.wait(lambda env=env: env.windows_written(quiet) >= 4, 120, "quiet's four windows")

        # "busy" goes on, a message (half a second of events) every half second; "quiet" is silent
        started, i = time.monotonic(), BUSY_BACK
        while time.monotonic() - started < SILENCE_S:
            publish(busy, range(i, i + 1))
            i += 1
            time.sleep(0.5)
        released.wait(lambda: f"{quiet} v{versions[quiet]}: idle for" in worker.log_tail(400), 30, "quiet released")

        publish(quiet, range(QUIET_BACK, QUIET_BACK + 16))  # four more windows, its score shifted
        publish(busy, range(i, i + 4))
        busy_windows = len({m // 4 for m in [*range(16), *range(BUSY_BACK, i + 4)]})
        for env in runs.values():
            env.wait(lambda env=env: env.windows_written(quiet) >= 8, 120, "quiet's eight windows")
            env.wait(lambda env=env: env.windows_written(busy) >= busy_windows, 120, "busy's windows")
        log = worker.log_tail(2_000)
        assert f"{quiet} v{versions[quiet]}: change detectors of the score stream resumed" in log
        assert f"{busy} v{versions[busy]}: idle for" not in log.split(f"{quiet} v{versions[quiet]}: idle for")[0]

        got, expected = RunResults.read(released, [busy, quiet]), RunResults.read(kept, [busy, quiet])
        assert expected.rows > 100
        assert got.differences(expected) == []
    finally:
        for env in runs.values():
            env.close()
