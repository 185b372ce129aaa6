"""Distance thresholds calibrated for the window's size, by resampling the reference.

A fixed PSI or Wasserstein threshold means different things at different
window sizes: stationary windows of 150 events routinely show distances that
windows of 10,000 never reach. So driftline reports, next to each distance,
the (1 - alpha) quantile of that distance between the reference and windows
*drawn from the reference itself*: the size of distance that no drift at all
produces in a window of that size, for that feature.

The null distribution depends on the sizes through the two-sample effective
size ``en = n N / (n + N)`` (window ``n``, reference ``N``): drawing windows of
``en`` events from the reference's own distribution and comparing them with
it reproduces the sampling noise of both sides. Calibration runs once per
feature and power-of-two bucket of ``en``, is cached on the reference, and is
scaled to the exact ``en`` inside the bucket by the metric's asymptotic rate
(PSI, like chi-squared, falls as ``1/en``; the distances as ``1/sqrt(en)``).

>>> import numpy as np
>>> from driftline.streams.core.reference import ReferenceProfile, StoredCalibration
>>> ref = ReferenceProfile.build("m", "1", {"x": np.random.default_rng(0).normal(size=20_000)}, {})
>>> small = binned_thresholds(ref, "x", 150.0, 0.05)
>>> large = binned_thresholds(ref, "x", 10_000.0, 0.05)
>>> small["psi"] > 10 * large["psi"], 0.05 < small["psi"] < 0.2
(True, True)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from driftline.streams.core import metrics
from driftline.streams.core.reference import ReferenceProfile, StoredCalibration
from driftline.streams.core.sampler import stable_seed

BINNED_REPLICATES = 1_000
#: Null quantiles kept per process, shared by every reference with the same counts (a few hundred bytes each).
SHARED_BINNED = 8_192
_RATE = {"psi": 1.0, "jensenshannon": 0.5, "hellinger": 0.5, "wasserstein": 0.5}


def _bucket(en: float) -> int:
    return max(0, int(math.floor(math.log2(max(en, 1.0)))))


def _null_proportions(counts: np.ndarray, numeric: bool) -> NDArray[np.float64]:
    """The proportions stationary windows are drawn from: the reference's, with a continuous
    feature's two open bins given the chance that a new value falls outside its ``n`` values."""
    c = counts.astype(np.float64)
    if not numeric:
        shares: NDArray[np.float64] = c / c.sum()
        return shares
    n = c.sum()
    # A new value of a continuous feature falls below (above) all n
    # reference values with probability 1/(n+1): that is what the open bins
    # of stationary windows receive.
    p = c / (n + 1.0)
    p[0] = p[-1] = 0.5 / (n + 1.0)
    out: NDArray[np.float64] = p / p.sum()
    return out


def _reference_proportions(reference: ReferenceProfile, feature: str) -> NDArray[np.float64]:
    numeric = feature in reference.numeric
    kind = reference.numeric[feature] if numeric else reference.categorical[feature]
    return _null_proportions(kind.counts, numeric)


@functools.lru_cache(maxsize=SHARED_BINNED)
def _binned_null(counts: bytes, numeric: bool, exponent: int, alpha: float) -> tuple[float, float, float]:
    """The null quantiles of one set of reference counts: they depend on nothing else.

    Every continuous feature binned on the quantiles of the same number of
    reference values has the same counts, so the features of a worker's model
    versions share a handful of these. The seed comes from the key, so every
    process and every order of computing gives the same values.
    """
    ref_counts = np.frombuffer(counts, dtype=np.int64)
    rng = np.random.default_rng(stable_seed("binned", counts, numeric, exponent, alpha))
    p_true = _null_proportions(ref_counts, numeric)
    p_ref = ref_counts / ref_counts.sum()
    n = 2**exponent
    q = rng.multinomial(n, p_true, size=BINNED_REPLICATES) / n
    level = 1.0 - alpha
    return (
        float(np.quantile(metrics.psi(p_ref, q), level)),
        float(np.quantile(metrics.jensenshannon(p_ref, q), level)),
        float(np.quantile(metrics.hellinger(p_ref, q), level)),
    )


def _stored(reference: ReferenceProfile, group: str, feature: str, exponent: int, alpha: float) -> Any:
    return None if reference.calibration is None else reference.calibration.get(group, feature, exponent, alpha)


