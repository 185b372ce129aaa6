"""The records that travel through driftline (namespace ``driftline.v1``).

Field names follow the Avro schemas in ``schemas/avro/`` one to one, so that
the codec converts between the two without renaming. Batches keep columns as
numpy arrays: every statistic downstream works per column, never per value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

PREDICTION_FEATURE = "__prediction__"

RetrainReason = Literal["drift", "performance", "schedule", "manual"]
ModelEventKind = Literal["registered", "promoted", "rolled_back", "rejected"]


@dataclass
class PredictionEvent:
    """One prediction, as any producer in any language can send it.

    >>> e = PredictionEvent("e1", "credit", "1", 1700000000000, numeric={"age": 41.0})
    >>> e.as_batch().numeric["age"].tolist()
    [41.0]
    """

    event_id: str
    model_id: str
    model_version: str
    event_time: int
    numeric: dict[str, float] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)
    prediction: float | None = None
    predicted_label: str | None = None
    latency_ms: float | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    def as_batch(self) -> PredictionBatch:
        return PredictionBatch.from_events([self])


@dataclass
class PredictionBatch:
    """Many predictions of one model version, in columns.

    ``numeric`` columns are float64 with NaN for missing; ``categorical``
    columns are lists with None for missing; ``predictions`` is float64 with
    NaN for none; ``latency_ms`` is None when the producer sent no latency.

    >>> b = PredictionBatch.from_events([
    ...     PredictionEvent("a", "m", "1", 10, numeric={"x": 1.0}, prediction=0.2),
    ...     PredictionEvent("b", "m", "1", 20, categorical={"c": "red"}),
    ... ])
    >>> b.n, b.numeric["x"].tolist()[1], b.categorical["c"]
    (2, nan, [None, 'red'])
    """

    model_id: str
    model_version: str
    event_ids: list[str]
    event_times: np.ndarray
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, list[str | None]] = field(default_factory=dict)
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0))
    predicted_labels: list[str | None] = field(default_factory=list)
    latency_ms: np.ndarray | None = None
    attributes: dict[str, list[str]] = field(default_factory=dict)
    # The same strings as pyarrow string arrays, where the decoder read them as such
    # (driftline.streams.codec.batch_parser): the raw insert takes them as they are instead of
    # converting the lists again. Keys: ("event_ids", ""), ("predicted_labels", ""),
    # ("categorical", name), ("attributes", name); a column missing here is built from its list.
    # Not part of the wire record (metadata "wire": False): the codec never sends it.
    arrow: dict[tuple[str, str], Any] = field(default_factory=dict, compare=False, repr=False, metadata={"wire": False})

    @property
    def n(self) -> int:
        return len(self.event_ids)

    @classmethod
    def from_events(cls, events: list[PredictionEvent]) -> PredictionBatch:
        """Columns of events that share one model version."""
        if not events:
            raise ValueError("a batch needs at least one event")
        first = events[0]
        n = len(events)
        numeric_names = sorted({k for e in events for k in e.numeric})
        categorical_names = sorted({k for e in events for k in e.categorical})
        attribute_names = sorted({k for e in events for k in e.attributes})
        latency = None
        if any(e.latency_ms is not None for e in events):
            latency = np.array([np.nan if e.latency_ms is None else e.latency_ms for e in events], dtype=np.float64)
        labels = [e.predicted_label for e in events]
        return cls(
            model_id=first.model_id,
            model_version=first.model_version,
            event_ids=[e.event_id for e in events],
            event_times=np.fromiter((e.event_time for e in events), dtype=np.int64, count=n),
            numeric={k: np.array([e.numeric.get(k, np.nan) for e in events], dtype=np.float64) for k in numeric_names},
            categorical={k: [e.categorical.get(k) for e in events] for k in categorical_names},
            predictions=np.array([np.nan if e.prediction is None else e.prediction for e in events], dtype=np.float64),
            predicted_labels=labels if any(label is not None for label in labels) else [],
            latency_ms=latency,
            attributes={k: [e.attributes.get(k, "") for e in events] for k in attribute_names},
        )


@dataclass
class FeatureEvent:
    """Model inputs logged without a prediction."""

    event_id: str
    model_id: str
    model_version: str
    event_time: int
    numeric: dict[str, float] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)

    def as_batch(self) -> PredictionBatch:
        return PredictionBatch.from_events(
            [
                PredictionEvent(
                    self.event_id,
                    self.model_id,
                    self.model_version,
                    self.event_time,
                    numeric=self.numeric,
                    categorical=self.categorical,
                    attributes=self.attributes,
                )
            ]
        )


@dataclass
class FeatureBatch:
    """Many FeatureEvents of one model version, in the columns of a PredictionBatch.

    >>> b = FeatureBatch.from_events([FeatureEvent("a", "m", "1", 10, numeric={"x": 1.5})])
    >>> b.n, b.as_batch().numeric["x"].tolist(), b.as_batch().predictions.tolist()
    (1, [1.5], [nan])
    """

    model_id: str
    model_version: str
    event_ids: list[str]
    event_times: np.ndarray
    numeric: dict[str, np.ndarray] = field(default_factory=dict)
    categorical: dict[str, list[str | None]] = field(default_factory=dict)
    attributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.event_ids)

    @classmethod
    def from_events(cls, events: list[FeatureEvent]) -> FeatureBatch:
        """Columns of feature events that share one model version."""
        batch = PredictionBatch.from_events(
            [
                PredictionEvent(
                    e.event_id,
                    e.model_id,
                    e.model_version,
                    e.event_time,
                    numeric=e.numeric,
                    categorical=e.categorical,
                    attributes=e.attributes,
                )
                for e in events
            ]
        )
        return cls(
            batch.model_id,
            batch.model_version,
            batch.event_ids,
            batch.event_times,
            batch.numeric,
            batch.categorical,
            batch.attributes,
        )

    def as_batch(self) -> PredictionBatch:
        """The same columns as a PredictionBatch without predictions (all NaN)."""
        return PredictionBatch(
            model_id=self.model_id,
            model_version=self.model_version,
            event_ids=self.event_ids,
            event_times=self.event_times,
            numeric=self.numeric,
            categorical=self.categorical,
            predictions=np.full(self.n, np.nan),
            attributes=self.attributes,
        )


@dataclass
class LabelEvent:
    """Ground truth for an earlier prediction, joined by ``event_id``."""

    event_id: str
    model_id: str
    event_time: int
    label: float | str


@dataclass
class LabelBatch:
    """Many labels of one model, in columns (docs/CONTRACTS.md, "Labels in a LabelBatch").

    ``numeric_labels`` is float64 with NaN where the row's label is a string; ``string_labels``
    holds the class labels, None where the label is numeric, and is empty when every label is.

    >>> b = LabelBatch.from_events([LabelEvent("a", "m", 10, 1.0), LabelEvent("b", "m", 20, "fraud")])
    >>> b.n, b.numeric_labels.tolist(), b.string_labels, b.labels()
    (2, [1.0, nan], [None, 'fraud'], [1.0, 'fraud'])
    >>> b.events()[1]
    LabelEvent(event_id='b', model_id='m', event_time=20, label='fraud')
    """

    model_id: str
    event_ids: list[str]
    event_times: np.ndarray
    numeric_labels: np.ndarray
    string_labels: list[str | None] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.event_ids)

    @classmethod
    def from_events(cls, events: list[LabelEvent]) -> LabelBatch:
        """Columns of labels of one model (ValueError for none, or for labels of several models)."""
        if not events:
            raise ValueError("a batch needs at least one event")
        model_id = events[0].model_id
        if any(e.model_id != model_id for e in events):
            raise ValueError("the labels of a LabelBatch belong to one model")
        n = len(events)
        strings = [e.label if isinstance(e.label, str) else None for e in events]
        return cls(
            model_id,
            [e.event_id for e in events],
            np.fromiter((e.event_time for e in events), dtype=np.int64, count=n),
            np.fromiter((np.nan if isinstance(e.label, str) else e.label for e in events), dtype=np.float64, count=n),
            strings if any(s is not None for s in strings) else [],
        )

    def labels(self) -> list[float | str]:
        """Each row's label: its string, else its number."""
        numbers: list[float | str] = self.numeric_labels.tolist()
        if self.string_labels:
            return [n if s is None else s for n, s in zip(numbers, self.string_labels)]
        return numbers

    def events(self) -> list[LabelEvent]:
        """The labels one by one, in row order, as the same labels sent one ``LabelEvent`` each."""
        model_id = self.model_id
        return [
            LabelEvent(event_id, model_id, time, label)
            for event_id, time, label in zip(self.event_ids, self.event_times.tolist(), self.labels())
        ]


