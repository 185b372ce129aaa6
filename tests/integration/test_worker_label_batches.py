"""Labels packed in LabelBatch messages join their predictions through real Kafka and ClickHouse and give
the same performance rows as the same labels sent one LabelEvent each; a bad batch goes whole to the DLQ.

Two models with the same reference and the same predictions: one gets its labels one a message, the
other the same labels as one LabelBatch per prediction batch. Half of the labels are on Kafka before
their predictions (they wait in the worker), half after.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastavro import schemaless_writer
from worker_harness import T0, WorkerEnv, env, make_batch  # noqa: F401 (env: the fixture)

from driftline.streams.codec import default_codec
from driftline.streams.records import LabelBatch, LabelEvent

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

HOUR_MS = 3_600_000


def performance(env: WorkerEnv, model: str) -> list[tuple]:
    rows = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, toUnixTimestamp64Milli(window_end) AS we, segment, "
        "metric, value, n_labeled FROM performance_metrics FINAL WHERE model_id = {m:String} "
        "ORDER BY ws, segment, metric",
        m=model,
    )
    return [(r["ws"], r["we"], r["segment"], r["metric"], r["value"], r["n_labeled"]) for r in rows]


def test_a_label_batch_gives_the_rows_of_its_labels_sent_one_by_one(env: WorkerEnv, unique: str) -> None:
    single, packed = f"single-{unique}", f"packed-{unique}"
    versions = {model: env.register(model) for model in (single, packed)}
    batches = {
        model: [make_batch(model, versions[model], T0 + i * 500, 250, 2, seed=i) for i in range(12)]  # 3 windows
        for model in (single, packed)
    }
    rng = np.random.default_rng(7)
    labels: list[list[tuple[str, int, int]]] = []  # per prediction batch: (event_id, label time, label)
    for b in batches[single]:
        y = (rng.random(b.n) < b.predictions).astype(int)
        labels.append([(e, int(t) + HOUR_MS, int(v)) for e, t, v in zip(b.event_ids, b.event_times, y)])

    def send_labels(part: list[list[tuple[str, int, int]]]) -> None:
        for rows in part:
            for e, t, v in rows:
                env.publish("labels", single, LabelEvent(e, single, t, v))
            env.publish("labels", packed, LabelBatch.from_events([LabelEvent(e, packed, t, v) for e, t, v in rows]))

    send_labels(labels[:6])
    for model in (single, packed):
        for b in batches[model]:
            env.publish("predictions", model, b)
    send_labels(labels[6:])
    # a batch whose string_labels do not hold one item per label: refused whole, its labels unused
    writer = default_codec().schemas.current("LabelBatch")
    bad = io.BytesIO(writer.header)
    bad.seek(0, io.SEEK_END)
    schemaless_writer(
        bad,
        writer.parsed,
        {
            "model_id": packed,
            "event_ids": ["x1", "x2"],
            "event_times": np.array([T0, T0], "<i8").tobytes(),
            "numeric_labels": np.array([np.nan, np.nan]).tobytes(),
            "string_labels": ["fraud"],
        },
    )
    env.publish_raw("labels", packed, bad.getvalue())
    env.flush()

    topic = env.settings.topic("labels")
    # idle windows close only once every message is read: a label is never late here, however slow the machine
    worker = env.start_worker("w1", f"app-{unique}", idle_seconds=20.0)

    def settled() -> bool:
        rows = performance(env, single)
        refused = env.count("rejected_events", "source_topic = {t:String}", t=topic)
        other = performance(env, packed)
        label_windows = {r[0] for r in rows if r[3] == "n_labeled"}
        return len(label_windows) == 3 and refused == 1 and other == rows

    env.wait(settled, 240, "three label windows of each model, with the same rows, and the refused batch")
    assert worker.stop() == 0

    assert env.count("labels", "model_id = {m:String}", m=packed) == sum(len(rows) for rows in labels)
    assert env.count("labels", "model_id = {m:String}", m=packed) == env.count(
        "labels", "model_id = {m:String}", m=single
    )
    [refused] = env.query("SELECT reason, detail FROM rejected_events WHERE source_topic = {t:String}", t=topic)
    assert refused["reason"] == "column_length" and "string_labels" in refused["detail"]
