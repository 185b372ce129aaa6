"""Rows of the ClickHouse tables, and their conversion to insertable columns.

Pure functions, no I/O: ``driftline.streams.warehouse`` sends what these build. Rows
may be given as the dataclasses below or as plain dicts with the same keys;
either way they are validated here, so that a bad row fails with a message
naming its table, position and field instead of a ClickHouse parse error.
Every timestamp is an int of epoch milliseconds (``DateTime64(3, 'UTC')``).

Prediction batches become Arrow tables with map columns built per batch by
numpy, never per value.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from driftline.streams.records import Alert, DriftReport, LabelEvent, PredictionBatch, RetrainRequest

RETRAIN_STATUSES = ("requested", "training", "registered", "rejected", "failed")
RETRAIN_REASONS = ("drift", "performance", "schedule", "manual")
ALERT_SEVERITIES = ("info", "warning", "critical")
# The performance_metrics row that every written label window has: written last, it marks the window written.
N_LABELED = "n_labeled"
PROFILE_KINDS = ("numeric", "categorical")
DETECTOR_STREAMS = ("score", "error")
# rejected_events keeps the head of a bad message: enough to diagnose it, bounded so a huge message
# cannot bloat the table.
MAX_RAW_BYTES = 64 * 1024

# Field names that hold epoch milliseconds, in every row type.
_TIMESTAMP_FIELDS = frozenset(
    {
        "window_start",
        "window_end",
        "computed_at",
        "received_at",
        "created_at",
        "updated_at",
        "occurred_at",
        "requested_at",
        "event_time",
    }
)

Columns = dict[str, list[Any]]
RowT = TypeVar("RowT")


@dataclass(frozen=True)
class DriftMetricRow:
    """One metric of one feature in one closed window (table ``drift_metrics``).

    >>> row = DriftMetricRow("credit", "3", "age", "psi", 0, 60_000, 0.31, None, 0.2, True, 5000, 812, 61_000)
    >>> columns([row], DriftMetricRow)["drifted"]
    [1]
    """

    model_id: str
    model_version: str
    feature: str
    metric: str
    window_start: int
    window_end: int
    value: float
    p_value: float | None
    threshold: float
    drifted: bool
    n_reference: int
    n_current: int
    computed_at: int
    kind: str = "drift"  # the alarm class: drift or data_quality (migration 0006)
    segment: str = ""  # '' for the whole population, else key=value (migration 0007)


@dataclass(frozen=True)
class WindowProfileRow:
    """The profile of one feature in one window (table ``window_profiles``).

    Numeric features fill the moments, quantiles and histogram (``bin_edges``
    has one more entry than ``histogram``); categorical features fill
    ``categories``. Undefined moments stay NaN.

    >>> row = WindowProfileRow("credit", "3", "age", 0, 60_000, count=3, missing=1, computed_at=61_000,
    ...                        mean=40.0, bin_edges=[0.0, 50.0, 100.0], histogram=[2, 0])
    >>> columns([row], WindowProfileRow)["histogram"]
    [[2, 0]]
    """

    model_id: str
    model_version: str
    feature: str
    window_start: int
    window_end: int
    count: int
    missing: int
    computed_at: int
    kind: str = "numeric"
    mean: float = math.nan
    std: float = math.nan
    min: float = math.nan
    max: float = math.nan
    quantile_levels: Sequence[float] = ()
    quantiles: Sequence[float] = ()
    bin_edges: Sequence[float] = ()
    histogram: Sequence[int] = ()
    categories: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROFILE_KINDS:
            raise ValueError(f"kind must be one of {PROFILE_KINDS}, not {self.kind!r}")
        if len(self.quantile_levels) != len(self.quantiles):
            raise ValueError(f"{len(self.quantile_levels)} quantile levels but {len(self.quantiles)} quantiles")
        if len(self.histogram) and len(self.bin_edges) != len(self.histogram) + 1:
            raise ValueError(
                f"a histogram of {len(self.histogram)} bins needs {len(self.histogram) + 1} bin edges, "
                f"not {len(self.bin_edges)}"
            )


@dataclass(frozen=True)
class PerformanceRow:
    """One performance or latency metric in one window (table ``performance_metrics``).

    ``segment`` is ``''`` for the whole population, else ``key=value``.
    Latency percentiles are metrics ``latency_p50``, ``latency_p95`` and
    ``latency_p99`` in milliseconds, with ``n_labeled`` counting the
    predictions that carried a latency.

    >>> PerformanceRow("credit", "3", "auc", 0, 60_000, 0.81, 400, 61_000).segment
    ''
    """

    model_id: str
    model_version: str
    metric: str
    window_start: int
    window_end: int
    value: float
    n_labeled: int
    computed_at: int
    segment: str = ""
    n_predictions: int = 0


@dataclass(frozen=True)
class DetectorStateRow:
    """The change detectors of one stream after one closed window (table ``detector_states``).

    ``stream`` is ``score`` or ``error``; ``state`` the bytes of
    ``ChangeDetectorBank.stream_state``.

    >>> row = DetectorStateRow("credit", "3", "score", 60_000, b"pickled", 61_000, detectors=["adwin"])
    >>> columns([row], DetectorStateRow)["window_end"], columns([row], DetectorStateRow)["state"]
    ([60000], [b'pickled'])
    """

    model_id: str
    model_version: str
    stream: str
    window_end: int
    state: bytes
    computed_at: int
    detectors: Sequence[str] = ()
    river_version: str = ""

    def __post_init__(self) -> None:
        if self.stream not in DETECTOR_STREAMS:
            raise ValueError(f"stream must be one of {DETECTOR_STREAMS}, not {self.stream!r}")
        if not isinstance(self.state, (bytes, bytearray)):
            raise TypeError(f"state must be bytes, got {type(self.state).__name__}")


@dataclass(frozen=True)
class RejectedEventRow:
    """An input message that failed decoding or validation (table ``rejected_events``).

    >>> row = RejectedEventRow("driftline.predictions", 0, 42, "bad_magic", b"\\x07oops", 1_000)
    >>> columns([row], RejectedEventRow)["raw_base64"]
    ['B29vcHM=']
    """

    source_topic: str
    partition: int
    offset: int
    reason: str
    raw: bytes
    received_at: int
    detail: str = ""
    model_id: str = ""


@dataclass(frozen=True)
class ModelVersionRow:
    """A registry entry mirrored for dashboards (table ``model_versions``).

    ``hyperparameters`` is any JSON-serialisable mapping (or a JSON string);
    ``metrics`` maps metric names to numbers. ``updated_at`` defaults to
    ``created_at``; a later status or alias change is a new row with a later
    ``updated_at``.

    >>> row = ModelVersionRow("credit", "4", "champion", 1_000, aliases=["champion"], metrics={"auc": 0.8})
    >>> columns([row], ModelVersionRow)["updated_at"]
    [1000]
    """

    model_id: str
    version: str
    status: str
    created_at: int
    aliases: Sequence[str] = ()
    artifact_sha256: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    dataset_rows: int = 0
    code_version: str = ""
    hyperparameters: Mapping[str, Any] | str = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    parent_version: str | None = None
    request_id: str | None = None
    updated_at: int | None = None


def as_rows(rows: Sequence[Any], row_type: type[RowT]) -> list[RowT]:
    """Rows of ``row_type`` from instances or dicts, with a clear error for a bad one."""
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, row_type):
            out.append(row)
            continue
        if not isinstance(row, Mapping):
            raise TypeError(
                f"{row_type.__name__} #{i}: expected a {row_type.__name__} or a dict, got {type(row).__name__}"
            )
        try:
            out.append(row_type(**row))
        except TypeError as exc:
            names = [f.name for f in dataclasses.fields(row_type)]  # type: ignore[arg-type]
            raise ValueError(f"{row_type.__name__} #{i}: {exc}; fields are {', '.join(names)}") from exc
        except ValueError as exc:
            raise ValueError(f"{row_type.__name__} #{i}: {exc}") from exc
    return out


def columns(rows: Sequence[Any], row_type: type) -> Columns:
    """Column lists of the table that ``row_type`` describes, in insert form."""
    typed = as_rows(rows, row_type)
    if row_type is RejectedEventRow:
        return _rejected_columns(typed)
    if row_type is ModelVersionRow:
        return _model_version_columns(typed)
    names = [f.name for f in dataclasses.fields(row_type)]
    out: Columns = {name: [getattr(r, name) for r in typed] for name in names}
    for name in names:
        if name in _TIMESTAMP_FIELDS:
            out[name] = [epoch_ms(v, f"{row_type.__name__}.{name}") for v in out[name]]
    if "drifted" in out:
        out["drifted"] = [int(bool(v)) for v in out["drifted"]]
    for name in ("quantile_levels", "quantiles", "bin_edges", "histogram"):
        if name in out:
            out[name] = [np.asarray(v).tolist() for v in out[name]]
    if "categories" in out:
        out["categories"] = [{str(k): int(c) for k, c in v.items()} for v in out["categories"]]
    if "detectors" in out:
        out["detectors"] = [list(v) for v in out["detectors"]]
    if "state" in out:
        out["state"] = [bytes(v) for v in out["state"]]
    return out


def epoch_ms(value: Any, what: str = "timestamp") -> int:
    """An int of epoch milliseconds, or a TypeError that says what was wrong.

    >>> epoch_ms(np.int64(5))
    5
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{what} must be an int of epoch milliseconds, got {value!r}")


