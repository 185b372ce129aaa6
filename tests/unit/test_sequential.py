"""TrendDetector: the evidence against scipy's normal likelihoods, its null behaviour, power and state."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.sequential import METRIC, TrendDetector
from driftline.streams.core.window_profile import WindowProfile


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=-1)
    return np.full(x.shape[:-1], x.shape[-1], float), mean, ((x - mean[..., None]) ** 2).sum(axis=-1)


def _bayes_factor_by_scipy(y: np.ndarray, precision: np.ndarray, start: int, slope: float) -> float:
    """The invariant Bayes factor of one start, from multivariate normal densities.

    Observation 0 is the reference (y = 0); a very wide normal prior on the common
    mean stands in for the flat one, under which the ratio is the invariant one.
    """
    obs = np.r_[0.0, y]
    ramp = np.r_[0.0, np.clip(np.arange(1, y.size + 1) - start + 1, 0, None)]
    wide = 1e3
    null = np.diag(1.0 / precision) + wide**2
    alt = null + slope**2 * np.outer(ramp, ramp)
    return math.exp(stats.multivariate_normal(cov=alt).logpdf(obs) - stats.multivariate_normal(cov=null).logpdf(obs))


def test_evidence_is_the_mixture_of_scipy_bayes_factors_over_starts():
    rng = np.random.default_rng(3)
    n_ref, horizon, slope = 400, 50, 0.05
    det = TrendDetector(["x"], ref_count=[n_ref], ref_mean=[0.0], ref_std=[1.0], slope=slope, horizon=horizon)
    sizes = np.array([100, 300, 50, 1_000, 200])
    ys, precisions = [], []
    for t, n in enumerate(sizes):
        x = rng.normal(0.03 * t, 1.0, n)
        count, mean, m2 = _moments(x)
        det.update([count], [mean], [m2])
        var = max((m2 + 30.0) / (n + 30.0), 1e-24)  # the documented shrinkage towards the reference's 1.0
        ys.append(mean)
        precisions.append(n / var)
    y, precision = np.array(ys), np.r_[n_ref, precisions]
    T = sizes.size
    weights = [horizon / ((horizon + j - 1) * (horizon + j)) for j in range(1, T + 1)]
    expected = sum(w * _bayes_factor_by_scipy(y, precision, j, slope) for j, w in zip(range(1, T + 1), weights))
    expected += horizon / (horizon + T)
    assert det.log_evidence()[0] == pytest.approx(math.log(expected), rel=1e-6)


def test_evidence_is_a_martingale_under_the_null():
    # E[M_T] = 1 under the null: the mean over many stationary streams stays at 1.
    k, n = 20_000, 100
    rng = np.random.default_rng(0)
    det = TrendDetector(
        [f"s{i}" for i in range(k)],
        ref_count=np.full(k, 2_000.0),
        ref_mean=rng.normal(0, 1 / math.sqrt(2_000), k),
        ref_std=np.ones(k),
    )
    for _ in range(4):
        det.update(np.full(k, n), rng.normal(0, 1 / math.sqrt(n), k), rng.chisquare(n - 1, k))
    evidence = np.exp(det.log_evidence())
    assert abs(evidence.mean() - 1.0) < 4 * evidence.std() / math.sqrt(k) + 0.01


def test_few_false_alarms_over_many_stationary_windows():
    k, n, windows = 200, 1_000, 300
    rng = np.random.default_rng(1)
    det = TrendDetector(
        [f"s{i}" for i in range(k)],
        ref_count=np.full(k, 5_000.0),
        ref_mean=rng.normal(0, 1 / math.sqrt(5_000), k),
        ref_std=np.ones(k),
        memory=32,
    )
    alarmed = np.zeros(k, bool)
    for _ in range(windows):
        det.update(np.full(k, n), rng.normal(0, 1 / math.sqrt(n), k), rng.chisquare(n - 1, k))
        alarmed |= det.log_evidence() >= math.log(1 / det.alpha)
    # Ville's bound is 5%; the binomial 99.9% upper limit of 200 streams at 5% is 9%.
    assert alarmed.mean() <= stats.binom.ppf(0.999, k, 0.05) / k


@pytest.mark.parametrize("n", [1_000, 10_000])
def test_a_slow_trend_is_flagged_soon_after_its_onset(n):
    k, onset = 100, 10
    rng = np.random.default_rng(n)
    det = TrendDetector(
        [f"s{i}" for i in range(k)],
        ref_count=np.full(k, 5_000.0),
        ref_mean=rng.normal(0, 1 / math.sqrt(5_000), k),
        ref_std=np.ones(k),
    )
    first = np.full(k, -1)
    for t in range(1, 25):
        drift = 0.02 * max(0, t - onset + 1)
        det.update(np.full(k, n), rng.normal(drift, 1 / math.sqrt(n), k), rng.chisquare(n - 1, k))
        hit = (det.log_evidence() >= math.log(1 / det.alpha)) & (first < 0)
        first[hit] = t
    delay = first - onset + 1
    assert (first >= onset).all()  # nothing before the onset
    if n == 10_000:
        assert np.quantile(delay, 0.9) <= 5
    else:
        assert np.median(delay) <= 6 and np.quantile(delay, 0.9) <= 8


def test_rows_threshold_and_anytime_p_value():
    det = TrendDetector(["a", "b"], ref_count=[1_000, 1_000], ref_mean=[0.0, 5.0], ref_std=[1.0, 2.0])
    rows = det.update([500, 500], [0.0, 5.0], [500.0, 2_000.0])
    assert [r.feature for r in rows] == ["a", "b"] and {r.metric for r in rows} == {METRIC}
    assert rows[0].threshold == pytest.approx(2 / 0.05) and not any(r.drifted for r in rows)
    for t in range(1, 12):
        rows = det.update([500, 500], [0.3 * t, 5.0], [500.0, 2_000.0])
    assert rows[0].drifted and not rows[1].drifted
    assert rows[0].p_value == pytest.approx(min(1.0, 2 * math.exp(-det.max_log_evidence[0])), abs=1e-300)
    assert rows[0].value == pytest.approx(math.exp(min(det.log_evidence()[0], 709.0)))


def test_state_round_trips_through_json_and_resumes_identically():
    rng = np.random.default_rng(5)
    x = rng.normal(np.linspace(0, 0.2, 12)[:, None], 1.0, (12, 300))
    count, mean, m2 = _moments(x)
    whole = TrendDetector(["x"], ref_count=[2_000], ref_mean=[0.0], ref_std=[1.0], memory=4)
    for t in range(12):
        expected = whole.update([count[t]], [mean[t]], [m2[t]])
    first = TrendDetector(["x"], ref_count=[2_000], ref_mean=[0.0], ref_std=[1.0], memory=4)
    for t in range(7):
        first.update([count[t]], [mean[t]], [m2[t]])
    resumed = TrendDetector.from_dict(json.loads(json.dumps(first.to_dict())))
    for t in range(7, 12):
        got = resumed.update([count[t]], [mean[t]], [m2[t]])
    assert got == expected
    assert resumed.to_dict() == whole.to_dict()


def test_reset_forgets_every_window():
    det = TrendDetector(["x"], ref_count=[1_000], ref_mean=[0.0], ref_std=[1.0])
    fresh = det.to_dict()
    for t in range(5):
        det.update([100], [0.5 * t], [100.0])
    assert det.to_dict() != fresh
    det.reset()
    assert det.to_dict() == fresh


def test_constant_feature_is_neutral_until_it_changes():
    det = TrendDetector(["c"], ref_count=[1_000], ref_mean=[3.0], ref_std=[0.0])
    for _ in range(50):
        (row,) = det.update([1_000], [3.0], [0.0])
        assert not row.drifted and math.isfinite(row.value)
    (row,) = det.update([1_000], [3.001], [0.0])  # constant again, at another value
    assert row.drifted


def test_empty_windows_teach_nothing_and_tiny_windows_do_not_alarm():
    det = TrendDetector(["x"], ref_count=[1_000], ref_mean=[0.0], ref_std=[1.0])
    before = det.log_evidence()
    det.update([0], [math.nan], [math.nan])
    assert det.log_evidence() <= before + 1e-12
    for _ in range(30):
        (row,) = det.update([1], [0.5], [0.0])  # a single value has M2 0: its variance is the reference's
        assert not row.drifted


def test_from_reference_and_bad_input():
    rng = np.random.default_rng(0)
    ref = ReferenceProfile.build("m", "1", {"x": rng.normal(2, 3, 1_000)}, {}, predictions=rng.random(1_000))
    det = TrendDetector.from_reference(ref, alpha=0.01)
    assert det.names == ["x", "__prediction__"]
    assert det.ref_mean[0] == pytest.approx(ref.numeric["x"].mean) and det.threshold == pytest.approx(200.0)
    with pytest.raises(ValueError, match="2 counts"):
        det.update([1], [0.0], [0.0])
    with pytest.raises(ValueError, match="finite"):
        det.update([10, 10], [math.inf, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="distinct"):
        TrendDetector(["a", "a"], ref_count=[1, 1], ref_mean=[0, 0], ref_std=[1, 1])
    with pytest.raises(ValueError, match="unsupported"):
        TrendDetector.from_dict({"format": 99})


def test_update_window_reads_the_exact_moments_of_a_window_profile():
    rng = np.random.default_rng(9)
    ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=2_000)}, {}, predictions=rng.random(2_000))
    by_profile, by_moments = TrendDetector.from_reference(ref), TrendDetector.from_reference(ref)
    for t in range(6):
        w = WindowProfile.empty(ref, seed=t)
        x, scores = rng.normal(0.05 * t, 1.0, 1_500), rng.random(1_500)
        for part in range(3):  # three batches: the window's moments are merged, as the worker's are
            w.update({"x": x[part * 500 : (part + 1) * 500]}, {}, scores[part * 500 : (part + 1) * 500])
        got = by_profile.update_window(w)
        expected = by_moments.update(
            [x.size, scores.size],
            [x.mean(), scores.mean()],
            [((x - x.mean()) ** 2).sum(), ((scores - scores.mean()) ** 2).sum()],
        )
        assert [r.value for r in got] == pytest.approx([r.value for r in expected], rel=1e-9)
