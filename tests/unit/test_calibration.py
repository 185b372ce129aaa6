"""Calibrated distance thresholds against brute-force resampling, and the calibrations shared between references.

A threshold is the (1 - alpha) quantile of the distance between the reference
and stationary windows of the effective size ``en``. The brute force draws
those windows from the distribution the reference was built from (and, for
Wasserstein, a fresh reference sample too, so both sides' noise is in it) and
takes the quantile of the distances themselves. The calibration resamples
1,000 (binned) or 400 (Wasserstein) windows, so its quantile carries a Monte
Carlo error of about 3% (binned) to 5% (Wasserstein); the brute force's 3,000
to 4,000 windows add about 2%. The tolerance, 12%, is about three of those
errors combined.
"""

from __future__ import annotations

import numpy as np
import pytest

from driftline.streams.core import calibration, metrics
from driftline.streams.core.binning import bin_counts
from driftline.streams.core.reference import ReferenceProfile

TOLERANCE = 0.12
ALPHA = 0.05
COLOURS = np.array(["red", "green", "blue", "grey", "teal"])
# No share so small that an empty bin is near 5% likely at 64 events: PSI jumps there (its
# smoothing makes an emptied bin cost ln(p / 1e-4) p), and no quantile near a jump is stable.
COLOUR_P = np.array([0.4, 0.25, 0.15, 0.1, 0.1])


def _reference(seed: int, n: int = 20_000, model: str = "m") -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    return ReferenceProfile.build(
        model,
        "1",
        {"normal": rng.normal(3.0, 2.0, n), "count": rng.poisson(2.0, n).astype(float)},
        {"colour": COLOURS[rng.choice(5, n, p=COLOUR_P)].tolist()},
    )


def _binned_brute_force(reference: ReferenceProfile, feature: str, windows: np.ndarray) -> dict[str, float]:
    """The (1 - alpha) quantiles of PSI, JS and Hellinger between the reference and each row of ``windows`` (values)."""
    if feature in reference.numeric:
        ref = reference.numeric[feature]
        bins = ref.bin_index(windows)
    else:
        cat = reference.categorical[feature]
        ref = cat
        bins = np.vectorize(lambda v: cat.index.get(v, len(cat.categories)))(windows)
    k = ref.counts.size
    q = np.stack([np.bincount(row, minlength=k) for row in bins]) / windows.shape[1]
    p = ref.counts / ref.counts.sum()
    level = 1.0 - ALPHA
    return {
        "psi": float(np.quantile(metrics.psi(p, q), level)),
        "jensenshannon": float(np.quantile(metrics.jensenshannon(p, q), level)),
        "hellinger": float(np.quantile(metrics.hellinger(p, q), level)),
    }


@pytest.mark.parametrize("en", [64, 256, 1_024])
def test_binned_thresholds_match_brute_force_resampling(en: int) -> None:
    reference = _reference(1)
    rng = np.random.default_rng(en)
    draws = {
        "normal": rng.normal(3.0, 2.0, (4_000, en)),
        "count": rng.poisson(2.0, (4_000, en)).astype(float),
        "colour": COLOURS[rng.choice(5, (4_000, en), p=COLOUR_P)],
    }
    for feature, windows in draws.items():
        brute = _binned_brute_force(reference, feature, windows)
        calibrated = calibration.binned_thresholds(reference, feature, float(en), ALPHA)
        for metric, value in brute.items():
            assert calibrated[metric] == pytest.approx(value, rel=TOLERANCE), (feature, metric, en)


@pytest.mark.parametrize("m", [100, 800])
def test_wasserstein_thresholds_match_brute_force_resampling(m: int) -> None:
    # Wasserstein as drift.py reports it: between binned CDFs over every value (metrics.cdf_grid),
    # for windows of m values drawn from the reference's own distribution.
    reference = _reference(2)
    ref = reference.numeric["normal"]
    points, bins, fractions = ref.grid
    rng = np.random.default_rng(m)
    windows = rng.normal(3.0, 2.0, (3_000, m))
    q = np.stack([bin_counts(ref.cuts, w) for w in windows]).astype(float) / m
    _, w = metrics.binned_cdf_distances(np.diff(points), bins, fractions, ref.counts / ref.counts.sum(), q)
    brute = float(np.quantile(w / ref.std, 1.0 - ALPHA))
    en = float(metrics.ks_effective_n(m, ref.count))
    assert calibration.wasserstein_threshold(reference, "normal", en, ALPHA) == pytest.approx(brute, rel=TOLERANCE)


