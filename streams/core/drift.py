"""Drift of one window against its reference: metrics, tests and the ``drifted`` decision.

:func:`evaluate_window` returns one :class:`~streams.records.FeatureDrift`
row per feature and metric. The decision is statistical, so that it means the
same at every window size:

1. Each feature gets one p-value. Its distribution test is KS on the
   samples for numeric features, or a chi-squared test on the reference's
   quantile bins once the window is large next to the reference sample; a
   rate test of the values away from the constant for a feature constant in
   the reference; chi-squared for categorical features. Bonferroni combines
   it with a missing-rate test and, for categorical features whose reference
   saw no ``other``, a new-category test; rate tests only count when the
   reference or the window has any missing (new) values.
2. Benjamini-Hochberg across the features of the window at ``fdr_q``. Under
   no drift, a window is flagged with probability at most ``fdr_q``.
3. Thresholds you set (``{feature or '*': {metric: threshold}}``) are minimum
   effect sizes: a significant feature is drifted only if at least one metric
   you set a threshold for exceeds it. They can silence alarms, never raise
   them.

Every row of a feature carries that feature's decision in ``drifted``. The
``threshold`` of a row is the one you set, or else the value the metric
reaches in only ``alpha`` of windows of this size without drift: the KS and
chi-squared critical values, binomial quantiles for the rates, and resampled
quantiles for the distances (see :mod:`streams.core.calibration`).
docs/STATISTICS.md gives the reasons.

>>> import numpy as np
>>> from streams.core.profile import CategoricalWindow, NumericWindow, ReferenceProfile, WindowProfile
>>> rng = np.random.default_rng(0)
>>> ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=20_000), "y": rng.normal(size=20_000)},
...                              {"c": rng.choice(["a", "b", "c"], 20_000).tolist()})
>>> w = WindowProfile.empty(ref, seed=1)
>>> w.update({"x": rng.normal(0.5, 1, 1_000), "y": rng.normal(size=1_000)},
...          {"c": rng.choice(["a", "b", "c"], 1_000).tolist()})
>>> rows = evaluate_window(ref, w)
>>> sorted({r.metric for r in rows if r.feature == "x"})
['chi2', 'hellinger', 'jensenshannon', 'ks', 'missing_rate', 'psi', 'wasserstein']
>>> drifted_features(rows)
['x']
>>> drifted_features(evaluate_window(ref, w, thresholds={"x": {"psi": 1.0}}))  # significant, but PSI < 1
[]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import special

from streams.core import calibration, metrics
from streams.core.profile import CategoricalWindow, NumericWindow, ReferenceProfile, WindowProfile
from streams.records import FeatureDrift

NUMERIC_METRICS = ("psi", "ks", "wasserstein", "jensenshannon", "hellinger", "chi2", "missing_rate")
CATEGORICAL_METRICS = ("chi2", "psi", "jensenshannon", "hellinger", "missing_rate", "new_category_rate")
#: Every metric of the engine's rows, in a stable order.
METRICS: tuple[str, ...] = tuple(dict.fromkeys(NUMERIC_METRICS + CATEGORICAL_METRICS))
#: The keys that thresholds (``{feature or '*': {key: minimum effect size}}``) may use: the
#: engine's metrics. The policy validates its thresholds against this.
THRESHOLD_KEYS: tuple[str, ...] = METRICS
#: Per-test significance levels, which thresholds do not take: one level per feature would
#: undo the false discovery rate that Benjamini-Hochberg keeps across a window's features.
TEST_LEVEL_KEYS = ("ks_alpha", "chi2_alpha")
TEST_LEVEL_HINT = ("thresholds are minimum effect sizes, not test levels: significance is decided by "
                   "Benjamini-Hochberg across the features of a window, so set fdr_q (monitoring.fdr_q) instead")

#: A test compares the window with a reference that is itself a sample, and
#: a monitor reuses that reference for every window: the share of the test's
#: noise that comes from the reference, n / (n + N), makes the false-alarm
#: rate depend on the luck of the reference (docs/STATISTICS.md). KS on the
#: samples decides while its share stays under this; beyond it, whichever of
#: KS and the chi-squared test on the full reference's bins has the smaller share.
KS_NOISE_SHARE = 0.1
#: Cochran's rule: cells of a chi-squared test expect at least this many values.
MIN_EXPECTED = 5.0

Thresholds = Mapping[str, Mapping[str, float]]


def drifted_features(rows: list[FeatureDrift]) -> list[str]:
    """Features flagged in rows from :func:`evaluate_window`, in order."""
    return list(dict.fromkeys(r.feature for r in rows if r.drifted))


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
                raise ValueError(f"unknown drift metric {metric!r} in thresholds for {feature!r}; "
                                 f"expected one of {', '.join(sorted(THRESHOLD_KEYS))}")
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


@dataclass
class _Prepared:
    numeric: list[str]
    categorical: list[str]
    num_p: np.ndarray          # reference proportions, padded (features x bins)
    num_counts: np.ndarray     # reference counts, padded
    num_n: np.ndarray          # reference non-missing count
    num_missing: np.ndarray
    num_sample_n: np.ndarray
    num_scale: np.ndarray      # reference std (1 when constant)
    num_bins: np.ndarray
    cat_p: np.ndarray
    cat_counts: np.ndarray
    cat_n: np.ndarray
    cat_missing: np.ndarray
    cat_other: np.ndarray      # reference count outside the table
    cat_bins: np.ndarray


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    width = max((r.size for r in rows), default=0)
    out = np.zeros((len(rows), width), dtype=np.float64)
    for i, r in enumerate(rows):
        out[i, : r.size] = r
    return out


def _prepare(reference: ReferenceProfile) -> _Prepared:
    num = [f for f in reference.features if f in reference.numeric]
    cat = [f for f in reference.features if f in reference.categorical]
    nrefs = [reference.numeric[f] for f in num]
    crefs = [reference.categorical[f] for f in cat]
    num_counts = _padded([r.counts.astype(np.float64) for r in nrefs])
    cat_counts = _padded([r.counts.astype(np.float64) for r in crefs])
    num_n = num_counts.sum(axis=1)
    cat_n = cat_counts.sum(axis=1)
    return _Prepared(
        numeric=num, categorical=cat,
        num_p=num_counts / np.maximum(num_n, 1)[:, None], num_counts=num_counts, num_n=num_n,
        num_missing=np.array([r.missing for r in nrefs], dtype=np.float64),
        num_sample_n=np.array([r.sample.size for r in nrefs], dtype=np.float64),
        num_scale=np.array([r.std if r.std > 0 else 1.0 for r in nrefs], dtype=np.float64),
        num_bins=np.array([r.n_bins for r in nrefs], dtype=np.int64),
        cat_p=cat_counts / np.maximum(cat_n, 1)[:, None], cat_counts=cat_counts, cat_n=cat_n,
        cat_missing=np.array([r.missing for r in crefs], dtype=np.float64),
        cat_other=np.array([r.counts[-1] for r in crefs], dtype=np.float64),
        cat_bins=np.array([r.n_bins for r in crefs], dtype=np.int64),
    )


def _size_bucket(n: float) -> int:
    return int(math.floor(4 * math.log2(max(n, 1.0))))


def _groups(reference: ReferenceProfile, feature: str, p: np.ndarray, n: float, ordered: bool) -> np.ndarray:
    """Pooling of one feature's cells for windows of about ``n`` values (the bucket's lower edge)."""
    return reference.cached(("pool", feature, n, ordered), lambda: _pool_groups(p, MIN_EXPECTED / n, ordered))


def _pooled_chi2(reference: ReferenceProfile, features: list[str], ref_counts: np.ndarray,
                 win_counts: np.ndarray, n_bins: np.ndarray, n_window: np.ndarray, ordered: bool,
                 keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chi-squared homogeneity per feature on Cochran-pooled cells.

    ``keep[i]`` False drops feature i's last cell (an ``other`` the reference never saw).
    """
    cells = n_bins if keep is None else n_bins - (~keep).astype(np.int64)
    n_ref = np.array([ref_counts[i, :c].sum() for i, c in enumerate(cells.tolist())])
    buckets = tuple(_size_bucket(x) for x in np.minimum(n_window, n_ref).tolist())

    def layout() -> tuple[np.ndarray, np.ndarray]:
        # Where each (feature, cell) lands among all features' pooled groups,
        # and where each feature's groups sit in a padded matrix.
        k, width = ref_counts.shape
        groups = [_groups(reference, f, ref_counts[i, :c] / max(n_ref[i], 1.0), 2.0 ** (buckets[i] / 4), ordered)
                  for i, (f, c) in enumerate(zip(features, cells.tolist()))]
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


