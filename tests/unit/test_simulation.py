"""The simulated world: its true default probabilities, and the oracle model that knows them."""

from __future__ import annotations

import numpy as np
from scipy import stats

from driftline.service_sim import oracle_scorer
from driftline.simulation import AFTER, BEFORE, default_probability, draw


def test_default_probability_by_hand() -> None:
    # income at e^10.8 and age 40 are the standardisation centres; debt 0.5 is 0.2 above its centre
    numeric = {"income": np.exp([10.8, 11.3]), "age": np.array([40.0, 52.0]), "debt_ratio": np.array([0.5, 0.3])}
    categorical = {"channel": np.array(["mobile", "web"])}
    logits = [-1.0 + 2.5 * 0.2 + 0.2, -1.0 - 0.9 * 1.0 - 0.3 * 1.0]
    expected = 1.0 / (1.0 + np.exp(-np.array(logits)))
    assert np.allclose(default_probability(BEFORE, numeric, categorical), expected, rtol=1e-12)
    # after the change debt matters more and income less
    logits_after = [-1.0 + 6.0 * 0.2 + 0.2, -1.0 - 0.4 * 1.0 - 0.3 * 1.0]
    assert np.allclose(default_probability(AFTER, numeric, categorical), 1.0 / (1.0 + np.exp(-np.array(logits_after))))


def test_draw_and_the_oracle_follow_the_worlds_probabilities() -> None:
    for world in (BEFORE, AFTER):
        a = draw(world, 20_000, np.random.default_rng(3))
        p = default_probability(world, a.numeric, a.categorical)
        assert np.array_equal(oracle_scorer("1", world).score(a), p)
        # the outcomes are Bernoulli(p): their count is within 4 standard deviations of the sum of p
        assert abs(a.default.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
        # and calibrated by decile of p (chi-squared, 10 groups)
        groups = np.array_split(np.argsort(p), 10)
        observed = np.array([a.default[g].sum() for g in groups])
        expected = np.array([p[g].sum() for g in groups])
        variance = np.array([(p[g] * (1 - p[g])).sum() for g in groups])
        assert stats.chi2.sf(((observed - expected) ** 2 / variance).sum(), 10) > 1e-3