def test_references_with_the_same_counts_share_one_calibration() -> None:
    calibration._binned_null.cache_clear()
    a, b = _reference(3, model="a"), _reference(4, model="b")
    # Quantile bins of as many continuous values: the same counts, whatever the values.
    assert a.numeric["normal"].counts.tolist() == b.numeric["normal"].counts.tolist()
    for en in (100.0, 3_000.0):
        assert calibration.binned_thresholds(a, "normal", en, ALPHA) == calibration.binned_thresholds(
            b, "normal", en, ALPHA
        )
    assert calibration._binned_null.cache_info().misses == 2


def test_calibration_does_not_depend_on_what_was_computed_before() -> None:
    features = ["normal", "count", "colour"]
    en = np.array([300.0, 300.0, 300.0])
    calibration._binned_null.cache_clear()
    first = calibration.binned_threshold_table(_reference(5), features, en, ALPHA)
    w_first = calibration.wasserstein_threshold(_reference(5), "normal", 300.0, ALPHA)
    # another reference, other sizes and another level computed in between, then the same again
    other = _reference(6)
    calibration.binned_threshold_table(other, features, np.array([40.0, 5_000.0, 9.0]), 0.01)
    calibration.wasserstein_threshold(other, "count", 77.0, 0.01)
    again = calibration.binned_threshold_table(_reference(5), features, en, ALPHA)
    assert {m: v.tolist() for m, v in first.items()} == {m: v.tolist() for m, v in again.items()}
    assert calibration.wasserstein_threshold(_reference(5), "normal", 300.0, ALPHA) == w_first


def test_wasserstein_thresholds_follow_each_features_shape() -> None:
    # Each feature's own bins: a discrete feature's normalised distances are not a normal one's.
    reference = _reference(7)
    normal = calibration.wasserstein_threshold(reference, "normal", 500.0, ALPHA)
    count = calibration.wasserstein_threshold(reference, "count", 500.0, ALPHA)
    assert normal != count
    assert 0.0 < normal < 0.2 and 0.0 < count < 0.2


def _shapes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = 5_000
    return {
        "normal": rng.normal(3.0, 2.0, n),
        "count": rng.poisson(2.0, n).astype(float),
        "constant": np.full(n, 4.0),
        "atoms_and_spread": np.where(rng.random(n) < 0.4, 0.0, rng.lognormal(0.0, 1.0, n)),
        "two_values": rng.choice([1.0, 7.0], n),
    }


@pytest.mark.parametrize("m", [1, 16, 256, 4_096])
def test_wasserstein_grid_gives_the_binned_cdf_distances(m: int) -> None:
    # The per-bin sums of WassersteinGrid against metrics.binned_cdf_distances segment by segment,
    # for windows resampled as the calibration draws them and for windows far from the reference.
    rng = np.random.default_rng(m)
    references = [
        ReferenceProfile.build("m", "1", _shapes(rng), {}),
        ReferenceProfile.build("m", "2", {"few_rows": rng.normal(size=12)}, {}),
    ]
    for reference, feature, ref in ((r, f, n) for r in references for f, n in r.numeric.items()):
        points, bins, fractions = ref.grid
        p = ref.counts / ref.counts.sum()
        drawn = rng.multinomial(m, calibration._reference_proportions(reference, feature), size=300) / m
        shifted = rng.dirichlet(np.full(p.size, 0.3), size=100)
        for q in (drawn, shifted):
            _, expected = metrics.binned_cdf_distances(np.diff(points), bins, fractions, p, q)
            got = calibration.WassersteinGrid.of(points, bins, fractions).distances(p, q)
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12 * max(float(np.ptp(points)), 1.0))
