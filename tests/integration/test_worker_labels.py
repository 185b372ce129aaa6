"""Labels arrive on their own topic long after their predictions: the worker joins them by
event_id and writes the performance of each label window, overall and per segment.

Half of the labels are on Kafka before their predictions (they wait in the
worker); the other half comes after a restart, when the predictions are no
longer in the worker's memory and are found in ClickHouse instead.
"""

from __future__ import annotations

import numpy as np
import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.streams.core.performance import compute_performance
from driftline.streams.records import LabelEvent

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

HOUR_MS = 3_600_000


def label_windows(env: WorkerEnv, model: str) -> int:
    return env.count("performance_metrics", "model_id = {m:String} AND metric = 'n_labeled'", m=model)


def test_labels_join_predictions_and_performance_is_written_per_label_window(env: WorkerEnv, unique: str) -> None:
    model = f"labels-{unique}"
    version = env.register(model)
    batches = [make_batch(model, version, T0 + i * 500, 250, 2, seed=i) for i in range(12)]  # 3 windows
    rng = np.random.default_rng(42)
    early: list[LabelEvent] = []  # an hour after their predictions, on Kafka before them
    late: list[LabelEvent] = []  # two hours after, once the worker has restarted
    for i, b in enumerate(batches):
        y = (rng.random(b.n) < b.predictions).astype(int)  # a calibrated model
        delay = HOUR_MS if i < 6 else 2 * HOUR_MS
        (early if i < 6 else late).extend(
            LabelEvent(e, model, int(t) + delay, int(v)) for e, t, v in zip(b.event_ids, b.event_times, y)
        )
    for label in early:
        env.publish("labels", model, label)
    for b in batches:
        env.publish("predictions", model, b)
    env.flush()

    first = env.start_worker("w1", f"app-{unique}", idle_seconds=2.0)
    env.wait(
        lambda: label_windows(env, model) >= 2 and env.windows_written(model) >= 3,
        90,
        "the first label windows and every prediction window",
    )
    assert first.stop() == 0

    for label in late:
        env.publish("labels", model, label)
    env.flush()
    second = env.start_worker("w2", f"app-{unique}", idle_seconds=2.0)
    env.wait(lambda: label_windows(env, model) >= 4, 90, "the label windows after the restart")
    assert env.count("labels", "model_id = {m:String}", m=model) == len(early) + len(late)

    rows = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, segment, metric, value, n_labeled "
        "FROM performance_metrics FINAL WHERE model_id = {m:String} AND NOT startsWith(metric, 'latency') ORDER BY ws",
        m=model,
    )
    starts = sorted({r["ws"] for r in rows})
    assert starts == [
        T0 + HOUR_MS,
        T0 + HOUR_MS + WINDOW_MS,
        T0 + 2 * HOUR_MS + WINDOW_MS,
        T0 + 2 * HOUR_MS + 2 * WINDOW_MS,
    ]
    labelled = {lab.event_id: lab for lab in early + late}
    for ws in starts:
        got = {(r["segment"], r["metric"]): (r["value"], r["n_labeled"]) for r in rows if r["ws"] == ws}
        # the oracle: the window's labelled predictions graded at once
        rows_in = [
            (b, i) for b in batches for i, e in enumerate(b.event_ids) if ws <= labelled[e].event_time < ws + WINDOW_MS
        ]
        y = np.array([labelled[b.event_ids[i]].label for b, i in rows_in])
        score = np.array([b.predictions[i] for b, i in rows_in])
        channel = [b.attributes["channel"][i] for b, i in rows_in]
        assert got[("", "n_labeled")] == (float(len(rows_in)), len(rows_in))
        expected = compute_performance(y, score, None, {"channel": channel})
        assert {k for k in got if k != ("", "n_labeled")} == {(r.segment, r.metric) for r in expected}
        for r in expected:
            value, n = got[(r.segment, r.metric)]
            assert value == pytest.approx(r.value, rel=1e-9, abs=1e-12), (ws, r)
            assert n == r.n_labeled
        assert ("channel=*", "accuracy_gap") in got
    # the error stream's change detector reports once per label window
    errors = env.count("drift_metrics", "model_id = {m:String} AND feature = '__error__' AND metric = 'adwin'", m=model)
    assert errors == 4
    assert 'driftline_worker_events_total{outcome="joined",topic="labels"} 1500.0' in second.metrics()
