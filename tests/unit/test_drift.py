"""Drift decisions: values against scipy, false alarms and power at every window size."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from driftline.streams.core import metrics
from driftline.streams.core.drift import (
    CATEGORICAL_METRICS,
    NUMERIC_METRICS,
    drifted_features,
    evaluate_window,
    window_moments,
)
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.records import PREDICTION_FEATURE, FeatureDrift

ZIPF = np.array([f"z{i}" for i in range(12)])
ZIPF_P = (1 / np.arange(1, 13)) / (1 / np.arange(1, 13)).sum()
COLOURS = np.array(["red", "green", "blue"])


def stream(rng: np.random.Generator, n: int, shift: float = 0.0):
    """A model's inputs and output: mixed shapes, a discrete feature, missing values."""
    u = rng.uniform(size=n)
    u[rng.random(n) < 0.1] = np.nan
    normal = rng.normal(shift, 1.0, n)
    numeric = {
        "normal": normal,
        "lognormal": rng.lognormal(size=n),
        "count": rng.poisson(3, n).astype(float),
        "uniform": u,
    }
    categorical = {
        "zipf": ZIPF[rng.choice(12, n, p=ZIPF_P)].tolist(),
        "colour": COLOURS[rng.choice(3, n, p=[0.5, 0.3, 0.2])].tolist(),
    }
    predictions = 1 / (1 + np.exp(-(numeric["lognormal"] - 1 + rng.normal(size=n))))
    return numeric, categorical, predictions


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    return ReferenceProfile.build("credit", "7", *stream(np.random.default_rng(2024), 50_000))


def window_of(
    reference: ReferenceProfile, rng: np.random.Generator, n: int, shift: float = 0.0, seed: int = 0
) -> WindowProfile:
    w = WindowProfile.empty(reference, seed=seed)
    w.update(*stream(rng, n, shift))
    return w


def by_key(rows: list[FeatureDrift]) -> dict[tuple[str, str], FeatureDrift]:
    return {(r.feature, r.metric): r for r in rows}


def assert_rate_at_most(alarms: int, windows: int, rate: float) -> None:
    """Fail when the alarms show, at the 1% level, a rate above ``rate``."""
    p_more = stats.binom.sf(alarms - 1, windows, rate)
    assert p_more > 0.01, f"{alarms}/{windows} false alarms is significantly more than {rate:.0%}"


# ----------------------------------------------------------------------------- rows


def test_one_row_per_feature_and_metric(reference: ReferenceProfile) -> None:
    rows = evaluate_window(reference, window_of(reference, np.random.default_rng(1), 500))
    keys = [(r.feature, r.metric) for r in rows]
    assert len(keys) == len(set(keys))
    expected = [
        (f, m)
        for f in reference.features
        for m in (CATEGORICAL_METRICS if f in reference.categorical else NUMERIC_METRICS)
    ]
    assert keys == expected
    for feature in reference.features:
        assert len({r.drifted for r in rows if r.feature == feature}) == 1


