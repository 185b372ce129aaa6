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

import pytest

from driftline.settings import Settings
from worker_harness import T0, WINDOW_MS, WorkerEnv, assert_same_results, make_batch

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = 8
PER_MESSAGE = 200
MESSAGES = WINDOWS * 1_000 // PER_MESSAGE  # 1,000 events per window, one every 2 ms
PHASE_ONE = 27  # five and a half windows


def produce(env: WorkerEnv, model: str, version: str, messages: range) -> None:
    for i in messages:
        env.publish("predictions", model,
                    make_batch(model, version, T0 + i * PER_MESSAGE * 2, PER_MESSAGE, 2, drift=("b", "d"), seed=i))
    env.flush()


def sentinel(env: WorkerEnv, model: str, version: str) -> None:
    """An event far ahead, so that every window of the data closes by event time alone."""
    env.publish("predictions", model, make_batch(model, version, T0 + 10 * WINDOWS * WINDOW_MS, 1, 1, seed=999))
    env.flush()


def reports(env: WorkerEnv, model: str) -> int:
    return env.windows_written(model)


def test_kill_9_mid_window_then_restart_writes_what_a_clean_run_writes(
    kafka_settings: Settings, warehouse_server, unique: str, tmp_path: Path
) -> None:
    model = f"crash-{unique}"
    # idle closing is off: only event time closes windows, as in a replay
    worker_args = dict(window_seconds=WINDOW_MS / 1000, idle_seconds="never")

    for name in ("clean", "crash"):
        (tmp_path / name).mkdir()
    clean = WorkerEnv.create(kafka_settings.replace(topic_prefix=f"t{unique}c."),
                             warehouse_server.url(f"dl_{unique}_clean"), tmp_path / "clean")
    crashed = WorkerEnv.create(kafka_settings, warehouse_server.url(f"dl_{unique}_crash"), tmp_path / "crash")
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
        assert all(r["drifted_features"] == ["b", "d"] for r in expected["reports"])
        # one drift episode from the second window on: one retrain request, which the restarted
        # worker knows about (it rebuilt the trigger state from the windows already written)
        assert [r["reason"] for r in expected["requests"]] == ["drift"]
        assert_same_results(got, expected)
    finally:
        clean.close()
        crashed.close()