def _optional_ms(value: Any, what: str) -> int | None:
    return None if value is None else epoch_ms(value, what)


def _rejected_columns(rows: list[RejectedEventRow]) -> Columns:
    out: Columns = {
        name: [getattr(r, name) for r in rows]
        for name in ("source_topic", "partition", "offset", "reason", "detail", "model_id")
    }
    out["received_at"] = [epoch_ms(r.received_at, "RejectedEventRow.received_at") for r in rows]
    out["raw_base64"] = [base64.b64encode(bytes(r.raw[:MAX_RAW_BYTES])).decode("ascii") for r in rows]
    out["raw_size"] = [len(r.raw) for r in rows]
    return out


def _model_version_columns(rows: list[ModelVersionRow]) -> Columns:
    names = [f.name for f in dataclasses.fields(ModelVersionRow)]
    out: Columns = {name: [getattr(r, name) for r in rows] for name in names}
    out["created_at"] = [epoch_ms(v, "ModelVersionRow.created_at") for v in out["created_at"]]
    out["updated_at"] = [
        out["created_at"][i] if v is None else epoch_ms(v, "ModelVersionRow.updated_at")
        for i, v in enumerate(out["updated_at"])
    ]
    out["aliases"] = [list(v) for v in out["aliases"]]
    out["hyperparameters"] = [
        v if isinstance(v, str) else json.dumps(dict(v), sort_keys=True) for v in out["hyperparameters"]
    ]
    try:
        out["metrics"] = [{str(k): float(x) for k, x in v.items()} for v in out["metrics"]]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ModelVersionRow.metrics must map names to numbers: {exc}") from exc
    return out