def test_values_match_scipy_on_the_same_window(reference: ReferenceProfile) -> None:
    w = window_of(reference, np.random.default_rng(2), 800, shift=0.2)
    rows = by_key(evaluate_window(reference, w))
    ref_values, _, ref_predictions = stream(np.random.default_rng(2024), 50_000)
    win_values, _, win_predictions = stream(np.random.default_rng(2), 800, 0.2)
    ref_values[PREDICTION_FEATURE], win_values[PREDICTION_FEATURE] = ref_predictions, win_predictions
    for f in ("normal", "count", PREDICTION_FEATURE):
        ref, win = reference.numeric[f], w.numeric[f]
        r, c = ref_values[f], win_values[f]
        r, c = r[~np.isnan(r)], c[~np.isnan(c)]
        # KS: the largest gap between the two empirical CDFs (every value) at the reference's cuts ...
        at_cuts = np.abs(
            np.searchsorted(np.sort(r), ref.cuts) / r.size - np.searchsorted(np.sort(c), ref.cuts) / c.size
        )
        assert rows[f, "ks"].value == pytest.approx(float(at_cuts.max()), abs=1e-12)
        # ... so never above scipy's supremum over every value, and close to it
        exact = stats.ks_2samp(r, c).statistic
        assert exact - 0.03 <= rows[f, "ks"].value <= exact + 1e-12
        en = r.size * c.size / (r.size + c.size)
        stephens = (math.sqrt(en) + 0.12 + 0.11 / math.sqrt(en)) * rows[f, "ks"].value
        assert rows[f, "ks"].p_value == pytest.approx(stats.kstwobign.sf(stephens), rel=1e-6, abs=1e-12)
        # Wasserstein between the binned CDFs: within 0.03 sd + 20% of scipy's on every value
        exact_w = stats.wasserstein_distance(r, c) / ref.std
        assert abs(rows[f, "wasserstein"].value - exact_w) <= 0.03 + 0.2 * exact_w, f
        p, q = ref.counts / ref.counts.sum(), win.counts / win.counts.sum()
        assert rows[f, "psi"].value == pytest.approx(float(metrics.psi(p, q)), rel=1e-12)
        assert rows[f, "jensenshannon"].value == pytest.approx(
            distance.jensenshannon(ref.counts, win.counts, base=2), rel=1e-9
        )
        assert rows[f, "hellinger"].value == pytest.approx(math.sqrt(1 - np.sum(np.sqrt(p * q))), rel=1e-6)
    assert rows["uniform", "missing_rate"].value == w.numeric["uniform"].missing / 800
    ref_u = reference.numeric["uniform"]
    assert rows["uniform", "missing_rate"].threshold == pytest.approx(
        stats.binom.ppf(0.95, 800, ref_u.missing / (ref_u.missing + ref_u.count)) / 800
    )
    # Three large colours: no pooling, the plain 2 x 3 contingency test.
    ref_c, win_c = reference.categorical["colour"], w.categorical["colour"]
    table = np.array([ref_c.counts[:-1], win_c.counts[:-1]])
    expected = stats.chi2_contingency(table, correction=False)
    assert rows["colour", "chi2"].value == pytest.approx(expected.statistic, rel=1e-9)
    assert rows["colour", "chi2"].p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert rows["colour", "chi2"].threshold == pytest.approx(stats.chi2.isf(0.05, 2))
    assert rows["colour", "new_category_rate"].value == 0.0
    normal = reference.numeric["normal"]
    assert rows["normal", "ks"].threshold == pytest.approx(float(metrics.ks_critical_value(0.05, normal.count, 800)))


def test_features_without_events_get_no_rows(reference: ReferenceProfile) -> None:
    w = WindowProfile.empty(reference, seed=1)
    numeric, categorical, _ = stream(np.random.default_rng(3), 300)
    w.update(numeric, categorical, None)  # features logged without predictions
    rows = evaluate_window(reference, w)
    assert PREDICTION_FEATURE not in {r.feature for r in rows}
    assert {r.feature for r in rows} == set(reference.features) - {PREDICTION_FEATURE}