@dataclass
class LabelColumns:
    """The labels of many messages, single ``LabelEvent`` s and ``LabelBatch`` es alike, in columns, a row a
    label in message order (a batch's rows in its row order); ``message`` is the position of each row's record
    in the list it was built from.

    ``event_times`` is float64 so that a single label's NaN time survives to its check (every time a
    check lets through is below 2**53, hence exact); ``string_labels`` is None where the label is numeric.

    >>> c = LabelColumns.of([LabelEvent("a", "m", 10, 1.0), LabelBatch("n", ["b", "c"], np.array([20, 30]),
    ...                      np.array([np.nan, 0.0]), ["fraud", None])])
    >>> c.n, c.message.tolist(), c.model_ids, c.labels(np.arange(3))
    (3, [0, 1, 1], ['m', 'n', 'n'], [1.0, 'fraud', 0.0])
    """

    message: np.ndarray  # int64
    model_ids: list[str]
    event_ids: list[str]
    event_times: np.ndarray  # float64
    numeric_labels: np.ndarray  # float64, NaN where the label is a string
    string_labels: list[str | None]
    # the single LabelEvent a row came as, None for a batch's row: given again, not built again
    singles: list[LabelEvent | None] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.event_ids)

    @classmethod
    def of(cls, records: list[LabelEvent | LabelBatch]) -> LabelColumns:
        """The columns of ``records``: the singles' attributes read once, the batches' columns concatenated."""
        singles = [k for k, r in enumerate(records) if type(r) is not LabelBatch]
        batches = [k for k, r in enumerate(records) if type(r) is LabelBatch]
        events: list[LabelEvent] = [records[k] for k in singles]  # type: ignore[misc]
        parts: list[LabelBatch] = [records[k] for k in batches]  # type: ignore[misc]
        labels = [e.label for e in events]
        sizes = np.fromiter((b.n for b in parts), dtype=np.int64, count=len(parts))
        message = np.concatenate([np.asarray(singles, dtype=np.int64), np.repeat(np.asarray(batches, np.int64), sizes)])
        model_ids = [e.model_id for e in events] + [b.model_id for b in parts for _ in range(b.n)]
        event_ids = [e.event_id for e in events] + [e for b in parts for e in b.event_ids]
        times = [np.fromiter((e.event_time for e in events), dtype=np.float64, count=len(events))]
        numbers = [np.fromiter((np.nan if type(v) is str else v for v in labels), dtype=np.float64, count=len(labels))]
        strings: list[str | None] = [v if type(v) is str else None for v in labels]
        sources: list[LabelEvent | None] = [*events]
        for b in parts:
            times.append(np.asarray(b.event_times, dtype=np.float64))
            numbers.append(np.asarray(b.numeric_labels, dtype=np.float64))
            strings.extend(b.string_labels or [None] * b.n)
            sources.extend([None] * b.n)
        columns = cls(message, model_ids, event_ids, np.concatenate(times), np.concatenate(numbers), strings, sources)
        if not parts or not events:
            return columns
        return columns.take(np.argsort(message, kind="stable"))

    def take(self, rows: np.ndarray) -> LabelColumns:
        """The columns of ``rows`` only, in that order."""
        picked = rows.tolist()
        return LabelColumns(
            self.message[rows],
            [self.model_ids[r] for r in picked],
            [self.event_ids[r] for r in picked],
            self.event_times[rows],
            self.numeric_labels[rows],
            [self.string_labels[r] for r in picked],
            [self.singles[r] for r in picked],
        )

    def by_model(self) -> dict[str, np.ndarray]:
        """The rows of each model, in row order, the models in the order of their first row.

        >>> c = LabelColumns.of([LabelEvent("a", "m", 1, 1.0),
        ...                      LabelEvent("b", "n", 2, 1.0), LabelEvent("c", "m", 3, 0)])
        >>> {m: rows.tolist() for m, rows in c.by_model().items()}
        {'m': [0, 2], 'n': [1]}
        """
        model_ids = self.model_ids
        code = {m: k for k, m in enumerate(dict.fromkeys(model_ids))}
        if len(code) <= 1:
            return {m: np.arange(len(model_ids)) for m in code}
        codes = np.fromiter(map(code.__getitem__, model_ids), dtype=np.int64, count=len(model_ids))
        order = np.argsort(codes, kind="stable")
        return dict(zip(code, np.split(order, np.cumsum(np.bincount(codes, minlength=len(code)))[:-1])))

    def labels(self, rows: np.ndarray) -> list[float | str]:
        """The labels of ``rows`` as they came: each row's string, else its number."""
        numbers: list[float | str] = self.numeric_labels[rows].tolist()
        strings = self.string_labels
        for j, row in enumerate(rows.tolist()):
            if strings[row] is not None:
                numbers[j] = strings[row]  # type: ignore[assignment]
        return numbers

    def events(self, rows: np.ndarray) -> list[LabelEvent]:
        """The labels of ``rows`` one by one, as the same labels sent one ``LabelEvent`` each (a single's own)."""
        picked = rows.tolist()
        given = [self.singles[r] for r in picked] if self.singles else [None] * len(picked)
        if all(e is not None for e in given):
            return given  # type: ignore[return-value]
        return [
            LabelEvent(self.event_ids[r], self.model_ids[r], int(t), v) if e is None else e
            for e, r, t, v in zip(given, picked, self.event_times[rows].tolist(), self.labels(rows))
        ]