def _binned_at(reference: ReferenceProfile, feature: str, exponent: int, alpha: float) -> tuple[float, ...]:
    def calibrate() -> tuple[float, ...]:
        stored: tuple[float, ...] | None = _stored(reference, "binned", feature, exponent, alpha)
        if stored is not None:  # registration computed it (precompute): the same seeded draws
            return stored
        numeric = feature in reference.numeric
        kind = reference.numeric[feature] if numeric else reference.categorical[feature]
        return _binned_null(np.ascontiguousarray(kind.counts, dtype=np.int64).tobytes(), numeric, exponent, alpha)

    return reference.cached(("binned", feature, exponent, alpha), calibrate)


def _area(a: np.ndarray, b: np.ndarray) -> NDArray[np.float64]:
    """Mean of ``|gap|`` over a segment where the gap runs linearly from ``a`` to ``b`` (as metrics.cdf_distances)."""
    across = np.abs(a) + np.abs(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        out: NDArray[np.float64] = np.where(a * b >= 0, 0.5 * across, 0.5 * (a * a + b * b) / across)
    return out


@dataclass(frozen=True)
class WassersteinGrid:
    """A reference feature's :func:`metrics.cdf_grid`, arranged to give the Wasserstein distances of many
    resampled windows at once: ``metrics.binned_cdf_distances(...)[1]``, to rounding, at a tenth of its cost.

    Inside one bin, the gap between two binned CDFs is ``D + E f`` (``D`` the gap of the shares below
    the bin, ``E`` of the bin's own share, ``f`` the in-bin fraction of the grid's point). While it
    keeps its sign over the bin, its area is ``|D width + E mass|`` (``width`` the bin's steps,
    ``mass`` their integral of ``f``): one term per bin instead of one per grid segment. Only the bins
    where a window's gap changes sign (a few per window) are summed segment by segment, and the
    segments between bins (where the CDFs are flat) as in :func:`metrics.cdf_distances`.

    >>> x, b, f = np.array([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]), np.array([0, 1, 1, 2, 2, 3]), np.array([0, 0, 1, 0, 1, 1.0])
    >>> p, q = np.array([0.0, 0.5, 0.5, 0.0]), np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.25, 0.75, 0.0]])
    >>> WassersteinGrid.of(x, b, f).distances(p, q).tolist()  # half the mass moved by 1; a quarter by 1
    [0.5, 0.25]
    >>> metrics.binned_cdf_distances(np.diff(x), b, f, p, q)[1].tolist()
    [0.5, 0.25]
    """

    points_bins: NDArray[np.int64]
    fractions: NDArray[np.float64]
    between: NDArray[np.int64]  # segments from one bin to the next that have a width
    between_steps: NDArray[np.float64]
    bins: NDArray[np.int64]  # bins with segments of a width inside them
    width: NDArray[np.float64]
    mass: NDArray[np.float64]
    f_low: NDArray[np.float64]
    f_high: NDArray[np.float64]
    segment_f0: NDArray[np.float64]  # (bins, most segments in a bin), zero-width padding
    segment_f1: NDArray[np.float64]
    segment_steps: NDArray[np.float64]

    @classmethod
    def of(cls, points: np.ndarray, bins: np.ndarray, fractions: np.ndarray) -> WassersteinGrid:
        steps = np.diff(points)
        wide = np.flatnonzero(steps > 0)
        inside = bins[wide] == bins[wide + 1]
        between = wide[~inside]
        seg = wide[inside]
        owner = bins[seg]
        ids, first, per = np.unique(owner, return_index=True, return_counts=True)
        size = int(bins.max()) + 1 if bins.size else 0
        slot = np.arange(int(per.max()) if per.size else 0)
        valid = slot[None, :] < per[:, None]
        at = seg[np.minimum(first[:, None] + slot[None, :], max(seg.size - 1, 0))] if seg.size else slot[None, :0]
        return cls(
            bins,
            fractions,
            between,
            steps[between],
            ids,
            np.bincount(owner, steps[seg], minlength=size)[ids],
            np.bincount(owner, steps[seg] * 0.5 * (fractions[seg] + fractions[seg + 1]), minlength=size)[ids],
            fractions[seg[first]],
            fractions[seg[first + per - 1] + 1],
            np.where(valid, fractions[at], 0.0),
            np.where(valid, fractions[np.minimum(at + 1, fractions.size - 1)], 0.0),
            np.where(valid, steps[at], 0.0),
        )

    def distances(self, p: np.ndarray, q: np.ndarray) -> NDArray[np.float64]:
        """The raw Wasserstein-1 distance between shares ``p`` (over the bins) and each row of ``q``."""
        gap = np.asarray(p, dtype=np.float64) - np.asarray(q, dtype=np.float64)
        below = np.cumsum(gap, axis=-1)
        below -= gap
        b, f, c = self.points_bins, self.fractions, self.between
        out: NDArray[np.float64] = (
            _area(below[:, b[c]] + gap[:, b[c]] * f[c], below[:, b[c + 1]] + gap[:, b[c + 1]] * f[c + 1])
            @ self.between_steps
        )
        d, e = below[:, self.bins], gap[:, self.bins]
        keeps_sign = (d + e * self.f_low) * (d + e * self.f_high) >= 0
        out += np.where(keeps_sign, np.abs(d * self.width + e * self.mass), 0.0).sum(axis=1)
        rows, at = np.nonzero(~keeps_sign)
        if rows.size:
            d_at, e_at = d[rows, at][:, None], e[rows, at][:, None]
            area = _area(d_at + e_at * self.segment_f0[at], d_at + e_at * self.segment_f1[at])
            out += np.bincount(rows, (area * self.segment_steps[at]).sum(axis=1), minlength=gap.shape[0])
        return out


def _wasserstein_at(reference: ReferenceProfile, feature: str, exponent: int, alpha: float) -> float:
    def calibrate() -> float:
        stored: float | None = _stored(reference, "wasserstein", feature, exponent, alpha)
        if stored is not None:
            return stored
        ref = reference.numeric[feature]
        # Windows of m values drawn into the reference's bins; their binned CDFs spread
        # a bin's count like the reference's values (metrics.cdf_grid), as drift.py does.
        # The open bins get no width: without drift, values beyond the reference's range
        # are rare (2 / (N + 1) of a window) and their distance to it is unknown here.
        grid = reference.cached(("wasserstein-grid", feature), lambda: WassersteinGrid.of(*ref.grid))
        rng = np.random.default_rng(stable_seed(reference.seed, "wasserstein-binned", feature, exponent, alpha))
        m = 2**exponent
        q = rng.multinomial(m, _reference_proportions(reference, feature), size=BINNED_REPLICATES) / m
        w = grid.distances(ref.counts / ref.counts.sum(), q)
        return float(np.quantile(w / (ref.std if ref.std > 0 else 1.0), 1.0 - alpha))

    return reference.cached(("wasserstein", feature, exponent, alpha), calibrate)


def _exponents(en: np.ndarray) -> NDArray[np.int64]:
    out: NDArray[np.int64] = np.floor(np.log2(np.maximum(en, 1.0))).astype(np.int64)
    return out


def _scale(en: np.ndarray, exponents: np.ndarray, metric: str) -> NDArray[np.float64]:
    """From the bucket's size to the exact one, at the metric's asymptotic rate."""
    out: NDArray[np.float64] = (np.exp2(exponents) / np.maximum(en, 1.0)) ** _RATE[metric]
    return out


def binned_threshold_table(
    reference: ReferenceProfile, features: list[str], en: np.ndarray, alpha: float
) -> dict[str, np.ndarray]:
    """Null (1 - alpha) quantiles of PSI, Jensen-Shannon and Hellinger, per feature at effective size ``en``.

    NaN where ``en`` is 0 (no values in the window).
    """
    en = np.asarray(en, dtype=np.float64)
    exponents = _exponents(en)
    table = np.full((len(features), 3), np.nan)
    for i, (f, e) in enumerate(zip(features, exponents.tolist())):
        if en[i] > 0:
            table[i] = _binned_at(reference, f, e, alpha)
    return {m: table[:, j] * _scale(en, exponents, m) for j, m in enumerate(("psi", "jensenshannon", "hellinger"))}


def wasserstein_threshold_table(
    reference: ReferenceProfile, features: list[str], en: np.ndarray, alpha: float
) -> NDArray[np.float64]:
    """Null (1 - alpha) quantiles of the std-normalised Wasserstein distance, per feature (NaN where ``en`` is 0)."""
    en = np.asarray(en, dtype=np.float64)
    exponents = _exponents(en)
    at = np.array(
        [
            _wasserstein_at(reference, f, e, alpha) if en[i] > 0 else np.nan
            for i, (f, e) in enumerate(zip(features, exponents.tolist()))
        ]
    )
    out: NDArray[np.float64] = at * _scale(en, exponents, "wasserstein")
    return out


def binned_thresholds(reference: ReferenceProfile, feature: str, en: float, alpha: float) -> dict[str, float]:
    """Null (1 - alpha) quantiles of PSI, Jensen-Shannon and Hellinger at effective size ``en``."""
    table = binned_threshold_table(reference, [feature], np.array([en]), alpha)
    return {m: float(v[0]) for m, v in table.items()}


def wasserstein_threshold(reference: ReferenceProfile, feature: str, en: float, alpha: float) -> float:
    """Null (1 - alpha) quantile of the std-normalised Wasserstein distance at effective size ``en``."""
    return float(wasserstein_threshold_table(reference, [feature], np.array([en]), alpha)[0])


def calibrate(
    reference: ReferenceProfile,
    window_sizes: list[int],
    alpha: float = 0.05,
) -> None:
    """Fill the cache for windows of these sizes, e.g. when a worker loads a reference."""
    for feature in reference.features:
        for n in window_sizes:
            if feature in reference.numeric:
                ref = reference.numeric[feature]
                # at the effective size drift.evaluate_window asks for: both over every value
                en = float(metrics.ks_effective_n(n, ref.count))
                binned_thresholds(reference, feature, en, alpha)
                wasserstein_threshold(reference, feature, en, alpha)
            else:
                binned_thresholds(
                    reference, feature, float(metrics.ks_effective_n(n, reference.categorical[feature].count)), alpha
                )


#: The levels the worker's drift tests ask thresholds at: ``drift.evaluate_window``'s ``alpha``, which
#: the monitor never overrides (the policy sets the FDR level, not these). Others are calibrated at runtime.
DEFAULT_ALPHAS = (0.05,)


def exponents_of(reference: ReferenceProfile, feature: str) -> range:
    """Every bucket a window of this feature can fall in: the effective size stays below the reference's count.

    >>> import numpy as np
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(1_000.0)}, {})
    >>> exponents_of(ref, "x")
    range(0, 10)
    """
    kind = reference.numeric[feature] if feature in reference.numeric else reference.categorical[feature]
    return range(_bucket(float(kind.count)) + 1)


def precompute(
    reference: ReferenceProfile, alphas: tuple[float, ...] = DEFAULT_ALPHAS, exponents: range | None = None
) -> list[dict[str, Any]]:
    """The null thresholds the worker would calibrate, for every bucket (``exponents``, by default each
    feature's :func:`exponents_of`) and level: the ``calibration`` of ``ReferenceProfile.to_dict``.

    The draws are seeded from the reference, so these are the very values a worker would compute;
    a profile loaded with them finds them in its cache. Only finite values are kept.

    >>> import numpy as np
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.random.default_rng(0).normal(size=300)}, {})
    >>> stored = precompute(ref)
    >>> [b["alpha"] for b in stored], stored[0]["features"]["x"]["exponents"]
    ([0.05], [0, 1, 2, 3, 4, 5, 6, 7, 8])
    >>> fresh = ReferenceProfile.build("m", "1", {"x": np.random.default_rng(0).normal(size=300)}, {})
    >>> stored[0]["features"]["x"]["wasserstein"][4] == _wasserstein_at(fresh, "x", 4, 0.05)
    True
    """
    out: list[dict[str, Any]] = []
    for alpha in alphas:
        features: dict[str, dict[str, list[object]]] = {}
        for feature in reference.features:
            numeric = feature in reference.numeric
            kept: dict[str, list[object]] = {"exponents": [], "binned": [], "wasserstein": []}
            for e in exponents_of(reference, feature) if exponents is None else exponents:
                binned = _binned_at(reference, feature, e, alpha)
                wasserstein = _wasserstein_at(reference, feature, e, alpha) if numeric else 0.0
                if all(math.isfinite(v) for v in (*binned, wasserstein)):
                    kept["exponents"].append(e)
                    kept["binned"].append(list(binned))
                    kept["wasserstein"].append(wasserstein)
            if not numeric:
                del kept["wasserstein"]
            features[feature] = kept
        out.append({"alpha": alpha, "features": features})
    return out


def with_calibration(reference: ReferenceProfile, alphas: tuple[float, ...] = DEFAULT_ALPHAS) -> ReferenceProfile:
    """The reference carrying its :func:`precompute`: what registration stores.

    >>> import numpy as np
    >>> ref = with_calibration(ReferenceProfile.build("m", "1", {"x": np.arange(300.0)}, {}))
    >>> loaded = ReferenceProfile.from_dict(ref.to_dict())
    >>> fresh = ReferenceProfile.build("m", "1", {"x": np.arange(300.0)}, {})
    >>> loaded.calibration.get("wasserstein", "x", 5, 0.05) == _wasserstein_at(fresh, "x", 5, 0.05)
    True
    """
    return dataclasses.replace(reference, calibration=StoredCalibration.from_dict(precompute(reference, alphas)))
