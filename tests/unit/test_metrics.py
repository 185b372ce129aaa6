"""Every drift metric against scipy or a hand-worked value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from driftline.streams.core import metrics


def proportions(rng: np.random.Generator, rows: int, k: int, zeros: bool = True) -> np.ndarray:
    p = rng.random((rows, k))
    if zeros:
        p[rng.random((rows, k)) < 0.2] = 0.0
        p[:, 0] += 1e-3  # never an all-zero row
    return p / p.sum(axis=1, keepdims=True)


def test_psi_hand_worked() -> None:
    p = np.array([0.5, 0.5])
    q = np.array([0.9, 0.1])
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert metrics.psi(p, q) == pytest.approx(expected, rel=1e-12)
    assert metrics.psi(p, q) == pytest.approx(0.8789, abs=1e-4)


def test_psi_smooths_empty_bins_with_epsilon() -> None:
    p = np.array([0.5, 0.5, 0.0])
    q = np.array([0.5, 0.4, 0.1])
    eps = metrics.PSI_EPSILON
    expected = (0.4 - 0.5) * math.log(0.4 / 0.5) + (0.1 - eps) * math.log(0.1 / eps)
    assert metrics.psi(p, q) == pytest.approx(expected, rel=1e-12)
    # Bins empty on both sides (padding) change nothing.
    assert metrics.psi(np.append(p, 0.0), np.append(q, 0.0)) == pytest.approx(expected, rel=1e-12)
    assert metrics.psi(q, q) == 0.0


def test_jensenshannon_matches_scipy_base_2() -> None:
    rng = np.random.default_rng(1)
    p, q = proportions(rng, 50, 12), proportions(rng, 50, 12)
    ours = metrics.jensenshannon(p, q)
    theirs = [distance.jensenshannon(a, b, base=2) for a, b in zip(p, q)]
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    assert metrics.jensenshannon(p[0], p[0]) == pytest.approx(0.0, abs=1e-7)


def test_hellinger_matches_its_definitions() -> None:
    rng = np.random.default_rng(2)
    p, q = proportions(rng, 50, 12), proportions(rng, 50, 12)
    bhattacharyya = np.sum(np.sqrt(p * q), axis=1)
    np.testing.assert_allclose(metrics.hellinger(p, q), np.sqrt(1 - bhattacharyya), rtol=1e-9)
    # Hand-worked: p = (1/2, 1/2), q = (1, 0): 1 - BC = 1 - sqrt(1/2).
    assert metrics.hellinger(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(math.sqrt(1 - math.sqrt(0.5)))


@pytest.mark.parametrize("n1,n2,discrete", [(5000, 100, False), (5000, 1000, False), (300, 700, True), (50, 80, True)])
def test_ks_statistic_matches_scipy(n1: int, n2: int, discrete: bool) -> None:
    rng = np.random.default_rng(n1 + n2)
    for shift in (0.0, 0.1, 0.3):
        a = rng.normal(size=n1)
        b = rng.normal(shift, 1, size=n2)
        if discrete:  # ties inside and across the samples
            a, b = np.round(a * 2), np.round(b * 2)
        d, _ = metrics.ks(a, b)
        assert d == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


@pytest.mark.parametrize("n1,n2", [(5000, 100), (5000, 150), (5000, 1000), (5000, 5000), (2000, 300)])
def test_ks_pvalue_close_to_scipy_exact(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n2)
    for shift in (0.0, 0.15, 0.25, 0.4):
        a = rng.normal(size=n1)
        b = rng.normal(shift * 100 / math.sqrt(n2) * 0.3, 1, size=n2)
        _, p = metrics.ks(a, b)
        exact = stats.ks_2samp(a, b, method="exact").pvalue
        asymp = stats.ks_2samp(a, b, method="asymp").pvalue
        if exact > 1e-4:
            assert p == pytest.approx(exact, rel=0.06), (p, exact, asymp)
            assert abs(p - exact) <= abs(asymp - exact) + 0.03 * exact


def test_ks_critical_value_inverts_the_pvalue() -> None:
    for n2 in (100, 150, 1000, 5000):
        d = metrics.ks_critical_value(0.01, 5000, n2)
        assert metrics.ks_pvalue(d, 5000, n2) == pytest.approx(0.01, rel=1e-9)


@pytest.mark.parametrize("discrete", [False, True])
def test_wasserstein_matches_scipy_normalised_by_std(discrete: bool) -> None:
    rng = np.random.default_rng(3)
    a = rng.lognormal(size=3000)
    b = rng.lognormal(0.2, 1, size=700)
    if discrete:
        a, b = np.round(a), np.round(b)
    scale = float(a.std())
    expected = stats.wasserstein_distance(a, b) / scale
    assert metrics.wasserstein(a, b, scale) == pytest.approx(expected, rel=1e-10)


def test_ks_and_wasserstein_of_tiny_hand_worked_samples() -> None:
    # CDFs of {0,1,2,3} and {2,3}: gaps 1/4, 1/2, 1/4, 0 on unit steps.
    assert metrics.ks_wasserstein_sorted(np.array([0.0, 1, 2, 3]), np.array([2.0, 3])) == (0.5, 1.0)
    assert math.isnan(metrics.ks_wasserstein_sorted(np.array([1.0]), np.array([]))[0])


def binned(reference: np.ndarray, window: np.ndarray, bins: int = 10) -> tuple[float, float]:
    """KS and the std-normalised Wasserstein distance between the binned CDFs, as drift.py computes them."""
    from driftline.streams.core.reference import NumericReference

    ref = NumericReference.build("x", reference, bins=bins, sample_size=5_000, seed=0)
    points, at, fractions = ref.grid
    points[0], points[-1] = min(points[0], window.min()), max(points[-1], window.max())
    q = np.bincount(ref.bin_index(window), minlength=ref.n_bins) / window.size
    ks, w = metrics.binned_cdf_distances(np.diff(points), at, fractions, ref.counts / ref.counts.sum(), q)
    return float(ks), float(w) / ref.std


DRAWS = {
    "normal": lambda rng, n, shift, scale: rng.normal(shift, scale, n),
    "lognormal": lambda rng, n, shift, scale: np.exp(rng.normal(shift / 2, scale / 2, n)),
    "poisson": lambda rng, n, shift, scale: np.round(3 + scale * (rng.poisson(3, n) - 3) + 1.7 * shift),
    "t3": lambda rng, n, shift, scale: shift + scale * rng.standard_t(3, n),
}


@pytest.mark.parametrize("shape", list(DRAWS))
@pytest.mark.parametrize("n", [1_000, 10_000])
def test_binned_ks_and_wasserstein_against_scipy_on_every_value(shape: str, n: int) -> None:
    """KS between the binned CDFs is scipy's KS at the reference's cuts: never above scipy's
    (which takes the supremum over every value), at most 0.03 below it. The binned Wasserstein
    distance (in reference standard deviations) is within 0.03 + 20% of scipy's for shifts and a
    narrower spread (30% for Student t with 3 degrees of freedom, whose wide outer bins the
    window fills unlike the reference once it moves). A wider spread puts the window's values
    in the outer bins further out than the reference's own, which the bins cannot see: there
    the binned distance is between 40% of scipy's and scipy's."""
    rng = np.random.default_rng(7 * n + len(shape))
    draw = DRAWS[shape]
    reference = draw(rng, 20_000, 0.0, 1.0)
    relative = 0.3 if shape == "t3" else 0.2
    for shift, scale in [(0.0, 1.0), (0.1, 1.0), (0.25, 1.0), (0.5, 1.0), (1.0, 1.0), (0.0, 1.5), (0.0, 0.7)]:
        window = draw(rng, n, shift, scale)
        ks, w = binned(reference, window)
        exact_ks = stats.ks_2samp(reference, window).statistic
        exact_w = stats.wasserstein_distance(reference, window) / reference.std()
        case = (shape, shift, scale, ks, exact_ks, w, exact_w)
        assert exact_ks - 0.03 <= ks <= exact_ks + 1e-12, case
        if scale > 1:
            assert 0.4 * exact_w <= w <= exact_w + 0.03, case
        else:
            assert abs(w - exact_w) <= 0.03 + relative * exact_w, case


def test_binned_distances_are_exact_when_the_bins_hold_the_values_in_the_references_proportions() -> None:
    # Values 0, 1, 2, 5: bins [0, 1), [1, 2) and [2, 5] (the last edge is the maximum). The
    # window keeps the reference's 2 : 1 of 2 and 5 inside the last bin, so its binned CDF is
    # its own CDF, and both distances are scipy's.
    reference = np.repeat([0.0, 1.0, 2.0, 5.0], [400, 300, 200, 100])
    window = np.repeat([0.0, 1.0, 2.0, 5.0], [70, 210, 280, 140])
    ks, w = binned(reference, window)
    assert ks == pytest.approx(stats.ks_2samp(reference, window).statistic, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(reference, window) / reference.std(), rel=1e-12)


def test_binned_distances_hand_worked() -> None:
    # Reference {0, 1, 2, 3} in bins [0, 2) and [2, 3]; window {2, 3, 3, 3}, half of it at 3 too many.
    points, at, fractions = metrics.cdf_grid(np.array([0.0, 2.0, np.nextafter(3.0, 4.0)]), np.arange(4.0), 0.0, 3.0, 1)
    assert points.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0]
    assert fractions.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    ks, w = metrics.binned_cdf_distances(
        np.diff(points), at, fractions, np.array([0, 0.5, 0.5, 0]), np.array([0, 0, 1.0, 0])
    )
    # CDF gaps (the reference's steps, the window spread in [2, 3] like the reference's 2 and 3):
    # 1/4 on [0, 1), 1/2 on [1, 2), 3/4 - 1/2 = 1/4 on [2, 3), then 0
    assert float(ks) == 0.5
    assert float(w) == pytest.approx(0.25 + 0.5 + 0.25)


def test_chi2_homogeneity_matches_scipy_contingency_without_correction() -> None:
    rng = np.random.default_rng(4)
    ref = rng.integers(0, 200, size=(30, 8))
    cur = rng.integers(0, 40, size=(30, 8))
    ref[:, 7] = 0
    cur[:5, 7] = 0  # a column empty on both sides in some rows
    stat, dof, p = metrics.chi2_homogeneity(ref, cur)
    for i in range(30):
        table = np.array([ref[i], cur[i]])
        table = table[:, table.sum(axis=0) > 0]
        res = stats.chi2_contingency(table, correction=False)
        assert stat[i] == pytest.approx(res.statistic, rel=1e-10)
        assert dof[i] == res.dof
        assert p[i] == pytest.approx(res.pvalue, rel=1e-8, abs=1e-300)


def test_chi2_hand_worked_and_degenerate() -> None:
    stat, dof, p = metrics.chi2_homogeneity(np.array([10, 20]), np.array([20, 10]))
    # Expected 15 in every cell: 4 * 25 / 15.
    assert float(stat) == pytest.approx(100 / 15)
    assert int(dof) == 1
    assert float(p) == pytest.approx(stats.chi2.sf(100 / 15, 1))
    _, dof, p = metrics.chi2_homogeneity(np.array([5, 0]), np.array([7, 0]))
    assert int(dof) == 0 and float(p) == 1.0
    assert metrics.chi2_critical_value(0.05, 3) == pytest.approx(stats.chi2.isf(0.05, 3))


def test_rate_test_is_the_conditional_binomial_test() -> None:
    k1, n1, k2, n2 = 30, 20_000, 9, 1_000
    share = n2 / (n1 + n2)
    x = stats.binom(k1 + k2, share)
    expected = min(1.0, 2 * min(x.cdf(k2), x.sf(k2 - 1)))
    assert metrics.rate_test(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-9)
    # Hand-worked: none in 50,000 reference rows, one in 1,000: 2 * 1000/51000.
    assert metrics.rate_test(0, 50_000, 1, 1_000) == pytest.approx(2 * 1000 / 51_000)
    assert metrics.rate_test(0, 100, 0, 100) == 1.0


def test_rate_test_is_not_more_eager_than_fishers_exact_test() -> None:
    # Both two-sided by doubling the smaller one-sided tail.
    for k1, n1, k2, n2 in [
        (0, 50_000, 3, 1_000),
        (500, 5_000, 70, 500),
        (5_000, 50_000, 80, 1_000),
        (20, 10_000, 0, 2_000),
        (300, 3_000, 20, 300),
    ]:
        table = [[k2, n2 - k2], [k1, n1 - k1]]
        tails = [stats.fisher_exact(table, alternative=a).pvalue for a in ("less", "greater")]
        fisher = min(1.0, 2 * min(tails))
        assert metrics.rate_test(k1, n1, k2, n2) >= 0.999 * fisher


def test_missing_and_new_category_rates() -> None:
    np.testing.assert_allclose(metrics.missing_rate(np.array([1, 0]), np.array([4, 10])), [0.25, 0.0])
    assert math.isnan(float(metrics.missing_rate(0, 0)))
    assert float(metrics.new_category_rate(3, 12)) == 0.25


def test_benjamini_hochberg_matches_scipy_adjusted_pvalues() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.random(23) ** rng.uniform(1, 6)
        adjusted = stats.false_discovery_control(p, method="bh")
        np.testing.assert_array_equal(metrics.benjamini_hochberg(p, 0.05), adjusted <= 0.05)
    assert metrics.benjamini_hochberg(np.array([]), 0.05).size == 0
