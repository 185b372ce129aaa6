"""Reference and window profiles: counts against numpy, merge laws, the sample, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from driftline.streams.core.binning import bin_counts, bin_counts_rows
from driftline.streams.core.reference import CategoricalReference, NumericReference, ReferenceProfile
from driftline.streams.core.sampler import BottomKSample, sample_keys, stable_seed
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.records import PREDICTION_FEATURE


def make_reference(n: int = 4_000, seed: int = 0, **kwargs) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    x = rng.normal(10, 2, n)
    x[rng.random(n) < 0.05] = np.nan
    return ReferenceProfile.build(
        "credit",
        "3",
        numeric={"x": x, "k": rng.poisson(2, n).astype(float)},
        categorical={"c": rng.choice(["a", "b", "c", "d"], n, p=[0.4, 0.3, 0.2, 0.1]).tolist()},
        predictions=rng.random(n),
        **kwargs,
    )


def json_round_trip(d: dict) -> dict:
    return json.loads(json.dumps(d))


# ----------------------------------------------------------------------------- reference


def test_numeric_reference_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=10_000)
    x[:300] = np.nan
    ref = NumericReference.build("x", x, bins=10, sample_size=5_000, seed=3)
    v = x[~np.isnan(x)]
    np.testing.assert_array_equal(ref.edges, np.quantile(v, np.linspace(0, 1, 11), method="inverted_cdf"))
    assert ref.n_bins == 12
    assert ref.missing == 300 and ref.count == v.size
    assert (ref.counts[0], ref.counts[-1]) == (0, 0)  # nothing outside the reference's own range
    inner, _ = np.histogram(v, bins=ref.edges)  # numpy's last bin is closed too
    np.testing.assert_array_equal(ref.counts[1:-1], inner)
    assert (ref.mean, ref.std, ref.min, ref.max) == pytest.approx((v.mean(), v.std(), v.min(), v.max()))
    assert ref.sample.size == 5_000 and np.all(np.diff(ref.sample) >= 0)
    assert np.isin(ref.sample, v).all() and np.unique(ref.sample).size == 5_000  # without replacement


def test_repeated_values_give_fewer_distinct_edges() -> None:
    ref = NumericReference.build("k", np.array([0.0] * 80 + [1.0] * 15 + [5.0] * 5), bins=10, sample_size=10, seed=0)
    np.testing.assert_array_equal(ref.edges, [0.0, 1.0, 5.0])
    assert ref.counts.tolist() == [0, 80, 20, 0]
    constant = NumericReference.build("k", np.full(10, 3.0), bins=10, sample_size=10, seed=0)
    assert constant.counts.tolist() == [0, 10, 0]
    assert constant.bin_index(np.array([2.0, 3.0, 4.0])).tolist() == [0, 1, 2]


def test_categorical_reference_keeps_top_k_by_count_then_name() -> None:
    values = ["b"] * 5 + ["a"] * 5 + ["c"] * 3 + ["d"] * 2 + ["e"] + [None] * 4 + [float("nan")]
    ref = CategoricalReference.build("c", values, top_k=3)
    assert ref.categories == ["a", "b", "c"]
    assert ref.counts.tolist() == [5, 5, 3, 3]
    assert ref.missing == 5  # None and pandas' NaN


def test_reference_features_and_kinds() -> None:
    ref = make_reference()
    assert ref.features == ["x", "k", "c", PREDICTION_FEATURE]
    assert ref.kind("c") == "categorical" and ref.kind(PREDICTION_FEATURE) == "numeric"
    assert ref.n == 4_000
    with pytest.raises(KeyError, match="not in the reference"):
        ref.kind("nope")


def test_reference_round_trips_exactly_through_json() -> None:
    ref = make_reference()
    d = ref.to_dict()
    again = ReferenceProfile.from_dict(json_round_trip(d))
    assert again.to_dict() == d
    np.testing.assert_array_equal(again.numeric["x"].sample, ref.numeric["x"].sample)
    np.testing.assert_array_equal(again.numeric["x"].edges, ref.numeric["x"].edges)
    assert again.numeric["x"].mean == ref.numeric["x"].mean
    assert again.features == ref.features


@pytest.mark.parametrize(
    "numeric,categorical,predictions,message",
    [
        ({"x": np.array([1.0, np.inf])}, {}, None, "infinite"),
        ({"x": np.array([np.nan, np.nan])}, {}, None, "no values"),
        ({"x": np.array([1.0, 2.0])}, {"c": ["a"]}, None, "differ in length"),
        ({"x": np.array([1.0])}, {"x": ["a"]}, None, "both numeric and categorical"),
        ({PREDICTION_FEATURE: np.array([1.0])}, {}, None, "reserved"),
        ({}, {"c": ["a", 3]}, None, "categories must be strings"),
        ({"x": np.array(["a", "b"])}, {}, None, "not numbers"),
        ({}, {}, None, "at least one feature"),
    ],
)
def test_reference_rejects_bad_input(numeric, categorical, predictions, message) -> None:
    with pytest.raises(ValueError, match=message):
        ReferenceProfile.build("m", "1", numeric, categorical, predictions)


def test_reference_from_an_unknown_format_is_refused() -> None:
    d = make_reference(n=100).to_dict()
    d["format"] = 99
    with pytest.raises(ValueError, match="format"):
        ReferenceProfile.from_dict(d)


# ----------------------------------------------------------------------------- window updates


def test_window_counts_match_the_reference_bins() -> None:
    ref = make_reference()
    rx = ref.numeric["x"]
    w = WindowProfile.empty(ref, seed=5)
    x = np.array([rx.min - 1, rx.min, rx.edges[3], rx.max, rx.max + 1, np.nan])
    w.update({"x": x, "k": np.zeros(6)}, {"c": ["a", "a", "zzz", None, "b", "d"]}, np.full(6, 0.5))
    counts = w.numeric["x"].counts
    assert counts[0] == 1 and counts[-1] == 1  # below the minimum, above the maximum
    assert counts[1] == 1 and counts[-2] == 1  # the minimum and the maximum are inner values
    assert counts[4] == 1  # an edge belongs to the bin it opens
    assert w.numeric["x"].missing == 1 and w.numeric["x"].count == 5
    assert w.categorical["c"].counts.tolist() == [2, 1, 0, 1, 1]  # a, b, c, d, other
    assert w.categorical["c"].missing == 1
    assert w.n == 6


def test_window_moments_and_quantiles_match_numpy() -> None:
    ref = make_reference()
    rng = np.random.default_rng(2)
    x = rng.normal(11, 3, 900)
    w = WindowProfile.empty(ref, seed=1)
    for part in np.array_split(x, 7):
        w.update({"x": part}, {})
    nw = w.numeric["x"]
    assert nw.mean == pytest.approx(x.mean(), rel=1e-12)
    assert nw.std == pytest.approx(x.std(), rel=1e-10)
    assert (nw.min, nw.max) == (x.min(), x.max())
    row = next(r for r in w.summary_rows() if r["feature"] == "x")
    # The sample holds every value while the window fits in it: exact quantiles.
    assert row["quantiles"] == pytest.approx(np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist())
    assert sum(row["histogram"]) == 900 and row["missing"] == 0 and row["count"] == 900


def test_absent_features_are_missing_but_absent_predictions_are_not() -> None:
    ref = make_reference()
    w = WindowProfile.empty(ref, seed=1)
    w.update({"x": np.ones(4)}, {}, None)
    assert w.numeric["k"].missing == 4
    assert w.categorical["c"].missing == 4
    assert w.numeric[PREDICTION_FEATURE].missing == 0 and w.numeric[PREDICTION_FEATURE].count == 0
    w.update({}, {}, np.array([0.1, np.nan]))
    assert w.numeric[PREDICTION_FEATURE].missing == 1 and w.numeric["x"].missing == 2
    w.update({}, {}, n=3)
    assert w.n == 9 and w.numeric["x"].missing == 5


def test_unknown_features_are_ignored_and_listed() -> None:
    ref = make_reference()
    w = WindowProfile.empty(ref, seed=1)
    w.update({"x": np.ones(2), "new_num": np.ones(2)}, {"zip": ["1", "2"]})
    assert w.unknown_features == {"new_num", "zip"}
    assert [r["feature"] for r in w.summary_rows()] == ref.features


@pytest.mark.parametrize(
    "numeric,categorical,predictions,n,message",
    [
        ({"x": np.array([1.0, np.inf])}, {}, None, None, "infinite"),
        ({"x": np.ones(2)}, {"c": ["a"]}, None, None, "differ in length"),
        ({"c": np.ones(2)}, {}, None, None, "wrong kind"),
        ({}, {"c": ["a", 1]}, None, None, "categories must be strings"),
        ({}, {"c": [["a"], "b"]}, None, None, "unhashable"),
        ({}, {}, None, None, "needs n"),
        ({"x": np.ones(2)}, {}, None, 3, "2 values for a batch of 3"),
    ],
)
def test_bad_batches_are_refused_and_leave_no_trace(numeric, categorical, predictions, n, message) -> None:
    ref = make_reference()
    w = WindowProfile.empty(ref, seed=1)
    w.update({"x": np.ones(3)}, {"c": ["a", "b", None]})
    before = w.to_dict()
    with pytest.raises(ValueError, match=message):
        w.update(numeric, categorical, predictions, n=n)
    assert w.to_dict() == before


def test_window_round_trips_exactly_through_json() -> None:
    ref = make_reference()
    rng = np.random.default_rng(3)
    w = WindowProfile.empty(ref, seed=stable_seed("credit", "3", 60_000))
    w.update(
        {"x": rng.normal(size=3_000), "k": rng.poisson(2, 3_000).astype(float)},
        {"c": rng.choice(["a", "q"], 3_000).tolist(), "extra": ["1"] * 3_000},
        rng.random(3_000),
    )
    d = w.to_dict()
    again = WindowProfile.from_dict(json_round_trip(d), ref)
    assert again.to_dict() == d
    # A restored window goes on exactly as the original does.
    batch = ({"x": rng.normal(size=500)}, {"c": ["a"] * 500}, None)
    w.update(*batch)
    again.update(*batch)
    assert again.to_dict() == w.to_dict()


def test_window_from_dict_checks_the_reference() -> None:
    ref = make_reference()
    d = WindowProfile.empty(ref, seed=1).to_dict()
    other = make_reference(n=500, seed=1)
    other.model_version = "4"
    with pytest.raises(ValueError, match="given the reference"):
        WindowProfile.from_dict(d, other)
    fewer_bins = make_reference(bins=5)
    with pytest.raises(ValueError, match="bins"):
        WindowProfile.from_dict(d, fewer_bins)


# ----------------------------------------------------------------------------- the sample


def test_sample_is_the_same_whatever_the_batch_boundaries() -> None:
    ref = make_reference()
    x = np.random.default_rng(4).normal(size=5_000)
    one = WindowProfile.empty(ref, seed=42)
    one.update({"x": x}, {})
    many = WindowProfile.empty(ref, seed=42)
    for part in np.array_split(x, 37):
        many.update({"x": part}, {})
    a, b = one.numeric["x"].sample.canonical(), many.numeric["x"].sample.canonical()
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    other_seed = WindowProfile.empty(ref, seed=43)
    other_seed.update({"x": x}, {})
    assert not np.array_equal(np.sort(other_seed.numeric["x"].sample.values), np.sort(a[0]))


def test_sample_is_uniform_over_positions() -> None:
    ref = make_reference(n=200)
    hits = np.zeros(100)
    runs = 1_000
    for seed in range(runs):
        w = WindowProfile.empty(ref, seed=seed, sample_size=10)
        w.update({"x": np.arange(100.0)}, {})
        hits[w.numeric["x"].sample.values.astype(int)] += 1
    # Every position is kept with probability 10/100.
    assert stats.chisquare(hits).pvalue > 0.001
    assert hits.sum() == 10 * runs


def test_merged_sample_takes_from_each_part_in_proportion() -> None:
    ref = make_reference(n=200)
    from_small = []
    for seed in range(300):
        big = WindowProfile.empty(ref, seed=seed, sample_size=100)
        big.update({"x": np.zeros(900)}, {})
        small = WindowProfile.empty(ref, seed=10_000 + seed, sample_size=100)
        small.update({"x": np.ones(100)}, {})
        merged = big.merge(small)
        assert merged.numeric["x"].sample.values.size == 100
        from_small.append(merged.numeric["x"].sample.values.mean())
    # 100 of 1,000 values come from the small part: 10% of the sample on average.
    assert np.mean(from_small) == pytest.approx(0.10, abs=0.01)


def test_bottom_k_keeps_smallest_keys_and_breaks_ties_by_value() -> None:
    s = BottomKSample(2)
    s.offer(np.array([3.0, 1.0, 2.0]), np.array([5, 5, 5], dtype=np.uint64))
    assert sorted(s.values.tolist()) == [1.0, 2.0]
    s.offer(np.array([9.0]), np.array([1], dtype=np.uint64))
    assert sorted(s.values.tolist()) == [1.0, 9.0]


# ----------------------------------------------------------------------------- merge laws (hypothesis)

values = st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan"))), max_size=60)
categories = st.lists(st.one_of(st.sampled_from(["a", "b", "c", "d", "new"]), st.none()), max_size=60)
HYPO_REF = make_reference(n=1_000, seed=9)


def window(xs: list[float], cs: list[str | None], seed: int) -> WindowProfile:
    w = WindowProfile.empty(HYPO_REF, seed=seed, sample_size=16)
    w.update({"x": np.array(xs, dtype=float)}, {})
    w.update({}, {"c": cs})
    return w


def exact_parts(w: WindowProfile) -> dict:
    x, c = w.numeric["x"], w.categorical["c"]
    values, keys = x.sample.canonical()
    return {
        "n": w.n,
        "x_counts": x.counts.tolist(),
        "x_missing": x.missing,
        "x_count": x.count,
        "x_min": x.min,
        "x_max": x.max,
        "x_sum": x.total,
        "x_squares": x.squares,
        "c_counts": c.counts.tolist(),
        "c_missing": c.missing,
        "k_missing": w.numeric["k"].missing,
        "sample": values.tolist(),
        "keys": keys.tolist(),
    }


@settings(max_examples=60, deadline=None)
@given(values, categories, values, categories, values, categories)
def test_merge_is_associative_and_commutative(x1, c1, x2, c2, x3, c3) -> None:
    a, b, c = window(x1, c1, 1), window(x2, c2, 2), window(x3, c3, 3)
    left = a.merge(b).merge(c)
    right = a.merge(b.merge(c))
    assert exact_parts(left) == exact_parts(right)
    assert exact_parts(a.merge(b)) | {"n": 0} == exact_parts(b.merge(a)) | {"n": 0}
    for f in ("x",):  # exact sums: the moments are bit-identical whatever the merge order
        assert (left.numeric[f].mean, left.numeric[f].std) == (right.numeric[f].mean, right.numeric[f].std)
        assert (a.merge(b).numeric[f].mean, a.merge(b).numeric[f].std) == (
            b.merge(a).numeric[f].mean,
            b.merge(a).numeric[f].std,
        )


@settings(max_examples=60, deadline=None)
@given(values, categories, st.data())
def test_split_then_merged_equals_the_whole(xs, cs, data) -> None:
    whole = window(xs, cs, 7)
    cut_x = data.draw(st.integers(0, len(xs)))
    cut_c = data.draw(st.integers(0, len(cs)))
    first = WindowProfile.empty(HYPO_REF, seed=7, sample_size=16)
    first.update({"x": np.array(xs[:cut_x], dtype=float)}, {})
    first.update({}, {"c": cs[:cut_c]})
    second = WindowProfile.empty(HYPO_REF, seed=8, sample_size=16)
    second.update({"x": np.array(xs[cut_x:], dtype=float)}, {})
    second.update({}, {"c": cs[cut_c:]})
    merged = first.merge(second)
    expected, got = exact_parts(whole), exact_parts(merged)
    for key in ("sample", "keys"):  # the sample is statistically, not bit-for-bit, the same
        expected.pop(key), got.pop(key)
    assert got == expected
    assert merged.numeric["x"].sample.values.size == min(16, whole.numeric["x"].count)
    if whole.numeric["x"].count:
        finite = np.array([v for v in xs if v == v])
        assert merged.numeric["x"].mean == pytest.approx(finite.mean(), rel=1e-9, abs=1e-6)
        assert merged.numeric["x"].std == pytest.approx(finite.std(), rel=1e-6, abs=1e-4)


def test_merge_refuses_windows_of_another_reference() -> None:
    a = WindowProfile.empty(make_reference(), seed=1)
    other = make_reference(seed=1)
    other.model_version = "9"
    with pytest.raises(ValueError, match="different references"):
        a.merge(WindowProfile.empty(other, seed=1))


def test_stable_seed_is_stable_and_non_negative() -> None:
    # A fixed value: the same in every process and every run.
    assert stable_seed("credit", "3", "x", 0) == stable_seed("credit", "3", "x", 0)
    assert 0 <= stable_seed(-1) < 2**63
    assert WindowProfile.empty(make_reference(n=100), seed=-5).seed == (-5) % 2**64


# ------------------------------------------------------------ the fast paths give what the plain ones give


@pytest.mark.parametrize("n", [0, 1, 63, 64, 5_000])
def test_bin_counts_equal_bincount_of_searchsorted(n) -> None:
    rng = np.random.default_rng(n)
    ref = NumericReference.build("x", rng.poisson(3, 2_000).astype(float), bins=10, sample_size=100, seed=0)
    # values on the edges, just beside them, beyond both ends, and -0.0 next to 0.0
    pool = np.concatenate(
        [
            ref.edges,
            np.nextafter(ref.edges, -np.inf),
            np.nextafter(ref.edges, np.inf),
            [-1e300, 1e300, -0.0, 0.0],
            rng.normal(3, 3, 50),
        ]
    )
    v = rng.choice(pool, n)
    want = np.bincount(np.searchsorted(ref.cuts, v, side="right"), minlength=ref.n_bins)
    got = bin_counts(ref.cuts, v)
    assert got.dtype == np.int64 and got.tolist() == want.tolist()


def _bottom_k_by_sorting(values: np.ndarray, keys: np.ndarray, k: int) -> tuple[list, list]:
    """The k smallest (key, value) pairs, ties of keys to the smaller values, in their original order."""
    order = np.lexsort((values, keys))[:k]
    keep = np.sort(order)
    return values[keep].tolist(), keys[keep].tolist()


@pytest.mark.parametrize("seed", range(3))
def test_bottom_k_of_a_large_offer_is_the_k_smallest_keys_in_order(seed) -> None:
    rng = np.random.default_rng(seed)
    for n, k in [(50_000, 1_000), (4_000, 1_000), (3_999, 1_000), (10_000, 7)]:
        values = rng.normal(size=n)
        keys = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
        if seed == 2:  # windows that share a seed: many equal keys
            keys = rng.choice(keys[:50], n)
        s = BottomKSample(k)
        s.offer(values, keys)
        assert (s.values.tolist(), s.keys.tolist()) == _bottom_k_by_sorting(values, keys, k)
        assert not np.shares_memory(s.values, values)
    # keys crowded at the top of the range: the cheap bound leaves fewer than k, so every key is used
    keys = np.uint64(2**64 - 1) - rng.integers(0, 10**6, 8_000).astype(np.uint64)
    values = rng.normal(size=8_000)
    s = BottomKSample(500)
    s.offer(values, keys)
    assert (s.values.tolist(), s.keys.tolist()) == _bottom_k_by_sorting(values, keys, 500)


def test_summary_quantiles_are_numpys_for_samples_of_any_sizes() -> None:
    ref = make_reference()
    rng = np.random.default_rng(4)
    w = WindowProfile.empty(ref, seed=3, sample_size=300)
    x = rng.normal(10, 2, 2_000)
    w.update({"x": x, "k": np.full(2_000, np.nan)}, {}, rng.random(2_000))
    w.update({"k": rng.poisson(2, 40).astype(float)}, {}, n=40)  # a sample of another size
    rows = {r["feature"]: r for r in w.summary_rows()}
    for f in ("x", "k", PREDICTION_FEATURE):
        want = np.quantile(w.numeric[f].sample.values, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist()
        assert rows[f]["quantiles"] == want  # exactly: same numbers, same rounding
    assert w.numeric["k"].sample.values.size == 40 and w.numeric["x"].sample.values.size == 300
    empty = WindowProfile.empty(ref, seed=3)
    empty.update({}, {"c": ["a"]})
    assert all(r["quantiles"] == [] for r in empty.summary_rows())


# ----------------------------------------------------------------------------- the stacked update, bit for bit


def _wide_reference() -> ReferenceProfile:
    rng = np.random.default_rng(21)
    n = 3_000
    return ReferenceProfile.build(
        "wide",
        "1",
        numeric={
            "normal": rng.normal(5, 2, n),
            "skewed": rng.lognormal(0, 1, n),
            "counts": rng.poisson(1.5, n).astype(float),  # few distinct edges, many ties
            "zeros": np.where(rng.random(n) < 0.5, -0.0, 0.0) + rng.integers(-1, 2, n),
            "wide": rng.normal(size=n) * 10.0 ** rng.uniform(-6, 6, n),
            "gappy": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(-3, 3, n)),
        },
        categorical={"c": rng.choice(["a", "b", "c"], n).tolist()},
        predictions=rng.random(n),
    )


WIDE_REF = _wide_reference()
COLUMN_KINDS = ("plain", "plain", "plain", "some_nan", "all_nan", "absent", "ties", "signed_zeros", "magnitudes")


def _column(kind: str, n: int, rng: np.random.Generator) -> np.ndarray | None:
    x = rng.normal(5, 3, n)
    if kind == "some_nan":
        x[rng.random(n) < 0.3] = np.nan
    elif kind == "all_nan":
        x[:] = np.nan
    elif kind == "ties":
        x = np.round(x)
    elif kind == "signed_zeros":
        x = np.where(rng.random(n) < 0.5, -0.0, 0.0) + rng.integers(-1, 2, n) * (rng.random(n) < 0.3)
    elif kind == "magnitudes":
        x = x * 10.0 ** rng.uniform(-8, 8, n)
    return None if kind == "absent" else x


@st.composite
def wide_batches(draw) -> list[tuple[dict[str, np.ndarray], np.ndarray | None, int]]:
    """Batches for WIDE_REF: tiny to larger than the sample, each column complete, gappy, all NaN or absent."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    sizes = draw(
        st.lists(
            st.sampled_from([0, 1, 2, 3, 17, 63, 64, 65, 300, 1_000, 4_095, 4_096, 6_000, 20_000]),
            min_size=1,
            max_size=6,
        )
    )
    batches = []
    for n in sizes:
        kinds = draw(st.lists(st.sampled_from(COLUMN_KINDS), min_size=7, max_size=7))
        columns = {f: _column(kind, n, rng) for f, kind in zip(list(WIDE_REF.numeric), kinds)}
        predictions = columns.pop(PREDICTION_FEATURE)
        batches.append(({f: x for f, x in columns.items() if x is not None}, predictions, n))
    return batches


