"""Reference and window profiles: counts against numpy, merge laws, binned quantiles, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from driftline.streams.core import metrics
from driftline.streams.core.binning import bin_counts, bin_counts_rows
from driftline.streams.core.packing import pack_array
from driftline.streams.core.reference import CategoricalReference, NumericReference, ReferenceProfile
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.window_profile import SUMMARY_QUANTILES, PendingMoments, WindowProfile
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
    # the summary of a uniform sample of 5,000 values drawn without replacement: the in-bin octiles
    # and the moment kurtosis, against scipy
    sample = np.sort(np.random.default_rng(stable_seed(3, "reference", "x")).choice(v, 5_000, replace=False))
    assert ref.shape_of == 5_000 and ref.shape.shape == (3, 10, metrics.INBIN_STEPS + 1)
    np.testing.assert_array_equal(ref.shape, metrics.inbin_shape(ref.cuts, sample))
    assert ref.kurtosis == pytest.approx(stats.kurtosis(sample, fisher=False), rel=1e-12)
    for j in range(10):  # each bin's octiles are its sample values' inverted-CDF quantiles
        inside = sample[(sample >= ref.cuts[j]) & (sample < ref.cuts[j + 1])]
        want = np.quantile(inside, np.arange(9) / 8, method="inverted_cdf")
        np.testing.assert_array_equal(ref.shape[0, j], want)


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
    np.testing.assert_array_equal(again.numeric["x"].shape, ref.numeric["x"].shape)
    assert again.numeric["x"].kurtosis == ref.numeric["x"].kurtosis
    assert '"sample"' not in json.dumps(d["features"])  # the summary, not the 5,000 values
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


def test_a_reference_registered_with_its_sample_loads_as_the_same_summary() -> None:
    # what to_dict wrote before the summary replaced the sample: the sorted sample itself
    rng = np.random.default_rng(6)
    ref = ReferenceProfile.build("m", "1", {"x": rng.lognormal(size=8_000)}, {}, rng.random(8_000))
    d = ref.to_dict()
    for feature in d["features"]:
        sample = np.sort(rng.choice(rng.lognormal(size=8_000), ref.sample_size, replace=False))
        for key in ("kurtosis", "shape", "shape_of"):
            del feature[key]
        feature["sample"] = pack_array(sample, "<f8")
        old = NumericReference.from_dict(feature)
        assert old.shape_of == sample.size and old.kurtosis == pytest.approx(stats.kurtosis(sample, fisher=False))
        np.testing.assert_array_equal(old.shape, metrics.inbin_shape(old.cuts, sample))
    loaded = ReferenceProfile.from_dict(json_round_trip(d))
    assert '"sample"' not in json.dumps(loaded.to_dict()) and loaded.numeric["x"].count == 8_000


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
    # binned quantiles of a window unlike its reference (see test_binned_quantiles_against_numpy)
    tolerance = UNLIKE_REFERENCE * ref.numeric["x"].std
    assert row["quantiles"] == pytest.approx(np.quantile(x, SUMMARY_QUANTILES).tolist(), abs=tolerance)
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


# ----------------------------------------------------------------------------- merge laws (hypothesis)

values = st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.just(float("nan"))), max_size=60)
categories = st.lists(st.one_of(st.sampled_from(["a", "b", "c", "d", "new"]), st.none()), max_size=60)
HYPO_REF = make_reference(n=1_000, seed=9)


def window(xs: list[float], cs: list[str | None], seed: int) -> WindowProfile:
    w = WindowProfile.empty(HYPO_REF, seed=seed)
    w.update({"x": np.array(xs, dtype=float)}, {})
    w.update({}, {"c": cs})
    return w


def exact_parts(w: WindowProfile) -> dict:
    x, c = w.numeric["x"], w.categorical["c"]
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
        "quantiles": [r["quantiles"] for r in w.summary_rows()],
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
    first = WindowProfile.empty(HYPO_REF, seed=7)
    first.update({"x": np.array(xs[:cut_x], dtype=float)}, {})
    first.update({}, {"c": cs[:cut_c]})
    second = WindowProfile.empty(HYPO_REF, seed=8)
    second.update({"x": np.array(xs[cut_x:], dtype=float)}, {})
    second.update({}, {"c": cs[cut_c:]})
    merged = first.merge(second)
    assert exact_parts(merged) == exact_parts(whole)  # summary rows included: no sample left to differ
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
    bits = [None if v is None else float(v).hex() for v in (w.mean, w.std, w.min, w.max)] + [w.total, w.squares]
    return (w.counts.tolist(), w.missing, w.count, *bits)


@settings(max_examples=60, deadline=None)
@given(wide_batches(), st.integers(0, 2**64 - 1))
def test_stacked_update_equals_feature_by_feature_updates(batches, seed) -> None:
    stacked = WindowProfile.empty(WIDE_REF, seed=seed)
    plain = WindowProfile.empty(WIDE_REF, seed=seed)
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


def test_stacked_update_refuses_infinity_as_feature_by_feature_does() -> None:
    w = WindowProfile.empty(WIDE_REF, seed=3)
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
    reused = WindowProfile.empty(WIDE_REF, seed=4)
    fresh = WindowProfile.empty(WIDE_REF, seed=4)
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


def test_a_window_holds_no_values_whatever_it_has_seen() -> None:
    # only bin counts and bookkeeping: as small after 5 batches as when empty
    import tracemalloc

    rng = np.random.default_rng(4)
    ref = ReferenceProfile.build("m", "1", {f"f{i}": rng.normal(size=500) for i in range(30)}, {}, rng.random(500))
    batches = [{f: rng.normal(size=400) for f in ref.numeric if f != PREDICTION_FEATURE} for _ in range(5)]
    tracemalloc.start()
    window = WindowProfile.empty(ref, seed=9)
    empty_bytes = tracemalloc.get_traced_memory()[0]
    for b in batches:
        window.update(b, {}, None)
    busy_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert empty_bytes < 31 * 1_024 and busy_bytes < 31 * 1_024
    assert window.numeric["f0"].count == 2_000


def test_a_format_2_window_with_its_sample_still_loads() -> None:
    ref = make_reference()
    w = WindowProfile.empty(ref, seed=5)
    w.update({"x": np.random.default_rng(1).normal(10, 2, 50)}, {"c": ["a"] * 50})
    old = json_round_trip(w.to_dict()) | {"format": 2, "sample_size": 1_000}
    for f in old["numeric"].values():  # what a format-2 window persisted beside its counts
        f |= {"sample_capacity": 1_000, "sample": pack_array(np.ones(3), "<f8"), "keys": pack_array(np.ones(3), "<u8")}
    assert WindowProfile.from_dict(old, ref).to_dict() == w.to_dict()


# the largest difference from numpy's quantiles (linear, of every value), in reference standard deviations:
# windows like their reference of at least 1,000 values, and of 10,000; windows whose in-bin shape is not the
# reference's (shifted and rescaled) are off by up to this in the wide tail bins
LIKE_REFERENCE_1K, LIKE_REFERENCE_10K, UNLIKE_REFERENCE = 0.15, 0.075, 0.8


@pytest.mark.parametrize("seed", range(5))
def test_binned_quantiles_against_numpy(seed) -> None:
    """The window_profiles quantiles: the binned CDF (exact bin counts, spread inside each bin like the
    reference's in-bin octiles, open bins stretched to the window's minimum and maximum) read at p5 ... p95."""
    rng = np.random.default_rng(seed)
    normal = ReferenceProfile.build("m", "1", {"x": rng.normal(10, 2, 20_000)}, {})
    skewed = ReferenceProfile.build("m", "1", {"x": rng.lognormal(0, 1, 20_000)}, {})
    discrete = ReferenceProfile.build("m", "1", {"x": rng.poisson(3, 20_000).astype(float)}, {})

    def error(ref: ReferenceProfile, x: np.ndarray, **how) -> float:
        w = WindowProfile.empty(ref, seed=seed)
        for part in np.array_split(x, 3):
            w.update({"x": part}, {})
        got = np.array(next(r for r in w.summary_rows() if r["feature"] == "x")["quantiles"])
        assert np.all(np.diff(got) >= 0) and x.min() <= got[0] and got[-1] <= x.max()
        return float(np.max(np.abs(got - np.quantile(x, SUMMARY_QUANTILES, **how))) / ref.numeric["x"].std)

    assert error(normal, rng.normal(10, 2, 1_000)) <= LIKE_REFERENCE_1K
    assert error(normal, rng.normal(10, 2, 10_000)) <= LIKE_REFERENCE_10K
    assert error(skewed, rng.lognormal(0, 1, 10_000)) <= 2 * LIKE_REFERENCE_10K
    assert error(normal, rng.normal(11, 2.6, 10_000)) <= UNLIKE_REFERENCE
    assert error(skewed, rng.lognormal(0.3, 0.8, 10_000)) <= UNLIKE_REFERENCE
    # a discrete feature: numpy's inverted-CDF quantiles, or a neighbouring value where a level
    # falls exactly on a jump (the shares are rounded)
    x = rng.poisson(3, 1_000).astype(float)
    assert error(discrete, x, method="inverted_cdf") * discrete.numeric["x"].std <= 1.0
    # a window of a single value: that value
    w = WindowProfile.empty(normal, seed=seed)
    w.update({"x": np.full(7, 12.5)}, {})
    assert next(r for r in w.summary_rows() if r["feature"] == "x")["quantiles"] == [12.5] * 5


def test_pending_moments_give_the_same_windows_as_summing_each_batch() -> None:
    """Many windows fed short batches whose exact sums wait in one queue (summed together, padded with
    zeros, at a read or a flush) equal windows that sum each batch at once, field for field."""
    rng = np.random.default_rng(5)
    ref = ReferenceProfile.build(
        "m", "1", {f"x{i}": rng.normal(size=500) for i in range(5)}, {"c": ["a", "b"] * 250}, rng.random(500)
    )
    pending = PendingMoments()
    waited = [WindowProfile.empty(ref, seed=i) for i in range(6)]
    direct = [WindowProfile.empty(ref, seed=i) for i in range(6)]
    for step in range(40):
        j = int(rng.integers(6))
        n = int(rng.choice([1, 3, 17, 200, 1_024, 1_500]))
        numeric = {f"x{i}": rng.normal(size=n) * 10.0 ** rng.integers(-300, 300) for i in range(5)}
        numeric["x1"][rng.random(n) < 0.2] = np.nan  # a column that goes one at a time
        if step % 7 == 0:
            numeric["x2"][0] = 1e-310  # subnormal: these rows go to the exponent buckets
        categorical = {"c": rng.choice(["a", "b", "z"], n).tolist()}
        scores = rng.random(n)
        waited[j].update(numeric, categorical, scores, pending=pending)
        direct[j].update(numeric, categorical, scores)
        if step == 20:
            # a read settles every waiting sum; the rest keep waiting for the flush
            assert waited[j].numeric["x0"].total == direct[j].numeric["x0"].total
            assert pending.values == 0
    assert pending.values > 0
    pending.flush()
    assert pending.values == 0
    assert [w.to_dict() for w in waited] == [w.to_dict() for w in direct]
    assert all(w.numeric[f].pending is None for w in waited for f in w.numeric)
