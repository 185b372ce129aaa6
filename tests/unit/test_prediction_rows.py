"""``predictions_table`` builds all batches' rows at once: each row must hold what its own batch says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from driftline.streams.records import PredictionBatch
from driftline.streams.warehouse.rows import predictions_table


def _batches() -> list[PredictionBatch]:
    return [
        PredictionBatch(
            "credit",
            "3",
            ["a", "b"],
            np.array([10, 20]),
            numeric={"x": np.array([1.0, np.nan]), "y": np.array([2.0, 3.0])},
            categorical={"c": ["red", None]},
            predictions=np.array([0.5, np.nan]),
            predicted_labels=["yes", None],
            latency_ms=np.array([4.0, 5.0]),
            attributes={"tier": ["gold", "silver"]},
        ),
        PredictionBatch("fraud", "1", ["c"], np.array([30]), numeric={"z": np.array([7.0])}),
        PredictionBatch(
            "credit", "4", ["d"], np.array([40]), categorical={"c": ["blue"], "d": [None]}, predictions=np.array([0.1])
        ),
    ]


def test_each_row_keeps_its_own_batch_columns() -> None:
    rows = predictions_table(_batches()).to_pylist()
    assert [(r["event_id"], r["model_id"], r["model_version"]) for r in rows] == [
        ("a", "credit", "3"),
        ("b", "credit", "3"),
        ("c", "fraud", "1"),
        ("d", "credit", "4"),
    ]
    numeric = [[(k, None if math.isnan(v) else v) for k, v in r["numeric"]] for r in rows]
    assert numeric == [[("x", 1.0), ("y", 2.0)], [("x", None), ("y", 3.0)], [("z", 7.0)], []]
    assert [r["categorical"] for r in rows] == [[("c", "red")], [], [], [("c", "blue")]]
    assert [r["attributes"] for r in rows] == [[("tier", "gold")], [("tier", "silver")], [], []]
    assert [r["prediction"] for r in rows] == [0.5, None, None, 0.1]
    assert [r["predicted_label"] for r in rows] == ["yes", None, None, None]
    assert [r["latency_ms"] for r in rows] == [4.0, 5.0, None, None]
    assert [r["event_time"].timestamp() * 1000 for r in rows] == [10, 20, 30, 40]


def test_one_batch_at_a_time_gives_the_same_rows() -> None:
    together = predictions_table(_batches()).to_pylist()
    alone = [row for b in _batches() for row in predictions_table([b]).to_pylist()]
    assert repr(together) == repr(alone)


def test_bad_values_name_their_column() -> None:
    bad = PredictionBatch("m", "1", ["a"], np.array([1]), categorical={"c": [3]})  # type: ignore[list-item]
    with pytest.raises(TypeError, match="categorical"):
        predictions_table([bad])
    short = PredictionBatch("m", "1", ["a", "b"], np.array([1]))
    with pytest.raises(ValueError, match="event_times has 1 values"):
        predictions_table([short])
