"""Semantic checks of decoded input, after the codec has checked the schema.

A message that fails goes, bytes unchanged, to the ``dlq`` topic with the
reason code as its ``driftline-error`` header. The unit of rejection is the
message: a batch with one bad row is rejected whole, so that what is in the
DLQ is exactly what was not ingested and can be replayed after a fix.

Reason codes added here (the codec's own are in ``driftline.streams.codec``):

=========================  =================================================
``unknown_model``          no reference profile for the model version (nor a champion)
``invalid_value``          ±inf where a number must be finite, a negative latency,
                           a NaN or infinite label or event time
``future_event_time``      an event time further ahead of the wall clock than allowed
``invalid_event_time``     an event time before ``min_event_time_ms``
                           (default ``MIN_EVENT_TIME_MS``, 2000-01-01T00:00:00Z)
``value_too_long``         a string longer than its limit (below)
``reserved_feature_name``  a feature named like a column of the training snapshot
                           (``RESERVED_FEATURE_NAMES``)
``feature_kind_conflict``  one name both numeric and categorical in one event or batch message
=========================  =================================================

String limits, in characters (code points):

- ``MAX_ID_LENGTH`` (256): ``event_id``, ``model_id``, ``model_version``,
  feature names and attribute keys;
- ``MAX_VALUE_LENGTH`` (1,024): categorical values, attribute values,
  ``predicted_label`` and string labels.

Feature names are checked per message by the codec (:func:`check_feature_names`,
so that one event's bad name cannot fail the other events it is grouped with);
values and event times by :func:`check_batch` and :func:`check_label`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import numpy as np

from driftline.streams.records import PREDICTION_FEATURE, LabelBatch, LabelColumns, LabelEvent, PredictionBatch

UNKNOWN_MODEL = "unknown_model"
INVALID_VALUE = "invalid_value"
FUTURE_EVENT_TIME = "future_event_time"
INVALID_EVENT_TIME = "invalid_event_time"
VALUE_TOO_LONG = "value_too_long"
RESERVED_FEATURE_NAME = "reserved_feature_name"
FEATURE_KIND_CONFLICT = "feature_kind_conflict"
DEFAULT_MAX_FUTURE_MS = 3_600_000
MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_ID_LENGTH = 256
MAX_VALUE_LENGTH = 1_024
# The columns of a training snapshot that are not features (streams.warehouse.SNAPSHOT_COLUMNS), the other
# fields of an event, and the pseudo-feature of the model output: a feature of one of these names would
# stand for two things in the snapshot, the profiles or the reports.
RESERVED_FEATURE_NAMES = frozenset(
    {
        "event_id",
        "model_id",
        "model_version",
        "event_time",
        "prediction",
        "predicted_label",
        "latency_ms",
        "label",
        PREDICTION_FEATURE,
    }
)
_QUOTE = 40  # characters of a bad value quoted in a detail


@dataclass(frozen=True)
class Rejection:
    """Why a message was not ingested: a reason code and a sentence for people.

    >>> Rejection(UNKNOWN_MODEL, "no reference profile for model 'm'").reason
    'unknown_model'
    """

    reason: str
    detail: str


def quote(value: str, limit: int = _QUOTE) -> str:
    """``repr`` of at most the first ``limit`` characters of a string, and its length when cut.

    >>> quote("credit"), quote("x" * 1000, 4)
    ("'credit'", "'xxxx'... (1000 characters)")
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def _longest(values: Iterable[str | None]) -> int:
    try:
        # the longest itself, found in C: cheaper than a max over map(len) when no value is None
        return len(max(values, key=len))  # type: ignore[arg-type]  # a None raises TypeError: handled below
    except (TypeError, ValueError):  # a None among them, or none at all
        # filter(None) drops None (and "", whose length is 0 anyway): all of it stays in C
        return max(map(len, filter(None, values)), default=0)


def _keys(names: Iterable[str]) -> AbstractSet[str]:
    return names.keys() if isinstance(names, dict) else set(names)


