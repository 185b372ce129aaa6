"""Training snapshots: the warehouse's labelled predictions as training arrays, and their lineage.

The warehouse adapter returns a snapshot as an Arrow table
(``Warehouse.training_snapshot``: ``event_id``, ``model_version``,
``event_time``, one column per feature, ``prediction``, ``label``). The
retrainer stores that table, unchanged, content-addressed as Parquet (its
sha256 is the dataset's identity in the lineage), and converts it here into
a :class:`Snapshot`: a :class:`~retrainer.trainers.TrainingSet` plus the
columns that are not features, which the evaluation needs to score a
champion from the predictions it logged.

Everything here is pure: no warehouse, no files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from driftline.retrainer.trainers import Task, TrainingSet
from driftline.streams.core.performance import parse_labels

# The columns of Warehouse.training_snapshot that are not features (streams.warehouse.SNAPSHOT_COLUMNS;
# spelt out so that this pure module does not import the adapter, and checked equal by a test).
SNAPSHOT_COLUMNS = ("event_id", "model_version", "event_time", "prediction", "label")
# Schema metadata in which the warehouse lists the features it left out (streams.warehouse.SNAPSHOT_DROPPED_KEY).
SNAPSHOT_DROPPED_KEY = b"driftline.dropped_features"


@dataclass(frozen=True)
class DroppedFeature:
    """A feature the snapshot left out, so that one odd event cannot fail it: which, of what kind, why.

    ``reason``: ``reserved_feature_name`` (named like a snapshot column), ``feature_kind_conflict``
    (numeric in some events, categorical in others: the minority kind is left out) or
    ``label_kind_conflict`` (numeric and class labels: the minority become unlabelled);
    ``values``: how many non-missing values were left out.

    >>> str(DroppedFeature("label", "numeric", "reserved_feature_name", 3))
    "numeric feature 'label' (reserved_feature_name, 3 values)"
    """

    feature: str
    kind: str
    reason: str
    values: int

    def __str__(self) -> str:
        return f"{self.kind} feature {self.feature!r} ({self.reason}, {self.values} values)"


def dropped_features(table: pa.Table) -> tuple[DroppedFeature, ...]:
    """What the warehouse left out of a snapshot table, as its schema metadata says (empty: nothing).

    >>> t = pa.table({"x": [1]}).replace_schema_metadata(
    ...     {SNAPSHOT_DROPPED_KEY: b'[{"feature": "x", "kind": "categorical", '
    ...                            b'"reason": "feature_kind_conflict", "values": 1}]'})
    >>> [str(d) for d in dropped_features(t)]
    ["categorical feature 'x' (feature_kind_conflict, 1 values)"]
    """
    raw = (table.schema.metadata or {}).get(SNAPSHOT_DROPPED_KEY)
    if not raw:
        return ()
    return tuple(
        DroppedFeature(str(d["feature"]), str(d["kind"]), str(d["reason"]), int(d["values"])) for d in json.loads(raw)
    )


class SnapshotError(ValueError):
    """A snapshot table that cannot become a training set (a column of an unusable type, bad labels)."""


@dataclass(frozen=True)
class SnapshotRef:
    """A stored snapshot, as the lineage names it.

    ``start_ms``/``end_ms`` bound the event times of its rows (None when it
    has none); ``range_start_ms``/``range_end_ms`` are the ``[start, end)``
    range the policy asked for.

    >>> ref = SnapshotRef("sha256:" + "ab" * 32, "ab" * 32, 10, 1_000, 9_000, 0, 10_000)
    >>> ref.rows, ref.end_ms - ref.start_ms
    (10, 8000)
    """

    uri: str
    sha256: str
    rows: int
    start_ms: int | None
    end_ms: int | None
    range_start_ms: int
    range_end_ms: int


@dataclass
class Snapshot:
    """A snapshot's rows as arrays: the training set plus what was logged with each prediction.

    ``served_by`` is the model version that made each logged prediction,
    ``logged`` the prediction (NaN where none was logged).

    >>> table = pa.table({
    ...     "event_id": ["a", "b", "c"], "model_version": ["1", "2", "1"],
    ...     "event_time": pa.array([30, 10, 20], pa.timestamp("ms", tz="UTC")),
    ...     "x": [1.0, 2.0, float("nan")], "region": ["eu", None, "us"],
    ...     "prediction": [0.9, 0.2, 0.4], "label": ["yes", "no", "no"],
    ... })
    >>> snap = Snapshot.from_table(table)
    >>> snap.data.task, snap.data.label.tolist(), sorted(snap.data.numeric), sorted(snap.data.categorical)
    ('classification', [1.0, 0.0, 0.0], ['x'], ['region'])
    >>> train, holdout = snap.split(1 / 3)
    >>> holdout.event_ids.tolist(), holdout.logged_scores("1").tolist(), holdout.logged_scores("2").tolist()
    (['a'], [0.9], [nan])
    """

    data: TrainingSet
    event_ids: np.ndarray
    served_by: np.ndarray
    logged: np.ndarray
    dropped_unlabelled: int = 0
    dropped_features: tuple[DroppedFeature, ...] = field(default=())

    @property
    def n(self) -> int:
        return self.data.n

    @classmethod
    def from_table(cls, table: pa.Table, task: Task | None = None) -> Snapshot:
        """Convert a ``training_snapshot`` table; ``task`` is inferred from the labels unless given.

        Numeric columns become float64 (NaN for missing), text columns object
        arrays (None for missing). Labels are parsed as the monitoring side
        parses them (numbers, or yes/no, true/false, 1/0 words); rows whose
        label is missing are dropped and counted. Features the warehouse left
        out (:func:`dropped_features`) are listed in ``dropped_features``.
        """
        missing = [c for c in SNAPSHOT_COLUMNS if c not in table.column_names]
        if missing:
            raise SnapshotError(
                f"the snapshot has no column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}"
            )
        try:
            labels, _ = parse_labels(_objects_or_floats(table.column("label")))
        except ValueError as exc:
            raise SnapshotError(f"the snapshot's labels cannot be used: {exc}") from exc
        task = infer_task(labels) if task is None else _checked_task(task, labels)
        numeric: dict[str, np.ndarray] = {}
        categorical: dict[str, np.ndarray] = {}
        dropped = dropped_features(table)
        for name in table.column_names:
            if name in SNAPSHOT_COLUMNS:
                continue
            column = table.column(name)
            kind = _feature_kind(column.type)
            if kind is None:
                raise SnapshotError(
                    f"feature column {name!r} has type {column.type}, which is neither numeric nor text"
                )
            if kind == "numeric":
                numeric[name] = _floats(column)
            else:
                categorical[name] = column.to_numpy(zero_copy_only=False).astype(object)
        event_time = table.column("event_time").cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
        snap = cls(
            TrainingSet(numeric, categorical, labels, event_time, task),
            event_ids=table.column("event_id").to_numpy(zero_copy_only=False).astype(object),
            served_by=table.column("model_version").to_numpy(zero_copy_only=False).astype(object),
            logged=_floats(table.column("prediction")),
            dropped_features=dropped,
        )
        labelled = ~np.isnan(labels)
        if labelled.all():
            return snap
        kept = snap.take(np.flatnonzero(labelled))
        kept.dropped_unlabelled = int((~labelled).sum())
        return kept

    def take(self, index: np.ndarray) -> Snapshot:
        return Snapshot(
            self.data.take(index),
            self.event_ids[index],
            self.served_by[index],
            self.logged[index],
            dropped_features=self.dropped_features,
        )

    def split_index(self, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the training rows (oldest) and holdout rows (newest ``holdout_fraction``)."""
        return self.data.split_index(holdout_fraction)

    def split(self, holdout_fraction: float) -> tuple[Snapshot, Snapshot]:
        train, holdout = self.split_index(holdout_fraction)
        return self.take(train), self.take(holdout)

    def logged_scores(self, version: str) -> np.ndarray:
        """The predictions that ``version`` logged, NaN on the rows another version served."""
        return np.where(self.served_by == version, self.logged, np.nan)


