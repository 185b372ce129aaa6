"""Crash safety: a worker killed with SIGKILL in the middle of a window, then restarted, writes
exactly what a worker that never crashed writes.

Both runs read the same events (produced in the same two phases) on their own
topics into their own ClickHouse database. The crashed run's worker is killed
as soon as it has written a few windows, while later windows are open and their
messages unacknowledged; its successor (same consumer group) resumes from the
committed offsets, skips the replayed events of windows already written, and
rebuilds the open ones. Two features drift, so the policy asks for a retrain:
the restarted worker must continue that drift episode, not start a new one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, assert_same_results, make_batch

from driftline.settings import Settings
from driftline.streams.records import LabelEvent

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = 8
PER_MESSAGE = 200
MESSAGES = WINDOWS * 1_000 // PER_MESSAGE  # 1,000 events per window, one every 2 ms
PHASE_ONE = 27  # five and a half windows


def produce(env: WorkerEnv, model: str, version: str, messages: range) -> None:
    for i in messages:
        env.publish(
            "predictions",
            model,
            make_batch(model, version, T0 + i * PER_MESSAGE * 2, PER_MESSAGE, 2, drift=("b", "d"), seed=i),
        )
    env.flush()


def sentinel(env: WorkerEnv, model: str, version: str) -> None:
    """An event far ahead, so that every window of the data closes by event time alone."""
    env.publish("predictions", model, make_batch(model, version, T0 + 10 * WINDOWS * WINDOW_MS, 1, 1, seed=999))
    env.flush()


def reports(env: WorkerEnv, model: str) -> int:
    return env.windows_written(model)


def clean_and_crashed(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> tuple[WorkerEnv, WorkerEnv]:
    """Two runs of the same events on their own topics and ClickHouse databases: one never crashes."""
    for name in ("clean", "crash"):
        (tmp_path / name).mkdir()
    clean = WorkerEnv.create(
        kafka_settings.replace(topic_prefix=f"t{unique}c."),
        warehouse_server.url(f"dl_{unique}_clean"),
        tmp_path / "clean",
    )
    crashed = WorkerEnv.create(kafka_settings, warehouse_server.url(f"dl_{unique}_crash"), tmp_path / "crash")
    return clean, crashed


def test_kill_9_mid_window_then_restart_writes_what_a_clean_run_writes(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    model = f"crash-{unique}"
    # idle closing is off: only event time closes windows, as in a replay
    worker_args = dict(window_seconds=WINDOW_MS / 1000, idle_seconds="never")

    clean, crashed = clean_and_crashed(kafka_settings, warehouse_server, unique, tmp_path)
    try:
        for env in (clean, crashed):
            version = env.register(model)
            produce(env, model, version, range(PHASE_ONE))

        clean.start_worker("clean", f"clean-{unique}", **worker_args)
        first = crashed.start_worker("first", f"crash-{unique}", **worker_args)
        crashed.wait(lambda: reports(crashed, model) >= 3, 90, "three windows written before the crash")
        first.kill()
        written_at_crash = reports(crashed, model)
        assert written_at_crash < WINDOWS

        for env in (clean, crashed):
            produce(env, model, version, range(PHASE_ONE, MESSAGES))
            sentinel(env, model, version)
        crashed.start_worker("second", f"crash-{unique}", **worker_args)

        for env in (clean, crashed):
            env.wait(lambda env=env: reports(env, model) >= WINDOWS, 90, f"{WINDOWS} windows")
        assert "windows up to" in crashed.workers[-1].log_tail(200)  # it did skip replayed events
        got, expected = crashed.snapshot(model), clean.snapshot(model)
        assert len(expected["reports"]) == WINDOWS
        assert [r["n_current"] for r in expected["reports"]] == [1_000] * WINDOWS
        # b and d drift in every window; a stationary feature may be flagged now and then (the
        # decision's level is per feature and window), and the crashed run must flag it too
        assert all({"b", "d"} <= set(r["drifted_features"]) for r in expected["reports"])
        assert sum(len(r["drifted_features"]) - 2 for r in expected["reports"]) <= 2
        # one drift episode from the second window on: one retrain request, which the restarted
        # worker knows about (it rebuilt the trigger state from the windows already written)
        assert [r["reason"] for r in expected["requests"]] == ["drift"]
        assert_same_results(got, expected)
    finally:
        clean.close()
        crashed.close()


# -- change detectors and labels across a crash ------------------------------------------------------------

SHIFT_FROM = 25  # the first message of window 5: from there on the score and the error rate are higher


def produce_scored(env: WorkerEnv, model: str, version: str, messages: range) -> None:
    """Predictions whose score shifts at window 5 (feature ``a`` moves it), each message followed by its labels:
    a calibrated model before the shift, a model that is mostly wrong after it."""
    for i in messages:
        batch = make_batch(
            model, version, T0 + i * PER_MESSAGE * 2, PER_MESSAGE, 2, drift=("a",) if i >= SHIFT_FROM else (), seed=i
        )
        env.publish("predictions", model, batch)
        drawn = np.random.default_rng(1_000 + i).random(batch.n) < batch.predictions
        y = np.where(drawn, 1, 0) if i < SHIFT_FROM else np.where(drawn, 0, 1)
        for event_id, t, label in zip(batch.event_ids, batch.event_times.tolist(), y.tolist()):
            env.publish("labels", model, LabelEvent(event_id, model, int(t), int(label)))
    env.flush()


def sentinel_labelled(env: WorkerEnv, model: str, version: str) -> None:
    """A prediction and its label far ahead: every prediction and label window of the data closes."""
    batch = make_batch(model, version, T0 + 10 * WINDOWS * WINDOW_MS, 1, 1, seed=999)
    env.publish("predictions", model, batch)
    env.publish("labels", model, LabelEvent(batch.event_ids[0], model, int(batch.event_times[0]), 1))
    env.flush()


def label_windows(env: WorkerEnv, model: str) -> int:
    return env.count("performance_metrics", "model_id = {m:String} AND metric = 'n_labeled'", m=model)


def performance(env: WorkerEnv, model: str) -> list[dict]:
    return env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, segment, metric, value, n_labeled FROM performance_metrics "
        "FINAL WHERE model_id = {m:String} AND NOT startsWith(metric, 'latency') ORDER BY ws, segment, metric",
        m=model,
    )


def alarms(snapshot: dict, feature: str) -> dict[int, float]:
    return {r["ws"]: r["value"] for r in snapshot["drift"] if r["metric"] == "adwin" and r["feature"] == feature}


def test_change_detectors_and_labels_resume_after_kill_9_as_if_nothing_happened(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    """The score and the error rate change right after the crash: detectors that restarted empty would
    see only the new level and stay quiet; resumed from the last written windows they fire where the
    clean run's do."""
    model = f"detect-{unique}"
    worker_args = dict(window_seconds=WINDOW_MS / 1000, idle_seconds="never")
    clean, crashed = clean_and_crashed(kafka_settings, warehouse_server, unique, tmp_path)
    try:
        for env in (clean, crashed):
            version = env.register(model)
            produce_scored(env, model, version, range(PHASE_ONE))

        clean.start_worker("clean", f"clean-{unique}", **worker_args)
        first = crashed.start_worker("first", f"crash-{unique}", **worker_args)
        # windows 0 to 4 of both kinds are written, window 5 (two of its five messages) is open
        crashed.wait(
            lambda: reports(crashed, model) >= 5 and label_windows(crashed, model) >= 5,
            90,
            "five prediction and five label windows written before the crash",
        )
        first.kill()
        assert (reports(crashed, model), label_windows(crashed, model)) == (5, 5)

        for env in (clean, crashed):
            produce_scored(env, model, version, range(PHASE_ONE, MESSAGES))
            sentinel_labelled(env, model, version)
        crashed.start_worker("second", f"crash-{unique}", **worker_args)
        for env in (clean, crashed):
            env.wait(
                lambda env=env: reports(env, model) >= WINDOWS and label_windows(env, model) >= WINDOWS,
                120,
                f"{WINDOWS} prediction and label windows",
            )

        got, expected = crashed.snapshot(model), clean.snapshot(model)
        shift = T0 + 5 * WINDOW_MS
        for feature in ("__prediction__", "__error__"):
            fired = alarms(expected, feature)
            assert len(fired) == WINDOWS
            assert all(n == 0 for ws, n in fired.items() if ws < shift), (feature, fired)
            assert sum(n for ws, n in fired.items() if ws >= shift) >= 1, (feature, fired)
            assert alarms(got, feature) == fired, feature
        assert_same_results(got, expected)
        got_perf, expected_perf = performance(crashed, model), performance(clean, model)
        assert [(r["ws"], r["segment"], r["metric"], r["n_labeled"]) for r in got_perf] == [
            (r["ws"], r["segment"], r["metric"], r["n_labeled"]) for r in expected_perf
        ]
        assert sum(r["n_labeled"] for r in expected_perf if r["metric"] == "n_labeled") == WINDOWS * 1_000
        for g, e in zip(got_perf, expected_perf):
            # the rows of a label window may be added in another order after the crash: sums differ in the last bits
            assert g["value"] == pytest.approx(e["value"], rel=1e-12, abs=1e-12, nan_ok=True), (g, e)
        log = crashed.workers[-1].log_tail(400)
        assert "change detectors of the score stream resumed" in log
        assert "change detectors of the error stream resumed" in log
    finally:
        clean.close()
        crashed.close()