def _short(names: Iterable[str]) -> bool:
    """Whether no name is longer than MAX_ID_LENGTH; all of them together rarely are, which one join tells."""
    return len("".join(names)) <= MAX_ID_LENGTH or _longest(names) <= MAX_ID_LENGTH


def _too_long(what: str, values: Iterable[str | None], limit: int, *, repeats: bool = False) -> Rejection | None:
    """A rejection if a value is longer than ``limit``. ``repeats``: the values are mostly a few repeated
    ones (categories), so only the distinct ones are measured (a set is built in C, at a tenth of the cost)."""
    values = values if isinstance(values, (list, tuple)) else list(values)
    if _longest(set(values) if repeats else values) <= limit:
        return None
    first = next(v for v in values if v is not None and len(v) > limit)
    return Rejection(VALUE_TOO_LONG, f"{what} {quote(first)} is longer than {limit} characters")


def check_feature_names(
    numeric: Iterable[str], categorical: Iterable[str], attributes: Iterable[str] = ()
) -> Rejection | None:
    """The first problem of the feature names and attribute keys of one event or batch message, or None.

    >>> check_feature_names(["age", "label"], []).reason
    'reserved_feature_name'
    >>> check_feature_names(["age"], ["age"]).reason
    'feature_kind_conflict'
    >>> check_feature_names(["a" * 300], []).reason
    'value_too_long'
    >>> check_feature_names(["age"], ["region"], ["channel"]) is None
    True
    """
    if (
        RESERVED_FEATURE_NAMES.isdisjoint(numeric)
        and _short(numeric)
        and (not attributes or _short(attributes))
        and (
            not categorical
            or (
                RESERVED_FEATURE_NAMES.isdisjoint(categorical)
                and _short(categorical)
                and _keys(numeric).isdisjoint(categorical)
            )
        )
    ):
        return None  # the common case, in a few C calls: this runs for every event the codec decodes
    numeric, categorical = set(numeric), set(categorical)
    reserved = (numeric | categorical) & RESERVED_FEATURE_NAMES
    if reserved:
        return Rejection(
            RESERVED_FEATURE_NAME,
            f"feature name(s) {sorted(reserved)} are reserved for other columns "
            f"(reserved: {', '.join(sorted(RESERVED_FEATURE_NAMES))})",
        )
    both = numeric & categorical
    if both:
        shown = ", ".join(quote(name) for name in sorted(both)[:5])
        return Rejection(FEATURE_KIND_CONFLICT, f"feature(s) {shown} are both numeric and categorical")
    problem = _too_long("feature name", [*numeric, *categorical], MAX_ID_LENGTH)
    return problem or _too_long("attribute key", attributes, MAX_ID_LENGTH)


def _event_time_problem(
    earliest: int, latest: int, now_ms: int, max_future_ms: int, min_event_time_ms: int
) -> Rejection | None:
    if earliest < min_event_time_ms:
        return Rejection(
            INVALID_EVENT_TIME,
            f"event_time {earliest} is before the earliest allowed, {min_event_time_ms} (epoch milliseconds)",
        )
    if latest > now_ms + max_future_ms:
        return Rejection(
            FUTURE_EVENT_TIME,
            f"event_time {latest} is {(latest - now_ms) / 1000:.0f} s ahead of the clock "
            f"(at most {max_future_ms / 1000:.0f} s allowed)",
        )
    return None


def _strings_problem(batch: PredictionBatch) -> Rejection | None:
    problem = (
        _too_long("model_id", [batch.model_id], MAX_ID_LENGTH)
        or _too_long("model_version", [batch.model_version], MAX_ID_LENGTH)
        or _too_long("event_id", batch.event_ids, MAX_ID_LENGTH)
        or _too_long("predicted_label", batch.predicted_labels, MAX_VALUE_LENGTH, repeats=True)
    )
    if problem:
        return problem
    for what, columns in (("categorical value of", batch.categorical), ("attribute value of", batch.attributes)):
        for name, column in columns.items():
            problem = _too_long(f"{what} {quote(name)}", column, MAX_VALUE_LENGTH, repeats=True)
            if problem:
                return problem
    return None