def _bonferroni(p_values: list[np.ndarray], active: list[np.ndarray]) -> np.ndarray:
    """min p times the number of active tests, per feature (NaN where none is: no test, no part in BH)."""
    p = np.stack([np.where(a, pv, np.inf) for pv, a in zip(p_values, active)])
    k = np.stack(active).sum(axis=0)
    return np.where(k > 0, np.minimum(1.0, p.min(axis=0) * np.maximum(k, 1)), np.nan)


def evaluate_window(
    reference: ReferenceProfile,
    window: WindowProfile,
    *,
    thresholds: Thresholds | None = None,
    fdr_q: float = 0.05,
    alpha: float = 0.05,
) -> list[FeatureDrift]:
    """Every drift metric of every feature of ``window``, with the ``drifted`` decision.

    ``fdr_q`` is the false discovery rate of Benjamini-Hochberg across the
    window's features (and so its false-alarm rate without drift); ``alpha``
    the level of the reported per-metric thresholds. Features without any
    event in the window (``__prediction__`` when only features were logged)
    get no rows. Metrics that need values are NaN when all values were missing.
    """
    if not 0.0 < fdr_q < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"fdr_q and alpha must be between 0 and 1, got {fdr_q} and {alpha}")
    wref = window.reference
    if wref is not reference and (wref.model_id, wref.model_version, wref.features) != (
            reference.model_id, reference.model_version, reference.features):
        raise ValueError(f"window of {wref.model_id} {wref.model_version} evaluated against the reference of "
                         f"{reference.model_id} {reference.model_version}")
    overrides = check_thresholds(thresholds)
    prep = reference.cached("drift", lambda: _prepare(reference))
    num = _numeric(reference, window, prep, alpha)
    cat = _categorical(reference, window, prep, alpha)

    names = prep.numeric + prep.categorical
    p_feature = np.concatenate([num["p_feature"], cat["p_feature"]])
    tested = ~np.isnan(p_feature)
    significant = np.zeros(len(names), dtype=bool)
    significant[tested] = metrics.benjamini_hochberg(p_feature[tested], fdr_q)

    position = {f: i for i, f in enumerate(names)}
    tables = [_as_lists(num), _as_lists(cat)]
    significant_list = significant.tolist()
    rows: list[FeatureDrift] = []
    for f in reference.features:
        i = position[f]
        numeric = i < len(prep.numeric)
        block = tables[0] if numeric else tables[1]
        j = i if numeric else i - len(prep.numeric)
        if block["events"][j] == 0:
            continue
        mine = {**overrides.get("*", {}), **overrides.get(f, {})}
        names_here = NUMERIC_METRICS if numeric else CATEGORICAL_METRICS
        values = {m: block[m][j] for m in names_here}
        # A metric without a value (all values missing) cannot hold an alarm back.
        applicable = [m for m in mine if m in values and values[m] == values[m]]
        gate = any(values[m] > mine[m] for m in applicable) if applicable else True
        drifted = bool(significant_list[i] and gate)
        for m in names_here:
            pv = block["p"][m][j] if m in block["p"] else None
            p_value = None if pv is None or pv != pv else pv
            rows.append(FeatureDrift(f, m, values[m], p_value, mine.get(m, block["threshold"][m][j]), drifted))
    return rows