def infer_task(labels: np.ndarray) -> Task:
    """Classification when every present label is 0 or 1, else regression.

    >>> infer_task(np.array([0.0, 1.0, np.nan])), infer_task(np.array([0.0, 2.5]))
    ('classification', 'regression')
    """
    present = labels[~np.isnan(labels)]
    return "classification" if bool(np.isin(present, (0.0, 1.0)).all()) else "regression"


def event_time_range(table: pa.Table) -> tuple[int | None, int | None]:
    """The first and last event times (epoch ms) of a snapshot table, or (None, None) when empty.

    >>> event_time_range(pa.table({"event_time": pa.array([5, 2, 9], pa.timestamp("ms", tz="UTC"))}))
    (2, 9)
    """
    if table.num_rows == 0:
        return None, None
    ms = table.column("event_time").cast(pa.int64()).to_numpy(zero_copy_only=False)
    return int(ms.min()), int(ms.max())


def _checked_task(task: Task, labels: np.ndarray) -> Task:
    if task not in ("classification", "regression"):
        raise SnapshotError(f"task must be 'classification' or 'regression', got {task!r}")
    if task == "classification" and infer_task(labels) != "classification":
        raise SnapshotError("classification needs binary labels (0/1, yes/no, true/false)")
    return task


def _feature_kind(t: pa.DataType) -> Literal["numeric", "categorical"] | None:
    if pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t):
        return "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return "categorical"
    return None


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    # nulls become NaN: the missing value of every numeric column in driftline
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _objects_or_floats(column: pa.ChunkedArray) -> np.ndarray:
    if _feature_kind(column.type) == "numeric":
        return _floats(column)
    return column.to_numpy(zero_copy_only=False).astype(object)
