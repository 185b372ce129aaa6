"""Two workers in one consumer group on 4-partition topics, one killed with SIGKILL mid-run: the survivor
takes its partitions over and the results equal those of one worker that nothing disturbed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fault_harness import Message, compare, finished, pair, send, sized, traffic

from driftline.settings import Settings

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

MODELS = sized(4, 8)
WINDOWS = sized(10, 20)
PER_WINDOW = sized(500, 1_250)  # 20,000 or 200,000 events in all
PARTS = 4


@pytest.mark.timeout(sized(240, 600))
def test_one_of_two_workers_in_a_group_killed_mid_run_changes_nothing(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    models = [f"group{k}-{unique}" for k in range(MODELS)]
    clean, fault = pair(
        kafka_settings,
        warehouse_server.url(f"dl_{unique}_clean"),
        warehouse_server.url(f"dl_{unique}_fault"),
        tmp_path,
        unique,
        partitions=4,
    )
    try:
        loads = []
        for k, model in enumerate(models):
            version = clean.register(model, seed=k)
            assert fault.register(model, seed=k) == version
            loads.append(
                traffic(
                    model,
                    version,
                    windows=WINDOWS,
                    per_window=PER_WINDOW,
                    drift_from=WINDOWS // 2 if k % 2 else None,
                    seed=10 + k,
                )
            )

        def part(k: int) -> list[Message]:
            return [m for load in loads for m in load.part(k, PARTS)]

        args = dict(window_seconds=loads[0].window_seconds, idle_seconds="never")
        send(clean, [m for k in range(PARTS) for m in part(k)])
        clean.start_worker("clean", f"clean-{unique}", **args)

        send(fault, part(0))
        first = fault.start_worker("w1", f"fault-{unique}", **args)
        fault.wait(lambda: fault.windows_written() >= 1, 120, "the first worker at work")
        second = fault.start_worker("w2", f"fault-{unique}", **args)
        fault.wait(
            lambda: "assigned" in second.log_tail(200) and "predictions" in second.log_tail(200),
            60,
            "the second worker to get partitions",
        )
        send(fault, part(1))
        written = fault.windows_written()
        fault.wait(lambda: fault.windows_written() > written, 120, "both workers at work")
        send(fault, part(2))
        first.kill()
        send(fault, part(3))

        expected = finished(clean, loads, sized(180, 600))
        got = finished(fault, loads, sized(180, 600))
        assert second.alive()
        compare(
            "one of two workers killed",
            got,
            expected,
            loads,
            started,
            faults="2 workers in a group, one SIGKILL",
            models=MODELS,
        )
    finally:
        clean.close()
        fault.close()
