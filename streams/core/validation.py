"""Semantic checks of decoded input, after the codec has checked the schema.

A message that fails goes, bytes unchanged, to the ``dlq`` topic with the
reason code as its ``driftline-error`` header. The unit of rejection is the
message: a batch with one bad row is rejected whole, so that what is in the
DLQ is exactly what was not ingested and can be replayed after a fix.

Reason codes added here (the codec's own are in ``streams.codec``):

=====================  =====================================================
``unknown_model``      no reference profile for the model version (nor a champion)
``invalid_value``      ±inf where a number must be finite, a negative latency,
                       a NaN or infinite label or event time
``future_event_time``  an event time further ahead of the wall clock than allowed
=====================  =====================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from streams.records import LabelEvent, PredictionBatch

UNKNOWN_MODEL = "unknown_model"
INVALID_VALUE = "invalid_value"
FUTURE_EVENT_TIME = "future_event_time"
DEFAULT_MAX_FUTURE_MS = 3_600_000


@dataclass(frozen=True)
class Rejection:
    """Why a message was not ingested: a reason code and a sentence for people.

    >>> Rejection(UNKNOWN_MODEL, "no reference profile for model 'm'").reason
    'unknown_model'
    """

    reason: str
    detail: str


def check_batch(batch: PredictionBatch, now_ms: int, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> Rejection | None:
    """The first problem of a decoded batch of model inputs, or None.

    >>> b = PredictionBatch("m", "1", ["a", "b"], np.array([1_000, 2_000]), numeric={"x": np.array([1.0, np.inf])})
    >>> check_batch(b, now_ms=10_000).reason
    'invalid_value'
    >>> b.numeric["x"] = np.array([1.0, np.nan])  # NaN is a missing value, not an error
    >>> check_batch(b, now_ms=10_000) is None
    True
    >>> check_batch(b, now_ms=10_000, max_future_ms=-9_000).reason
    'future_event_time'
    """
    times = np.asarray(batch.event_times)
    if times.dtype.kind == "f" and not np.isfinite(times).all():
        return Rejection(INVALID_VALUE, "an event_time is NaN or infinite")
    for name, column in batch.numeric.items():
        if np.isinf(column).any():
            return Rejection(INVALID_VALUE, f"numeric input {name!r} holds an infinite value")
    if batch.predictions.size and np.isinf(batch.predictions).any():
        return Rejection(INVALID_VALUE, "a prediction is infinite")
    if batch.latency_ms is not None and batch.latency_ms.size:
        bad = np.isinf(batch.latency_ms) | (batch.latency_ms < 0)
        if bad.any():
            return Rejection(INVALID_VALUE, f"latency_ms {batch.latency_ms[bad][0]!r} is not a finite non-negative number")
    if times.size:
        latest = int(times.max())
        if latest > now_ms + max_future_ms:
            return Rejection(
                FUTURE_EVENT_TIME,
                f"event_time {latest} is {(latest - now_ms) / 1000:.0f} s ahead of the clock (at most {max_future_ms / 1000:.0f} s allowed)",
            )
    return None


def check_label(event: LabelEvent, now_ms: int, max_future_ms: int = DEFAULT_MAX_FUTURE_MS) -> Rejection | None:
    """The first problem of a decoded label, or None.

    >>> check_label(LabelEvent("e1", "m", 1_000, float("nan")), now_ms=2_000).reason
    'invalid_value'
    >>> check_label(LabelEvent("e1", "m", 1_000, "fraud"), now_ms=2_000) is None
    True
    """
    if isinstance(event.event_time, float) and not math.isfinite(event.event_time):
        return Rejection(INVALID_VALUE, "the event_time is NaN or infinite")
    if isinstance(event.label, float) and not math.isfinite(event.label):
        return Rejection(INVALID_VALUE, f"label {event.label!r} is not a finite number")
    if event.event_time > now_ms + max_future_ms:
        return Rejection(
            FUTURE_EVENT_TIME,
            f"event_time {event.event_time} is {(event.event_time - now_ms) / 1000:.0f} s ahead of the clock",
        )
    return None