def exact_numeric(w) -> tuple:
    """Everything a numeric window holds, floats by their bits (``-0.0`` differs from ``0.0``)."""
    values, keys = w.sample.canonical()
    bits = [None if v is None else float(v).hex() for v in (w.mean, w.std, w.min, w.max)] + [w.total, w.squares]
    return (w.counts.tolist(), w.missing, w.count, *bits, [v.hex() for v in values.tolist()], keys.tolist())


@settings(max_examples=60, deadline=None)
@given(wide_batches(), st.sampled_from([1, 5, 16, 1_000]), st.integers(0, 2**64 - 1))
def test_stacked_update_equals_feature_by_feature_updates(batches, sample_size, seed) -> None:
    stacked = WindowProfile.empty(WIDE_REF, seed=seed, sample_size=sample_size)
    plain = WindowProfile.empty(WIDE_REF, seed=seed, sample_size=sample_size)
    for numeric, predictions, n in batches:
        stacked.update(numeric, {}, predictions, n=n)
        # The plain way: every column through NumericWindow.update on its own.
        columns = numeric if predictions is None else {**numeric, PREDICTION_FEATURE: predictions}
        for f, w in plain.numeric.items():
            if f in columns:
                w.update(columns[f])
            elif f != PREDICTION_FEATURE:
                w.missing += n
    for f in WIDE_REF.numeric:
        assert exact_numeric(stacked.numeric[f]) == exact_numeric(plain.numeric[f]), f
    # and against numpy on all the finite values at once, in stream order
    for f, w in stacked.numeric.items():
        columns = [b[0].get(f) if f != PREDICTION_FEATURE else b[1] for b in batches]
        x = np.concatenate([c for c in columns if c is not None] or [np.empty(0)])
        v = x[~np.isnan(x)]
        cuts = WIDE_REF.numeric[f].cuts
        want_counts = np.bincount(np.searchsorted(cuts, v, side="right"), minlength=cuts.size + 1)
        assert w.counts.tolist() == want_counts.tolist()
        assert (w.count, w.min, w.max) == (v.size, v.min() if v.size else None, v.max() if v.size else None)
        want = _bottom_k_by_sorting(v, sample_keys(w.base, 0, v.size), sample_size)
        assert (w.sample.values.tolist(), w.sample.keys.tolist()) == want


