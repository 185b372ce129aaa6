"""Snapshot tables (as Warehouse.training_snapshot returns them) to training arrays."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from driftline.retrainer.registry import ArtifactStore
from driftline.retrainer.snapshot import Snapshot, SnapshotError, event_time_range, infer_task
from driftline.retrainer.trainers import score, train_river_linear

T0 = 1_764_000_000_123  # milliseconds that must survive


def _table(n: int = 6, label: pa.Array | list | None = None, **features: pa.Array | list) -> pa.Table:
    times = [T0 + 1000 * ((i * 7) % n) for i in range(n)]  # not in time order
    columns = {
        "event_id": [f"e{i}" for i in range(n)],
        "model_version": ["1" if i % 2 else "2" for i in range(n)],
        "event_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
        **(features or {"x": [float(i) for i in range(n)]}),
        "prediction": [i / 10 for i in range(n)],
        "label": label if label is not None else [float(i % 2) for i in range(n)],
    }
    return pa.table(columns)


def test_columns_become_typed_arrays() -> None:
    table = _table(
        4, x=[1.0, float("nan"), 3.0, 4.0], count=pa.array([1, None, 3, 4], pa.int64()), region=["eu", None, "us", "eu"]
    )
    snap = Snapshot.from_table(table)
    data = snap.data
    assert sorted(data.numeric) == ["count", "x"] and list(data.categorical) == ["region"]
    assert data.numeric["x"].dtype == np.float64 and math.isnan(data.numeric["x"][1])
    assert math.isnan(data.numeric["count"][1]) and data.numeric["count"][3] == 4.0
    assert data.categorical["region"].tolist() == ["eu", None, "us", "eu"]
    assert data.event_time.dtype == np.int64 and data.event_time.tolist() == [T0, T0 + 3000, T0 + 2000, T0 + 1000]
    assert data.task == "classification" and data.label.tolist() == [0.0, 1.0, 0.0, 1.0]
    assert snap.served_by.tolist() == ["2", "1", "2", "1"]
    assert snap.logged.tolist() == [0.0, 0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    ("labels", "task", "values"),
    [
        (["yes", "no", "TRUE", "0"], "classification", [1.0, 0.0, 1.0, 0.0]),
        ([0.0, 1.0, 1.0, 0.0], "classification", [0.0, 1.0, 1.0, 0.0]),
        ([2.5, -1.0, 0.0, 7.0], "regression", [2.5, -1.0, 0.0, 7.0]),
    ],
)
def test_labels_are_parsed_and_the_task_inferred(labels: list, task: str, values: list) -> None:
    data = Snapshot.from_table(_table(4, label=labels)).data
    assert data.task == task and data.label.tolist() == values


def test_unlabelled_rows_are_dropped_and_counted() -> None:
    snap = Snapshot.from_table(_table(4, label=pa.array([1.0, None, 0.0, None], pa.float64())))
    assert snap.n == 2 and snap.dropped_unlabelled == 2
    assert snap.event_ids.tolist() == ["e0", "e2"] and snap.data.numeric["x"].tolist() == [0.0, 2.0]


def test_split_keeps_every_column_of_a_row_together_and_holds_out_the_newest() -> None:
    snap = Snapshot.from_table(_table(10))
    train, holdout = snap.split(0.3)
    assert holdout.n == 3 and train.n == 7
    assert holdout.data.event_time.min() > train.data.event_time.max()
    for part in (train, holdout):
        # e<i> has x = i and prediction = i / 10 in the source table
        ids = [int(e[1:]) for e in part.event_ids]
        assert part.data.numeric["x"].tolist() == [float(i) for i in ids]
        assert part.logged.tolist() == [i / 10 for i in ids]


def test_logged_scores_only_for_the_version_that_served_the_row() -> None:
    snap = Snapshot.from_table(_table(4))
    assert np.array_equal(snap.logged_scores("1"), [np.nan, 0.1, np.nan, 0.3], equal_nan=True)
    assert np.isnan(snap.logged_scores("9")).all()


def test_bad_tables_are_clear_errors() -> None:
    with pytest.raises(SnapshotError, match="no column"):
        Snapshot.from_table(_table(4).drop_columns(["label"]))
    with pytest.raises(SnapshotError, match="multiclass"):
        Snapshot.from_table(_table(4, label=["cat", "dog", "cat", "bird"]))
    with pytest.raises(SnapshotError, match="'tags' has type list"):
        Snapshot.from_table(_table(4, tags=pa.array([["a"], [], ["b"], []])))
    with pytest.raises(SnapshotError, match="binary labels"):
        Snapshot.from_table(_table(4, label=[2.0, 3.0, 1.0, 0.0]), task="classification")


def test_infer_task_and_time_range() -> None:
    assert infer_task(np.array([1.0, 0.0])) == "classification"
    assert infer_task(np.array([1.0, 0.5])) == "regression"
    assert event_time_range(_table(5)) == (T0, T0 + 4000)
    assert event_time_range(_table(5).slice(0, 0)) == (None, None)


def test_stored_snapshots_are_content_addressed_and_round_trip(tmp_path) -> None:
    store = ArtifactStore(tmp_path)
    table = _table(6, region=["a", "b", None, "a", "b", "a"])
    sha = store.put_table(table)
    assert store.put_table(_table(6, region=["a", "b", None, "a", "b", "a"])) == sha  # same rows, same object
    assert store.put_table(_table(7, region=["a"] * 7)) != sha
    again = Snapshot.from_table(store.get_table(sha))
    original = Snapshot.from_table(table)
    assert again.data.categorical["region"].tolist() == original.data.categorical["region"].tolist()
    assert again.data.event_time.tolist() == original.data.event_time.tolist()


def test_a_snapshot_with_missing_values_trains_a_model_that_scores_every_row() -> None:
    rng = np.random.default_rng(1)
    n = 600
    x = rng.normal(size=n)
    z = np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n))  # a fifth missing
    table = _table(
        n,
        label=(x > 0).astype(float).tolist(),
        x=x.tolist(),
        z=z.tolist(),
        region=[None if i % 5 == 0 else "ab"[i % 2] for i in range(n)],
    )
    snap = Snapshot.from_table(table)
    trained = train_river_linear(snap.data)
    scores = score(trained.model, snap.data)
    assert not np.isnan(scores).any()
    assert ((scores > 0.5) == (x > 0)).mean() > 0.9


def test_non_feature_columns_match_the_warehouse_adapter() -> None:
    from driftline.retrainer import snapshot
    from driftline.streams.warehouse import SNAPSHOT_COLUMNS

    assert snapshot.SNAPSHOT_COLUMNS == SNAPSHOT_COLUMNS
