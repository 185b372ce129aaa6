"""One model fed by single events and batches, read as a backlog and read live: the same windows (issue 11).

A backlog read takes many messages in one poll, where the worker gathers the
batches and the single events of a model version apart; live, a poll holds a
few messages. Rows are judged late in the order their messages arrived, so both
reads of the same log must write the same drift metrics, profiles (mean and
std to the bit), reports and raw rows, and count the same late events in the
same windows (``drift_reports.late_events``).

Each run has its own topics and database, with the same model id and version,
so that windows sample with the same seeds and the two can be compared row by row.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import T0, WINDOW_MS, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.streams.records import PredictionEvent

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

WINDOWS = 8
LATE_EVERY = 40  # every 40th message is a single event three windows in the past


def the_log(model: str, version: str) -> tuple[list[Any], int, int]:
    """Messages in event-time order, singles and batches interleaved, over WINDOWS windows; returns them,
    the events and the late ones."""
    rng = np.random.default_rng(11)
    messages: list[Any] = []
    t, events, late = T0, 0, 0
    end = T0 + WINDOWS * WINDOW_MS - 50
    i = 0
    while t < end:
        i += 1
        if i % LATE_EVERY == 0 and t - 3 * WINDOW_MS >= T0:
            messages.append(
                PredictionEvent(
                    f"late-{i}",
                    model,
                    version,
                    t - 3 * WINDOW_MS,
                    numeric={"a": 0.5, "b": 0.1},
                    categorical={"region": "north"},
                    prediction=0.4,
                )
            )
            events, late = events + 1, late + 1
            continue
        step = int(rng.integers(1, 4))
        n = min(int(rng.integers(20, 120)), (end - t) // step)
        if rng.random() < 0.7 or n < 1:
            x = rng.normal(size=5)
            messages.append(
                PredictionEvent(
                    f"s-{i}",
                    model,
                    version,
                    t,
                    numeric=dict(zip("abcde", x.tolist())),
                    categorical={"region": str(rng.choice(["north", "south"]))},
                    prediction=float(rng.random()),
                    latency_ms=float(rng.gamma(2.0, 4.0)),
                )
            )
            events, t = events + 1, t + int(rng.integers(1, 8))
        else:
            messages.append(make_batch(model, version, t, n, step, seed=i, prefix="b"))
            events, t = events + n, t + n * step
    return messages, events, late


def second_env(kafka_settings: Any, warehouse_server: Any, tmp_path: Path, unique: str) -> WorkerEnv:
    live_tmp = tmp_path / "live"
    live_tmp.mkdir()
    settings = kafka_settings.replace(topic_prefix=f"t{unique}live.")
    return WorkerEnv.create(settings, warehouse_server.url(f"dl_{unique}_live"), live_tmp)


def bits(value: Any) -> Any:
    """Floats by their bits (NaN equal to NaN), for an exact comparison of whole rows."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else value.hex()
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [bits(v) for v in value]
    return value


def results(env: WorkerEnv, model: str) -> dict[str, Any]:
    snapshot = env.snapshot(model)
    snapshot["late"] = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, n_current, late_events FROM drift_reports FINAL "
        "WHERE model_id = {m:String} ORDER BY ws",
        m=model,
    )
    return bits(snapshot)


def test_singles_and_batches_give_the_same_windows_read_as_a_backlog_or_live(
    env: WorkerEnv, kafka_settings: Any, warehouse_server: Any, tmp_path: Path, unique: str
) -> None:
    model = f"mixed-{unique}"
    live_env = second_env(kafka_settings, warehouse_server, tmp_path, unique)
    try:
        versions = {env.register(model), live_env.register(model)}
        assert len(versions) == 1
        version = versions.pop()
        messages, events, late = the_log(model, version)
        assert late >= 5 and sum(isinstance(m, PredictionEvent) for m in messages) > 200

        # the backlog: everything is in the topic before the worker starts
        for m in messages:
            env.publish("predictions", model, m)
        env.flush()
        env.start_worker("backlog", f"app-{unique}", "--keep-late-events", idle_seconds=4.0)
        env.wait(lambda: env.windows_written(model) >= WINDOWS, 120, "the backlog's windows")

        # live: the worker is there first, the messages come one by one
        live_env.start_worker("live", f"app-{unique}-live", idle_seconds=4.0)
        time.sleep(3)  # let it join its group; it reads from the earliest offset anyway
        for m in messages:
            live_env.publish("predictions", model, m)
            live_env.flush()
            time.sleep(0.01)
        live_env.wait(lambda: live_env.windows_written(model) >= WINDOWS, 120, "the live read's windows")

        backlog, live = results(env, model), results(live_env, model)
        assert backlog["predictions"] == live["predictions"] == events  # raw rows: late ones included
        assert [r["ws"] for r in backlog["late"]] == [T0 + w * WINDOW_MS for w in range(WINDOWS)]
        assert sum(r["late_events"] for r in backlog["late"]) == late
        assert sum(r["n_current"] for r in backlog["late"]) == events - late  # nothing else left out
        for table in ("late", "reports", "drift", "profiles", "requests", "alerts"):
            assert backlog[table] == live[table], table
        # --keep-late-events (the backlog's worker only): each message with a late row also went to the
        # DLQ and rejected_events, reason late_event; the windows above are the same without it
        kept = env.query("SELECT reason, count() AS n FROM rejected_events FINAL GROUP BY reason")
        assert kept == [{"reason": "late_event", "n": late}]
        assert live_env.count("rejected_events") == 0
    finally:
        live_env.close()
