"""The streams worker end to end: real Kafka, the embedded ClickHouse server, a SQLite registry.

A backfill of four 2-second windows in which features ``b`` and ``d`` drift:
the worker, started after the events were produced (a new consumer group
reads from the earliest offset), writes ``drifted=1`` rows for exactly those
two features and ``drifted=0`` rows for the others, publishes the
DriftReports, asks for a retrain, and sends bad messages to the DLQ.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from http_receiver import Receiver
from worker_harness import FEATURES, T0, WINDOW_MS, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.records import DriftReport, FeatureBatch, PredictionEvent, RetrainRequest

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

PER_WINDOW = 500
WINDOWS = 4


def test_two_drifting_features_are_flagged_and_bad_messages_go_to_the_dlq(env: WorkerEnv, unique: str) -> None:
    model = f"credit-{unique}"
    version = env.register(model)
    good = 0
    for w in range(WINDOWS):
        for part in range(5):  # five batches of 100 per window, as the SDK would send them
            start = T0 + w * WINDOW_MS + part * 400
            env.publish(
                "predictions", model, make_batch(model, version, start, 100, 4, drift=("b", "d"), seed=100 * w + part)
            )
            good += 100
        if w == 1:  # bad messages between good ones; they must not disturb them
            env.publish_raw("predictions", model, b"\x07 not a driftline message")
            env.publish_raw(
                "predictions",
                model,
                json.dumps(
                    {
                        "event_id": "inf-1",
                        "model_id": model,
                        "model_version": version,
                        "event_time": T0 + 2_500,
                        "numeric": {"a": math.inf},
                        "prediction": 0.5,
                    }
                ).encode(),
            )  # json writes inf as Infinity
            env.publish(
                "predictions",
                model,
                PredictionEvent("future-1", model, version, 4_102_444_800_000, numeric={"a": 0.1}, prediction=0.3),
            )
            env.publish("predictions", "nobody", make_batch("nobody", "1", T0 + 2_600, 10, 4, seed=7))
        if w == 2:  # an event of window 0, long closed by then: late, counted, left out
            env.publish("predictions", model, make_batch(model, version, T0 + 100, 3, 1, seed=5, prefix="late"))
    # inputs logged without predictions, for another model: they count for its features, not its output
    features = f"inputs-{unique}"
    env.register(features)
    for part in range(2):
        batch = make_batch(features, "1", T0 + part * 1_000, 200, 5, seed=50 + part)
        env.publish(
            "features",
            features,
            FeatureBatch(
                features, "1", batch.event_ids, batch.event_times, batch.numeric, batch.categorical, batch.attributes
            ),
        )
    env.flush()

    chat = Receiver()  # alerts also go to a Slack-compatible webhook
    worker = env.start_worker("w1", f"app-{unique}", extra_env={"DRIFTLINE_ALERT_WEBHOOK": chat.url})
    env.wait(lambda: env.windows_written(model) >= WINDOWS, 90, "four windows written")

    rows = env.query(
        "SELECT feature, toUnixTimestamp64Milli(window_start) AS ws, max(drifted) AS high, min(drifted) AS low, "
        "any(n_current) AS n FROM drift_metrics FINAL WHERE model_id = {m:String} "
        # the per-window distribution decision: data quality and the slow-drift evidence (trend_evidence)
        # are alarms of their own
        "AND kind = 'drift' AND metric NOT IN ('adwin', 'trend_evidence') "
        "GROUP BY feature, ws ORDER BY ws, feature",
        m=model,
    )
    windows = sorted({r["ws"] for r in rows})
    assert windows == [T0 + i * WINDOW_MS for i in range(WINDOWS)]
    for ws in windows:
        flagged = {r["feature"] for r in rows if r["ws"] == ws and r["high"]}
        calm = {r["feature"] for r in rows if r["ws"] == ws and not r["high"]}
        assert flagged == {"b", "d"}, f"window {ws}"
        assert calm == {"a", "c", "e", "region", "__prediction__"}, f"window {ws}"
        assert {r["n"] for r in rows if r["ws"] == ws} == {PER_WINDOW}
    # every metric row of a feature carries the feature's decision of its alarm class (drift, data_quality)
    classes = env.query(
        "SELECT feature, kind, toUnixTimestamp64Milli(window_start) AS ws, max(drifted) AS high, min(drifted) AS low "
        "FROM drift_metrics FINAL WHERE model_id = {m:String} AND metric NOT IN ('adwin') "
        "GROUP BY feature, kind, ws",
        m=model,
    )
    assert {r["kind"] for r in classes} == {"drift", "data_quality"}
    assert all(r["high"] == r["low"] for r in classes)

    profiles = env.query(
        "SELECT feature, count() AS n, sum(count) AS events FROM window_profiles FINAL WHERE model_id = {m:String} "
        "GROUP BY feature ORDER BY feature",
        m=model,
    )
    assert {r["feature"]: (r["n"], r["events"]) for r in profiles} == {
        f: (WINDOWS, WINDOWS * PER_WINDOW) for f in (*FEATURES, "region", "__prediction__")
    }
    latency = env.count("performance_metrics", "model_id = {m:String} AND metric = 'latency_p95'", m=model)
    assert latency == WINDOWS
    assert env.count("predictions", "model_id = {m:String}", m=model) == good + 3  # raw rows include the late ones

    env.wait(lambda: env.windows_written(features) == 1, 30, "the inputs' window")
    logged = env.query("SELECT feature, n_current FROM drift_metrics FINAL WHERE model_id = {m:String}", m=features)
    assert {r["feature"] for r in logged} == {*FEATURES, "region"} and {r["n_current"] for r in logged} == {400}

    # the inputs model's window is a report too, written whenever its messages were handled
    reports = [
        r.record for r in kafka.consume_records(env.settings, env.settings.topic("drift"), WINDOWS + 1, timeout=30)
    ]
    assert sorted(
        (r.window_start, tuple(r.drifted_features), r.n_current)
        for r in reports
        if isinstance(r, DriftReport) and r.model_id == model
    ) == [(T0 + i * WINDOW_MS, ("b", "d"), PER_WINDOW) for i in range(WINDOWS)]

    # the default policy: two drifted features in two windows in a row ask for one retrain
    requests = [
        r.record for r in kafka.consume_records(env.settings, env.settings.topic("retrain-requests"), 1, timeout=20)
    ]
    assert len(requests) == 1 and isinstance(requests[0], RetrainRequest)
    assert requests[0].reason == "drift" and requests[0].model_id == model
    assert {e.feature for e in requests[0].evidence} == {"b", "d"}
    assert env.count("retrain_requests", "model_id = {m:String}", m=model) == 1
    kinds = {r["kind"] for r in env.query("SELECT kind FROM alerts FINAL WHERE model_id = {m:String}", m=model)}
    # a sustained shift is also a trend: the slow-drift evidence of b and d crosses its alarm level
    assert kinds == {"drift", "trend", "retrain_requested"}
    env.wait(lambda: len(chat.bodies) >= 2, 30, "alerts posted to the webhook")
    posted = [b["text"] for b in chat.bodies]
    assert any(f"{model} v{version} drift:" in t for t in posted)
    assert any(f"{model} v{version} retrain_requested:" in t for t in posted)
    chat.shutdown()

    dead = kafka.consume_records(env.settings, env.settings.topic("dlq"), 4, timeout=20, decode=False)
    by_reason = {d.headers["driftline-error"].decode(): d for d in dead}
    assert set(by_reason) == {"unknown_encoding", "invalid_value", "future_event_time", "unknown_model"}
    assert by_reason["unknown_encoding"].value == b"\x07 not a driftline message"
    assert all(d.headers["driftline-source-topic"] == env.settings.topic("predictions").encode() for d in dead)
    rejected = env.query(
        "SELECT reason, model_id FROM rejected_events FINAL WHERE source_topic = {t:String}",
        t=env.settings.topic("predictions"),
    )
    assert sorted(r["reason"] for r in rejected) == sorted(by_reason)
    assert {r["model_id"] for r in rejected if r["reason"] == "unknown_model"} == {"nobody"}

    # every window was written, so every message was acknowledged and its offset committed
    env.wait(
        lambda: env.committed(f"app-{unique}", "predictions") == env.end_offsets("predictions"),
        30,
        "committed offsets at the end of the topic",
    )
    metrics = env.wait(
        lambda: (m := worker.metrics()) and "driftline_worker_consumer_lag{" in m and m, 30, "the lag gauge"
    )
    assert 'driftline_worker_dlq_messages_total{reason="unknown_model"} 1.0' in metrics
    assert f'driftline_worker_events_total{{outcome="accepted",topic="predictions"}} {float(good)}' in metrics
    assert 'driftline_worker_events_total{outcome="late",topic="predictions"} 3.0' in metrics
    assert 'driftline_worker_events_total{outcome="accepted",topic="features"} 400.0' in metrics
    assert f'driftline_worker_consumer_lag{{partition="0",topic="{env.settings.topic("predictions")}"}} 0.0' in metrics
    assert "driftline_worker_window_flush_seconds_count" in metrics
    assert "driftline_worker_unacked_messages 0.0" in metrics
    assert worker.stop() == 0, worker.log_tail()


def test_input_topics_with_different_partition_counts_are_refused(kafka_settings: Settings, tmp_path: Path) -> None:
    kafka.ensure_topics(kafka_settings, ["predictions"], partitions=2)
    kafka.ensure_topics(kafka_settings, ["features", "labels"], partitions=1)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "--kafka",
            kafka_settings.kafka_bootstrap,
            "--topic-prefix",
            kafka_settings.topic_prefix,
            "--warehouse",
            "http://127.0.0.1:1/none",
            "worker",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "DRIFTLINE_KAFKA_JARS"},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "same number of partitions" in done.stderr and kafka_settings.topic("predictions") in done.stderr