def _has_infinity(column: np.ndarray) -> bool:
    # a finite sum (one pass, no temporary) rules infinity out; only a column with a missing value
    # (NaN), an infinity or an overflowing sum is looked at value by value
    return not math.isfinite(np.add.reduce(column, axis=None)) and bool(np.isinf(column).any())


def check_batch(
    batch: PredictionBatch,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    min_event_time_ms: int = MIN_EVENT_TIME_MS,
) -> Rejection | None:
    """The first problem of a decoded batch of model inputs, or None.

    >>> b = PredictionBatch("m", "1", ["a", "b"], np.array([1_000, 2_000]), numeric={"x": np.array([1.0, np.inf])})
    >>> check_batch(b, now_ms=10_000, min_event_time_ms=0).reason
    'invalid_value'
    >>> b.numeric["x"] = np.array([1.0, np.nan])  # NaN is a missing value, not an error
    >>> check_batch(b, now_ms=10_000, min_event_time_ms=0) is None
    True
    >>> check_batch(b, now_ms=10_000, max_future_ms=-9_000, min_event_time_ms=0).reason
    'future_event_time'
    >>> check_batch(b, now_ms=10_000).reason  # 1970 is before the default earliest time, 2000-01-01
    'invalid_event_time'
    >>> b.event_ids[0] = "e" * 257
    >>> check_batch(b, now_ms=10_000, min_event_time_ms=0).reason
    'value_too_long'
    """
    times = np.asarray(batch.event_times)
    if times.dtype.kind == "f" and not np.isfinite(times).all():
        return Rejection(INVALID_VALUE, "an event_time is NaN or infinite")
    for name, column in batch.numeric.items():
        if _has_infinity(column):
            return Rejection(INVALID_VALUE, f"numeric input {quote(name)} holds an infinite value")
    if batch.predictions.size and _has_infinity(batch.predictions):
        return Rejection(INVALID_VALUE, "a prediction is infinite")
    if batch.latency_ms is not None and batch.latency_ms.size:
        bad = np.isinf(batch.latency_ms) | (batch.latency_ms < 0)
        if bad.any():
            return Rejection(
                INVALID_VALUE, f"latency_ms {batch.latency_ms[bad][0]!r} is not a finite non-negative number"
            )
    if times.size:
        problem = _event_time_problem(int(times.min()), int(times.max()), now_ms, max_future_ms, min_event_time_ms)
        if problem:
            return problem
    return _strings_problem(batch)


def check_label(
    event: LabelEvent,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    min_event_time_ms: int = MIN_EVENT_TIME_MS,
) -> Rejection | None:
    """The first problem of a decoded label, or None: the time and length checks of :func:`check_batch`.

    >>> check_label(LabelEvent("e1", "m", 1_000, float("nan")), now_ms=2_000, min_event_time_ms=0).reason
    'invalid_value'
    >>> check_label(LabelEvent("e1", "m", 1_000, "fraud"), now_ms=2_000, min_event_time_ms=0) is None
    True
    >>> check_label(LabelEvent("e1", "m", -1, "fraud"), now_ms=2_000, min_event_time_ms=0).reason
    'invalid_event_time'
    >>> check_label(LabelEvent("e1", "m", 1_000, "x" * 2_000), now_ms=2_000, min_event_time_ms=0).reason
    'value_too_long'
    """
    if isinstance(event.event_time, float) and not math.isfinite(event.event_time):
        return Rejection(INVALID_VALUE, "the event_time is NaN or infinite")
    if isinstance(event.label, float) and not math.isfinite(event.label):
        return Rejection(INVALID_VALUE, f"label {event.label!r} is not a finite number")
    problem = _event_time_problem(event.event_time, event.event_time, now_ms, max_future_ms, min_event_time_ms)
    if problem:
        return problem
    return (
        _too_long("event_id", [event.event_id], MAX_ID_LENGTH)
        or _too_long("model_id", [event.model_id], MAX_ID_LENGTH)
        or (_too_long("label", [event.label], MAX_VALUE_LENGTH) if isinstance(event.label, str) else None)
    )


