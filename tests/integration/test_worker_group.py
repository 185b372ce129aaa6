"""Two workers in one consumer group on 4-partition topics write what one worker writes.

The second worker joins while the first is consuming, so partitions move
between them mid-stream: the first drops its state for the rebalance and
Kafka redelivers from the committed offsets.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, assert_same_results, make_batch

from driftline.settings import Settings
from driftline.streams import kafka

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = 4
PER_MESSAGE = 100
MESSAGES = WINDOWS * 500 // PER_MESSAGE  # 500 events per window and model
MODELS = 6


def produce(env: WorkerEnv, models: list[str], messages: range) -> None:
    for k, model in enumerate(models):
        drift = ("b", "d") if k % 2 else ()
        for i in messages:
            env.publish(
                "predictions",
                model,
                make_batch(model, "1", T0 + i * PER_MESSAGE * 4, PER_MESSAGE, 4, drift=drift, seed=1_000 * k + i),
            )
    env.flush()


def close_all(env: WorkerEnv, models: list[str]) -> None:
    for model in models:
        env.publish("predictions", model, make_batch(model, "1", T0 + 10 * WINDOWS * WINDOW_MS, 1, 1, seed=999))
    env.flush()


def written(env: WorkerEnv) -> int:
    return env.windows_written()


def test_two_workers_in_one_group_write_what_one_worker_writes(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    models = [f"g{k}-{unique}" for k in range(MODELS)]
    args = dict(window_seconds=WINDOW_MS / 1000, idle_seconds="never")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = WorkerEnv.create(
        kafka_settings.replace(topic_prefix=f"t{unique}one."),
        warehouse_server.url(f"dl_{unique}_one"),
        tmp_path / "one",
        partitions=4,
    )
    two = WorkerEnv.create(kafka_settings, warehouse_server.url(f"dl_{unique}_two"), tmp_path / "two", partitions=4)
    try:
        for env in (one, two):
            for model in models:
                env.register(model)
        produce(one, models, range(MESSAGES))
        close_all(one, models)
        one.start_worker("single", f"one-{unique}", **args)

        produce(two, models, range(MESSAGES // 2))
        first = two.start_worker("w1", f"two-{unique}", **args)
        two.wait(lambda: written(two) >= 1, 90, "the first worker at work")
        second = two.start_worker("w2", f"two-{unique}", **args)
        two.wait(
            lambda: '"assigned' in second.log_tail(400) and "predictions" in second.log_tail(400),
            60,
            "the second worker to get partitions",
        )
        produce(two, models, range(MESSAGES // 2, MESSAGES))
        close_all(two, models)

        for env in (one, two):
            env.wait(lambda env=env: written(env) >= WINDOWS * MODELS, 120, f"{WINDOWS * MODELS} windows")
        for model in models:
            assert_same_results(two.snapshot(model), one.snapshot(model))
        assert len(partitions(two, models)) >= 2, "the models should live in more than one partition"
        # both took part, and the first one rebuilt its state after the rebalance
        assert first.alive() and second.alive()
        assert "window g" in first.log_tail(400) and "window g" in second.log_tail(400)
        assert "state dropped for a rebalance" in first.log_tail(400)
    finally:
        one.close()
        two.close()


def partitions(env: WorkerEnv, models: list[str]) -> set[int]:
    total = MODELS * (MESSAGES + 1)
    rows = kafka.consume_records(env.settings, env.settings.topic("predictions"), total, timeout=20, decode=False)
    assert len(rows) == total
    return {r.partition for r in rows}
