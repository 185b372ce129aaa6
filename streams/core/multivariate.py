"""Multivariate drift: one statistic over all numeric features together, exactly mergeable.

Per-feature tests cannot see a change in how features relate when every
marginal stays the same. :class:`MultivariateModel` is fitted once on the
reference (and stored with it, as plain JSON); :class:`MultivariateWindow`
keeps what a window needs, as exact integer sums; ``evaluate`` returns
``FeatureDrift`` rows for the feature ``__multivariate__``:

- ``reconstruction_error``: the window's mean squared reconstruction error
  ``z' Q z`` of the standardized rows through the PCA of the reference (as
  NannyML does in batch). ``Q`` is the mean of the residual projectors
  ``I - P_k P_k'`` of K = 5 PCAs, each fitted on four fifths of the
  reference (cross-fitting): the error's null mean is the mean of each fold's
  errors through the PCA that did not see it, so the in-sample error's
  optimism (the PCA minimises it) never biases the threshold, and every
  reference row serves both the fit and the calibration.
- ``correlation_change``: the largest standardized change of a pairwise
  correlation, ``|r_window - r_ref| / sqrt(V / n)`` beyond the reference's
  own tolerance, with ``V`` the variance of the correlation's influence
  function over the reference rows (valid for non-normal data, floored at the
  normal-theory value), referred to Student's t with ``n - 2`` degrees of
  freedom, Bonferroni over the pairs.

**The reference's own error.** Both statistics compare the window with an
estimate from ``N`` reference rows whose error (variance ``var / N``) does
not shrink with the window's size ``n``: at ``n >= N`` it dominates, and a
plain two-sample test would flag nearly every window of an unlucky
reference and none of a lucky one. Each threshold therefore adds a
*tolerance* for the reference's error that holds with probability
``1 - reference_risk`` (split between the two rows and, Bonferroni, over the
pairs) to the window's own ``alpha / 2`` quantile: with probability at least
``1 - reference_risk`` over the reference, a stationary window is flagged (by
either row) at most ``alpha`` of the time, at any window size.

**Exact sums.** Standardized values are clipped at ``±128`` standard
deviations and rounded to multiples of ``2**-10``; the window keeps ``n``,
the sum of these rows and the sum of their outer products as integers (in
units of ``2**-10`` and ``2**-20``). Every product and partial sum is an
integer below ``2**53``, so a BLAS product computes it exactly in whatever
order, and the sums of any cut of a window into batches or partitions, merged
in any order, are the same integers: a replayed window gives the same rows,
bit for bit. The rounding (at most ``2**-11`` standard deviations, a noise of
sd 2.8e-4 per value) moves a correlation by about ``4e-4 / sqrt(n)``, a
thousandth of its own sampling error. The window's error sum is ``tr(Q S)`` of the
outer-product sum ``S``, so it needs no sum of its own.

**Missing values** are imputed by the reference mean (0 once standardized),
in the reference and in windows alike: they neither add error nor
correlation; a change in the missing rate is the data-quality alarm's
business. **Constant features** of the reference are left out (no variance
to standardize by, no relation to change); a change in them is the
per-feature tests' business.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

from driftline.streams.records import FeatureDrift

MULTIVARIATE_FEATURE = "__multivariate__"
RECONSTRUCTION_ERROR = "reconstruction_error"
CORRELATION_CHANGE = "correlation_change"
_FORMAT = 2  # 1: one PCA on a fit half, calibrated on the other half (still read)
FOLDS = 5
UNIT_BITS = 10  # standardized values are kept in units of 2**-10
CLIP = 128.0  # standard deviations: |value| * 2**10 <= 2**17, a product <= 2**34
_UNIT = float(2**UNIT_BITS)
_CHUNK_ROWS = 1 << 18  # a product's partial sums stay below 2**(34 + 18) < 2**53: exact in float64


def _columns_matrix(features: Sequence[str], columns: Mapping[str, Any], n: int | None = None) -> NDArray[np.float64]:
    """Features x rows as float64 (each column's values contiguous); an absent column is all missing (NaN)."""
    lengths = {len(columns[f]) for f in features if f in columns}
    if n is None:
        if len(lengths) != 1:
            raise ValueError(f"columns must have one common length, got {sorted(lengths)}")
        n = lengths.pop()
    elif lengths - {n}:
        raise ValueError(f"columns hold {sorted(lengths)} values for a batch of {n} rows")
    x = np.full((len(features), n), np.nan)
    for i, f in enumerate(features):
        if f in columns:
            try:
                x[i] = np.asarray(columns[f], np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"numeric feature {f!r} has values that are not numbers: {exc}") from None
    if np.isinf(x).any():
        raise ValueError("numeric features hold infinite values; use NaN for missing")
    return x


def _units(x: NDArray[np.float64], mean: NDArray[np.float64], scale: NDArray[np.float64]) -> NDArray[np.float64]:
    """Standardized values of features x rows in integer units of 2**-10 (float64), clipped, missing 0.

    Element by element (no reduction), so a value's units never depend on the batch it came in.
    ``x`` is overwritten (a fresh block per batch: another would cost its page faults again).
    """
    z = x
    z -= mean[:, None]
    z /= scale[:, None]
    np.copyto(z, 0.0, where=np.isnan(z))
    np.clip(z, -CLIP, CLIP, out=z)
    z *= _UNIT
    np.rint(z, out=z)
    return z


def _exact_moments(units: NDArray[np.float64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Row sums and outer-product sums of integer-valued features x rows, exactly, as int64."""
    p = units.shape[0]
    total, outer = np.zeros(p, np.int64), np.zeros((p, p), np.int64)
    for lo in range(0, units.shape[1], _CHUNK_ROWS):
        part = units[:, lo : lo + _CHUNK_ROWS]
        # integers below 2**53 at every step: exact in any summation order BLAS chooses
        total += part.sum(axis=1).astype(np.int64)
        outer += (part @ part.T).astype(np.int64)
    return total, outer


@dataclass(eq=False)
class MultivariateModel:
    """Standardization, cross-fitted PCA and null calibration, fitted on the reference.

    >>> rng = np.random.default_rng(0)
    >>> ref = {f: rng.normal(size=4_000) for f in "abcde"}
    >>> model = MultivariateModel.fit(ref, seed=0)
    >>> model.features, model.residual.shape, model.n_calibration
    (['a', 'b', 'c', 'd', 'e'], (5, 5), 4000)
    >>> a = rng.normal(size=2_000)
    >>> live = {"a": a, "b": 0.8 * a + 0.6 * rng.normal(size=2_000), "c": rng.normal(size=2_000),
    ...         "d": rng.normal(size=2_000), "e": rng.normal(size=2_000)}
    >>> w = model.window()
    >>> w.update(model, live)
    >>> error, correlation = model.evaluate(w)
    >>> error.metric, correlation.metric, correlation.drifted, correlation.value > correlation.threshold
    ('reconstruction_error', 'correlation_change', True, True)
    >>> MultivariateModel.from_dict(model.to_dict()).to_dict() == model.to_dict()
    True
    """

    features: list[str]
    mean: NDArray[np.float64]
    scale: NDArray[np.float64]
    residual: NDArray[np.float64]  # features x features: z' residual z is a row's reconstruction error
    components_kept: int
    error_mean: float  # the null mean of a row's error (out of fold)
    error_var: float  # the variance of the out-of-fold errors: the reference term, over n_calibration
    window_error_var: float  # the variance of z' residual z: the window term, over n
    correlation: NDArray[np.float64]  # features x features, over the reference rows
    correlation_var: NDArray[np.float64]  # variance of each correlation's influence function
    n_calibration: int
    variance: float = 0.8
    dropped: list[str] = field(default_factory=list)

    @classmethod
    def fit(cls, columns: Mapping[str, Any], *, variance: float = 0.8, seed: int = 0) -> MultivariateModel:
        """Fit on reference columns (NaN missing); needs two non-constant features and 20 rows."""
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"variance must be in (0, 1], got {variance}")
        names = list(columns)
        x = _columns_matrix(names, columns)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: nan, dropped below
            mean, std = np.nanmean(x, axis=1), np.nanstd(x, axis=1)
        keep = np.isfinite(std) & (std > 0)
        features = [f for f, k in zip(names, keep.tolist()) if k]
        n = x.shape[1]
        if len(features) < 2 or n < 20:
            raise ValueError(
                f"a multivariate model needs two non-constant numeric features and 20 reference rows; "
                f"got {features} over {n} rows"
            )
        mean, scale = mean[keep], std[keep]
        # the rows exactly as a window sees them (rounded to its units), rows x features
        z = _units(x[keep], mean, scale).T / _UNIT
        k = _kept(_principal_axes(z)[0], variance, len(features))
        fold = np.empty(n, np.int64)
        fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % FOLDS
        projector = np.zeros((len(features), len(features)))
        out_of_fold = np.empty(n)
        for j in range(FOLDS):
            inside = fold == j
            # standardization stays the whole reference's: its in-sample error is second order,
            # unlike the PCA's, which minimises the very error it would be calibrated on
            _, axes = _principal_axes(z[~inside])
            top = axes[:, :k]
            projector += top @ top.T
            out_of_fold[inside] = _errors(z[inside], top)
        residual = np.eye(len(features)) - projector / FOLDS
        residual = (residual + residual.T) / 2.0
        corr, corr_var = _correlation_null(z)
        return cls(
            features,
            mean,
            scale,
            residual,
            k,
            float(out_of_fold.mean()),
            float(out_of_fold.var()),
            float(np.einsum("ij,jk,ik->i", z, residual, z).var()),
            corr,
            corr_var,
            n,
            float(variance),
            [f for f, kept in zip(names, keep.tolist()) if not kept],
        )

    def window(self) -> MultivariateWindow:
        return MultivariateWindow.empty(len(self.features))

    def units(self, columns: Mapping[str, Any], n: int | None = None) -> NDArray[np.float64]:
        """Standardized values, features x rows, in integer units of ``2**-10``; missing values 0."""
        return _units(_columns_matrix(self.features, columns, n), self.mean, self.scale)

    def evaluate(
        self, window: MultivariateWindow, alpha: float = 0.05, reference_risk: float = 0.05
    ) -> list[FeatureDrift]:
        """The two ``__multivariate__`` rows of a window, each at level ``alpha / 2``.

        ``reference_risk``: the chance that the reference's own sampling error exceeds the
        tolerance added to the thresholds (see the module's docstring).
        """
        if not (0.0 < alpha < 1.0 and 0.0 < reference_risk <= 1.0):
            raise ValueError(f"alpha must be in (0, 1) and reference_risk in (0, 1], got {alpha}, {reference_risk}")
        level = alpha / 2.0
        n = window.n
        if n < 3:
            return [
                FeatureDrift(MULTIVARIATE_FEATURE, m, math.nan, None, math.nan, False)
                for m in (RECONSTRUCTION_ERROR, CORRELATION_CHANGE)
            ]
        second = window.outer_sum.astype(np.float64) / (_UNIT * _UNIT)
        mean_error = float((self.residual * second).sum()) / n
        own = math.sqrt(self.window_error_var / n)
        tolerance = float(special.ndtri(1.0 - reference_risk / 4.0)) * math.sqrt(self.error_var / self.n_calibration)
        excess = max(abs(mean_error - self.error_mean) - tolerance, 0.0)
        p_error = float(min(1.0, 2.0 * special.ndtr(-excess / own))) if own > 0 else float(excess == 0.0)
        threshold_error = self.error_mean + tolerance + float(special.ndtri(1.0 - level / 2.0)) * own
        r = window.correlation()
        iu = np.triu_indices(len(self.features), 1)
        pairs = iu[0].size
        v = np.maximum(self.correlation_var[iu], 1e-12)
        margin = float(special.ndtri(1.0 - reference_risk / (4.0 * pairs))) * np.sqrt(v / self.n_calibration)
        zc = np.maximum(np.abs(r[iu] - self.correlation[iu]) - margin, 0.0) / np.sqrt(v / n)
        top = float(zc.max())
        # Student's t with n - 2 degrees of freedom: the exact law of a null correlation in normal
        # data, whose tails matter at small windows, where the threshold sits 4-5 standard errors out.
        p_corr = float(min(1.0, pairs * 2.0 * special.stdtr(n - 2, -top)))
        threshold_corr = float(special.stdtrit(n - 2, 1.0 - level / (2.0 * pairs)))
        return [
            FeatureDrift(
                MULTIVARIATE_FEATURE,
                RECONSTRUCTION_ERROR,
                mean_error,
                p_error,
                threshold_error,
                p_error <= level,
            ),
            FeatureDrift(MULTIVARIATE_FEATURE, CORRELATION_CHANGE, top, p_corr, threshold_corr, p_corr <= level),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, to store with the reference profile."""
        return {
            "format": _FORMAT,
            "features": self.features,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "residual": self.residual.tolist(),
            "components_kept": self.components_kept,
            "error_mean": self.error_mean,
            "error_var": self.error_var,
            "window_error_var": self.window_error_var,
            "correlation": self.correlation.tolist(),
            "correlation_var": self.correlation_var.tolist(),
            "n_calibration": self.n_calibration,
            "variance": self.variance,
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultivariateModel:
        """Read ``to_dict``'s values; a format-1 model (one PCA, half-split calibration) too.

        >>> old = {"format": 1, "features": ["a", "b"], "mean": [0, 0], "scale": [1, 1],
        ...        "components": [[0.6], [0.8]], "error_mean": 0.3, "error_var": 0.2,
        ...        "correlation": [[1, 0.1], [0.1, 1]], "correlation_var": [[1, 1], [1, 1]],
        ...        "n_calibration": 500, "variance": 0.8, "dropped": []}
        >>> m = MultivariateModel.from_dict(old)
        >>> m.residual.round(2).tolist(), m.components_kept, m.window_error_var
        ([[0.64, -0.48], [-0.48, 0.36]], 1, 0.2)
        """
        fmt = d.get("format")
        if fmt not in (1, _FORMAT):
            raise ValueError(f"unsupported multivariate model format {fmt!r}; expected 1 or {_FORMAT}")
        p = len(d["features"])
        if fmt == 1:
            # its PCA's residual projector; its calibration half's error variance serves both terms
            components = np.asarray(d["components"], np.float64).reshape(p, -1)
            residual = np.eye(p) - components @ components.T
            kept, window_var = components.shape[1], float(d["error_var"])
        else:
            residual = np.asarray(d["residual"], np.float64).reshape(p, p)
            kept, window_var = int(d["components_kept"]), float(d["window_error_var"])
        return cls(
            list(d["features"]),
            np.asarray(d["mean"], np.float64),
            np.asarray(d["scale"], np.float64),
            residual,
            kept,
            float(d["error_mean"]),
            float(d["error_var"]),
            window_var,
            np.asarray(d["correlation"], np.float64).reshape(p, p),
            np.asarray(d["correlation_var"], np.float64).reshape(p, p),
            int(d["n_calibration"]),
            float(d["variance"]),
            list(d["dropped"]),
        )


def _principal_axes(z: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The variances along the principal axes of rows x features, largest first, and the axes as columns."""
    _, s, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    return s**2, vt.T


def _kept(spectrum: NDArray[np.float64], variance: float, p: int) -> int:
    """How many leading axes explain ``variance`` of the total; at most ``p - 1``, so that one is left for the error.

    >>> _kept(np.array([3.0, 1.0, 1.0]), 0.8, 3), _kept(np.ones(4), 0.8, 4)
    (2, 3)
    """
    share = np.cumsum(spectrum) / max(float(spectrum.sum()), 1e-300)
    return min(int(np.searchsorted(share, variance - 1e-12)) + 1, p - 1)


def _errors(z: NDArray[np.float64], components: NDArray[np.float64]) -> NDArray[np.float64]:
    """Squared distance of each standardized row (rows x features) from the subspace of ``components``."""
    projected = z @ components
    errors: NDArray[np.float64] = np.einsum("ij,ij->i", z, z) - np.einsum("ij,ij->i", projected, projected)
    return errors


def _correlation_null(z: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Correlations of the rows and the variance of each one's influence function.

    For standardized ``a, b`` with correlation ``r`` the influence function of
    Pearson's r is ``a b - r (a^2 + b^2) / 2``; its variance over ``n`` is the
    sample correlation's asymptotic variance, whatever the distribution. It is
    floored at the normal-theory value ``(1 - r^2)^2``.
    """
    u = z - z.mean(axis=0)
    sd = u.std(axis=0)
    u = u / np.where(sd > 0, sd, 1.0)
    n = u.shape[0]
    r = u.T @ u / n
    u2 = u * u
    m22 = u2.T @ u2 / n
    m31 = (u2 * u).T @ u / n  # E[a^3 b]
    m4 = np.diag(m22)
    var = m22 - r * (m31 + m31.T) + 0.25 * r * r * (m4[:, None] + m4[None, :] + 2.0 * m22)
    # Never below the normal-theory variance: with hundreds of pairs, the Bonferroni threshold sits
    # 4-5 standard errors out, where an estimate a few percent low (the sampling error of fourth
    # moments over a few thousand rows) would double the false alarms; above it (heavy tails) it stays.
    return r, np.maximum(var, (1.0 - r * r) ** 2)


@dataclass(eq=False)
class MultivariateWindow:
    """What a window keeps for the multivariate statistics: exact integer sums, so it merges exactly.

    ``row_sum`` is in units of ``2**-10``, ``outer_sum`` in units of ``2**-20`` (see the module's
    docstring); any cut of the same rows into batches, merged in any order, gives the same integers.

    >>> rng = np.random.default_rng(0)
    >>> model = MultivariateModel.fit({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    >>> cols = {"a": rng.normal(size=300), "b": rng.normal(size=300)}
    >>> whole, left, right = model.window(), model.window(), model.window()
    >>> whole.update(model, cols)
    >>> left.update(model, {f: c[:100] for f, c in cols.items()})
    >>> right.update(model, {f: c[100:] for f, c in cols.items()})
    >>> merged = right.merge(left)
    >>> merged.n, merged.to_dict() == whole.to_dict(), model.evaluate(merged) == model.evaluate(whole)
    (300, True, True)
    >>> MultivariateWindow.from_dict(merged.to_dict()).to_dict() == merged.to_dict()
    True
    """

    n: int
    row_sum: NDArray[np.int64]
    outer_sum: NDArray[np.int64]

    @classmethod
    def empty(cls, p: int) -> MultivariateWindow:
        return cls(0, np.zeros(p, np.int64), np.zeros((p, p), np.int64))

    def update(self, model: MultivariateModel, columns: Mapping[str, Any], n: int | None = None) -> None:
        """Add a batch of rows given as columns (NaN or an absent column: missing)."""
        units = model.units(columns, n)  # features x rows: each product below is one BLAS call
        if units.shape[0] != self.row_sum.size:
            raise ValueError(f"the model has {units.shape[0]} features, the window {self.row_sum.size}")
        total, outer = _exact_moments(units)
        self.n += units.shape[1]
        self.row_sum += total
        self.outer_sum += outer

    def merge(self, other: MultivariateWindow) -> MultivariateWindow:
        return MultivariateWindow(self.n + other.n, self.row_sum + other.row_sum, self.outer_sum + other.outer_sum)

    def correlation(self) -> NDArray[np.float64]:
        n = max(self.n, 1)
        mean = self.row_sum.astype(np.float64) / (n * _UNIT)
        cov = self.outer_sum.astype(np.float64) / (n * _UNIT * _UNIT) - np.outer(mean, mean)
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        sd = np.where(sd > 0, sd, 1.0)
        corr: NDArray[np.float64] = cov / np.outer(sd, sd)
        return corr

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "row_sum": self.row_sum.tolist(), "outer_sum": self.outer_sum.tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultivariateWindow:
        """Read ``to_dict``'s values.

        The float sums of the layout before the exact one (keys ``error_sum``, ``error_sq_sum``)
        cannot become exact and are refused; the worker never stored them (open windows are
        rebuilt from Kafka after a crash).
        """
        if "error_sum" in d:
            raise ValueError("a multivariate window of the earlier float layout cannot be restored exactly")
        p = len(d["row_sum"])
        return cls(
            int(d["n"]),
            np.asarray(d["row_sum"], np.int64),
            np.asarray(d["outer_sum"], np.int64).reshape(p, p),
        )