def _ks_decides(n: np.ndarray, m: np.ndarray, n_ref: np.ndarray, s_ref: np.ndarray) -> np.ndarray:
    """Whether KS (window sample m vs reference sample s_ref) rather than binned chi-squared
    (all n window values vs all n_ref reference values) gives each feature's p-value.

    Reference noise shares: KS m / (m + s_ref), binned n / (n + n_ref); compared
    exactly by cross-multiplying. On a tie, KS if its sample holds the whole
    window (it is the more powerful test on the same data), else the binned
    test, which sees every value.

    >>> _ks_decides(np.array([400, 1_000, 10_000, 10_000, 1_000]), np.array([400, 1_000, 1_000, 1_000, 1_000]),
    ...             np.array([50_000, 50_000, 50_000, 10_000, 5_000]), np.full(5, 5_000)).tolist()
    [True, False, False, True, True]
    """
    ks_share_small = m <= KS_NOISE_SHARE / (1 - KS_NOISE_SHARE) * s_ref
    ks_side, bin_side = m * n_ref, n * s_ref
    return ks_share_small | (ks_side < bin_side) | ((ks_side == bin_side) & (m >= n))


def _as_lists(block: dict) -> dict:
    """Python floats for the rows: indexing numpy arrays one value at a time is slow."""
    out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in block.items() if k not in ("p", "threshold")}
    for k in ("p", "threshold"):
        out[k] = {m: np.asarray(v, dtype=np.float64).tolist() for m, v in block.get(k, {}).items()}
    return out