def test_stacked_update_refuses_infinity_as_feature_by_feature_does() -> None:
    w = WindowProfile.empty(WIDE_REF, seed=3, sample_size=8)
    w.update({"normal": np.arange(10.0)}, {}, np.full(10, 0.5))
    before = w.to_dict()
    clean = {f: np.ones(4) for f in WIDE_REF.numeric if f != PREDICTION_FEATURE}
    # the first bad column in the reference's order is named, whether the others hold NaN or not
    for bad, message in [
        ({"skewed": [1.0, np.inf, 2.0, 3.0]}, "'skewed'"),
        ({"wide": [np.nan, -np.inf, 2.0, 3.0], "gappy": [np.inf, 0, 0, 0]}, "'wide'"),
        ({"gappy": [np.nan, 1.0, 1.0, 1.0], "zeros": [0.0, 0.0, np.inf, np.nan]}, "'zeros'"),
    ]:
        with pytest.raises(ValueError, match=f"numeric feature {message} holds infinite values"):
            w.update({**clean, **{f: np.array(x) for f, x in bad.items()}}, {}, np.ones(4))
        assert w.to_dict() == before
    with pytest.raises(ValueError, match=f"{PREDICTION_FEATURE!r} holds infinite values"):
        w.update(clean, {}, np.array([0.0, 1.0, np.inf, 2.0]))
    assert w.to_dict() == before


