"""Bit-identical replays (issue 11, finding 12): every value written is the same whatever the batching,
order, split and merge of the same rows, and equals the correctly rounded exact value."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.streams.core.batches import take_rows
from driftline.streams.core.exactsum import ExactSum, group_ratios, group_sums, population_std, row_moments
from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.outcomes import PerformanceOutcome, WindowOutcome
from driftline.streams.core.performance import PerformanceWindow, compute_performance
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

finite = st.floats(allow_nan=False, allow_infinity=False)


def exact_mean(values: list[float]) -> float:
    return float(sum(map(Fraction, values)) / len(values))


def exact_std(values: list[float]) -> float:
    n = len(values)
    mean = sum(map(Fraction, values)) / n
    return math.sqrt(float(sum((Fraction(v) - mean) ** 2 for v in values) / n))


@settings(max_examples=200, deadline=None)
@given(st.lists(finite, max_size=60))
def test_sums_are_exact_against_fractions_and_fsum(values: list[float]) -> None:
    total = ExactSum.of(np.array(values, dtype=np.float64))
    assert total.fraction() == sum(map(Fraction, values))
    try:
        assert float(total) == math.fsum(values)
    except OverflowError:  # fsum gives up where the exact sum is beyond float64: it rounds to infinity
        assert abs(float(total)) == math.inf or abs(total.fraction()) < Fraction(2) ** 1024
    sums, squares = row_moments(np.array([values], dtype=np.float64).reshape(1, -1))
    assert sums[0] == total
    assert squares[0].fraction() == sum(Fraction(v) ** 2 for v in values)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-1e150, 1e150, allow_nan=False), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_mean_and_std_are_correctly_rounded_and_order_free(values: list[float], rnd) -> None:
    x = np.array(values)
    sums, squares = row_moments(x[None, :])
    shuffled = values[:]
    rnd.shuffle(shuffled)
    sums2, squares2 = row_moments(np.array(shuffled)[None, :])
    assert (sums[0], squares[0]) == (sums2[0], squares2[0])
    assert sums[0].ratio(len(values)) == exact_mean(values)
    assert population_std(sums[0], squares[0], len(values)) == exact_std(values)


def test_a_hand_worked_example() -> None:
    # 0.1 + 0.2 + 0.3 is 0.6000000000000001 in float64 summed left to right, 0.6 right to left;
    # the exact sum of the three doubles is 0.6000000000000000055511151231257827..., nearest double 0.6
    x = np.array([0.1, 0.2, 0.3])
    assert (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3)
    total = ExactSum.of(x)
    assert float(total) == 0.6 == math.fsum([0.1, 0.2, 0.3])
    assert total.ratio(3) == float((Fraction(0.1) + Fraction(0.2) + Fraction(0.3)) / 3) == 0.2
    # 1e16 + 1 - 1e16: the float sum loses the 1
    assert float(ExactSum.of(np.array([1e16, 1.0, -1e16]))) == 1.0
    # std of 2, 4, 4, 4, 5, 5, 7, 9 is 2 exactly
    y = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    (s,), (q,) = row_moments(y[None, :])
    assert population_std(s, q, 8) == 2.0


def test_extremes_do_not_overflow_or_lose_the_small() -> None:
    x = np.array([1.7e308, 1.7e308, -1.7e308, 5e-324, -2.2250738585072014e-308])
    total = ExactSum.of(x)
    assert total.fraction() == sum(map(Fraction, x.tolist()))
    assert float(ExactSum.of(np.array([1.7e308, 1.7e308]))) == math.inf
    (_,), (q,) = row_moments(x[None, :])
    assert q.fraction() == sum(Fraction(v) ** 2 for v in x.tolist())


def test_text_form_round_trips() -> None:
    for values in ([], [0.1], [-3.5, 1e-300, 7e200]):
        s = ExactSum.of(np.array(values))
        assert ExactSum.from_text(s.to_text()) == s


def test_group_sums_match_fractions_per_group() -> None:
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 5, 3_000)
    values = rng.normal(size=3_000) * 10.0 ** rng.integers(-20, 20, 3_000)
    for g, s in enumerate(group_sums(codes, values, 6)):
        assert s.fraction() == sum(map(Fraction, values[codes == g].tolist()))
    counts = np.bincount(codes, minlength=6)
    ratios = group_ratios(codes, values, counts)
    assert ratios[:5].tolist() == [exact_mean(values[codes == g].tolist()) for g in range(5)]
    assert math.isnan(ratios[5])


# ------------------------------------------------------------------------------------- profiles


REF = ReferenceProfile.build(
    "m",
    "1",
    {f"x{i}": np.random.default_rng(i).normal(size=2_000) for i in range(5)},
    {"c": ["a", "b"] * 1_000},
    np.random.default_rng(9).random(2_000),
)


def columns(n: int, seed: int) -> tuple[dict, dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = {f"x{i}": rng.normal(3.0, 2.0, n) * 10.0 ** rng.uniform(-3, 3, n) for i in range(5)}
    numeric["x1"][rng.random(n) < 0.2] = np.nan
    return numeric, {"c": rng.choice(["a", "b", "z"], n).tolist()}, rng.random(n)


def moments(w: WindowProfile) -> list[tuple]:
    return [
        (r["feature"], r["count"], r["missing"], r["mean"], r["std"], r["min"], r["max"], r["histogram"])
        for r in w.summary_rows()
    ]


def cut(n: int, sizes_seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(sizes_seed)
    bounds = np.unique(np.concatenate([[0, n], rng.integers(0, n, rng.integers(0, 40))]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))


def test_profile_moments_are_bit_identical_for_any_batching_order_split_and_merge() -> None:
    n = 20_000
    numeric, categorical, predictions = columns(n, 1)
    whole = WindowProfile.empty(REF, seed=1)
    whole.update(numeric, categorical, predictions)
    expected = moments(whole)
    # against fractions: the mean and std of x0 are the correctly rounded exact values
    x0 = numeric["x0"].tolist()
    assert whole.numeric["x0"].mean == exact_mean(x0) and whole.numeric["x0"].std == exact_std(x0)
    rng = np.random.default_rng(2)
    for trial in range(12):
        order = rng.permutation(n) if trial % 2 else np.arange(n)
        parts = []
        for lo, hi in cut(n, trial):
            rows = order[lo:hi]
            p = WindowProfile.empty(REF, seed=trial)
            p.update(
                {f: x[rows] for f, x in numeric.items()},
                {"c": [categorical["c"][i] for i in rows.tolist()]},
                predictions[rows],
            )
            # the persistence path: a profile written out and read back goes on as if never stored
            parts.append(WindowProfile.from_dict(p.to_dict(), REF) if lo % 2 else p)
        rng.shuffle(parts)
        merged = parts[0]
        for p in parts[1:]:
            merged = merged.merge(p) if trial % 3 else p.merge(merged)
        assert moments(merged) == expected
    # and a single profile fed batch after batch, in a shuffled order of rows
    fed = WindowProfile.empty(REF, seed=5)
    order = rng.permutation(n)
    for lo, hi in cut(n, 99):
        rows = order[lo:hi]
        fed.update(
            {f: x[rows] for f, x in numeric.items()},
            {"c": [categorical["c"][i] for i in rows.tolist()]},
            predictions[rows],
        )
    assert moments(fed) == expected


# ---------------------------------------------------------------------------------- performance


def test_performance_is_bit_identical_for_any_batching_and_order() -> None:
    rng = np.random.default_rng(4)
    n = 5_000
    y = rng.integers(0, 2, n)
    score = np.clip(rng.beta(2, 2, n) + 0.2 * y - 0.1, 0, 1)
    attrs = {"region": rng.choice(["eu", "us", "apac"], n)}
    expected = compute_performance(y, score, None, attrs, task="classification")
    ll = {r.metric: r.value for r in expected if r.segment == ""}
    # against fractions: log loss and Brier are the correctly rounded means of the per-row values
    clipped = np.clip(score, 1e-15, 1 - 1e-15)
    loss = -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))
    assert ll["log_loss"] == exact_mean(loss.tolist())
    assert ll["brier"] == exact_mean(((score - y) ** 2).tolist())
    for trial in range(10):
        order = rng.permutation(n)
        windows = []
        for lo, hi in cut(n, 100 + trial):
            rows = order[lo:hi]
            w = PerformanceWindow(task="classification")
            w.update(y[rows], score[rows], None, {"region": attrs["region"][rows]})
            windows.append(w)
        merged = windows[0]
        for w in windows[1:]:
            merged = merged.merge(w)
        assert [(r.segment, r.metric, r.value, r.n_labeled) for r in merged.rows()] == [
            (r.segment, r.metric, r.value, r.n_labeled) for r in expected
        ]


def test_regression_errors_are_bit_identical_for_any_order() -> None:
    rng = np.random.default_rng(5)
    y = rng.normal(100, 30, 3_000)
    pred = y + rng.normal(0, 5, 3_000)
    expected = compute_performance(y, pred, None, {}, task="regression")
    shuffled = rng.permutation(3_000)
    assert compute_performance(y[shuffled], pred[shuffled], None, {}, task="regression") == expected
    assert {r.metric: r.value for r in expected}["mae"] == exact_mean(np.abs(pred - y).tolist())


# ------------------------------------------------------------------------------------- monitor


def stream(n: int) -> PredictionBatch:
    rng = np.random.default_rng(8)
    numeric, categorical, predictions = columns(n, 8)
    return PredictionBatch(
        "m",
        "1",
        [f"e{i}" for i in range(n)],
        1_700_000_000_000 + np.arange(n, dtype=np.int64) * 3,
        numeric=numeric,
        categorical=categorical,
        predictions=predictions,
        attributes={"region": rng.choice(["eu", "us"], n).tolist()},
    )


def run(batches: list[PredictionBatch], labels: list[tuple[list[str], np.ndarray, np.ndarray]]) -> list[tuple]:
    monitor = Monitor(lambda m: MonitorSettings(Windowing(5_000), detectors=("adwin",), min_segment_size=1), idle_ms=1)
    monitor.recover("m", "1", None)
    out = []
    for b in batches:
        monitor.ingest(b, REF, source=0, now_ms=0)
        out += monitor.close_due(0)
    for ids, values, times in labels:
        monitor.ingest_labels("m", ids, values.tolist(), times, now_ms=0)
        out += monitor.close_due(0)
    out += monitor.close_due(10**13)
    table = []
    for o in sorted(out, key=lambda o: (type(o).__name__, o.window_start)):
        if isinstance(o, WindowOutcome):
            table.append(
                (
                    o.key,
                    moments(o.profile),
                    [(m.feature, m.metric, m.value, m.p_value) for m in o.drift],
                    o.latency,
                    [(c.detector, c.alarms) for c in o.changes],
                )
            )
        else:
            assert isinstance(o, PerformanceOutcome)
            table.append(
                (
                    o.key,
                    [(r.segment, r.metric, r.value, r.n_labeled) for r in o.rows],
                    [(c.detector, c.alarms) for c in o.changes],
                )
            )
    return table


def test_monitor_outcomes_are_bit_identical_for_any_batching_and_label_order() -> None:
    n = 12_000
    batch = stream(n)
    rng = np.random.default_rng(6)
    ids = np.array(batch.event_ids)
    label_times = batch.event_times + 60_000
    y = (rng.random(n) < batch.predictions).astype(float)

    def labels(order: np.ndarray, sizes_seed: int) -> list:
        return [
            (ids[order[lo:hi]].tolist(), y[order[lo:hi]], label_times[order[lo:hi]]) for lo, hi in cut(n, sizes_seed)
        ]

    in_order = np.arange(n)
    expected = run([batch], labels(in_order, 0))
    assert len(expected) > 10
    for trial in range(4):
        parts = [take_rows(batch, np.arange(lo, hi)) for lo, hi in cut(n, 50 + trial)]
        # the labels of each label window in any order (so that none is late: their windows stay the same)
        window_of = label_times // 5_000
        order = np.concatenate([rng.permutation(np.flatnonzero(window_of == w)) for w in np.unique(window_of)])
        assert run(parts, labels(order, 70 + trial)) == expected


def test_long_rows_and_big_groups_stay_exact() -> None:
    # more terms than one set of float64 buckets may take exactly (2**16): split and merged
    rng = np.random.default_rng(12)
    x = rng.normal(size=140_000) * 10.0 ** rng.integers(-5, 5, 140_000)
    exact = sum(map(Fraction, x.tolist()))
    sums, squares = row_moments(x[None, :])
    assert sums[0].fraction() == exact
    assert squares[0].fraction() == sum(Fraction(v) ** 2 for v in x.tolist())
    assert group_sums(np.zeros(x.size, dtype=np.int64), x, 1)[0].fraction() == exact


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.lists(
            st.one_of(
                st.floats(-1e6, 1e6, allow_nan=False),
                st.sampled_from([0.0, -0.0, 2.0**-449, -(2.0**-451), 1e-300, 2.0**449, 1e140, 3.0]),
                st.floats(-1e-12, 1e-12, allow_nan=False),
            ),
            min_size=3,
            max_size=3,
        ),
        min_size=1,
        max_size=40,
    )
)
def test_extraction_and_buckets_give_the_same_exact_moments(rows: list[list[float]]) -> None:
    # rows (features) of moderate values are summed by extraction, rows with extremes by buckets,
    # in one call: every row must equal the exact sums of its own values
    x = np.array(rows, dtype=np.float64).T.copy()
    sums, squares = row_moments(x)
    for row, s, q in zip(x.tolist(), sums, squares):
        assert s.fraction() == sum(map(Fraction, row))
        assert q.fraction() == sum(Fraction(v) ** 2 for v in row)


def test_extraction_leaves_values_far_below_the_largest_to_the_buckets() -> None:
    # one value 2**-300 beside 1e6: beyond two rounds of extraction, summed exactly all the same
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1e6, (4, 5_000))
    x[0, 17] = 2.0**-300
    x[1, :100] = rng.normal(0.0, 1e-9, 100)
    sums, squares = row_moments(x)
    for row, s, q in zip(x.tolist(), sums, squares):
        assert s.fraction() == sum(map(Fraction, row))
        assert q.fraction() == sum(Fraction(v) ** 2 for v in row)


def test_few_and_many_terms_left_by_extraction_are_summed_alike() -> None:
    # rows whose values far below the largest leave a few terms (summed one Python step each) or more
    # than _FEW_TERMS (summed by buckets) after extraction: either way the exact sums of the row
    rng = np.random.default_rng(31)
    for tiny in (1, 3, 40, 600, 3_000):
        x = rng.normal(0.0, 1e3, (3, 4_000))
        x[0, :tiny] = rng.normal(0.0, 1e-15, tiny)
        x[2, -tiny:] = -(2.0 ** -rng.integers(60, 200, tiny).astype(np.float64))
        sums, squares = row_moments(x)
        for row, s, q in zip(x.tolist(), sums, squares):
            assert s.fraction() == sum(map(Fraction, row))
            assert q.fraction() == sum(Fraction(v) ** 2 for v in row)