@dataclass
class Evidence:
    """One metric that crossed its threshold in one window."""

    metric: str
    feature: str
    value: float
    threshold: float
    window_start: int
    window_end: int


@dataclass
class RetrainRequest:
    request_id: str
    model_id: str
    model_version: str
    reason: RetrainReason
    requested_at: int
    evidence: list[Evidence] = field(default_factory=list)


@dataclass
class ModelEvent:
    event: ModelEventKind
    model_id: str
    version: str
    occurred_at: int
    alias: str | None = None
    request_id: str | None = None


@dataclass
class FeatureDrift:
    """One metric of one feature in a DriftReport."""

    feature: str
    metric: str
    value: float
    p_value: float | None
    threshold: float
    drifted: bool
    #: Alarm class of the metric: "drift" (the distribution moved) or "data_quality"
    #: (missing values, unknown categories, values outside the reference's range).
    kind: str = "drift"


@dataclass
class DriftReport:
    """Everything measured for one model version and one closed window."""

    model_id: str
    model_version: str
    window_start: int
    window_end: int
    n_current: int
    n_reference: int
    drifted_features: list[str]
    metrics: list[FeatureDrift]
    computed_at: int


@dataclass
class Alert:
    alert_id: str
    model_id: str
    model_version: str
    severity: Literal["info", "warning", "critical"]
    kind: str
    message: str
    occurred_at: int
    window_start: int | None = None
    window_end: int | None = None