def test_update_keeps_no_reference_to_the_callers_arrays() -> None:
    rng = np.random.default_rng(8)
    batches = [{f: rng.normal(size=700) for f in WIDE_REF.numeric if f != PREDICTION_FEATURE} for _ in range(6)]
    reused = WindowProfile.empty(WIDE_REF, seed=4, sample_size=50)
    fresh = WindowProfile.empty(WIDE_REF, seed=4, sample_size=50)
    for batch in batches:
        reused.update(batch, {})
        fresh.update({f: x.copy() for f, x in batch.items()}, {})
        for x in batch.values():
            x[:] = 1e9  # the caller reuses its buffers
    assert reused.to_dict() == fresh.to_dict()


@pytest.mark.parametrize("n", [1, 63, 64, 4_095, 4_096, 5_000])
def test_bin_counts_rows_equal_bincount_of_searchsorted(n) -> None:
    rng = np.random.default_rng(n)
    refs = [r for f, r in WIDE_REF.numeric.items()]
    pool = np.concatenate(
        [np.concatenate([r.edges, np.nextafter(r.edges, -np.inf), np.nextafter(r.edges, np.inf)]) for r in refs]
        + [[-1e300, 1e300, -0.0, 0.0]]
    )
    values = rng.choice(pool, (len(refs), n))
    got = bin_counts_rows([r.cuts for r in refs], values)
    for r, row, counts in zip(refs, values, got):
        want = np.bincount(np.searchsorted(r.cuts, row, side="right"), minlength=r.n_bins)
        assert counts.dtype == np.int64 and counts.tolist() == want.tolist()