def check_labels(
    records: list[LabelEvent | LabelBatch],
    columns: LabelColumns,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    min_event_time_ms: int = MIN_EVENT_TIME_MS,
) -> dict[int, Rejection]:
    """The problem of each refused record of ``records`` (``columns`` = ``LabelColumns.of(records)``), by its
    position: every row checked at once, and only a record with a row out of bounds checked again alone by
    :func:`check_label` or :func:`check_label_batch`, so that its reason and detail are theirs.

    >>> import numpy as np
    >>> records = [LabelEvent("e1", "m", 1_000, 1.0), LabelEvent("e2", "m", 1_000, float("inf")),
    ...            LabelBatch("m", ["e3", "e4"], np.array([1_000, 9_000]), np.array([1.0, 0.0]))]
    >>> {k: r.reason for k, r in check_labels(records, LabelColumns.of(records), now_ms=2_000,
    ...                                            max_future_ms=1_000, min_event_time_ms=0).items()}
    {1: 'invalid_value', 2: 'future_event_time'}
    """
    times = columns.event_times
    single = np.fromiter((type(r) is not LabelBatch for r in records), dtype=bool, count=len(records))
    with np.errstate(invalid="ignore"):
        # NaN compares false: a NaN time fails ``>=``, a NaN label is a string's unless its record is a single
        out = ~(times >= min_event_time_ms) | (times > now_ms + max_future_ms)
        out |= single[columns.message] & ~np.isfinite(columns.numeric_labels) & _is_none(columns.string_labels)
    # the longest first, in C: the lengths row by row only when some value is too long
    for values, limit, distinct in (
        (columns.event_ids, MAX_ID_LENGTH, False),
        (columns.model_ids, MAX_ID_LENGTH, True),
        (columns.string_labels, MAX_VALUE_LENGTH, True),
    ):
        if _longest(set(values) if distinct else values) > limit:
            out |= _lengths(values) > limit
    problems = {}
    for k in np.unique(columns.message[out]).tolist():
        record = records[k]
        if isinstance(record, LabelBatch):
            problem = check_label_batch(record, now_ms, max_future_ms, min_event_time_ms)
        else:
            problem = check_label(record, now_ms, max_future_ms, min_event_time_ms)
        if problem is not None:
            problems[k] = problem
    return problems


def _lengths(values: Sequence[str | None]) -> np.ndarray:
    return np.fromiter((len(v) if v is not None else 0 for v in values), dtype=np.int64, count=len(values))


def _is_none(values: Sequence[str | None]) -> np.ndarray:
    return np.fromiter((v is None for v in values), dtype=bool, count=len(values))


def check_label_batch(
    batch: LabelBatch,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    min_event_time_ms: int = MIN_EVENT_TIME_MS,
) -> Rejection | None:
    """The first problem of a decoded label batch, or None: :func:`check_label` over all its rows at once
    (the codec has already refused a row without exactly one finite number or string).

    >>> import numpy as np
    >>> b = LabelBatch("m", ["e1", "e2"], np.array([1_000, 1_500]), np.array([1.0, np.nan]), [None, "fraud"])
    >>> check_label_batch(b, now_ms=2_000, min_event_time_ms=0) is None
    True
    >>> check_label_batch(b, now_ms=2_000, min_event_time_ms=1_200).reason
    'invalid_event_time'
    >>> b.string_labels[1] = "x" * 2_000
    >>> check_label_batch(b, now_ms=2_000, min_event_time_ms=0).reason
    'value_too_long'
    """
    times = np.asarray(batch.event_times)
    if times.size:
        problem = _event_time_problem(int(times.min()), int(times.max()), now_ms, max_future_ms, min_event_time_ms)
        if problem:
            return problem
    return (
        _too_long("model_id", [batch.model_id], MAX_ID_LENGTH)
        or _too_long("event_id", batch.event_ids, MAX_ID_LENGTH)
        or _too_long("label", batch.string_labels, MAX_VALUE_LENGTH, repeats=True)
    )
