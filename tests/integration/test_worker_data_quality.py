"""A retrain requested from a data-quality alarm alone, through real Kafka and ClickHouse.

From window 3 on, a fifth of feature ``b``'s values arrive missing (NaN) while every distribution
stays as it was. The worker writes ``missing_rate`` rows of kind ``data_quality`` flagged in those
windows; the policy turns the ``data_quality`` trigger on (it is off by default) and the other
triggers off, so the one retrain request comes from the alarm, two windows in a row, and its
evidence names the feature, the metric and the rates.
"""

from __future__ import annotations

import numpy as np
import pytest
from worker_harness import INPUT_MONITORS_OFF, T0, WINDOW_MS, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.streams import kafka
from driftline.streams.records import RetrainRequest

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

PER_WINDOW = 1_000
WINDOWS = 8
BROKEN_FROM = 3  # first window whose b has missing values
MISSING = 0.2


def test_a_data_quality_alarm_requests_a_retrain_with_its_evidence(env: WorkerEnv, unique: str) -> None:
    model = f"quality-{unique}"
    version = env.register(model)
    policy = {**INPUT_MONITORS_OFF, "data_quality": {"enabled": True, "consecutive_windows": 2}}
    rng = np.random.default_rng(5)
    for w in range(WINDOWS):
        batch = make_batch(model, version, T0 + w * WINDOW_MS, PER_WINDOW, WINDOW_MS // PER_WINDOW, seed=100 + w)
        if w >= BROKEN_FROM:
            b = batch.numeric["b"].copy()
            b[rng.random(PER_WINDOW) < MISSING] = np.nan
            batch.numeric["b"] = b
        env.publish("predictions", model, batch)
    env.flush()
    worker = env.start_worker("w1", f"app-{unique}", idle_seconds=2.0, policy=policy)
    env.wait(lambda: env.windows_written(model) >= WINDOWS, 120, "every prediction window")
    assert worker.stop() == 0

    # the alarm, as written: b's data-quality rows, of their own class, flagged exactly in the broken windows
    # (every row of a feature carries the feature's decision); missing_rate is the one above its threshold
    flagged = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, feature, metric, value, threshold "
        "FROM drift_metrics FINAL WHERE model_id = {m:String} AND kind = 'data_quality' AND drifted = 1",
        m=model,
    )
    assert {r["feature"] for r in flagged} == {"b"}
    assert sorted({r["ws"] for r in flagged}) == [T0 + w * WINDOW_MS for w in range(BROKEN_FROM, WINDOWS)]
    quality = [r for r in flagged if r["value"] > r["threshold"]]
    assert {r["metric"] for r in quality} == {"missing_rate"}

    requests = [
        r.record for r in kafka.consume_records(env.settings, env.settings.topic("retrain-requests"), 5, timeout=15)
    ]
    mine = [r for r in requests if isinstance(r, RetrainRequest) and r.model_id == model]
    assert len(mine) == 1, mine  # one episode, one request
    (request,) = mine
    assert request.reason == "drift" and request.model_version == version
    # the second broken window in a row opens the episode; its evidence is the alarm of that window
    (evidence,) = request.evidence
    assert (evidence.metric, evidence.feature) == ("missing_rate", "b")
    assert (evidence.window_start, evidence.window_end) == (
        T0 + (BROKEN_FROM + 1) * WINDOW_MS,
        T0 + (BROKEN_FROM + 2) * WINDOW_MS,
    )
    written = next(r for r in quality if r["ws"] == evidence.window_start)
    assert (evidence.value, evidence.threshold) == (written["value"], written["threshold"])
    assert abs(evidence.value - MISSING) < 0.05 and evidence.threshold < evidence.value

    kinds = {r["kind"] for r in env.query("SELECT kind FROM alerts FINAL WHERE model_id = {m:String}", m=model)}
    assert kinds == {"data_quality", "retrain_requested"}
    alert = env.query(
        "SELECT message FROM alerts FINAL WHERE model_id = {m:String} AND kind = 'data_quality'", m=model
    )[0]
    assert "missing_rate(b)" in alert["message"] and "2 windows in a row" in alert["message"]