def drift_metric_rows(report: DriftReport) -> list[DriftMetricRow]:
    """The ``drift_metrics`` rows of one DriftReport.

    >>> from driftline.streams.records import FeatureDrift
    >>> report = DriftReport("m", "1", 0, 10, 50, 500, ["x"], [FeatureDrift("x", "ks", 0.4, 0.001, 0.1, True)], 11)
    >>> drift_metric_rows(report)[0].n_current
    50
    """
    return [
        DriftMetricRow(
            report.model_id,
            report.model_version,
            m.feature,
            m.metric,
            report.window_start,
            report.window_end,
            m.value,
            m.p_value,
            m.threshold,
            m.drifted,
            report.n_reference,
            report.n_current,
            report.computed_at,
            m.kind,
        )
        for m in report.metrics
    ]


def drift_report_columns(reports: Sequence[DriftReport], late_events: Sequence[int] | None = None) -> Columns:
    """Columns of ``drift_reports``: one row per report; ``late_events`` per report when given (else the
    column's default, 0).

    >>> report = DriftReport("m", "1", 0, 10, 50, 500, [], [], 11)
    >>> drift_report_columns([report], late_events=[3])["late_events"]
    [3]
    """
    if late_events is not None and len(late_events) != len(reports):
        raise ValueError(f"{len(late_events)} late-event counts for {len(reports)} drift reports")
    late = {} if late_events is None else {"late_events": [int(n) for n in late_events]}
    return {
        "model_id": [r.model_id for r in reports],
        "model_version": [r.model_version for r in reports],
        "window_start": [epoch_ms(r.window_start, "DriftReport.window_start") for r in reports],
        "window_end": [epoch_ms(r.window_end, "DriftReport.window_end") for r in reports],
        "n_current": [r.n_current for r in reports],
        "n_reference": [r.n_reference for r in reports],
        "drifted_features": [list(r.drifted_features) for r in reports],
        "n_metrics": [len(r.metrics) for r in reports],
        "n_drifted_metrics": [sum(1 for m in r.metrics if m.drifted) for r in reports],
        "computed_at": [epoch_ms(r.computed_at, "DriftReport.computed_at") for r in reports],
    } | late


