"""Drift of one window against its reference: metrics, tests and the ``drifted`` decision.

:func:`evaluate_window` returns one :class:`~streams.records.FeatureDrift`
row per feature and metric. The decision is statistical, so that it means the
same at every window size:

1. Each feature gets one p-value from the tests that can say something in
   this window, combined by weighted Bonferroni (valid however they depend
   on each other). Drift tests: Welch's z on the window's exact mean against
   the reference's (location), the log ratio of the variances with a noise
   set by the reference's kurtosis (scale), and chi-squared on the
   reference's quantile bins over every value (shape; for a feature
   constant in the reference, a rate test of the values away from the
   constant). Data-quality tests: one-sided rate tests of missing values
   and unknown categories, and an exact test of the values outside the
   reference's range. Categorical features: chi-squared on the categories.
2. Benjamini-Hochberg across the features of the window at ``fdr_q``. Under
   no drift, a window raises an alarm of either class with probability at
   most ``fdr_q``. A feature's drift (data-quality) alarm needs its own drift
   (data-quality) tests to reach the cutoff.
3. Thresholds you set (``{feature or '*': {metric: threshold}}``) are minimum
   effect sizes: a significant feature is drifted only if at least one drift
   metric you set a threshold for exceeds it (signed metrics by their absolute
   value); data-quality metrics are gated only by their own thresholds, read
   as the excess over the reference's rate. :data:`DEFAULT_THRESHOLDS` are
   the ones a user would choose. Thresholds can silence alarms, never raise them.

Every row of a feature carries that feature's decision for the row's class
(``kind``: ``"drift"`` or ``"data_quality"``) in ``drifted``. The
``threshold`` of a row is the one you set (plus the reference's rate for
data-quality metrics), or else the value the metric reaches in only
``alpha`` of windows of this size without drift: critical values of the
tests, binomial quantiles for the rates, and resampled quantiles for the
distances (see :mod:`driftline.streams.core.calibration`). docs/STATISTICS.md gives
the reasons.

>>> import numpy as np
>>> from driftline.streams.core.reference import ReferenceProfile
>>> from driftline.streams.core.window_profile import CategoricalWindow, NumericWindow, WindowProfile
>>> rng = np.random.default_rng(0)
>>> ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=20_000), "y": rng.normal(size=20_000)},
...                              {"c": rng.choice(["a", "b", "c"], 20_000).tolist()})
>>> w = WindowProfile.empty(ref, seed=1)
>>> w.update({"x": rng.normal(0.5, 1, 1_000), "y": rng.normal(size=1_000)},
...          {"c": rng.choice(["a", "b", "c"], 1_000).tolist()})
>>> rows = evaluate_window(ref, w)
>>> print(*sorted({r.metric for r in rows if r.feature == "x"}))
chi2 hellinger jensenshannon ks log_std_ratio mean_shift missing_rate out_of_range_rate psi wasserstein
>>> drifted_features(rows)
['x']
>>> drifted_features(evaluate_window(ref, w, thresholds={"x": {"psi": 1.0}}))  # significant, but PSI < 1
[]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray
from scipy import special

from driftline.streams.core import calibration, metrics
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.window_profile import CategoricalWindow, NumericWindow, WindowProfile
from driftline.streams.records import FeatureDrift

NUMERIC_METRICS = (
    "psi",
    "ks",
    "wasserstein",
    "jensenshannon",
    "hellinger",
    "chi2",
    "missing_rate",
    "mean_shift",
    "log_std_ratio",
    "out_of_range_rate",
)
CATEGORICAL_METRICS = ("chi2", "psi", "jensenshannon", "hellinger", "missing_rate", "new_category_rate")
#: Every metric of the engine's rows, in a stable order.
METRICS: tuple[str, ...] = tuple(dict.fromkeys(NUMERIC_METRICS + CATEGORICAL_METRICS))
#: Metrics of the data-quality alarm class (rows with ``kind`` ``"data_quality"``); the rest are drift.
#: Their thresholds are excesses over the reference's own rate.
QUALITY_METRICS = ("missing_rate", "new_category_rate", "out_of_range_rate")
#: Signed metrics: a threshold applies to their absolute value.
SIGNED_METRICS = ("mean_shift", "log_std_ratio")
DRIFT_KIND, QUALITY_KIND = "drift", "data_quality"
#: The keys that thresholds (``{feature or '*': {key: minimum effect size}}``) may use: the
#: engine's metrics. The policy validates its thresholds against this.
THRESHOLD_KEYS: tuple[str, ...] = METRICS
#: Minimum effects a user would choose (docs/POLICY.md gives the reasons): a feature's
#: distribution has drifted when it moved a tenth of a standard deviation, its spread
#: changed by about 10%, or its binned distribution by a Hellinger distance of 0.05
#: (what a 0.14 sd shift of a normal gives); data quality failed when missing values
#: rose 2 points above the reference's rate, unknown categories or values outside the
#: reference's range 1 point above its own share.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "*": {
        "mean_shift": 0.1,
        "log_std_ratio": 0.1,
        "hellinger": 0.05,
        "missing_rate": 0.02,
        "new_category_rate": 0.01,
        "out_of_range_rate": 0.01,
    },
}
#: Shares of a feature's level (weighted Bonferroni, valid however the tests depend on each
#: other) among the tests that can say anything in this window; see docs/STATISTICS.md.
NUMERIC_WEIGHTS = {"location": 0.25, "scale": 0.25, "shape": 0.1, "missing": 0.5, "range": 0.15}
CATEGORICAL_WEIGHTS = {"shape": 0.5, "missing": 0.5, "new": 0.6}
#: Per-test significance levels, which thresholds do not take: one level per feature would
#: undo the false discovery rate that Benjamini-Hochberg keeps across a window's features.
TEST_LEVEL_KEYS = ("ks_alpha", "chi2_alpha")
TEST_LEVEL_HINT = (
    "thresholds are minimum effect sizes, not test levels: significance is decided by "
    "Benjamini-Hochberg across the features of a window, so set fdr_q (monitoring.fdr_q) instead"
)

#: Above this reference kurtosis (3 for a normal) the scale test works on ranks (bins), not moments.
HEAVY_KURTOSIS = 4.0
#: Cochran's rule: cells of a chi-squared test expect at least this many values.
MIN_EXPECTED = 5.0
#: A truncated reference's table is cut (kept categories apart, the rest with ``other``) at a gap
#: between consecutive counts of at least this many standard errors (see ``_pool_boundary``).
GAP_SE = 2.0

Thresholds = Mapping[str, Mapping[str, float]]


def drifted_features(rows: list[FeatureDrift], kind: str | None = None) -> list[str]:
    """Features flagged in rows from :func:`evaluate_window`, in order: by any alarm, or by alarms of ``kind``.

    >>> rows = [FeatureDrift("a", "psi", 0.4, None, 0.2, True), FeatureDrift("b", "missing_rate", 0.3, 0.0, 0.02, True,
    ...                                                                      "data_quality")]
    >>> drifted_features(rows), drifted_features(rows, "drift"), drifted_features(rows, "data_quality")
    (['a', 'b'], ['a'], ['b'])
    """
    return list(dict.fromkeys(r.feature for r in rows if r.drifted and (kind is None or r.kind == kind)))


def check_thresholds(thresholds: Thresholds | None) -> dict[str, dict[str, float]]:
    """Validated overrides, ``{feature or '*': {metric: threshold}}``.

    >>> check_thresholds({"*": {"psi": 0.2}})
    {'*': {'psi': 0.2}}
    >>> check_thresholds({"age": {"pis": 0.2}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown drift metric 'pis' in thresholds for 'age'; expected one of chi2, hellinger, ...
    >>> check_thresholds({"age": {"ks_alpha": 0.01}})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: 'ks_alpha' in thresholds for 'age': thresholds are minimum effect sizes, not test levels: ...
    """
    out: dict[str, dict[str, float]] = {}
    for feature, by_metric in (thresholds or {}).items():
        out[feature] = {}
        for metric, value in by_metric.items():
            if metric in TEST_LEVEL_KEYS:
                raise ValueError(f"{metric!r} in thresholds for {feature!r}: {TEST_LEVEL_HINT}")
            if metric not in THRESHOLD_KEYS:
                raise ValueError(
                    f"unknown drift metric {metric!r} in thresholds for {feature!r}; "
                    f"expected one of {', '.join(sorted(THRESHOLD_KEYS))}"
                )
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"threshold of {metric!r} for {feature!r} is NaN")
            out[feature][metric] = value
    return out


# ----------------------------------------------------------------------------- reference-side preparation


def _pool_groups(p: np.ndarray, min_share: float, ordered: bool) -> np.ndarray:
    """Group cells so that every group holds at least ``min_share`` of the reference (Cochran's rule).

    Ordered cells (numeric bins, open bins at both ends) merge with their
    neighbours; unordered ones (categories) pool the rare ones together.
    Pooling depends on the reference and the window size only, never on the
    window's counts, so the test keeps its level.

    >>> _pool_groups(np.array([0.0, 0.3, 0.02, 0.3, 0.38, 0.0]), 0.1, ordered=True).tolist()
    [0, 0, 1, 1, 2, 2]
    >>> _pool_groups(np.array([0.5, 0.3, 0.12, 0.05, 0.03]), 0.1, ordered=False).tolist()
    [0, 1, 2, 2, 2]
    """
    k = p.size
    groups = np.zeros(k, dtype=np.int64)
    if ordered:
        inner = list(range(1, k - 1)) if k > 2 else list(range(k))
        g, mass = 0, 0.0
        for i in inner:
            groups[i] = g
            mass += p[i]
            if mass >= min_share and i != inner[-1]:
                g, mass = g + 1, 0.0
        if mass < min_share and g > 0:
            groups[groups == g] = g - 1  # the last group is too small: join its neighbour
        groups[0], groups[-1] = groups[inner[0]], groups[inner[-1]]
        return groups
    big = p >= min_share
    order = np.argsort(-p, kind="stable")
    rank = np.empty(k, dtype=np.int64)
    rank[order] = np.arange(k)
    n_big = int(big.sum())
    groups = np.where(big, rank, n_big)
    rest = p[~big].sum()
    if n_big and (~big).any() and rest < min_share:
        groups[~big] = n_big - 1  # the pooled rest is too small: join the smallest large cell
    return groups


class _Columns(TypedDict):
    """One class's (numeric or categorical) results, a row per feature; the dicts are keyed by metric."""

    metrics: tuple[str, ...]
    events: np.ndarray
    drift_p: np.ndarray
    quality_p: np.ndarray
    values: dict[str, np.ndarray]
    p: dict[str, np.ndarray]
    threshold: dict[str, np.ndarray]
    base: dict[str, np.ndarray]  # the reference's rate of a data-quality metric (added to a threshold you set)


@dataclass
class _Prepared:
    numeric: list[str]
    categorical: list[str]
    num_p: np.ndarray  # reference proportions, padded (features x bins)
    num_counts: np.ndarray  # reference counts, padded
    num_n: np.ndarray  # reference non-missing count
    num_missing: np.ndarray
    num_scale: np.ndarray  # reference std (1 when constant)
    num_mean: np.ndarray
    num_var: np.ndarray  # reference variance (over all its values)
    num_kurtosis: np.ndarray  # the reference's (3 for a normal; sets the scale test's noise)
    num_where: np.ndarray  # normal scores per bin (padded): rank tests of location ...
    num_spread: np.ndarray  # ... and scale, for heavy-tailed features
    num_scores: np.ndarray  # both, stacked (location rows, then scale rows): one rank test call
    num_counts_twice: np.ndarray  # num_counts stacked twice, to go with them
    num_slots: np.ndarray  # where a window's numeric bin counts, end to end, land in the padded matrix
    num_bins: np.ndarray
    # where the binned CDFs are known (metrics.cdf_grid), padded with the last point: the steps
    # between points, and what the window's minimum and maximum widen (the first and last steps)
    num_grid_steps: np.ndarray
    num_grid_bins: np.ndarray
    num_grid_fractions: np.ndarray
    num_grid_low: np.ndarray
    num_grid_high: np.ndarray
    num_grid_last: np.ndarray
    num_grid_reference: np.ndarray  # the reference's binned CDF at the grid's points
    cat_p: np.ndarray
    cat_counts: np.ndarray
    cat_n: np.ndarray
    cat_missing: np.ndarray
    cat_other: np.ndarray  # reference count outside the table
    cat_bins: np.ndarray
    cat_slots: np.ndarray


def _slots(rows: list[np.ndarray]) -> np.ndarray:
    """Where the cells of ``rows``, end to end, sit in their flattened :func:`_padded` matrix.

    >>> _slots([np.zeros(2), np.zeros(3)]).tolist()
    [0, 1, 3, 4, 5]
    """
    width = max((r.size for r in rows), default=0)
    return np.concatenate([i * width + np.arange(r.size) for i, r in enumerate(rows)] or [np.zeros(0, np.int64)])


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    width = max((r.size for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def _normal_scores(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per bin of a numeric reference, E[Z | bin] and E[Z^2 | bin] for Z normal over the bin's
    quantiles: the scores of rank tests of location (van der Waerden) and scale (Klotz) on the
    bins, whose null distributions hold whatever the feature's tails.

    The open bins (values outside the reference's range) score as their inner
    neighbours: how many values fall there is the out-of-range test's business,
    and their heavy-tailed counts would break the normal approximation.

    >>> where, spread = _normal_scores(np.array([0.0, 25.0, 25.0, 25.0, 25.0, 0.0]))
    >>> round(float(where[1] + where[4]), 12), bool(spread[1] > spread[2] > 0), bool(spread[0] == spread[1])
    (0.0, True, True)
    """
    inner = counts[1:-1]
    cum = np.concatenate([[0.0], np.cumsum(inner) / max(inner.sum(), 1.0)])
    cuts = special.ndtri(np.clip(cum, 0.0, 1.0))
    lo, hi = cuts[:-1], cuts[1:]
    with np.errstate(invalid="ignore"):
        mass = special.ndtr(hi) - special.ndtr(lo)
        safe = np.where(mass > 0, mass, 1.0)
        pdf_lo, pdf_hi = np.exp(-lo * lo / 2) / np.sqrt(2 * np.pi), np.exp(-hi * hi / 2) / np.sqrt(2 * np.pi)
        where = np.where(mass > 0, (pdf_lo - pdf_hi) / safe, 0.0)
        spread = np.where(mass > 0, 1.0 + (np.nan_to_num(lo * pdf_lo) - np.nan_to_num(hi * pdf_hi)) / safe, 0.0)

    def pad(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x[:1], x, x[-1:]])

    return pad(where), pad(spread)


def _rank_pvalue(scores: np.ndarray, counts: np.ndarray, ref_counts: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the two-sample test on mean bin scores (window vs reference), per row,
    with the pooled variance of the scores: a permutation test's normal approximation."""
    n, big_n = counts.sum(axis=1), ref_counts.sum(axis=1)
    pooled = counts + ref_counts
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (pooled * scores).sum(axis=1) / (n + big_n)
        var = (pooled * scores * scores).sum(axis=1) / (n + big_n) - mean**2
        gap = (counts * scores).sum(axis=1) / n - (ref_counts * scores).sum(axis=1) / big_n
        return np.where(var > 0, _two_sided(gap / np.sqrt(var * (1.0 / n + 1.0 / big_n))), 1.0)


def _prepare(reference: ReferenceProfile) -> _Prepared:
    num = [f for f in reference.features if f in reference.numeric]
    cat = [f for f in reference.features if f in reference.categorical]
    nrefs = [reference.numeric[f] for f in num]
    crefs = [reference.categorical[f] for f in cat]
    num_counts = _padded([r.counts.astype(np.float64) for r in nrefs])
    where = _padded([_normal_scores(r.counts.astype(np.float64))[0] for r in nrefs])
    spread = _padded([_normal_scores(r.counts.astype(np.float64))[1] for r in nrefs])
    grids = [r.grid for r in nrefs]
    width = max((g[0].size for g in grids), default=0)

    def grid_part(j: int) -> np.ndarray:
        # padded with the last point: steps of zero width, which add nothing
        return (
            np.stack([np.pad(g[j], (0, width - g[j].size), mode="edge") for g in grids]) if grids else np.zeros((0, 0))
        )

    cat_counts = _padded([r.counts.astype(np.float64) for r in crefs])
    num_n = num_counts.sum(axis=1)
    cat_n = cat_counts.sum(axis=1)
    num_p = num_counts / np.maximum(num_n, 1)[:, None]
    grid_bins, grid_fractions = grid_part(1).astype(np.int64), grid_part(2)
    return _Prepared(
        numeric=num,
        categorical=cat,
        num_p=num_p,
        num_counts=num_counts,
        num_n=num_n,
        num_missing=np.array([r.missing for r in nrefs], dtype=np.float64),
        num_scale=np.array([r.std if r.std > 0 else 1.0 for r in nrefs], dtype=np.float64),
        num_mean=np.array([r.mean for r in nrefs], dtype=np.float64),
        num_var=np.array([r.std**2 for r in nrefs], dtype=np.float64),
        num_kurtosis=np.array([r.kurtosis for r in nrefs], dtype=np.float64),
        num_where=where,
        num_spread=spread,
        num_scores=np.concatenate([where, spread]),
        num_counts_twice=np.concatenate([num_counts, num_counts]),
        num_slots=_slots([r.counts for r in nrefs]),
        num_bins=np.array([r.n_bins for r in nrefs], dtype=np.int64),
        num_grid_steps=np.diff(grid_part(0), axis=1),
        num_grid_bins=grid_bins,
        num_grid_fractions=grid_fractions,
        num_grid_low=np.array([g[0][0] for g in grids], dtype=np.float64),
        num_grid_high=np.array([g[0][-1] for g in grids], dtype=np.float64),
        num_grid_last=np.array([g[0].size - 2 for g in grids], dtype=np.int64),
        num_grid_reference=metrics.binned_cdf(grid_bins, grid_fractions, num_p),
        cat_p=cat_counts / np.maximum(cat_n, 1)[:, None],
        cat_counts=cat_counts,
        cat_n=cat_n,
        cat_missing=np.array([r.missing for r in crefs], dtype=np.float64),
        cat_other=np.array([r.counts[-1] for r in crefs], dtype=np.float64),
        cat_bins=np.array([r.n_bins for r in crefs], dtype=np.int64),
        cat_slots=_slots([r.counts for r in crefs]),
    )


def _size_bucket(n: float) -> int:
    return int(math.floor(4 * math.log2(max(n, 1.0))))


def _pool_boundary(counts: np.ndarray, groups: np.ndarray, window_n: float = 0.0) -> np.ndarray:
    """Pool the kept categories whose selection into the top K may be the reference's luck into
    ``other``'s group (the last cell), and renumber the groups.

    A reference that kept only its top K categories chose them by its own counts: the
    categories near the cut are there because they happened to be frequent in the reference,
    and those in ``other`` because they happened to be rare. Windows then see the first fewer
    and ``other`` more often than the reference, with no drift at all. So the kept categories
    whose count is within 3 standard errors of the smallest kept one join ``other``. Any cut
    on the reference's own counts biases the categories near it, and the bias weighs as much
    as the test's noise once the window is not much smaller than the reference (the share of
    the reference's noise in the test is ``N / (n + N)``): then (``window_n`` above a quarter
    of the reference) the cut moves up to the lowest *gap* between consecutive kept counts of
    at least :data:`GAP_SE` standard errors, where no category sits close to it.

    >>> _pool_boundary(np.array([500.0, 200.0, 30.0, 25.0, 60.0]), np.array([0, 1, 2, 3, 4])).tolist()
    [0, 1, 2, 2, 2]
    >>> _pool_boundary(np.array([500.0, 200.0, 190.0, 150.0, 60.0]), np.arange(5), window_n=10_000).tolist()
    [0, 1, 2, 3, 3]
    """
    kept = counts[:-1]
    low = float(kept.min()) if kept.size else 0.0
    cut = low + 3.0 * math.sqrt(max(low, 1.0))
    if kept.size > 1 and 4.0 * window_n > counts.sum():
        ranked = np.sort(kept)[::-1]
        wide = np.flatnonzero(ranked[:-1] - ranked[1:] >= GAP_SE * np.sqrt(ranked[:-1] + ranked[1:]))
        # no wide gap: only the categories far above every other count stay apart
        cut = max(cut, float(ranked[wide[-1]]) if wide.size else float(ranked[0]) + 1.0)
    near = np.append(kept < cut, True)
    out = groups.copy()
    out[near] = groups[-1]
    return np.unique(out, return_inverse=True)[1].astype(np.int64)


def _groups(
    reference: ReferenceProfile, feature: str, p: np.ndarray, n: float, ordered: bool, truncated_n: float | None = None
) -> np.ndarray:
    """Pooling of one feature's cells for windows of about ``n`` values (the bucket's lower edge);
    ``truncated_n``: the reference count of a categorical feature whose reference saw ``other``."""

    def pool() -> np.ndarray:
        groups = _pool_groups(p, MIN_EXPECTED / n, ordered)
        return groups if truncated_n is None else _pool_boundary(p * truncated_n, groups, n)

    return reference.cached(("pool", feature, n, ordered, truncated_n is not None), pool)


def _pooled_chi2(
    reference: ReferenceProfile,
    features: list[str],
    ref_counts: np.ndarray,
    win_counts: np.ndarray,
    n_bins: np.ndarray,
    n_window: np.ndarray,
    ordered: bool,
    keep: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chi-squared homogeneity per feature on Cochran-pooled cells.

    ``keep[i]`` False drops feature i's last cell (an ``other`` the reference never saw).
    """
    cells = n_bins if keep is None else n_bins - (~keep).astype(np.int64)
    # integer counts: the masked row sums are exact, as the sums of the rows' first cells were
    n_ref = np.where(np.arange(ref_counts.shape[1]) < cells[:, None], ref_counts, 0.0).sum(axis=1)
    buckets = tuple(_size_bucket(x) for x in np.minimum(n_window, n_ref).tolist())

    def layout() -> tuple[np.ndarray, np.ndarray]:
        # Where each (feature, cell) lands among all features' pooled groups,
        # and where each feature's groups sit in a padded matrix.
        k, width = ref_counts.shape
        truncated = [None if ordered or keep is None or not keep[i] else float(n_ref[i]) for i in range(k)]
        groups = [
            _groups(
                reference, f, ref_counts[i, :c] / max(n_ref[i], 1.0), 2.0 ** (buckets[i] / 4), ordered, truncated[i]
            )
            for i, (f, c) in enumerate(zip(features, cells.tolist()))
        ]
        sizes = [int(g.max()) + 1 for g in groups]
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        # Cells outside a feature's groups (padding, an ``other`` the reference
        # never saw) land in a discard group that nothing reads; the rows of
        # features with fewer groups are padded from a second, always empty
        # group. One shared group would carry one feature's new categories into
        # another feature's test.
        discard = int(offsets[-1])
        flat = np.full((k, width), discard, dtype=np.int64)
        gather = np.full((k, max(sizes, default=0)), discard + 1, dtype=np.int64)
        for i, g in enumerate(groups):
            flat[i, : g.size] = offsets[i] + g
            gather[i, : sizes[i]] = offsets[i] + np.arange(sizes[i])
        return flat.ravel(), gather

    flat, gather = reference.cached(("pooling", ordered, tuple(features), buckets), layout)
    size = int(max(gather.max(initial=0), flat.max(initial=0))) + 2
    pooled_ref = np.bincount(flat, weights=ref_counts.ravel(), minlength=size)[gather]
    pooled_win = np.bincount(flat, weights=win_counts.ravel(), minlength=size)[gather]
    return metrics.chi2_homogeneity(pooled_ref, pooled_win)


# ----------------------------------------------------------------------------- evaluation


def _rate_threshold(p_ref: np.ndarray, n: np.ndarray, alpha: float) -> np.ndarray:
    """Upper (1 - alpha) quantile of a binomial rate with probability ``p_ref`` over ``n`` trials."""
    with np.errstate(invalid="ignore", divide="ignore"):
        k = np.ceil(special.bdtrik(1.0 - alpha, np.maximum(n, 1.0), p_ref))
        rate = np.where(p_ref > 0, np.clip(k, 0, None) / np.maximum(n, 1.0), 0.0)
    return np.where(n > 0, np.minimum(rate, 1.0), np.nan)


def _rate_can_matter(hits: np.ndarray, reference_n: np.ndarray, window_n: np.ndarray, level: float) -> np.ndarray:
    """Whether a rate test could reach ``level`` at all: its smallest p-value, all ``hits`` in the
    window, is ``share ** hits`` with ``share = n / (N + n)``.

    The conditional test's null law is fixed by the total ``hits``, and no
    feature's cutoff exceeds ``fdr_q``: a test that cannot reach it takes no
    share of the feature's level (Tarone's rule for discrete tests), so it
    costs the other tests nothing.

    >>> _rate_can_matter(np.array([0, 1, 5, 1]), np.array([1e3, 1e3, 1e3, 5e4]), np.array([1e3, 1e3, 1e3, 1e3]), 0.05)
    array([False, False,  True,  True])
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        share = window_n / (reference_n + window_n)
        least = np.where(hits > 0, share ** np.maximum(hits, 1.0), 1.0)
    return (hits > 0) & (reference_n > 0) & (window_n > 0) & (least <= level)


def _rate_weight(window_n: np.ndarray, reference_n: np.ndarray) -> np.ndarray:
    """How much a rate test's share of the level grows with the window: ``1 + n / N``.

    A hit in the window is evidence ``ln(1 + N / n)`` against the null of the
    conditional test, which vanishes as the window outgrows the reference: the
    window's count must then rise by about ``ln(1 / share) * n / N`` hits to
    pass a level cut by ``share``, against a noise of ``sqrt(n / N)`` hits, so
    a fixed share would cost more and more power. Location, scale and shape
    tests lose the same at every size. The weight depends on the sizes only.

    >>> _rate_weight(np.array([100.0, 1_000.0, 10_000.0]), np.array([1_000.0, 1_000.0, 1_000.0])).tolist()
    [1.1, 2.0, 11.0]
    """
    out: NDArray[np.float64] = 1.0 + np.asarray(window_n, np.float64) / np.maximum(reference_n, 1.0)
    return out


def _weighted_bonferroni(
    p: Mapping[str, np.ndarray],
    active: Mapping[str, np.ndarray],
    weights: Mapping[str, float | np.ndarray],
) -> dict[str, np.ndarray]:
    """Each test's p-value divided by its share of the feature's level among the tests active there.

    A feature is significant at level ``a`` when any of these is at most ``a``
    (weighted Bonferroni: valid whatever the dependence between the tests).
    Inactive tests (nothing to test in this window) give ``inf``.

    >>> adj = _weighted_bonferroni({"a": np.array([0.01, 0.01]), "b": np.array([0.5, 0.5])},
    ...                            {"a": np.array([True, True]), "b": np.array([True, False])}, {"a": 0.5, "b": 0.5})
    >>> adj["a"].tolist(), adj["b"].tolist()
    ([0.02, 0.01], [1.0, inf])
    """
    names = list(weights)
    w = np.stack([np.where(active[t], weights[t], 0.0) for t in names])
    share = w / np.maximum(w.sum(axis=0), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        adj = np.where(share > 0, np.stack([p[t] for t in names]) / share, np.inf)
    return {t: adj[i] for i, t in enumerate(names)}


def _decisions(adjusted: np.ndarray, fdr_q: float) -> np.ndarray:
    """Which (class, feature) adjusted p-values are significant, by one Benjamini-Hochberg across features.

    ``adjusted`` holds one row per alarm class; a feature's p-value is its
    smallest, and a class alarms where its own value reaches the BH cutoff.
    """
    p_feature = adjusted.min(axis=0)
    tested = np.isfinite(p_feature)
    cut = metrics.bh_cutoff(np.minimum(p_feature[tested], 1.0), fdr_q)
    return (adjusted <= cut) & (cut > 0)


def _gates(
    block: _Columns, names: Sequence[str], overrides: Mapping[str, Mapping[str, float]], metrics_here: Sequence[str]
) -> tuple[dict[str, float | np.ndarray], np.ndarray]:
    """The thresholds you set for the metrics of ``metrics_here`` (one value for every feature of
    ``names``, or an array with NaN where a feature has none; metrics without any are left out),
    and per feature whether any of them is exceeded (True where none applies: significance decides).

    >>> block = {"values": {"psi": np.array([0.3, 0.1, np.nan]), "mean_shift": np.array([-0.5, 0.0, 0.0])}, "base": {}}
    >>> overrides = {"*": {"psi": 0.2}, "c": {"mean_shift": 1.0}}
    >>> mine, gate = _gates(block, ["a", "b", "c"], overrides, ["psi", "mean_shift"])
    >>> mine["psi"], mine["mean_shift"].tolist(), gate.tolist()
    (0.2, [nan, nan, 1.0], [True, False, False])
    """
    k = len(names)
    star = overrides.get("*", {})
    own = [(i, overrides[f]) for i, f in enumerate(names) if f in overrides and f != "*"]
    mine: dict[str, float | np.ndarray] = {}
    applies = np.zeros(k, dtype=bool)
    exceeds = np.zeros(k, dtype=bool)
    for m in metrics_here:
        th: float | np.ndarray | None = star.get(m)
        set_here = [(i, by_metric[m]) for i, by_metric in own if m in by_metric]
        if set_here:
            th = np.full(k, np.nan if th is None else th)
            for i, value in set_here:
                th[i] = value
        if th is None:
            continue
        mine[m] = th
        v = block["values"][m]
        effect = np.abs(v) if m in SIGNED_METRICS else v - block["base"].get(m, 0.0)
        here = ~np.isnan(v) & ~np.isnan(th)
        with np.errstate(invalid="ignore"):
            exceeds |= here & (effect > th)
        applies |= here
    return mine, ~applies | exceeds


def _block_rows(
    block: _Columns, names: Sequence[str], significant: np.ndarray, overrides: Mapping[str, Mapping[str, float]]
) -> dict[str, list[FeatureDrift]]:
    """The rows of one class's features (numeric or categorical) that saw events, by feature."""
    if not names:
        return {}
    k = len(names)
    metric_names = block["metrics"]
    quality_names = [m for m in metric_names if m in QUALITY_METRICS]
    drift_names = [m for m in metric_names if m not in QUALITY_METRICS]
    mine, drift_gate = _gates(block, names, overrides, drift_names)
    quality_mine, quality_gate = _gates(block, names, overrides, quality_names)
    mine.update(quality_mine)
    flags = {
        DRIFT_KIND: (significant[0] & drift_gate).tolist(),
        QUALITY_KIND: (significant[1] & quality_gate).tolist(),
    }
    columns = []
    for m in metric_names:
        kind = QUALITY_KIND if m in QUALITY_METRICS else DRIFT_KIND
        threshold = block["threshold"][m]
        if m in mine:  # yours (plus the reference's rate of a data-quality metric), where you set one
            th = mine[m] + block["base"].get(m, 0.0)
            threshold = np.where(np.isnan(th), threshold, th)
        p = block["p"].get(m)
        p_values = [None] * k if p is None else [None if x != x else x for x in p.tolist()]
        columns.append((m, block["values"][m].tolist(), p_values, threshold.tolist(), flags[kind], kind))
    seen = (block["events"] > 0).tolist()
    return {
        f: [FeatureDrift(f, m, v[j], p[j], t[j], d[j], kind) for m, v, p, t, d, kind in columns]
        for j, f in enumerate(names)
        if seen[j]
    }


Moments = Mapping[str, tuple[int, float, float]]


def window_moments(window: WindowProfile) -> dict[str, tuple[int, float, float]]:
    """Count, mean and M2 of each numeric feature of ``window``, each rounded once from its exact sums.

    Reading them costs a few exact-sum steps per feature; the monitor reads them
    once per closed window for the drift tests and the slow-drift detector.

    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(10.0)}, {})
    >>> w = WindowProfile.empty(ref, seed=0)
    >>> w.update({"x": np.array([1.0, 2.0, 6.0])}, {})
    >>> window_moments(w)
    {'x': (3, 3.0, 14.0)}
    """
    return {f: (w.count, w.mean, w.m2) for f, w in window.numeric.items()}


def evaluate_window(
    reference: ReferenceProfile,
    window: WindowProfile,
    *,
    thresholds: Thresholds | None = None,
    fdr_q: float = 0.05,
    alpha: float = 0.05,
    moments: Moments | None = None,
) -> list[FeatureDrift]:
    """Every drift and data-quality metric of every feature of ``window``, with the ``drifted`` decision.

    ``fdr_q`` is the false discovery rate of Benjamini-Hochberg across the
    window's features (and so its false-alarm rate without drift); ``alpha``
    the level of the reported per-metric thresholds. Features without any
    event in the window (``__prediction__`` when only features were logged)
    get no rows. Metrics that need values are NaN when all values were missing.
    Rows of :data:`QUALITY_METRICS` carry the data-quality decision and
    ``kind="data_quality"``; the others the drift decision and ``kind="drift"``.
    ``moments``: the window's ``window_moments`` when the caller already read them.
    """
    if not 0.0 < fdr_q < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"fdr_q and alpha must be between 0 and 1, got {fdr_q} and {alpha}")
    wref = window.reference
    if wref is not reference and (wref.model_id, wref.model_version, wref.features) != (
        reference.model_id,
        reference.model_version,
        reference.features,
    ):
        raise ValueError(
            f"window of {wref.model_id} {wref.model_version} evaluated against the reference of "
            f"{reference.model_id} {reference.model_version}"
        )
    overrides = check_thresholds(thresholds)
    prep = reference.cached("drift", lambda: _prepare(reference))
    num = _numeric(reference, window, prep, alpha, fdr_q, window_moments(window) if moments is None else moments)
    cat = _categorical(reference, window, prep, alpha, fdr_q)

    adjusted = np.stack(
        [np.concatenate([num["drift_p"], cat["drift_p"]]), np.concatenate([num["quality_p"], cat["quality_p"]])]
    )
    significant = _decisions(adjusted, fdr_q)

    k = len(prep.numeric)
    rows = {
        **_block_rows(num, prep.numeric, significant[:, :k], overrides),
        **_block_rows(cat, prep.categorical, significant[:, k:], overrides),
    }
    return [row for f in reference.features for row in rows.get(f, ())]


def _window_counts(
    features: Sequence[NumericWindow | CategoricalWindow], reference_counts: np.ndarray, slots: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per feature (a row each) of a window: its bin counts (padded like ``reference_counts``, at the
    flat ``slots`` of :func:`_slots`), values, missing values and bin shares."""
    counts = np.zeros(reference_counts.shape)
    if slots.size:
        counts.ravel()[slots] = np.concatenate([f.counts for f in features])
    n = counts.sum(axis=1)
    missing = np.array([f.missing for f in features], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = counts / n[:, None]
    return counts, n, missing, q


def _two_sided(z: np.ndarray) -> NDArray[np.float64]:
    out: NDArray[np.float64] = 2.0 * special.ndtr(-np.abs(z))
    return out


def _no_columns(names: tuple[str, ...]) -> _Columns:
    """The columns of a class without features."""
    return {
        "metrics": names,
        "events": np.zeros(0),
        "drift_p": np.zeros(0),
        "quality_p": np.zeros(0),
        "values": {},
        "p": {},
        "threshold": {},
        "base": {},
    }


def _numeric(
    reference: ReferenceProfile, window: WindowProfile, prep: _Prepared, alpha: float, level: float, read: Moments
) -> _Columns:
    names = prep.numeric
    if not names:
        return _no_columns(NUMERIC_METRICS)
    wins = [window.numeric[f] for f in names]
    k = len(names)
    counts, n, missing, q = _window_counts(wins, prep.num_counts, prep.num_slots)
    has = n > 0
    psi = metrics.psi(prep.num_p, q)
    js = metrics.jensenshannon(prep.num_p, q)
    hel = metrics.hellinger(prep.num_p, q)

    chi, dof, chi_p = _pooled_chi2(reference, names, prep.num_counts, counts, prep.num_bins, n, ordered=True)
    total = n + missing
    big_n = prep.num_n

    # KS and Wasserstein between the binned CDFs over every value (the reference's
    # bins, spread inside like the reference's values): reported, never decisive.
    low = np.array([w.min if w.min is not None else np.inf for w in wins], dtype=np.float64)
    high = np.array([w.max if w.max is not None else -np.inf for w in wins], dtype=np.float64)
    steps = prep.num_grid_steps.copy()
    steps[:, 0] += np.maximum(prep.num_grid_low - low, 0.0)
    steps[np.arange(k), prep.num_grid_last] += np.maximum(high - prep.num_grid_high, 0.0)
    with np.errstate(invalid="ignore"):
        d, w_raw = metrics.cdf_distances(
            steps, prep.num_grid_reference, metrics.binned_cdf(prep.num_grid_bins, prep.num_grid_fractions, q)
        )
    d, w_raw = np.where(has, d, np.nan), np.where(has, w_raw, np.nan)
    ks_p = np.where(has, metrics.ks_pvalue(np.nan_to_num(d), big_n, np.maximum(n, 1)), np.nan)

    # Location and scale on the window's exact moments (every value, not the
    # sample): z on the means, and the log-variance ratio whose noise,
    # (kurtosis - 1) / n, comes from the reference's kurtosis, so heavy tails
    # widen it instead of raising false alarms.
    # exact sums in the profile: the same bits for any batching, so a replay gives the same rows
    mean_w = np.array([read[f][1] for f in names], dtype=np.float64)
    m2_w = np.array([read[f][2] for f in names], dtype=np.float64)
    varying = prep.num_var > 0
    moments = (n >= 2) & varying
    with np.errstate(invalid="ignore", divide="ignore"):
        var_w = np.where(n >= 2, m2_w / np.maximum(n - 1, 1), np.nan)
        var_r = prep.num_var * big_n / np.maximum(big_n - 1, 1)
        # The null's variance, from the reference's many values: the window's own
        # variance makes z too eager on skewed windows (a rare binary value, 100 events).
        se_loc = np.sqrt(var_r * (1.0 / n + 1.0 / big_n))
        p_loc = np.where(moments, _two_sided((mean_w - prep.num_mean) / se_loc), np.nan)
        scaled = moments & (var_w > 0) & (prep.num_bins > 3)  # two values: the spread follows the mean
        log_ratio = np.where(scaled, 0.5 * np.log(var_w / var_r), np.nan)
        # Var(s^2) / sigma^4 = (kurtosis - 1) / n + 2 / (n (n - 1)); an F test with the degrees of
        # freedom 2 / that (n - 1 for a normal: the exact F test) keeps the skew of variance ratios.
        rel_w = (prep.num_kurtosis - 1.0) / n + 2.0 / (n * np.maximum(n - 1, 1))
        rel_r = (prep.num_kurtosis - 1.0) / big_n + 2.0 / (big_n * np.maximum(big_n - 1, 1))
        se_scale = 0.5 * np.sqrt(rel_w + rel_r)
        ratio = var_w / var_r
        below = special.fdtr(2.0 / rel_w, 2.0 / rel_r, ratio)
        p_moments = np.minimum(1.0, 2.0 * np.minimum(below, special.fdtrc(2.0 / rel_w, 2.0 / rel_r, ratio)))
        # Moments need a kurtosis, which a sample underestimates for heavy tails
        # (Student t with 3 degrees of freedom has none), and means of heavy-tailed
        # values have heavy tails too: beyond HEAVY_KURTOSIS, rank tests on the
        # bins decide location and scale instead.
        # Few distinct values (a binary feature shares one bin) leave ranks nothing
        # to see, and their moments are well behaved.
        heavy = (prep.num_kurtosis > HEAVY_KURTOSIS) & (prep.num_bins >= 7)
        if heavy.any():  # location and scale in one call: the rows are independent
            ranks = _rank_pvalue(prep.num_scores, np.concatenate([counts, counts]), prep.num_counts_twice)
            rank_loc, rank_scale = ranks[:k], ranks[k:]
        else:
            rank_loc = rank_scale = np.full(k, np.nan)
        p_loc = np.where(heavy & moments, rank_loc, p_loc)
        p_scale = np.where(scaled, np.where(heavy, rank_scale, p_moments), np.nan)

    # Shape: chi-squared on the reference's bins over every value. A constant
    # reference feature pools into a single cell: what can change is the share
    # of values away from the constant (in the open bins), tested like a rate.
    rows_k = np.arange(k)
    outside = counts[:, 0] + counts[rows_k, prep.num_bins - 1]
    ref_outside = prep.num_counts[:, 0] + prep.num_counts[rows_k, prep.num_bins - 1]
    constant = prep.num_bins == 3  # one inner bin between the two open ones
    p_shape = np.where(constant, metrics.rate_test(ref_outside, big_n, outside, n), chi_p) if constant.any() else chi_p

    ref_total = big_n + prep.num_missing
    miss_p = metrics.rate_increase_test(prep.num_missing, ref_total, missing, total)
    range_p = metrics.out_of_range_pvalue(outside, n, big_n)
    adj = _weighted_bonferroni(
        {"location": p_loc, "scale": p_scale, "shape": p_shape, "missing": miss_p, "range": range_p},
        {
            "location": moments,
            "scale": scaled,
            "shape": has & (constant | (dof > 0)),
            "missing": _rate_can_matter(prep.num_missing + missing, ref_total, total, level),
            # always, not only when a value is outside: that is the window's data, and it goes with
            # the spread; the shares of the other tests would then add up to more than the level
            "range": has,
        },
        {**NUMERIC_WEIGHTS, "missing": NUMERIC_WEIGHTS["missing"] * _rate_weight(total, ref_total)},
    )

    z = special.ndtri(1.0 - alpha / 2)
    tail_share = 2.0 / (big_n + 1.0)
    # Normal approximation to the beta-binomial (n, 2, N - 1) quantile: the reported threshold only.
    range_sd = np.sqrt(n * tail_share * (1 - tail_share) * (big_n + 1 + n) / (big_n + 2))
    binned = calibration.binned_threshold_table(reference, names, metrics.ks_effective_n(n, big_n), alpha)
    th_w = calibration.wasserstein_threshold_table(reference, names, metrics.ks_effective_n(n, big_n), alpha)
    nan = np.full(k, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "metrics": NUMERIC_METRICS,
            "events": total,
            "drift_p": np.fmin(np.fmin(adj["location"], adj["scale"]), adj["shape"]),
            "quality_p": np.fmin(adj["missing"], adj["range"]),
            "values": {
                "psi": np.where(has, psi, np.nan),
                "ks": d,
                "wasserstein": w_raw / prep.num_scale,
                "jensenshannon": np.where(has, js, np.nan),
                "hellinger": np.where(has, hel, np.nan),
                "chi2": np.where(has & (dof > 0), chi, np.nan),
                "missing_rate": metrics.missing_rate(missing, total),
                "mean_shift": np.where(has, (mean_w - prep.num_mean) / prep.num_scale, np.nan),
                "log_std_ratio": log_ratio,
                "out_of_range_rate": metrics.missing_rate(outside, n),
            },
            "p": {
                "ks": ks_p,
                "chi2": np.where(has & (dof > 0), chi_p, np.nan),
                "missing_rate": np.where(total > 0, miss_p, np.nan),
                "mean_shift": p_loc,
                "log_std_ratio": p_scale,
                "out_of_range_rate": np.where(has, range_p, np.nan),
            },
            "base": {"missing_rate": prep.num_missing / np.maximum(ref_total, 1), "out_of_range_rate": tail_share},
            "threshold": {
                "psi": binned["psi"],
                "jensenshannon": binned["jensenshannon"],
                "hellinger": binned["hellinger"],
                "wasserstein": th_w,
                "ks": np.where(has, metrics.ks_critical_value(alpha, big_n, np.maximum(n, 1)), nan),
                "chi2": metrics.chi2_critical_value(alpha, dof),
                "missing_rate": _rate_threshold(prep.num_missing / np.maximum(ref_total, 1), total, alpha),
                "mean_shift": np.where(moments, z * se_loc / prep.num_scale, np.nan),
                "log_std_ratio": np.where(moments, z * se_scale, np.nan),
                "out_of_range_rate": np.where(
                    has, tail_share + special.ndtri(1.0 - alpha) * range_sd / np.maximum(n, 1), np.nan
                ),
            },
        }


def _categorical(
    reference: ReferenceProfile, window: WindowProfile, prep: _Prepared, alpha: float, level: float
) -> _Columns:
    names = prep.categorical
    if not names:
        return _no_columns(CATEGORICAL_METRICS)
    wins = [window.categorical[f] for f in names]
    k = len(names)
    counts, n, missing, q = _window_counts(wins, prep.cat_counts, prep.cat_slots)
    has = n > 0
    other = counts[np.arange(k), prep.cat_bins - 1]
    seen_other = prep.cat_other > 0
    chi, dof, chi_p = _pooled_chi2(
        reference, names, prep.cat_counts, counts, prep.cat_bins, n, ordered=False, keep=seen_other
    )
    total = n + missing
    ref_total = prep.cat_n + prep.cat_missing
    miss_p = metrics.rate_increase_test(prep.cat_missing, ref_total, missing, total)
    new_p = metrics.rate_increase_test(prep.cat_other, prep.cat_n, other, n)
    adj = _weighted_bonferroni(
        {"shape": chi_p, "missing": miss_p, "new": new_p},
        {
            "shape": has & (dof > 0),
            "missing": _rate_can_matter(prep.cat_missing + missing, ref_total, total, level),
            "new": ~seen_other & _rate_can_matter(other, prep.cat_n, n, level),
        },
        {
            **CATEGORICAL_WEIGHTS,
            "missing": CATEGORICAL_WEIGHTS["missing"] * _rate_weight(total, ref_total),
            "new": CATEGORICAL_WEIGHTS["new"] * _rate_weight(n, prep.cat_n),
        },
    )

    binned = calibration.binned_threshold_table(reference, names, metrics.ks_effective_n(n, prep.cat_n), alpha)
    return {
        "metrics": CATEGORICAL_METRICS,
        "events": total,
        "drift_p": adj["shape"],
        "quality_p": np.fmin(adj["missing"], adj["new"]),
        "values": {
            "chi2": np.where(has & (dof > 0), chi, np.nan),
            "psi": np.where(has, metrics.psi(prep.cat_p, q), np.nan),
            "jensenshannon": np.where(has, metrics.jensenshannon(prep.cat_p, q), np.nan),
            "hellinger": np.where(has, metrics.hellinger(prep.cat_p, q), np.nan),
            "missing_rate": metrics.missing_rate(missing, total),
            "new_category_rate": metrics.new_category_rate(other, n),
        },
        "p": {
            "chi2": np.where(has & (dof > 0), chi_p, np.nan),
            "missing_rate": np.where(total > 0, miss_p, np.nan),
            "new_category_rate": np.where(has, new_p, np.nan),
        },
        "base": {
            "missing_rate": prep.cat_missing / np.maximum(ref_total, 1),
            "new_category_rate": prep.cat_other / np.maximum(prep.cat_n, 1),
        },
        "threshold": {
            "chi2": metrics.chi2_critical_value(alpha, dof),
            "psi": binned["psi"],
            "jensenshannon": binned["jensenshannon"],
            "hellinger": binned["hellinger"],
            "missing_rate": _rate_threshold(prep.cat_missing / np.maximum(ref_total, 1), total, alpha),
            "new_category_rate": _rate_threshold(prep.cat_other / np.maximum(prep.cat_n, 1), n, alpha),
        },
    }