def _window_counts(
    features: Sequence[NumericWindow | CategoricalWindow],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per feature (a row each) of a window: its bin counts (padded), values, missing values and bin shares."""
    counts = _padded([f.counts.astype(np.float64) for f in features])
    n = counts.sum(axis=1)
    missing = np.array([f.missing for f in features], dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = counts / n[:, None]
    return counts, n, missing, q


def _numeric(reference: ReferenceProfile, window: WindowProfile, prep: _Prepared, alpha: float) -> dict:
    names = prep.numeric
    if not names:
        return {"metrics": NUMERIC_METRICS, "events": np.zeros(0), "p_feature": np.zeros(0)}
    wins = [window.numeric[f] for f in names]
    k = len(names)
    counts, n, missing, q = _window_counts(wins)
    psi = metrics.psi(prep.num_p, q)
    js = metrics.jensenshannon(prep.num_p, q)
    hel = metrics.hellinger(prep.num_p, q)

    d = np.full(k, np.nan)
    w_raw = np.full(k, np.nan)
    m = np.zeros(k)
    for i, f in enumerate(names):
        s = wins[i].sample.values
        m[i] = s.size
        if s.size:
            d[i], w_raw[i] = metrics.ks_wasserstein_sorted(reference.numeric[f].sample, np.sort(s))
    ks_p = np.where(m > 0, metrics.ks_pvalue(np.nan_to_num(d), prep.num_sample_n, np.maximum(m, 1)), np.nan)
    chi, dof, chi_p = _pooled_chi2(reference, names, prep.num_counts, counts, prep.num_bins, n, ordered=True)
    total = n + missing
    miss_p = metrics.rate_test(prep.num_missing, prep.num_n + prep.num_missing, missing, total)

    use_ks = _ks_decides(n, m, prep.num_n, prep.num_sample_n) & (m > 0)
    # A constant reference feature pools into a single cell: what can change is
    # the share of values away from the constant (in the open bins), tested
    # like a rate; KS on a 5,000-value sample would barely notice 1% of them.
    rows_k = np.arange(k)
    outside = counts[:, 0] + counts[rows_k, prep.num_bins - 1]
    ref_outside = prep.num_counts[:, 0] + prep.num_counts[rows_k, prep.num_bins - 1]
    p_outside = metrics.rate_test(ref_outside, prep.num_n, outside, n)
    constant = prep.num_bins == 3  # one inner bin between the two open ones
    p_dist = np.where(constant, p_outside, np.where(use_ks, ks_p, chi_p))
    p_feature = _bonferroni([p_dist, miss_p], [n > 0, (prep.num_missing + missing) > 0])

    has = n > 0
    binned = calibration.binned_threshold_table(reference, names, metrics.ks_effective_n(n, prep.num_n), alpha)
    th_w = calibration.wasserstein_threshold_table(reference, names, metrics.ks_effective_n(m, prep.num_sample_n),
                                                   alpha)
    th_psi, th_js, th_hel = binned["psi"], binned["jensenshannon"], binned["hellinger"]
    nan = np.full(k, np.nan)
    return {
        "metrics": NUMERIC_METRICS,
        "events": total,
        "p_feature": p_feature,
        "psi": np.where(has, psi, np.nan), "ks": d, "wasserstein": w_raw / prep.num_scale,
        "jensenshannon": np.where(has, js, np.nan), "hellinger": np.where(has, hel, np.nan),
        "chi2": np.where(has & (dof > 0), chi, np.nan), "missing_rate": metrics.missing_rate(missing, total),
        "p": {"ks": ks_p, "chi2": np.where(has & (dof > 0), chi_p, np.nan),
              "missing_rate": np.where(total > 0, miss_p, np.nan)},
        "threshold": {
            "psi": th_psi, "jensenshannon": th_js, "hellinger": th_hel, "wasserstein": th_w,
            "ks": np.where(m > 0, metrics.ks_critical_value(alpha, prep.num_sample_n, np.maximum(m, 1)), nan),
            "chi2": metrics.chi2_critical_value(alpha, dof),
            "missing_rate": _rate_threshold(prep.num_missing / np.maximum(prep.num_n + prep.num_missing, 1),
                                            total, alpha),
        },
    }


def _categorical(reference: ReferenceProfile, window: WindowProfile, prep: _Prepared, alpha: float) -> dict:
    names = prep.categorical
    if not names:
        return {"metrics": CATEGORICAL_METRICS, "events": np.zeros(0), "p_feature": np.zeros(0)}
    wins = [window.categorical[f] for f in names]
    k = len(names)
    counts, n, missing, q = _window_counts(wins)
    has = n > 0
    other = counts[np.arange(k), prep.cat_bins - 1]
    seen_other = prep.cat_other > 0
    chi, dof, chi_p = _pooled_chi2(reference, names, prep.cat_counts, counts, prep.cat_bins, n, ordered=False,
                                   keep=seen_other)
    total = n + missing
    miss_p = metrics.rate_test(prep.cat_missing, prep.cat_n + prep.cat_missing, missing, total)
    new_p = metrics.rate_test(prep.cat_other, prep.cat_n, other, n)
    p_feature = _bonferroni([np.where(dof > 0, chi_p, 1.0), miss_p, new_p],
                            [has & (dof > 0), (prep.cat_missing + missing) > 0, ~seen_other & (other > 0)])

    binned = calibration.binned_threshold_table(reference, names, metrics.ks_effective_n(n, prep.cat_n), alpha)
    th_psi, th_js, th_hel = binned["psi"], binned["jensenshannon"], binned["hellinger"]
    return {
        "metrics": CATEGORICAL_METRICS,
        "events": total,
        "p_feature": p_feature,
        "chi2": np.where(has & (dof > 0), chi, np.nan),
        "psi": np.where(has, metrics.psi(prep.cat_p, q), np.nan),
        "jensenshannon": np.where(has, metrics.jensenshannon(prep.cat_p, q), np.nan),
        "hellinger": np.where(has, metrics.hellinger(prep.cat_p, q), np.nan),
        "missing_rate": metrics.missing_rate(missing, total),
        "new_category_rate": metrics.new_category_rate(other, n),
        "p": {"chi2": np.where(has & (dof > 0), chi_p, np.nan), "missing_rate": np.where(total > 0, miss_p, np.nan),
              "new_category_rate": np.where(has, new_p, np.nan)},
        "threshold": {
            "chi2": metrics.chi2_critical_value(alpha, dof),
            "psi": th_psi, "jensenshannon": th_js, "hellinger": th_hel,
            "missing_rate": _rate_threshold(prep.cat_missing / np.maximum(prep.cat_n + prep.cat_missing, 1),
                                            total, alpha),
            "new_category_rate": _rate_threshold(prep.cat_other / np.maximum(prep.cat_n, 1), n, alpha),
        },
    }
