"""Re-baselining: when a ``models`` event promotes a new version, the next windows of that model
are measured against the new champion's reference profile."""

from __future__ import annotations

import numpy as np
import pytest
from worker_harness import T0, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.retrainer.registry import CHAMPION
from driftline.streams.records import ModelEvent

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]


def drifted_data(n: int = 15_000) -> tuple[dict, dict, np.ndarray]:
    """Training data of the retrained model: b and d as they are now (shifted by two)."""
    big = make_batch("x", "0", 0, n, 1, drift=("b", "d"), seed=12_345)
    return dict(big.numeric), {"region": big.categorical["region"]}, big.predictions


def reports(env: WorkerEnv, model: str) -> list[dict]:
    return env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, drifted_features, n_reference "
        "FROM drift_reports FINAL WHERE model_id = {m:String} ORDER BY ws",
        m=model,
    )


def test_a_promotion_rebaselines_the_next_windows(env: WorkerEnv, unique: str) -> None:
    model = f"rebase-{unique}"
    v1 = env.register(model)
    worker = env.start_worker("w1", f"app-{unique}", "--baseline", "champion", idle_seconds=2.0)

    # two windows of traffic that drifted away from v1's training data (still tagged v1)
    for i in range(8):
        env.publish("predictions", model, make_batch(model, v1, T0 + i * 500, 125, 4, drift=("b", "d"), seed=i))
    env.flush()
    env.wait(lambda: len(reports(env, model)) >= 2, 90, "two windows against v1")
    assert [r["drifted_features"] for r in reports(env, model)] == [["b", "d"], ["b", "d"]]

    # the retrained v2 learned the new data; promoting it makes it the baseline
    v2 = env.register(model, promote=False, data=drifted_data())
    event = env.registry.promote(model, v2)
    assert isinstance(event, ModelEvent) and env.registry.alias(model, CHAMPION).version == v2
    env.publish("models", model, event)
    env.flush()
    env.wait(lambda: "models event: promoted" in worker.log_tail(200), 30, "the worker to see the promotion")

    for i in range(8, 16):
        env.publish("predictions", model, make_batch(model, v1, T0 + i * 500, 125, 4, drift=("b", "d"), seed=i))
    env.flush()
    env.wait(lambda: len(reports(env, model)) >= 4, 90, "two windows against v2")
    after = reports(env, model)[2:]
    assert [r["drifted_features"] for r in after] == [[], []]
    assert {r["n_reference"] for r in reports(env, model)[:2]} == {20_000}  # v1's training data
    assert {r["n_reference"] for r in after} == {15_000}  # v2's