def test_all_missing_feature_is_drift_with_nan_distances(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(4)
    numeric, categorical, predictions = stream(rng, 1_000)
    del numeric["normal"]  # the pipeline stopped sending it: missing in every event
    w = WindowProfile.empty(reference, seed=1)
    w.update(numeric, categorical, predictions)
    rows = by_key(evaluate_window(reference, w))
    assert rows["normal", "missing_rate"].value == 1.0
    assert rows["normal", "missing_rate"].p_value < 1e-10
    assert math.isnan(rows["normal", "ks"].value) and rows["normal", "ks"].p_value is None
    assert drifted_features(list(rows.values())) == ["normal"]
    gated = evaluate_window(reference, w, thresholds={"*": {"psi": 0.5}})
    assert drifted_features(gated) == ["normal"]  # a NaN distance does not silence the missing values


def test_a_jump_in_missing_values_is_drift_but_one_missing_value_is_not(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(5)
    numeric, categorical, predictions = stream(rng, 1_000)
    numeric["lognormal"][:50] = np.nan
    w = WindowProfile.empty(reference, seed=1)
    w.update(numeric, categorical, predictions)
    assert drifted_features(evaluate_window(reference, w)) == ["lognormal"]
    numeric, categorical, predictions = stream(rng, 1_000)
    numeric["lognormal"][0] = np.nan
    w = WindowProfile.empty(reference, seed=1)
    w.update(numeric, categorical, predictions)
    rows = by_key(evaluate_window(reference, w))
    assert not rows["lognormal", "missing_rate"].drifted
    assert rows["lognormal", "missing_rate"].value == 0.001


def test_new_categories_are_drift(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(6)
    numeric, categorical, predictions = stream(rng, 1_000)
    categorical["colour"][:30] = ["purple"] * 30
    w = WindowProfile.empty(reference, seed=1)
    w.update(numeric, categorical, predictions)
    rows = by_key(evaluate_window(reference, w))
    assert rows["colour", "new_category_rate"].value == 0.03
    assert rows["colour", "new_category_rate"].threshold == 0.0  # the reference never saw one
    assert drifted_features(list(rows.values())) == ["colour"]


def test_a_constant_reference_feature_that_starts_moving_is_drift() -> None:
    rng = np.random.default_rng(14)
    ref = ReferenceProfile.build("m", "1", {"flag": np.zeros(50_000), "x": rng.normal(size=50_000)}, {})
    w = WindowProfile.empty(ref, seed=1)
    flag = np.zeros(5_000)
    flag[:100] = 1.0
    w.update({"flag": flag, "x": rng.normal(size=5_000)}, {})
    rows = by_key(evaluate_window(ref, w))
    assert rows["flag", "ks"].value == pytest.approx(0.02)
    assert drifted_features(list(rows.values())) == ["flag"]
    # std 0: divided by 1. The 2% of values beyond the reference's range spread evenly up to the
    # window's maximum in the binned CDF, so half of that 1.0 distance: 0.02 * 0.5
    assert rows["flag", "wasserstein"].value == pytest.approx(0.01)


# ----------------------------------------------------------------------------- thresholds


def test_thresholds_you_set_are_reported_and_gate_the_decision(reference: ReferenceProfile) -> None:
    w = window_of(reference, np.random.default_rng(7), 1_000, shift=0.5)
    plain = by_key(evaluate_window(reference, w))
    assert plain["normal", "psi"].drifted
    loose = by_key(evaluate_window(reference, w, thresholds={"normal": {"psi": 10.0}}))
    assert loose["normal", "psi"].threshold == 10.0 and not loose["normal", "ks"].drifted
    assert loose["normal", "ks"].threshold == plain["normal", "ks"].threshold
    # Any one metric over its threshold is enough.
    either = by_key(evaluate_window(reference, w, thresholds={"*": {"psi": 10.0, "wasserstein": 0.1}}))
    assert either["normal", "psi"].drifted and either["normal", "wasserstein"].threshold == 0.1
    # A feature-specific threshold overrides the '*' one.
    specific = by_key(evaluate_window(reference, w, thresholds={"*": {"psi": 10.0}, "normal": {"psi": 0.01}}))
    assert specific["normal", "psi"].drifted and specific["count", "psi"].threshold == 10.0
    # Thresholds never raise alarms on their own.
    quiet = window_of(reference, np.random.default_rng(8), 1_000)
    assert drifted_features(evaluate_window(reference, quiet, thresholds={"*": {"psi": 0.0}})) == []


def test_bad_thresholds_and_levels_are_refused(reference: ReferenceProfile) -> None:
    w = window_of(reference, np.random.default_rng(9), 100)
    with pytest.raises(ValueError, match="unknown drift metric 'kl'"):
        evaluate_window(reference, w, thresholds={"normal": {"kl": 0.1}})
    with pytest.raises(ValueError, match="fdr_q"):
        evaluate_window(reference, w, fdr_q=0.0)
    other = ReferenceProfile.build("credit", "8", {"normal": np.ones(10)}, {})
    with pytest.raises(ValueError, match="evaluated against"):
        evaluate_window(other, w)


def test_calibrated_thresholds_hold_their_level(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(10)
    metric_names = ("psi", "jensenshannon", "hellinger", "wasserstein")
    for n in (150, 1_000):
        over = {m: 0 for m in metric_names}
        total = 0
        for k in range(150):
            rows = evaluate_window(reference, window_of(reference, rng, n, seed=k))
            for r in rows:
                if r.metric in over and r.feature in ("normal", "lognormal", "uniform", "zipf"):
                    over[r.metric] += r.value > r.threshold
                    total += r.metric == "psi"
        for m, count in over.items():
            if m == "wasserstein":
                assert count / (total * 3 / 4) == pytest.approx(0.05, abs=0.035), (n, m)
            else:
                assert count / total == pytest.approx(0.05, abs=0.035), (n, m)


@pytest.mark.parametrize("n", [150, 1_000])
def test_ks_p_value_and_threshold_stay_valid_without_drift(reference: ReferenceProfile, n: int) -> None:
    """The binned KS statistic is at most the one over every value, so the KS p-value and
    critical value of the sizes of all values keep their level (they become conservative)."""
    rng = np.random.default_rng(20 + n)
    small_p = over = tested = 0
    for k in range(200):
        rows = evaluate_window(reference, window_of(reference, rng, n, seed=k))
        for r in rows:
            if r.metric == "ks" and r.feature in ("normal", "lognormal", "count", "uniform", PREDICTION_FEATURE):
                assert r.p_value is not None
                small_p += r.p_value <= 0.05
                over += r.value > r.threshold
                tested += 1
    assert_rate_at_most(small_p, tested, 0.05)
    assert_rate_at_most(over, tested, 0.05)
    assert small_p > 0  # the test is not dead


# ----------------------------------------------------------------------------- false alarms and power


@pytest.mark.parametrize("n,windows", [(100, 400), (150, 400), (1_000, 300), (10_000, 200)])
def test_false_alarms_stay_at_most_five_percent(reference: ReferenceProfile, n: int, windows: int) -> None:
    rng = np.random.default_rng(n)
    alarms = 0
    fixed = 0  # Evidently's rule: normalised Wasserstein above 0.1
    for k in range(windows):
        rows = evaluate_window(reference, window_of(reference, rng, n, seed=stable_seed("fa", n, k)))
        alarms += bool(drifted_features(rows))
        fixed += any(r.metric == "wasserstein" and r.value > 0.1 for r in rows)
    assert_rate_at_most(alarms, windows, 0.05)
    assert alarms / windows < 0.08
    if n <= 150:
        assert fixed / windows > 0.5  # what a fixed threshold does to small windows


def test_a_quarter_sigma_shift_is_caught_in_windows_of_1000(reference: ReferenceProfile) -> None:
    rng = np.random.default_rng(11)
    caught = 0
    false_share = []
    for k in range(200):
        flagged = drifted_features(evaluate_window(reference, window_of(reference, rng, 1_000, shift=0.25, seed=k)))
        caught += "normal" in flagged
        false_share.append(len(set(flagged) - {"normal"}) / max(len(flagged), 1))
    assert caught / 200 >= 0.9
    # Benjamini-Hochberg: at most q of the flagged features are false discoveries, on average.
    assert np.mean(false_share) < 0.08


def test_power_with_a_reference_no_larger_than_its_sample() -> None:
    # 5,000 rows: KS on the samples decides at every window size.
    rng = np.random.default_rng(12)
    small = ReferenceProfile.build("m", "1", *stream(rng, 5_000))
    caught = sum(
        "normal" in drifted_features(evaluate_window(small, window_of(small, rng, 1_000, shift=0.25, seed=k)))
        for k in range(100)
    )
    assert caught / 100 >= 0.9


def test_a_replay_gives_identical_rows_whatever_the_batches(reference: ReferenceProfile) -> None:
    numeric, categorical, predictions = stream(np.random.default_rng(13), 3_000, shift=0.1)
    seed = stable_seed("credit", "7", 1_700_000_000_000)
    whole = WindowProfile.empty(reference, seed=seed)
    whole.update(numeric, categorical, predictions)
    replay = WindowProfile.empty(reference, seed=seed)
    for part in np.array_split(np.arange(3_000), 11):
        replay.update(
            {f: x[part] for f, x in numeric.items()},
            {f: [c[i] for i in part] for f, c in categorical.items()},
            predictions[part],
        )
    a, b = evaluate_window(reference, whole), evaluate_window(reference, replay)
    assert [(r.feature, r.metric, r.value, r.p_value, r.threshold, r.drifted) for r in a] == [
        (r.feature, r.metric, r.value, r.p_value, r.threshold, r.drifted) for r in b
    ]


# ----------------------------------------------------------------------------- regressions


@pytest.mark.parametrize("n,windows", [(100, 300), (150, 300), (1_000, 200)])
def test_new_categories_in_one_feature_never_flag_another(n: int, windows: int) -> None:
    # The reference saw no ``other`` in either feature, and "few" has fewer
    # categories than "many": its padded cells once shared a spare group with
    # the new categories of "many", which then showed up in the test of "few".
    rng = np.random.default_rng(31)
    many = np.array([f"m{i}" for i in range(8)])
    few = np.array(["a", "b", "c"])
    ref = ReferenceProfile.build(
        "m",
        "1",
        {},
        {
            "many": many[rng.integers(0, 8, 20_000)].tolist(),
            "few": few[rng.choice(3, 20_000, p=[0.5, 0.3, 0.2])].tolist(),
        },
    )
    wrongly = 0
    for k in range(windows):
        values = many[rng.integers(0, 8, n)].astype(object)
        values[rng.random(n) < 0.1] = "new"
        w = WindowProfile.empty(ref, seed=k)
        w.update({}, {"many": values.tolist(), "few": few[rng.choice(3, n, p=[0.5, 0.3, 0.2])].tolist()})
        rows = by_key(evaluate_window(ref, w))
        wrongly += rows["few", "chi2"].drifted
        assert rows["few", "chi2"].value < 60  # the leak made it hundreds
    assert_rate_at_most(wrongly, windows, 0.05)


def test_a_truncated_top_k_table_keeps_its_level_with_windows_larger_than_the_reference() -> None:
    # 30 Zipf categories, a 1,000-row reference that keeps its top 20, windows of 10,000: the
    # reference chose its table by its own counts, and with the window ten times larger that
    # luck showed as drift (2.5 times the level) until the table is cut at a wide gap.
    zipf = 1.0 / np.arange(1, 31) ** 1.1
    values = np.array([f"v{i}" for i in range(30)], dtype=object)
    rng = np.random.default_rng(52)
    # One window per reference: with windows this large, a reference's own luck sets the rate of
    # all its windows, so the level holds on average over references (docs/STATISTICS.md).
    alarms, windows = 0, 250
    for k in range(windows):
        ref = ReferenceProfile.build("m", "1", {}, {"c": values[rng.choice(30, 1_000, p=zipf / zipf.sum())].tolist()})
        w = WindowProfile.empty(ref, seed=k)
        w.update({}, {"c": values[rng.choice(30, 10_000, p=zipf / zipf.sum())].tolist()})
        alarms += by_key(evaluate_window(ref, w))["c", "chi2"].drifted
    assert_rate_at_most(alarms, windows, 0.05)


def test_a_rate_test_that_cannot_reach_the_level_costs_the_location_test_nothing() -> None:
    # One missing value in a window as large as the reference (none in the reference): the
    # missing test's best p-value is 0.5, so it takes no share of the level. Were it to take its
    # weight, the location test's share would fall from 1/3 to 1/7 and this shift (p = 0.0093)
    # would no longer be drift.
    rng = np.random.default_rng(5)
    ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=1_000)}, {})
    mean, sd = ref.numeric["x"].mean, ref.numeric["x"].std
    z = rng.normal(size=999)
    z = (z - z.mean()) / z.std()
    x = mean + sd * (z + 2.6 * math.sqrt(1_000 / 999 * (1 / 999 + 1 / 1_000)))
    rows = {}
    for name, values in (("one missing", np.append(x, np.nan)), ("none missing", x)):
        w = WindowProfile.empty(ref, seed=1)
        w.update({"x": values}, {})
        rows[name] = by_key(evaluate_window(ref, w))
    assert rows["one missing"]["x", "missing_rate"].p_value == pytest.approx(0.5, abs=0.01)
    assert rows["one missing"]["x", "mean_shift"].p_value == pytest.approx(0.0093, abs=0.0005)
    assert rows["one missing"]["x", "mean_shift"].drifted and rows["none missing"]["x", "mean_shift"].drifted
    assert not rows["one missing"]["x", "missing_rate"].drifted


def test_the_out_of_range_test_takes_its_share_whether_or_not_a_value_is_outside() -> None:
    # Whether a window has values outside the reference's range is the window's data, and it goes
    # with its spread: were the out-of-range test to take its share only then, the location test
    # would get 0.25 / 0.6 of the level in windows without such values and the feature's shares
    # would add up to more than its level (about 1.2 times it: 5.7-7% false alarms on 10 normal
    # features). So it always takes its 0.15: location gets a third, and this shift (p = 0.019,
    # between 0.05 / 3 and 0.05 * 0.25 / 0.6) is not drift.
    rng = np.random.default_rng(5)
    ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=1_000)}, {})
    mean, sd = ref.numeric["x"].mean, ref.numeric["x"].std
    z = rng.normal(size=2_000)
    z = z[np.abs(z) < 2.0][:999]  # well inside the reference's range
    z = (z - z.mean()) / z.std()
    x = mean + sd * (z + 2.346 * math.sqrt(1_000 / 999 * (1 / 999 + 1 / 1_000)))
    w = WindowProfile.empty(ref, seed=1)
    w.update({"x": x}, {})
    rows = by_key(evaluate_window(ref, w))
    assert rows["x", "out_of_range_rate"].value == 0.0
    assert 0.05 / 3 < rows["x", "mean_shift"].p_value < 0.05 * 0.25 / 0.6
    assert not rows["x", "mean_shift"].drifted


def test_moments_read_once_give_the_rows_of_reading_the_window(reference):
    rng = np.random.default_rng(21)
    for n, shift in ((1, 0.0), (40, 0.5), (900, 0.0), (3_000, 0.2)):
        w = window_of(reference, rng, n, shift)
        moments = window_moments(w)
        assert set(moments) == set(reference.numeric)
        assert all(moments[f] == (x.count, x.mean, x.m2) for f, x in w.numeric.items())
        given = evaluate_window(reference, w, moments=moments)
        assert [repr(r) for r in given] == [repr(r) for r in evaluate_window(reference, w)]  # NaN-safe
