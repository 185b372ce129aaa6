"""Labels that wait for their predictions survive a kill -9.

A label that comes before its prediction waits in the worker's memory, and
its message is acknowledged at once (it holds no window back). After a crash
Kafka does not deliver it again: the restarted worker reads such labels back
from the warehouse (the ``labels`` table, within the index's time to live,
those that no written label window counts) and they join their predictions
when these come.
"""

from __future__ import annotations

import numpy as np
import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, WorkerProcess, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.streams.core.performance import compute_performance
from driftline.streams.records import LabelEvent

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

HOUR_MS = 3_600_000


def label_windows(env: WorkerEnv, model: str) -> int:
    return env.count("performance_metrics", "model_id = {m:String} AND metric = 'n_labeled'", m=model)


def pending_gauge(worker: WorkerProcess) -> float:
    try:
        text = worker.metrics()
    except OSError:  # its web server is not up yet
        return -1.0
    for line in text.splitlines():
        if line.startswith("driftline_worker_pending_labels "):
            return float(line.split()[1])
    return -1.0


def test_labels_waiting_at_a_kill_9_join_their_predictions_after_the_restart(env: WorkerEnv, unique: str) -> None:
    model = f"waiting-{unique}"
    group = f"app-{unique}"
    version = env.register(model)
    batches = [make_batch(model, version, T0 + i * 500, 250, 2, seed=i) for i in range(8)]  # 2 windows
    rng = np.random.default_rng(5)
    labels: list[LabelEvent] = []
    for b in batches:
        y = (rng.random(b.n) < b.predictions).astype(int)  # a calibrated model
        labels += [LabelEvent(e, model, int(t) + HOUR_MS, int(v)) for e, t, v in zip(b.event_ids, b.event_times, y)]
    for label in labels:
        env.publish("labels", model, label)
    env.flush()

    first = env.start_worker("w1", group, idle_seconds=2.0)
    # every label waits, and its message is acknowledged: Kafka will not deliver it again
    env.wait(
        lambda: pending_gauge(first) == len(labels) and env.committed(group, "labels") == env.end_offsets("labels"),
        90,
        "every label waiting, its message committed",
    )
    first.kill()
    assert label_windows(env, model) == 0

    for b in batches:
        env.publish("predictions", model, b)
    env.flush()
    second = env.start_worker("w2", group, idle_seconds=2.0)
    env.wait(
        lambda: label_windows(env, model) >= 2 and env.windows_written(model) >= 2,
        90,
        "the label windows of the labels that waited",
    )
    assert f"{len(labels)} label(s) stored before wait for their predictions again" in second.log_tail(400)

    rows = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, segment, metric, value, n_labeled "
        "FROM performance_metrics FINAL WHERE model_id = {m:String} AND NOT startsWith(metric, 'latency') ORDER BY ws",
        m=model,
    )
    starts = sorted({r["ws"] for r in rows})
    assert starts == [T0 + HOUR_MS, T0 + HOUR_MS + WINDOW_MS]
    by_id = {lab.event_id: lab for lab in labels}
    for ws in starts:
        got = {(r["segment"], r["metric"]): (r["value"], r["n_labeled"]) for r in rows if r["ws"] == ws}
        # the oracle: the window's labelled predictions graded at once
        rows_in = [
            (b, i) for b in batches for i, e in enumerate(b.event_ids) if ws <= by_id[e].event_time < ws + WINDOW_MS
        ]
        assert got[("", "n_labeled")] == (float(len(rows_in)), len(rows_in)) == (1_000.0, 1_000)
        y = np.array([by_id[b.event_ids[i]].label for b, i in rows_in])
        score = np.array([b.predictions[i] for b, i in rows_in])
        expected = compute_performance(y, score, None, {"channel": [b.attributes["channel"][i] for b, i in rows_in]})
        assert {k for k in got if k != ("", "n_labeled")} == {(r.segment, r.metric) for r in expected}
        for r in expected:
            value, n = got[(r.segment, r.metric)]
            assert value == pytest.approx(r.value, rel=1e-9, abs=1e-12), (ws, r)
            assert n == r.n_labeled
    assert 'driftline_worker_events_total{outcome="joined",topic="labels"} 2000.0' in second.metrics()
