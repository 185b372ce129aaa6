"""Label-free performance estimation for binary classifiers (confidence-based, CBPE).

Labels arrive late; the model's scores arrive with the prediction. If the
scores are *calibrated* (of the rows scored ``p``, a share ``p`` is positive),
each row's outcome is a Bernoulli(``p``) draw, so a window's confusion matrix,
and every metric built from it, has a known expectation and variance before
any label exists. That is NannyML's confidence-based performance estimation,
here as a streaming, mergeable state.

1. :class:`ScoreCalibrator` is fitted once, where the reference profile is
   built, on the reference's scores *and labels*: isotonic regression
   (pool-adjacent-violators) of the label on the score. It cuts the score axis
   at up to ``bins`` reference quantiles and keeps, per bin, the calibrated
   probability (the mean isotonic fit of the reference rows in the bin) and
   the isotonic block it belongs to with the block's size, for the
   calibration's own uncertainty. It serialises to plain JSON.
2. :class:`EstimationState` counts, per window (and per segment ``key=value``),
   the scored rows by (score bin, predicted class): integer counts only, so
   merging partitions is exact, associative and commutative.
3. :meth:`EstimationState.rows` gives ``estimated_<metric>`` with
   ``_lower``/``_upper`` 95% bands for accuracy, precision, recall, F1 and
   ROC AUC. The band is analytic: the variance of the *realized* metric given
   the calibrated probabilities (independent Bernoulli outcomes, delta method
   for the ratios), plus the variance that the finite reference leaves in the
   calibration itself (binomial per isotonic block).

The estimate is only as good as the calibration: under covariate shift
(P(y | x) unchanged) it follows the realized metric; under concept drift
(P(y | x) changed) it cannot, and only labels tell. docs/ESTIMATION.md.

>>> rng = np.random.default_rng(0)
>>> s = rng.random(20_000); y = rng.random(20_000) < s          # scores already calibrated
>>> cal = ScoreCalibrator.fit(s, y)
>>> w = EstimationState(cal)
>>> w.update(rng.random(2_000))
>>> e = w.estimates()["accuracy"]
>>> abs(e.value - 0.75) < 0.03, e.lower < e.value < e.upper   # E[accuracy] of uniform calibrated scores: 3/4
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.streams.core.performance import PerformanceRow, parse_labels

ESTIMATED_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
DEFAULT_BINS = 200
MIN_REFERENCE_ROWS = 100
MIN_CLASS_ROWS = 10
Z95 = 1.959963984540054
FORMAT_VERSION = 1


class CalibrationError(ValueError):
    """The reference cannot calibrate the scores (too few rows, one class, bad values)."""


@dataclass(frozen=True, eq=False)
class ScoreCalibrator:
    """Calibrated P(y = 1) per bin of the raw score, fitted on a labeled reference.

    ``cuts`` are the inner bin edges (a score ``s`` falls in bin
    ``searchsorted(cuts, s, side='right')``; the end bins are open, so scores
    outside the reference's range take its extreme calibrated values).
    ``block`` maps each bin to its isotonic block; ``block_rows`` and
    ``block_positive`` are the reference rows and positives of each block
    (``block_rows`` 0: no calibration uncertainty known, as for
    :meth:`identity`). ``threshold`` is the model's decision threshold, used
    when an event carries no predicted label.

    >>> cal = ScoreCalibrator.fit(np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8] * 20),
    ...                           np.array([0, 0, 1, 0, 1, 1] * 20), bins=6)
    >>> cal.calibrate(np.array([0.0, 0.3, 0.65, 1.0])).tolist()  # 0.3 and 0.6 violate order: pooled
    [0.0, 0.5, 0.5, 1.0]
    >>> ScoreCalibrator.from_dict(cal.to_dict()).to_dict() == cal.to_dict()
    True
    """

    cuts: np.ndarray
    probability: np.ndarray
    block: np.ndarray
    block_rows: np.ndarray
    block_positive: np.ndarray
    threshold: float = 0.5
    n: int = 0
    #: the reference's own rows by (bin, class predicted at ``threshold``): its estimate, for comparisons
    reference_counts: np.ndarray | None = None

    @property
    def n_bins(self) -> int:
        return int(self.probability.size)

    @classmethod
    def fit(
        cls,
        scores: np.ndarray | Sequence[float],
        labels: np.ndarray | Sequence[object],
        *,
        threshold: float = 0.5,
        bins: int = DEFAULT_BINS,
    ) -> ScoreCalibrator:
        """Isotonic calibration of ``labels`` (0/1, or words as in performance.py) on ``scores``.

        Rows without a score or a label are left out. Fewer than
        ``MIN_REFERENCE_ROWS`` rows, or fewer than ``MIN_CLASS_ROWS`` of either
        class, raise :class:`CalibrationError`: such a reference cannot say how
        often a score is right (use :meth:`identity` to trust the raw scores).
        """
        if bins < 2:
            raise CalibrationError(f"bins must be at least 2, got {bins}")
        s = np.asarray(scores, dtype=np.float64)
        try:
            y, _ = parse_labels(labels)
        except ValueError as exc:
            raise CalibrationError(f"cannot calibrate on these labels: {exc}") from None
        if s.shape != y.shape or s.ndim != 1:
            raise CalibrationError(f"{s.size} scores for {y.size} labels")
        if np.isinf(s).any():
            raise CalibrationError("scores contain infinite values")
        keep = ~np.isnan(s) & ~np.isnan(y)
        s, y = s[keep], y[keep]
        if not np.isin(y, (0.0, 1.0)).all():
            raise CalibrationError("calibration needs binary labels (0/1, true/false, yes/no)")
        n, n_pos = y.size, int(y.sum())
        if n < MIN_REFERENCE_ROWS or min(n_pos, n - n_pos) < MIN_CLASS_ROWS:
            raise CalibrationError(
                f"the reference has {n} scored and labeled rows ({n_pos} positive); calibration needs at least "
                f"{MIN_REFERENCE_ROWS} with {MIN_CLASS_ROWS} of each class: store ScoreCalibrator.identity() "
                "to trust the raw scores instead"
            )
        order = np.argsort(s, kind="stable")
        s, y = s[order], y[order]
        # Tied scores are one point of the fit: the model cannot order them.
        first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        tie_rows = np.diff(np.r_[first, n]).astype(np.float64)
        tie_pos = np.add.reduceat(y, first)
        # imported here: the fit runs where a model is registered, and scipy.optimize is 24 MiB of a worker
        from scipy.optimize import isotonic_regression

        fit = isotonic_regression(tie_pos / tie_rows, weights=tie_rows)
        fitted = np.repeat(fit.x, tie_rows.astype(np.int64))
        tie_block = np.repeat(np.arange(fit.blocks.size - 1), np.diff(fit.blocks))
        row_block = np.repeat(tie_block, tie_rows.astype(np.int64))
        block_rows = np.bincount(row_block).astype(np.float64)
        block_positive = np.bincount(row_block, y, minlength=block_rows.size)

        # Inner edges at reference quantiles, taken from the values themselves, so no bin is empty.
        positions = (np.arange(1, bins) * n) // bins
        cuts = np.unique(s[positions])
        cuts = cuts[cuts > s[0]]
        row_bin = np.searchsorted(cuts, s, side="right")
        per_bin = np.bincount(row_bin, minlength=cuts.size + 1).astype(np.float64)
        probability = np.bincount(row_bin, fitted, minlength=cuts.size + 1) / per_bin
        # A bin straddling two blocks joins the one holding most of its rows (its median row's).
        median_row = np.searchsorted(row_bin, np.arange(cuts.size + 1), side="left") + (per_bin.astype(np.int64) // 2)
        block = row_block[median_row]
        predicted = (s >= threshold).astype(np.int64)
        reference_counts = np.bincount(row_bin * 2 + predicted, minlength=2 * (cuts.size + 1)).reshape(-1, 2)
        return cls(
            cuts, probability, block.astype(np.int64), block_rows, block_positive, float(threshold), n, reference_counts
        )

    @classmethod
    def identity(cls, *, threshold: float = 0.5, bins: int = DEFAULT_BINS) -> ScoreCalibrator:
        """Trust the raw scores as probabilities: ``bins`` equal bins of [0, 1] at their midpoints.

        The fallback for a reference without labels; the bands then leave out
        the calibration's uncertainty, which is unknown.

        >>> ScoreCalibrator.identity(bins=4).calibrate(np.array([0.1, 0.9])).tolist()
        [0.125, 0.875]
        """
        edges = np.linspace(0.0, 1.0, bins + 1)
        return cls(
            edges[1:-1],
            (edges[:-1] + edges[1:]) / 2,
            np.arange(bins),
            np.zeros(bins),
            np.zeros(bins),
            float(threshold),
            0,
        )

    def bin_index(self, scores: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cuts, scores, side="right")

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of ``scores`` (the bin's value)."""
        calibrated: np.ndarray = self.probability[self.bin_index(np.asarray(scores, dtype=np.float64))]
        return calibrated

    def block_variance(self) -> np.ndarray:
        """Variance of each block's fitted probability: binomial, Jeffreys-smoothed so that 0/n is not certain."""
        rows = self.block_rows
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (self.block_positive + 0.5) / (rows + 1.0)
            variance: np.ndarray = np.where(rows > 0, p * (1.0 - p) / rows, 0.0)
        return variance

    def reference_estimates(self) -> dict[str, Estimate]:
        """The estimate of the reference itself (empty for :meth:`identity`): the baseline of a policy
        trigger, estimated as the windows are, so that a common calibration error cancels.

        >>> s = np.linspace(0, 1, 1_000); cal = ScoreCalibrator.fit(s, s > 0.3)
        >>> round(cal.reference_estimates()["accuracy"].value, 3)  # a perfect ranking, threshold 0.5
        0.8
        """
        if self.reference_counts is None:
            return {}
        state = EstimationState(self)
        state.counts[""] = self.reference_counts.copy()
        return state.estimates()

    def to_dict(self) -> dict[str, Any]:
        counts = None if self.reference_counts is None else self.reference_counts.ravel().tolist()
        return {
            "format": FORMAT_VERSION,
            "method": "isotonic",
            "threshold": self.threshold,
            "n": self.n,
            "reference_counts": counts,
            "cuts": self.cuts.tolist(),
            "probability": self.probability.tolist(),
            "block": self.block.tolist(),
            "block_rows": self.block_rows.tolist(),
            "block_positive": self.block_positive.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreCalibrator:
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported calibrator format {d.get('format')!r}; expected {FORMAT_VERSION}")
        cal = cls(
            np.asarray(d["cuts"], np.float64),
            np.asarray(d["probability"], np.float64),
            np.asarray(d["block"], np.int64),
            np.asarray(d["block_rows"], np.float64),
            np.asarray(d["block_positive"], np.float64),
            float(d["threshold"]),
            int(d["n"]),
            None if d.get("reference_counts") is None else np.asarray(d["reference_counts"], np.int64).reshape(-1, 2),
        )
        counts_bins = cal.probability.size if cal.reference_counts is None else cal.reference_counts.shape[0]
        if (
            cal.probability.size != cal.cuts.size + 1
            or cal.block.size != cal.probability.size
            or counts_bins != cal.probability.size
        ):
            raise ValueError("calibrator arrays do not match: one probability and one block per bin")
        if cal.block.size and (cal.block.min() < 0 or cal.block.max() >= cal.block_rows.size):
            raise ValueError("calibrator bins name blocks it does not have")
        if (np.diff(cal.block) < 0).any() or (np.diff(cal.cuts) <= 0).any():
            raise ValueError("calibrator cuts must increase and its blocks follow them in order")
        return cal


@dataclass(frozen=True)
class Estimate:
    """One estimated metric with its 95% band.

    >>> Estimate(0.9, 0.88, 0.92, 2000)
    Estimate(value=0.9, lower=0.88, upper=0.92, n_predictions=2000)
    """

    value: float
    lower: float
    upper: float
    n_predictions: int


@dataclass
class EstimatedPerformanceRow(PerformanceRow):
    """A ``performance_metrics`` row of an estimate: ``n_labeled`` is 0, ``n_predictions`` the rows used.

    >>> EstimatedPerformanceRow("", "estimated_accuracy", 0.9, 0, 2000).n_predictions
    2000
    """

    n_predictions: int = 0


def _block_sums(cal: ScoreCalibrator) -> tuple[np.ndarray, np.ndarray]:
    """Where each isotonic block's bins start (bins are in score order, so blocks are contiguous), and
    the variance of each of those blocks' probability."""
    present, first = np.unique(cal.block, return_index=True)
    return first, cal.block_variance()[present]


def _estimates(c: np.ndarray, cal: ScoreCalibrator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """metric -> (value, variance, defined) per segment, from counts ``c[segment, bin, predicted class]``.

    With ``a``, ``b`` the positives among predicted positives and negatives
    (sums of independent Bernoulli(p)), every metric is a function m(a, b);
    its variance is m_a^2 var(a) + m_b^2 var(b) (delta method) plus the
    calibration's: each block's probability is a binomial estimate, and the
    metric moves by sum over the block's bins of dm/dp_bin.
    """
    p = cal.probability
    starts, block_var = _block_sums(cal)
    pos, neg = c[..., 1].astype(np.float64), c[..., 0].astype(np.float64)
    m1, m0 = pos.sum(axis=1), neg.sum(axis=1)
    n = m1 + m0
    bern = p * (1.0 - p)
    a, b = pos @ p, neg @ p  # expected TP and FN per segment
    v1, v0 = pos @ bern, neg @ bern
    out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def add(name: str, defined: np.ndarray, value: np.ndarray, d_a: np.ndarray, d_b: np.ndarray) -> None:
        g = d_a[:, None] * pos + d_b[:, None] * neg  # d(estimate) / d(probability of each bin)
        calibration = (np.add.reduceat(g, starts, axis=1) ** 2) @ block_var
        out[name] = (value, d_a * d_a * v1 + d_b * d_b * v0 + calibration, defined)

    with np.errstate(divide="ignore", invalid="ignore"):
        zero = np.zeros_like(n)
        add("accuracy", n > 0, (a + m0 - b) / n, 1.0 / n, -1.0 / n)
        add("precision", m1 > 0, a / m1, 1.0 / m1, zero)
        t = a + b
        add("recall", t > 0, a / t, b / t**2, -a / t**2)
        d = a + m1 + b
        add("f1", d > 0, 2 * a / d, 2 * (m1 + b) / d**2, -2 * a / d**2)

        # ROC AUC = U / (n1 n0), U = sum_k Y_k (N_below_k + N_k / 2): rows of one bin tie (Mann-Whitney);
        # the Y_k (positives of bin k) are independent, so the delta method applies to them directly.
        rows = pos + neg
        y = rows * p
        negs = rows - y
        n1, n0 = y.sum(axis=1), negs.sum(axis=1)
        pairs = n1 * n0
        below = np.cumsum(negs, axis=1) - negs
        above = n1[:, None] - np.cumsum(y, axis=1)
        auc = (y * (below + 0.5 * negs)).sum(axis=1) / pairs
        grad = (below + 0.5 * negs - 0.5 * y - above) / pairs[:, None] - (auc * (n0 - n1) / pairs)[:, None]
        calibration = (np.add.reduceat(grad * rows, starts, axis=1) ** 2) @ block_var
        out["roc_auc"] = (auc, (grad**2 * rows) @ bern + calibration, (n1 > 0) & (n0 > 0))
    return out


def _band(value: float, var: float, n: int) -> Estimate:
    value, half = float(value), Z95 * math.sqrt(max(float(var), 0.0))
    return Estimate(value, max(0.0, value - half), min(1.0, value + half), n)


class EstimationState:
    """One window's scored predictions, as counts by (segment, score bin, predicted class).

    ``update`` takes a batch of scores (NaN: no score, not counted), the
    predicted labels when the events carry them (else ``score >= threshold``),
    and the segment attributes; ``merge`` adds another partition's counts.

    >>> cal = ScoreCalibrator.identity(bins=10)
    >>> a, b = EstimationState(cal, min_segment_size=1), EstimationState(cal, min_segment_size=1)
    >>> a.update(np.array([0.95, 0.85, np.nan]), None, {"region": ["eu", "us", "us"]})
    >>> b.update(np.array([0.05]), ["0"], {"region": ["eu"]})
    >>> m = a.merge(b)
    >>> m.n, m.n_unscored, round(m.estimates()["accuracy"].value, 3)
    (3, 1, 0.917)
    >>> [(r.segment, round(r.value, 3), r.n_labeled, r.n_predictions) for r in m.rows()
    ...  if r.metric == "estimated_accuracy"]
    [('', 0.917, 0, 3), ('region=eu', 0.95, 0, 2), ('region=us', 0.85, 0, 1)]
    """

    def __init__(self, calibrator: ScoreCalibrator, *, min_segment_size: int = 30) -> None:
        if min_segment_size < 1:
            raise ValueError("min_segment_size must be >= 1")
        self.calibrator = calibrator
        self.min_segment_size = min_segment_size
        self.counts: dict[str, np.ndarray] = {"": self._empty()}
        self.n_unscored = 0

    def _empty(self) -> np.ndarray:
        return np.zeros((self.calibrator.n_bins, 2), np.int64)

    @property
    def n(self) -> int:
        return int(self.counts[""].sum())

    def update(
        self,
        scores: np.ndarray,
        predicted_label: np.ndarray | Sequence[object] | None = None,
        attributes: Mapping[str, Sequence[str] | np.ndarray] | None = None,
    ) -> None:
        """Add a batch; a bad batch raises ValueError and leaves the state unchanged."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 1:
            raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
        if np.isinf(s).any():
            raise ValueError("scores contain infinite values")
        n = s.size
        predicted = (s >= self.calibrator.threshold).astype(np.float64)
        if predicted_label is not None and len(predicted_label):
            given, _ = parse_labels(predicted_label)
            if given.shape != (n,):
                raise ValueError(f"predicted_label has {given.size} values for {n} scores")
            if not np.isin(given[~np.isnan(given)], (0.0, 1.0)).all():
                raise ValueError("predicted labels must be binary (0/1, true/false, yes/no)")
            predicted = np.where(np.isnan(given), predicted, given)
        columns = {}
        for key, values in (attributes or {}).items():
            arr = np.asarray(values, dtype=str)
            if arr.shape != (n,):
                raise ValueError(f"attribute {key!r} has {arr.size} values for {n} scores")
            columns[key] = arr
        scored = ~np.isnan(s)
        cell = self.calibrator.bin_index(s[scored]) * 2 + predicted[scored].astype(np.int64)
        size = self.calibrator.n_bins * 2
        self.counts[""] += np.bincount(cell, minlength=size).reshape(-1, 2)
        for key in sorted(columns):
            names, codes = np.unique(columns[key][scored], return_inverse=True)
            by_segment = np.bincount(codes.ravel() * size + cell, minlength=names.size * size)
            for g, name in enumerate(names.tolist()):
                if name == "":  # the event had no such attribute: not a segment
                    continue
                segment = f"{key}={name}"
                block = by_segment[g * size : (g + 1) * size].reshape(-1, 2)
                self.counts[segment] = self.counts.get(segment, 0) + block
        self.n_unscored += int(n - scored.sum())

    def merge(self, other: EstimationState) -> EstimationState:
        """Add ``other``'s counts to this state (in place) and return it."""
        if other.calibrator.n_bins != self.calibrator.n_bins or not np.array_equal(
            other.calibrator.cuts, self.calibrator.cuts
        ):
            raise ValueError("cannot merge estimation states of different calibrators")
        for segment, c in other.counts.items():
            self.counts[segment] = self.counts.get(segment, 0) + c
        self.n_unscored += other.n_unscored
        return self

    def estimates(self, segment: str = "") -> dict[str, Estimate]:
        """metric -> Estimate for one segment; a metric undefined on the window is left out."""
        c = self.counts.get(segment)
        if c is None or c.sum() == 0:
            return {}
        return self._all([segment])[segment]

    def _all(self, segments: list[str]) -> dict[str, dict[str, Estimate]]:
        """Estimates of many segments in one pass over their stacked counts."""
        if not segments:
            return {}
        c = np.stack([self.counts[s] for s in segments])
        n = c.sum(axis=(1, 2)).tolist()
        found = {
            m: (value.tolist(), var.tolist(), ok.tolist())
            for m, (value, var, ok) in _estimates(c, self.calibrator).items()
        }
        return {
            s: {m: _band(value[i], var[i], n[i]) for m, (value, var, ok) in found.items() if ok[i]}
            for i, s in enumerate(segments)
        }

    def rows(self) -> list[EstimatedPerformanceRow]:
        """``estimated_<metric>``, ``_lower`` and ``_upper`` rows, overall then per segment of enough rows."""
        keep = [
            s
            for s in sorted(self.counts)
            if (s == "" and self.counts[s].sum() > 0) or self.counts[s].sum() >= max(self.min_segment_size, 1)
        ]
        out: list[EstimatedPerformanceRow] = []
        for segment, found in self._all(keep).items():
            for metric in ESTIMATED_METRICS:
                if metric in found:
                    e = found[metric]
                    for suffix, value in (("", e.value), ("_lower", e.lower), ("_upper", e.upper)):
                        out.append(
                            EstimatedPerformanceRow(segment, f"estimated_{metric}{suffix}", value, 0, e.n_predictions)
                        )
        return out

    def to_dict(self) -> dict[str, Any]:
        """The counts (sparse: nonzero cells) for a snapshot; the calibrator is stored with the reference."""
        out = {}
        for segment, c in self.counts.items():
            flat = c.ravel()
            nz = np.flatnonzero(flat)
            out[segment] = [nz.tolist(), flat[nz].tolist()]
        return {"format": FORMAT_VERSION, "n_unscored": self.n_unscored, "counts": out}

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], calibrator: ScoreCalibrator, *, min_segment_size: int = 30
    ) -> EstimationState:
        """The state of ``to_dict``.

        >>> cal = ScoreCalibrator.identity(bins=4)
        >>> w = EstimationState(cal); w.update(np.array([0.2, 0.9]), None, {"c": ["a", "b"]})
        >>> EstimationState.from_dict(w.to_dict(), cal).to_dict() == w.to_dict()
        True
        """
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported estimation state format {d.get('format')!r}; expected {FORMAT_VERSION}")
        state = cls(calibrator, min_segment_size=min_segment_size)
        size = calibrator.n_bins * 2
        for segment, (cells, values) in d["counts"].items():
            flat = np.zeros(size, np.int64)
            idx = np.asarray(cells, np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= size):
                raise ValueError(f"estimation state cells of segment {segment!r} are outside the calibrator's bins")
            flat[idx] = np.asarray(values, np.int64)
            state.counts[segment] = flat.reshape(-1, 2)
        state.n_unscored = int(d["n_unscored"])
        return state