def alert_columns(alerts: Sequence[Alert | Mapping[str, Any]]) -> Columns:
    """Columns of ``alerts`` from Alert records (or dicts of their fields)."""
    typed = as_rows(alerts, Alert)
    for a in typed:
        if a.severity not in ALERT_SEVERITIES:
            raise ValueError(f"alert {a.alert_id}: severity must be one of {ALERT_SEVERITIES}, not {a.severity!r}")
    return {
        "alert_id": [a.alert_id for a in typed],
        "model_id": [a.model_id for a in typed],
        "model_version": [a.model_version for a in typed],
        "severity": [a.severity for a in typed],
        "kind": [a.kind for a in typed],
        "message": [a.message for a in typed],
        "occurred_at": [epoch_ms(a.occurred_at, "Alert.occurred_at") for a in typed],
        "window_start": [_optional_ms(a.window_start, "Alert.window_start") for a in typed],
        "window_end": [_optional_ms(a.window_end, "Alert.window_end") for a in typed],
    }


def label_columns(events: Sequence[LabelEvent | Mapping[str, Any]]) -> Columns:
    """Columns of ``labels``: numeric labels go to label_value, strings to label_class."""
    typed = as_rows(events, LabelEvent)
    values: list[float | None] = []
    classes: list[str | None] = []
    for e in typed:
        if isinstance(e.label, str):
            values.append(None)
            classes.append(e.label)
        elif isinstance(e.label, (int, float, np.integer, np.floating)) and not isinstance(e.label, bool):
            values.append(float(e.label))
            classes.append(None)
        else:
            raise TypeError(f"label of event {e.event_id} must be a number or a string, got {e.label!r}")
    return {
        "event_id": [e.event_id for e in typed],
        "model_id": [e.model_id for e in typed],
        "event_time": [epoch_ms(e.event_time, "LabelEvent.event_time") for e in typed],
        "label_value": values,
        "label_class": classes,
    }


def retrain_request_columns(
    request: RetrainRequest,
    status: str,
    updated_at: int,
    error: str | None = None,
    registered_version: str | None = None,
) -> Columns:
    """One ``retrain_requests`` row: the request in a given status."""
    if status not in RETRAIN_STATUSES:
        raise ValueError(f"retrain request status must be one of {RETRAIN_STATUSES}, not {status!r}")
    if request.reason not in RETRAIN_REASONS:
        raise ValueError(f"retrain request reason must be one of {RETRAIN_REASONS}, not {request.reason!r}")
    evidence = request.evidence
    return {
        "request_id": [request.request_id],
        "model_id": [request.model_id],
        "model_version": [request.model_version],
        "reason": [request.reason],
        "requested_at": [epoch_ms(request.requested_at, "RetrainRequest.requested_at")],
        "evidence": [json.dumps([dataclasses.asdict(e) for e in evidence])],
        "evidence_metric": [[e.metric for e in evidence]],
        "evidence_feature": [[e.feature for e in evidence]],
        "evidence_value": [[float(e.value) for e in evidence]],
        "evidence_threshold": [[float(e.threshold) for e in evidence]],
        "evidence_window_start": [[epoch_ms(e.window_start, "Evidence.window_start") for e in evidence]],
        "evidence_window_end": [[epoch_ms(e.window_end, "Evidence.window_end") for e in evidence]],
        "status": [status],
        "error": [error],
        "registered_version": [registered_version],
        "updated_at": [epoch_ms(updated_at, "updated_at")],
    }


_KEY = pa.dictionary(pa.int32(), pa.string())  # map keys and per-batch names: see _names
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("model_id", _KEY),
        ("model_version", _KEY),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("numeric", pa.map_(_KEY, pa.float64())),
        ("categorical", pa.map_(_KEY, pa.string())),
        ("prediction", pa.float64()),
        ("predicted_label", pa.string()),
        ("latency_ms", pa.float64()),
        ("attributes", pa.map_(_KEY, pa.string())),
    ]
)


