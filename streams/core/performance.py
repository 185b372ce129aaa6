"""Model performance per window: overall, per segment, and the gaps between segments.

Segments come from the events' ``attributes``: every ``key=value`` pair is a
segment, and ``''`` is the whole population. For each attribute key the
spread of a metric across its segments (max - min) is reported as segment
``key=*`` and metric ``<metric>_gap``: a fairness gap.

All segments of one attribute key are computed together: codes from
``np.unique`` and sums from ``np.bincount``, and ROC AUC from one sort of
(segment, score) with average ranks for ties (Mann-Whitney U). Means of
per-row values (MAE, RMSE, log loss, Brier) are exact sums rounded once
(streams.core.exactsum), so they do not depend on the order of the rows: a
window gives the same bits however its labels were batched or replayed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from driftline.streams.core.exactsum import group_ratios

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")
REGRESSION_METRICS = ("mae", "rmse")
TASKS = ("classification", "regression")

_POSITIVE = frozenset({"1", "true", "t", "yes", "y", "positive", "pos"})
_NEGATIVE = frozenset({"0", "false", "f", "no", "n", "negative", "neg"})
# How None and NaN look once an object array is cast to str.
_MISSING = frozenset({"none", "nan", "null"})
_LOG_LOSS_EPS = 1e-15


@dataclass
class PerformanceRow:
    """One metric of one segment (``''`` is everyone, ``key=*`` a gap) in one window.

    >>> PerformanceRow("region=*", "accuracy_gap", 0.12, 4000)
    PerformanceRow(segment='region=*', metric='accuracy_gap', value=0.12, n_labeled=4000)
    """

    segment: str
    metric: str
    value: float
    n_labeled: int


@dataclass
class _Labels:
    values: NDArray[np.float64]  # NaN where missing
    has_words: bool  # some label was a word such as "yes", so the task cannot be regression


def parse_labels(labels: Sequence[object] | np.ndarray) -> tuple[NDArray[np.float64], bool]:
    """Labels as float64 (NaN where missing) and whether any was a boolean word.

    Numbers stay numbers; "1"/"0"/"true"/"false"/"yes"/"no" (any case) become
    1.0/0.0; numeric strings are parsed; None and NaN are missing.

    >>> values, words = parse_labels(["yes", "0", None, 1.0, "TRUE"])
    >>> values.tolist(), words
    ([1.0, 0.0, nan, 1.0, 1.0], True)
    """
    parsed = _parse(labels)
    return parsed.values, parsed.has_words


def _parse(labels: Sequence[object] | np.ndarray | None) -> _Labels:
    arr = np.asarray(labels if labels is not None else [])
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "biuf":
        values = arr.astype(np.float64)
        if np.isinf(values).any():
            raise ValueError("labels contain infinite values")
        return _Labels(values, False)
    # Mixed objects (floats, strings, None): cast to str once, then parse each distinct token.
    tokens, inverse = np.unique(arr.astype(str), return_inverse=True)
    lookup = np.empty(tokens.size, dtype=np.float64)
    has_words = False
    for i, token in enumerate(tokens.tolist()):
        t = token.strip().lower()
        if t in _MISSING:
            lookup[i] = np.nan
            continue
        try:
            lookup[i] = float(t)
        except ValueError:
            if t in _POSITIVE or t in _NEGATIVE:
                lookup[i] = 1.0 if t in _POSITIVE else 0.0
                has_words = True
            else:
                raise ValueError(
                    f"label {token!r} is neither a number nor a binary word "
                    f"({', '.join(sorted(_POSITIVE | _NEGATIVE))}); multiclass labels are not supported"
                ) from None
        if math.isinf(lookup[i]):
            raise ValueError(f"label {token!r} is infinite")
    return _Labels(lookup[inverse.ravel()], has_words)


def _resolve_task(task: str | None, y: _Labels) -> str:
    present = y.values[~np.isnan(y.values)]
    binary = bool(np.isin(present, (0.0, 1.0)).all())
    if task is None:
        return "classification" if binary else "regression"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "classification" and not binary:
        bad = present[~np.isin(present, (0.0, 1.0))][:3].tolist()
        raise ValueError(f"classification labels must be binary (0/1, true/false, yes/no), got e.g. {bad}")
    if task == "regression" and y.has_words:
        raise ValueError("regression labels must be numbers, got words such as 'yes' or 'true'")
    return task


def _group_metrics(
    codes: NDArray[np.intp],
    n_groups: int,
    task: str,
    y: NDArray[np.float64],
    score: NDArray[np.float64],
    predicted: NDArray[np.float64],
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.intp]]]:
    """metric -> (value per group, rows used per group); value NaN where undefined.

    Every row of ``y`` is labeled; ``score`` is NaN where the model gave none and
    ``predicted`` NaN where no label can be derived.
    """
    out: dict[str, tuple[NDArray[np.float64], NDArray[np.intp]]] = {}
    scored = ~np.isnan(score)
    s_codes, s, s_y = codes[scored], score[scored], y[scored]
    n_scored = np.bincount(s_codes, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        if task == "regression":
            err = s - s_y
            out["mae"] = (group_ratios(s_codes, np.abs(err), n_scored), n_scored)
            out["rmse"] = (np.sqrt(group_ratios(s_codes, err * err, n_scored)), n_scored)
            return out

        has_pred = ~np.isnan(predicted)
        p_codes, p, p_y = codes[has_pred], predicted[has_pred], y[has_pred]
        n_pred = np.bincount(p_codes, minlength=n_groups)
        tp = np.bincount(p_codes, (p == 1) & (p_y == 1), n_groups)
        fp = np.bincount(p_codes, (p == 1) & (p_y == 0), n_groups)
        fn = np.bincount(p_codes, (p == 0) & (p_y == 1), n_groups)
        tn = n_pred - tp - fp - fn
        out["accuracy"] = ((tp + tn) / n_pred, n_pred)
        out["precision"] = (tp / (tp + fp), n_pred)
        out["recall"] = (tp / (tp + fn), n_pred)
        out["f1"] = (2 * tp / (2 * tp + fp + fn), n_pred)
        out["roc_auc"] = (_grouped_auc(s_codes, n_groups, s_y, s), n_scored)
        clipped = np.clip(s, _LOG_LOSS_EPS, 1 - _LOG_LOSS_EPS)
        loss = -(s_y * np.log(clipped) + (1 - s_y) * np.log1p(-clipped))
        out["log_loss"] = (group_ratios(s_codes, loss, n_scored), n_scored)
        out["brier"] = (group_ratios(s_codes, (s - s_y) ** 2, n_scored), n_scored)
    return out


def _grouped_auc(
    codes: NDArray[np.intp], n_groups: int, y: NDArray[np.float64], score: NDArray[np.float64]
) -> NDArray[np.float64]:
    """ROC AUC per group as U / (n1 n0), ties counted one half (average ranks)."""
    order = np.lexsort((score, codes))
    c, s, yy = codes[order], score[order], y[order]
    n = c.size
    pos = np.arange(n)
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = c[1:] != c[:-1]
    new_tie = new_group.copy()
    new_tie[1:] |= s[1:] != s[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, pos, 0))
    tie_id = np.cumsum(new_tie) - 1
    tie_first = pos[new_tie]
    tie_last = np.append(tie_first[1:], n) - 1
    # 1-based rank within the group, averaged over the tied block
    avg_rank = (tie_first[tie_id] + tie_last[tie_id]) / 2.0 - group_start + 1.0
    n1 = np.bincount(c, yy, n_groups)
    n0 = np.bincount(c, minlength=n_groups) - n1
    r1 = np.bincount(c, avg_rank * yy, n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (r1 - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def _predicted_classes(task: str, score: NDArray[np.float64], predicted: _Labels | None) -> NDArray[np.float64]:
    """The predicted class per row (NaN where none): the given label, else score >= 0.5.

    Also checks that classification scores are probabilities; NaN everywhere for regression.
    """
    n = score.size
    if task != "classification":
        return np.full(n, np.nan)
    present = score[~np.isnan(score)]
    if ((present < 0) | (present > 1)).any():
        raise ValueError("classification scores must be probabilities of the positive class in [0, 1]")
    derived = np.where(np.isnan(score), np.nan, (score >= 0.5).astype(np.float64))
    if predicted is None or predicted.values.size == 0:
        return derived
    pv = predicted.values
    if pv.shape != (n,):
        raise ValueError(f"predicted_label has {pv.size} values for {n} labels")
    if not np.isin(pv[~np.isnan(pv)], (0.0, 1.0)).all():
        raise ValueError("predicted labels must be binary (0/1, true/false, yes/no)")
    return np.where(np.isnan(pv), derived, pv)


def _checked_score(score: np.ndarray, n: int) -> NDArray[np.float64]:
    score = np.asarray(score, dtype=np.float64)
    if score.shape != (n,):
        raise ValueError(f"score has shape {score.shape} for {n} labels")
    if np.isinf(score).any():
        raise ValueError("score contains infinite values")
    return score


def _segment_codes(values: Sequence[str] | np.ndarray, n: int, key: str) -> tuple[NDArray[np.str_], NDArray[np.intp]]:
    arr = np.asarray(values, dtype=str)
    if arr.shape != (n,):
        raise ValueError(f"attribute {key!r} has {arr.size} values for {n} rows")
    names, codes = np.unique(arr, return_inverse=True)
    return names, codes.ravel()


def _performance(
    y: _Labels,
    score: np.ndarray,
    predicted: _Labels | None,
    attributes: Mapping[str, Sequence[str] | np.ndarray],
    task: str | None,
    min_segment_size: int,
) -> list[PerformanceRow]:
    if min_segment_size < 1:
        raise ValueError("min_segment_size must be >= 1")
    n = y.values.size
    score = _checked_score(score, n)
    task = _resolve_task(task, y)
    derived = _predicted_classes(task, score, predicted)
    metric_names = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS

    labeled = ~np.isnan(y.values)
    yv, sv, pv = y.values[labeled], score[labeled], derived[labeled]
    if yv.size == 0:
        return []
    rows: list[PerformanceRow] = []
    overall = _group_metrics(np.zeros(yv.size, dtype=np.intp), 1, task, yv, sv, pv)
    for m in metric_names:
        value, used = overall[m]
        if used[0] > 0 and not np.isnan(value[0]):
            rows.append(PerformanceRow("", m, float(value[0]), int(used[0])))

    for key in sorted(attributes):
        names, codes = _segment_codes(attributes[key], n, key)
        per_group = _group_metrics(codes[labeled], names.size, task, yv, sv, pv)
        # '' means the event had no such attribute: not a segment
        keep = names != ""
        for m in metric_names:
            value, used = per_group[m]
            ok = keep & (used >= min_segment_size) & ~np.isnan(value)
            for g in np.flatnonzero(ok):
                rows.append(PerformanceRow(f"{key}={names[g]}", m, float(value[g]), int(used[g])))
            if ok.sum() >= 2:
                v = value[ok]
                rows.append(PerformanceRow(f"{key}=*", f"{m}_gap", float(v.max() - v.min()), int(used[ok].sum())))
    return rows


def compute_performance(
    y_true: np.ndarray | Sequence[object],
    score: np.ndarray,
    predicted_label: np.ndarray | Sequence[str | None] | None,
    attributes: Mapping[str, Sequence[str] | np.ndarray],
    task: str | None = None,
    min_segment_size: int = 30,
) -> list[PerformanceRow]:
    """Performance metrics of one window of labeled predictions.

    ``task`` is ``'classification'`` (binary; ``score`` is the probability of the
    positive class) or ``'regression'`` (``score`` is the prediction); when
    None it is inferred: labels that are all 0/1 mean classification, so pass
    it explicitly for regression targets that can be 0 or 1. Without a
    predicted label (None, or an empty list) a row is positive when its score
    is >= 0.5. Rows without a label are skipped, and so are rows without a
    score for the score-based metrics; ``n_labeled`` counts the rows each
    metric used. A segment's metric is reported only when it used at least
    ``min_segment_size`` rows; a metric that is undefined (ROC AUC with one
    class, precision without predicted positives) is not reported.

    >>> rows = compute_performance(
    ...     np.array(["1", "0", "1", "0"]), np.array([0.9, 0.4, 0.3, 0.2]), None,
    ...     {"region": ["eu", "eu", "us", "us"]}, min_segment_size=2)
    >>> {r.metric: r.value for r in rows if r.segment == ""}["roc_auc"]
    0.75
    >>> [(r.segment, r.value) for r in rows if r.metric == "accuracy"]
    [('', 0.75), ('region=eu', 1.0), ('region=us', 0.5)]
    >>> [(r.segment, r.metric, r.value) for r in rows if r.metric == "accuracy_gap"]
    [('region=*', 'accuracy_gap', 0.5)]
    """
    predicted = None if predicted_label is None else _parse(predicted_label)
    return _performance(_parse(y_true), score, predicted, attributes, task, min_segment_size)


def prediction_errors(
    y_true: np.ndarray | Sequence[object],
    score: np.ndarray,
    predicted_label: np.ndarray | Sequence[str | None] | None = None,
    task: str | None = None,
) -> tuple[NDArray[np.float64], str]:
    """The error stream for the change detectors, and the task it was computed for.

    Classification: 1.0 where the predicted class is wrong, else 0.0 (a binary
    stream). Regression: the absolute error. NaN where a row has no label or no
    prediction (the detectors skip NaN). Labels and task as in ``compute_performance``.

    >>> errors, task = prediction_errors(["yes", "no", None], np.array([0.2, 0.1, 0.9]))
    >>> errors.tolist(), task
    ([1.0, 0.0, nan], 'classification')
    >>> prediction_errors(np.array([3.0, 1.5]), np.array([2.0, 2.0]))[0].tolist()
    [1.0, 0.5]
    """
    y = _parse(y_true)
    score = _checked_score(score, y.values.size)
    task = _resolve_task(task, y)
    if task == "regression":
        return np.abs(score - y.values), task
    predicted = None if predicted_label is None else _parse(predicted_label)
    derived = _predicted_classes(task, score, predicted)
    return np.where(np.isnan(derived) | np.isnan(y.values), np.nan, (derived != y.values).astype(np.float64)), task


class PerformanceWindow:
    """Labeled predictions of one window, accumulated batch by batch.

    Mergeable (e.g. across partitions); ``rows()`` gives the same result as
    ``compute_performance`` on all batches at once. It keeps the rows (about
    17 bytes per row plus the attribute values), since exact ROC AUC needs
    every score: fine for the labeled events of one window.

    >>> w = PerformanceWindow(task="regression", min_segment_size=1)
    >>> w.update(np.array([1.0, 2.0]), np.array([1.5, 2.0]), None, {"shop": ["a", "b"]})
    >>> other = PerformanceWindow(task="regression", min_segment_size=1)
    >>> other.update(np.array([3.0]), np.array([2.0]), None, {})
    >>> w.merge(other).n
    3
    >>> [(r.segment, r.metric, round(r.value, 3)) for r in w.rows() if r.metric == "mae"]
    [('', 'mae', 0.5), ('shop=a', 'mae', 0.5), ('shop=b', 'mae', 0.0)]
    """

    def __init__(self, task: str | None = None, min_segment_size: int = 30) -> None:
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.min_segment_size = min_segment_size
        self._y: list[NDArray[np.float64]] = []
        self._score: list[NDArray[np.float64]] = []
        self._predicted: list[NDArray[np.float64]] = []
        self._attributes: list[dict[str, NDArray[np.str_]]] = []
        self._has_words = False

    @property
    def n(self) -> int:
        return sum(chunk.size for chunk in self._y)

    def update(
        self,
        y_true: np.ndarray | Sequence[object],
        score: np.ndarray,
        predicted_label: np.ndarray | Sequence[str | None] | None,
        attributes: Mapping[str, Sequence[str] | np.ndarray],
    ) -> None:
        """Add a batch; a batch that ``rows()`` would reject is rejected here, alone."""
        y = _parse(y_true)
        n = y.values.size
        s = _checked_score(score, n)
        predicted = np.full(n, np.nan)
        if predicted_label is not None:
            pv = _parse(predicted_label).values
            if pv.size:
                if pv.shape != (n,):
                    raise ValueError(f"predicted_label has {pv.size} values for {n} labels")
                predicted = pv
        if self.task is not None:
            _predicted_classes(_resolve_task(self.task, y), s, _Labels(predicted, False))
        attrs = {}
        for key, values in attributes.items():
            arr = np.asarray(values, dtype=str)
            if arr.shape != (n,):
                raise ValueError(f"attribute {key!r} has {arr.size} values for {n} rows")
            attrs[key] = arr
        self._y.append(y.values)
        self._score.append(s)
        self._predicted.append(predicted)
        self._attributes.append(attrs)
        self._has_words |= y.has_words

    def merge(self, other: PerformanceWindow) -> PerformanceWindow:
        """Add ``other``'s rows to this window (in place) and return it."""
        self._y += other._y
        self._score += other._score
        self._predicted += other._predicted
        self._attributes += other._attributes
        self._has_words |= other._has_words
        return self

    def errors(self) -> tuple[NDArray[np.float64], str]:
        """The error stream of the rows in the order they came, and its task (see ``prediction_errors``).

        The task is resolved on the whole window, as for ``rows()``.

        >>> w = PerformanceWindow()
        >>> w.update(["1", "0"], np.array([0.9, 0.8]), ["0", None], {})  # no predicted label: score >= 0.5
        >>> w.update(["1"], np.array([np.nan]), None, {})  # no score, no label: no error
        >>> errors, task = w.errors()
        >>> errors.tolist(), task
        ([1.0, 1.0, nan], 'classification')
        """
        if not self._y:
            return prediction_errors(np.empty(0), np.empty(0), None, self.task)
        return prediction_errors(
            np.concatenate(self._y), np.concatenate(self._score), np.concatenate(self._predicted), self.task
        )

    def rows(self) -> list[PerformanceRow]:
        if not self._y:
            return []
        keys = sorted({k for chunk in self._attributes for k in chunk})
        # a batch without an attribute key counts as "no such attribute" ('')
        attributes = {
            k: np.concatenate([c.get(k, np.full(y.size, "")) for c, y in zip(self._attributes, self._y)]) for k in keys
        }
        predicted = np.concatenate(self._predicted)
        return _performance(
            _Labels(np.concatenate(self._y), self._has_words),
            np.concatenate(self._score),
            _Labels(predicted, False),
            attributes,
            self.task,
            self.min_segment_size,
        )