@pytest.mark.parametrize("ties", [False, True])
def test_queued_offers_give_the_bottom_k_of_everything_offered(ties) -> None:
    rng = np.random.default_rng(ties)
    for k in (1, 7, 100):
        sample, entrants = BottomKSample(k), BottomKSample(k)
        offered_values, offered_keys = [], []
        for _ in range(60):
            n = int(rng.choice([0, 1, 5, k, 3 * k, 9 * k]))
            values = np.round(rng.normal(size=n), 1) if ties else rng.normal(size=n)
            keys = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
            if ties:  # windows that share a seed: equal keys
                keys = rng.integers(0, 3 * k, n).astype(np.uint64)
            offered_values.append(values.copy())
            offered_keys.append(keys.copy())
            sample.offer(values, keys)
            entering = keys <= entrants.entry_bound  # what a stacked update selects for many samples at once
            entrants.offer_entrants(values[entering], keys[entering])
            values[:] = 99.0  # the caller's arrays are its own again
            if rng.random() < 0.2:  # a read in between settles the queue early
                want = _bottom_k_by_sorting(np.concatenate(offered_values), np.concatenate(offered_keys), k)
                assert (sample.values.tolist(), sample.keys.tolist()) == want
        want = _bottom_k_by_sorting(np.concatenate(offered_values), np.concatenate(offered_keys), k)
        assert (sample.values.tolist(), sample.keys.tolist()) == want
        assert entrants.keys.tolist() == want[1] and entrants.values.tolist() == want[0]  # keys read first
        assert (sample.copy().values.tolist(), sample.merged(entrants).values.size) == (want[0], len(want[0]))