def predictions_table(batches: Sequence[PredictionBatch]) -> pa.Table:
    """One Arrow table of ``predictions`` rows from many batches.

    Numeric maps hold every numeric feature of the batch (NaN for missing);
    categorical and attribute maps leave out the None values.

    >>> from driftline.streams.records import PredictionEvent
    >>> batch = PredictionBatch.from_events([
    ...     PredictionEvent("a", "m", "1", 10, numeric={"x": 1.0}, categorical={"c": "red"}, prediction=0.2),
    ...     PredictionEvent("b", "m", "1", 20, numeric={"x": 2.0, "y": 3.0}),
    ... ])
    >>> t = predictions_table([batch])
    >>> t.column("numeric").to_pylist()[1], t.column("categorical").to_pylist(), t.column("prediction").to_pylist()
    ([('x', 2.0), ('y', 3.0)], [[('c', 'red')], []], [0.2, None])
    """
    batches = list(batches)
    for b in batches:
        _check_batch(b)
    if not batches:
        return PREDICTIONS_SCHEMA.empty_table()
    # All batches go into one set of columns at once (one chunk each: clickhouse-connect serialises many
    # small chunks far more slowly than one), built from the batches' numpy columns without a per-row step.
    counts = np.array([b.n for b in batches], dtype=np.int64)
    arrays = [
        _string_column(batches, ("event_ids", ""), [b.event_ids for b in batches], "event_ids"),
        _per_batch([b.model_id for b in batches], counts),
        _per_batch([b.model_version for b in batches], counts),
        pa.array(
            _concat([np.asarray(b.event_times, dtype=np.int64) for b in batches]), type=pa.timestamp("ms", tz="UTC")
        ),
        _numeric_map([b.numeric for b in batches], counts),
        _string_map(batches, "categorical"),
        _optional_floats([b.predictions for b in batches], counts),
        _optional_strings(batches, counts),
        _optional_floats([b.latency_ms for b in batches], counts),
        _string_map(batches, "attributes"),
    ]
    return pa.Table.from_arrays(arrays, schema=PREDICTIONS_SCHEMA)


def _check_batch(batch: PredictionBatch) -> None:
    n = batch.n
    where = f"PredictionBatch of {batch.model_id}/{batch.model_version} with {n} event_ids"
    sizes = {"event_times": len(batch.event_times)}
    sizes.update({f"numeric[{k!r}]": len(v) for k, v in batch.numeric.items()})
    sizes.update({f"categorical[{k!r}]": len(v) for k, v in batch.categorical.items()})
    sizes.update({f"attributes[{k!r}]": len(v) for k, v in batch.attributes.items()})
    # These three may also be empty, meaning "none at all".
    for name, values in (
        ("predictions", batch.predictions),
        ("predicted_labels", batch.predicted_labels),
        ("latency_ms", batch.latency_ms),
    ):
        if values is not None and len(values):
            sizes[name] = len(values)
    wrong = {name: size for name, size in sizes.items() if size != n}
    if wrong:
        raise ValueError(f"{where}: " + ", ".join(f"{name} has {size} values" for name, size in wrong.items()))


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _per_batch(values: list[str], counts: np.ndarray) -> pa.DictionaryArray:
    """A value per batch, repeated over its rows, as indices into the batches' distinct values."""
    names = sorted(set(values))
    codes = np.searchsorted(np.array(names, dtype=object), np.array(values, dtype=object)).astype(np.int32)
    return _names(names, np.repeat(codes, counts))


def _optional_floats(columns_: list[np.ndarray | None], counts: np.ndarray) -> pa.Array:
    """Floats with NaN as null; a batch without the column (None or empty) gives nulls."""
    present = [c is not None and len(c) > 0 for c in columns_]
    if not any(present):
        return pa.nulls(int(counts.sum()), pa.float64())
    values = _concat(
        [
            np.asarray(c, dtype=np.float64) if ok else np.full(int(k), np.nan)
            for c, ok, k in zip(columns_, present, counts, strict=True)
        ]
    )
    return pa.array(values, mask=np.isnan(values))


def _optional_strings(batches: list[PredictionBatch], counts: np.ndarray) -> pa.Array:
    if not any(len(b.predicted_labels) for b in batches):
        return pa.nulls(int(counts.sum()), pa.string())
    return _string_column(
        batches, ("predicted_labels", ""), [b.predicted_labels or None for b in batches], "predicted_labels"
    )


