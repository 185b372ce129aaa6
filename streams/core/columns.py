"""Batch columns as references and windows take them: parsed, checked, missing values separated.

A numeric column is float64 with NaN for missing (infinity is an error); a
categorical column holds strings with None (or a float NaN, as pandas writes
it) for missing. Every check raises ``ValueError`` with the feature's name.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.streams.records import PREDICTION_FEATURE


def numeric_column(feature: str, values: Any) -> NDArray[np.float64]:
    """A one-dimensional float64 column, or a ``ValueError`` naming the feature.

    >>> numeric_column("age", [1, 2.5]).tolist()
    [1.0, 2.5]
    """
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"numeric feature {feature!r} has values that are not numbers: {exc}") from None
    if x.ndim != 1:
        raise ValueError(f"numeric feature {feature!r} must be one-dimensional, got shape {x.shape}")
    return x


def finite_values(feature: str, x: NDArray[np.float64]) -> tuple[NDArray[np.float64], int]:
    """Non-missing values and the missing count; NaN is missing, infinity is an error.

    >>> v, n_missing = finite_values("age", np.array([1.0, np.nan, 3.0]))
    >>> v.tolist(), n_missing
    ([1.0, 3.0], 1)
    """
    missing = np.isnan(x)
    n_missing = int(np.count_nonzero(missing))
    v = x[~missing] if n_missing else x
    if v.size and not np.isfinite(v).all():
        raise ValueError(f"numeric feature {feature!r} holds infinite values; use NaN for missing")
    return v, n_missing


def category_counts(feature: str, values: Sequence[Any]) -> tuple[Counter[Any], int]:
    """Counts of each category and the missing count (None, or a float NaN as pandas writes it).

    >>> category_counts("region", ["north", None, "north", float("nan")])
    (Counter({'north': 2}), 2)
    """
    try:
        counts = Counter(values)
    except TypeError as exc:
        raise ValueError(f"categorical feature {feature!r} holds an unhashable value: {exc}") from None
    n_missing = counts.pop(None, 0)
    for key in [k for k in counts if not isinstance(k, str)]:
        if isinstance(key, float) and math.isnan(key):
            n_missing += counts.pop(key)
        else:
            raise ValueError(
                f"categorical feature {feature!r} holds {key!r} ({type(key).__name__}); "
                "categories must be strings, with None for missing"
            )
    return counts, n_missing


def columns_length(numeric: Mapping[str, Any], categorical: Mapping[str, Any], predictions: Any) -> int | None:
    """The common length of a batch's columns (None without columns); columns of unequal length are an error.

    >>> columns_length({"x": [1.0, 2.0]}, {"c": ["a", "b"]}, None)
    2
    """
    lengths = {name: len(col) for name, col in numeric.items()}
    lengths.update({name: len(col) for name, col in categorical.items()})
    if predictions is not None:
        lengths[PREDICTION_FEATURE] = len(predictions)
    distinct = set(lengths.values())
    if len(distinct) > 1:
        raise ValueError(f"columns differ in length: {dict(sorted(lengths.items()))}")
    return distinct.pop() if distinct else None


def check_names(numeric: Mapping[str, Any], categorical: Mapping[str, Any]) -> None:
    """Refuse a name given as both kinds, or the reserved prediction name given as a feature.

    >>> check_names({"x": []}, {"x": []})
    Traceback (most recent call last):
    ...
    ValueError: features given as both numeric and categorical: ['x']
    """
    both = set(numeric) & set(categorical)
    if both:
        raise ValueError(f"features given as both numeric and categorical: {sorted(both)}")
    if PREDICTION_FEATURE in numeric or PREDICTION_FEATURE in categorical:
        raise ValueError(f"{PREDICTION_FEATURE!r} is reserved for the model output; pass it as predictions")