def test_a_sparse_window_holds_samples_as_large_as_what_it_has_seen() -> None:
    # a quiet model's window does not reserve its samples' capacity: each numeric sample holds the
    # values seen so far (16 bytes each, value and key), in own arrays, and the same values as a
    # window given all the values at once (bottom-k by key)
    import tracemalloc

    rng = np.random.default_rng(4)
    ref = ReferenceProfile.build("m", "1", {f"f{i}": rng.normal(size=500) for i in range(30)}, {}, rng.random(500))
    tracemalloc.start()
    window = WindowProfile.empty(ref, seed=9, sample_size=1_000)
    empty_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert empty_bytes < 31 * 1_024  # bin counts and bookkeeping, no sample arrays
    batches = [{f: rng.normal(size=4) for f in ref.numeric if f != "__prediction__"} for _ in range(5)]
    for b in batches:
        window.update(b, {}, None)
    whole = WindowProfile.empty(ref, seed=9, sample_size=1_000)
    whole.update({f: np.concatenate([b[f] for b in batches]) for f in batches[0]}, {}, None)
    for f, w in window.numeric.items():
        if f == "__prediction__":
            assert w.sample.values.size == 0
            continue
        assert w.sample.values.nbytes + w.sample.keys.nbytes == 20 * 16
        assert w.sample.values.base is None
        assert [a.tolist() for a in w.sample.canonical()] == [a.tolist() for a in whole.numeric[f].sample.canonical()]