def _string_column(
    batches: list[PredictionBatch], key: tuple[str, str], lists: list[Sequence[str | None] | None], what: str
) -> pa.Array:
    """One string column over the batches' rows: a batch's Arrow array from the decoder as it is, else its
    list converted (None: the batch lacks the column, nulls)."""
    parts = []
    for batch, values in zip(batches, lists, strict=True):
        array = batch.arrow.get(key)
        if array is None:
            array = pa.nulls(batch.n, pa.string()) if values is None else _strings(values, what)
        parts.append(array)
    return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)


def _map_names(columns_: list[Mapping[str, Any]], counts: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sorted names of every batch's map, and which of them each row's batch has, as an (n, k) mask
    (None when every batch has them all)."""
    names = sorted({name for c in columns_ for name in c})
    if all(len(c) == len(names) for c in columns_):
        return names, np.ones((0, 0), dtype=bool)
    has = np.array([[name in c for name in names] for c in columns_], dtype=bool).reshape(len(columns_), len(names))
    return names, np.repeat(has, counts, axis=0)


def _numeric_map(columns_: list[Mapping[str, np.ndarray]], counts: np.ndarray) -> pa.MapArray:
    names, has = _map_names(columns_, counts)
    n, k = int(counts.sum()), len(names)
    if k == 0:
        return _empty_maps(n, pa.float64())
    grid = np.empty((n, k), dtype=np.float64)
    for j, name in enumerate(names):
        grid[:, j] = _concat(
            [
                np.asarray(c[name], dtype=np.float64) if name in c else np.zeros(int(m))
                for c, m in zip(columns_, counts, strict=True)
            ]
        )
    # every numeric feature of a batch is in each of its rows' maps, NaN included
    return _map(grid, None if has.size == 0 else has, names, pa.array)


def _string_map(batches: list[PredictionBatch], what: str) -> pa.MapArray:
    """The ``categorical`` or ``attributes`` maps of the batches' rows, without their None values.

    Each name's column is one Arrow array over every row; the maps' values are gathered from them row
    by row in one ``take``, not string by string.
    """
    maps: list[Mapping[str, Sequence[str | None]]] = [getattr(b, what) for b in batches]
    names = sorted({name for c in maps for name in c})
    n, k = sum(b.n for b in batches), len(names)
    if k == 0:
        return _empty_maps(n, pa.string())
    columns_ = [_string_column(batches, (what, name), [c.get(name) for c in maps], what) for name in names]
    stacked = pa.concat_arrays(columns_)  # name after name: value j of row i at j * n + i
    present = stacked.is_valid().to_numpy(zero_copy_only=False).reshape(k, n).T
    where = (np.arange(k, dtype=np.int64) * n + np.arange(n, dtype=np.int64)[:, None])[present]
    index = np.tile(np.arange(k, dtype=np.int32), n)[present.reshape(-1)]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), _names(names, index), stacked.take(pa.array(where)))


def _map(grid: np.ndarray, present: np.ndarray | None, names: list[str], values: Any) -> pa.MapArray:
    """A map column from an (n, k) grid of values of the sorted ``names``, keeping the ``present`` ones
    (all when None); ``values`` turns the kept values into an Arrow array."""
    n, k = grid.shape
    index = np.tile(np.arange(k, dtype=np.int32), n)
    flat_values = grid.reshape(-1)
    if present is None:
        offsets = np.arange(0, (n + 1) * k, k, dtype=np.int32)
    else:
        flat = present.reshape(-1)
        index, flat_values = index[flat], flat_values[flat]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(present.sum(axis=1), out=offsets[1:])
    return pa.MapArray.from_arrays(pa.array(offsets), _names(names, index), values(flat_values))


def _names(names: list[str], index: np.ndarray) -> pa.DictionaryArray:
    """Map keys as indices into ``names``: ClickHouse reads a dictionary-encoded column into a String one.

    Every row repeats the same few keys, so written out they were most of an insert's bytes (45 of
    the 63 MB of 100,000 rows with 20 numeric features): built, copied and sent for nothing.
    """
    return pa.DictionaryArray.from_arrays(pa.array(index, type=pa.int32()), pa.array(names, type=pa.string()))


def _strings(values: Any, what: str) -> pa.Array:
    try:
        return pa.array(values, type=pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TypeError(f"{what} values must be strings or None: {exc}") from exc


def _empty_maps(n: int, value_type: pa.DataType) -> pa.MapArray:
    return pa.MapArray.from_arrays(
        pa.array(np.zeros(n + 1, dtype=np.int32)),
        _names([], np.zeros(0, dtype=np.int32)),
        pa.array([], type=value_type),
    )
