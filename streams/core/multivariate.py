"""Multivariate drift: one statistic over all numeric features together, mergeable.

Per-feature tests cannot see a change in how features relate when every
marginal stays the same. :class:`MultivariateModel` is fitted once on the
reference (and stored with it, as plain JSON); :class:`MultivariateWindow`
keeps what a window needs, mergeable across partitions; ``evaluate`` returns
``FeatureDrift`` rows for the feature ``__multivariate__``:

- ``reconstruction_error``: the window's mean squared reconstruction error of
  the standardized rows through a PCA fitted on the reference (as NannyML does
  in batch). The PCA keeps the components explaining ``variance`` (0.8) of the
  reference's standardized variance. The test is a two-sample z test of the
  window's mean error against the error's mean and variance on held-out
  reference rows: standardization and PCA are fitted on one half of the
  reference and calibrated on the other, so the in-sample error's optimism
  does not bias the threshold.
- ``correlation_change``: the largest standardized change of a pairwise
  correlation, ``|r_window - r_ref| / sqrt(V (1/n + 1/N))`` with ``V`` the
  variance of the correlation's influence function on the held-out reference
  rows (valid for non-normal data, floored at the normal-theory value), referred
  to Student's t with ``n - 2`` degrees of freedom, Bonferroni over the pairs.

Each row has level ``alpha / 2``, so a stationary window is flagged (by
either) at most ``alpha`` of the time. The window keeps ``n``, the sums of the
error and its square, the sum of the standardized rows and of their outer
products: all sums, so partitions merge exactly.

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
_FORMAT = 1


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


@dataclass(eq=False)
class MultivariateModel:
    """Standardization, PCA and null calibration, fitted on the reference.

    >>> rng = np.random.default_rng(0)
    >>> ref = {f: rng.normal(size=4_000) for f in "abcde"}
    >>> model = MultivariateModel.fit(ref, seed=0)
    >>> model.features, model.components.shape[0]
    (['a', 'b', 'c', 'd', 'e'], 5)
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
    components: NDArray[np.float64]  # features x kept components, orthonormal columns
    error_mean: float
    error_var: float
    correlation: NDArray[np.float64]  # features x features, held-out reference rows
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
        x = _columns_matrix(names, columns).T
        order = np.random.default_rng(seed).permutation(x.shape[0])
        fit_x, cal_x = x[order[: x.shape[0] // 2]], x[order[x.shape[0] // 2 :]]
        # Everything is fitted on one half (standardization included) and calibrated on the other,
        # so that calibration rows are as new to the model as live rows are.
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column: nan, dropped below
            mean, std = np.nanmean(fit_x, axis=0), np.nanstd(fit_x, axis=0)
        keep = np.isfinite(std) & (std > 0)
        features = [f for f, k in zip(names, keep.tolist()) if k]
        if len(features) < 2 or x.shape[0] < 20:
            raise ValueError(
                f"a multivariate model needs two non-constant numeric features and 20 reference rows; "
                f"got {features} over {x.shape[0]} rows"
            )
        mean, scale = mean[keep], std[keep]
        fit_rows = np.nan_to_num((fit_x[:, keep] - mean) / scale)
        cal_rows = np.nan_to_num((cal_x[:, keep] - mean) / scale)
        # principal axes of the standardized fit half (the correlation matrix's eigenvectors)
        _, s, vt = np.linalg.svd(fit_rows - fit_rows.mean(axis=0), full_matrices=False)
        share = np.cumsum(s**2) / max(float((s**2).sum()), 1e-300)
        k = min(int(np.searchsorted(share, variance - 1e-12)) + 1, len(features))
        components = vt[:k].T.copy()
        err = _errors(cal_rows, components)
        corr, corr_var = _correlation_null(cal_rows)
        return cls(
            features,
            mean,
            scale,
            components,
            float(err.mean()),
            float(err.var()),
            corr,
            corr_var,
            int(cal_rows.shape[0]),
            float(variance),
            [f for f, k in zip(names, keep.tolist()) if not k],
        )

    def window(self) -> MultivariateWindow:
        return MultivariateWindow.empty(len(self.features))

    def standardize(self, columns: Mapping[str, Any], n: int | None = None) -> NDArray[np.float64]:
        """Standardized values, features x rows, missing values 0 (the reference mean)."""
        z = _columns_matrix(self.features, columns, n)
        z -= self.mean[:, None]
        z /= self.scale[:, None]
        z[np.isnan(z)] = 0.0
        return z

    def evaluate(self, window: MultivariateWindow, alpha: float = 0.05) -> list[FeatureDrift]:
        """The two ``__multivariate__`` rows of a window, each at level ``alpha / 2``."""
        level = alpha / 2.0
        n = window.n
        if n < 3:
            return [
                FeatureDrift(MULTIVARIATE_FEATURE, m, math.nan, None, math.nan, False)
                for m in (RECONSTRUCTION_ERROR, CORRELATION_CHANGE)
            ]
        spread = 1.0 / n + 1.0 / self.n_calibration
        mean_error = window.error_sum / n
        se = math.sqrt(self.error_var * spread)
        z = (mean_error - self.error_mean) / se if se > 0 else 0.0
        p_error = float(special.ndtr(-abs(z)) * 2.0)
        threshold_error = self.error_mean + float(special.ndtri(1.0 - level / 2.0)) * se
        r = window.correlation()
        iu = np.triu_indices(len(self.features), 1)
        zc = np.abs(r[iu] - self.correlation[iu]) / np.sqrt(np.maximum(self.correlation_var[iu], 1e-12) * spread)
        pairs = zc.size
        top = float(zc.max())
        # Student's t with n - 2 degrees of freedom: the exact law of a null correlation in normal
        # data, whose tails matter at small windows, where the threshold sits 4-5 standard errors out.
        p_corr = float(min(1.0, pairs * 2.0 * special.stdtr(n - 2, -top)))
        threshold_corr = float(special.stdtrit(n - 2, 1.0 - level / (2.0 * pairs)))
        return [
            FeatureDrift(
                MULTIVARIATE_FEATURE,
                RECONSTRUCTION_ERROR,
                float(mean_error),
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
            "components": self.components.tolist(),
            "error_mean": self.error_mean,
            "error_var": self.error_var,
            "correlation": self.correlation.tolist(),
            "correlation_var": self.correlation_var.tolist(),
            "n_calibration": self.n_calibration,
            "variance": self.variance,
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultivariateModel:
        if d.get("format") != _FORMAT:
            raise ValueError(f"unsupported multivariate model format {d.get('format')!r}; expected {_FORMAT}")
        p = len(d["features"])
        return cls(
            list(d["features"]),
            np.asarray(d["mean"], np.float64),
            np.asarray(d["scale"], np.float64),
            np.asarray(d["components"], np.float64).reshape(p, -1),
            float(d["error_mean"]),
            float(d["error_var"]),
            np.asarray(d["correlation"], np.float64).reshape(p, p),
            np.asarray(d["correlation_var"], np.float64).reshape(p, p),
            int(d["n_calibration"]),
            float(d["variance"]),
            list(d["dropped"]),
        )


def _errors(z: NDArray[np.float64], components: NDArray[np.float64]) -> NDArray[np.float64]:
    """Squared distance of each standardized row from the principal subspace."""
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
    """What a window keeps for the multivariate statistics: sums only, so it merges.

    >>> rng = np.random.default_rng(0)
    >>> model = MultivariateModel.fit({"a": rng.normal(size=500), "b": rng.normal(size=500)})
    >>> cols = {"a": rng.normal(size=300), "b": rng.normal(size=300)}
    >>> whole, left, right = model.window(), model.window(), model.window()
    >>> whole.update(model, cols)
    >>> left.update(model, {f: c[:100] for f, c in cols.items()})
    >>> right.update(model, {f: c[100:] for f, c in cols.items()})
    >>> merged = left.merge(right)
    >>> merged.n, bool(np.isclose(merged.error_sum, whole.error_sum))
    (300, True)
    >>> MultivariateWindow.from_dict(merged.to_dict()).to_dict() == merged.to_dict()
    True
    """

    n: int
    error_sum: float
    error_sq_sum: float
    row_sum: NDArray[np.float64]
    outer_sum: NDArray[np.float64]

    @classmethod
    def empty(cls, p: int) -> MultivariateWindow:
        return cls(0, 0.0, 0.0, np.zeros(p), np.zeros((p, p)))

    def update(self, model: MultivariateModel, columns: Mapping[str, Any], n: int | None = None) -> None:
        """Add a batch of rows given as columns (NaN or an absent column: missing)."""
        z = model.standardize(columns, n)  # features x rows: every product below is one BLAS call
        if z.shape[0] != self.row_sum.size:
            raise ValueError(f"the model has {z.shape[0]} features, the window {self.row_sum.size}")
        outer = z @ z.T
        projected = model.components.T @ z
        e = np.einsum("ij,ij->j", z, z) - np.einsum("ij,ij->j", projected, projected)
        self.n += z.shape[1]
        self.error_sum += float(e.sum())
        self.error_sq_sum += float(e @ e)
        self.row_sum += z.sum(axis=1)
        self.outer_sum += outer

    def merge(self, other: MultivariateWindow) -> MultivariateWindow:
        return MultivariateWindow(
            self.n + other.n,
            self.error_sum + other.error_sum,
            self.error_sq_sum + other.error_sq_sum,
            self.row_sum + other.row_sum,
            self.outer_sum + other.outer_sum,
        )

    def correlation(self) -> NDArray[np.float64]:
        n = max(self.n, 1)
        mean = self.row_sum / n
        cov = self.outer_sum / n - np.outer(mean, mean)
        sd = np.sqrt(np.maximum(np.diag(cov), 0.0))
        sd = np.where(sd > 0, sd, 1.0)
        corr: NDArray[np.float64] = cov / np.outer(sd, sd)
        return corr

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "error_sum": self.error_sum,
            "error_sq_sum": self.error_sq_sum,
            "row_sum": self.row_sum.tolist(),
            "outer_sum": self.outer_sum.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MultivariateWindow:
        p = len(d["row_sum"])
        return cls(
            int(d["n"]),
            float(d["error_sum"]),
            float(d["error_sq_sum"]),
            np.asarray(d["row_sum"], np.float64),
            np.asarray(d["outer_sum"], np.float64).reshape(p, p),
        )
