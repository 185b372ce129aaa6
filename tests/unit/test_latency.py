import numpy as np
import pytest

from driftline.streams.core.latency import LatencyWindow

Q = [50, 95, 99]


def as_list(w: LatencyWindow) -> list[float]:
    q = w.quantiles()
    return [q["latency_p50"], q["latency_p95"], q["latency_p99"]]


@pytest.mark.parametrize(
    "values",
    [
        [5.0],
        [3.0, 1.0],
        [10.0, 10.0, 10.0, 200.0],
        list(np.arange(1.0, 101.0)),
        list(np.random.default_rng(3).exponential(20.0, 1024)),
    ],
)
def test_small_windows_are_exact(values):
    w = LatencyWindow().update(np.array(values))
    assert w.is_exact
    assert as_list(w) == pytest.approx(list(np.percentile(values, Q)), rel=1e-12)


def test_hand_worked_percentiles():
    # 1..10: p50 at rank 4.5 -> 5.5; p95 at rank 8.55 -> 9.55; p99 at 8.91 -> 9.91
    w = LatencyWindow().update(np.arange(1.0, 11.0))
    assert as_list(w) == pytest.approx([5.5, 9.55, 9.91])


def test_nan_means_no_latency_and_empty_window_is_nan():
    w = LatencyWindow().update(np.array([np.nan, np.nan]))
    assert w.n == 0 and all(np.isnan(as_list(w)))
    w.update(np.array([np.nan, 4.0]))
    assert w.n == 1 and as_list(w) == [4.0, 4.0, 4.0]


def test_exact_merge_until_limit_then_histogram():
    a = LatencyWindow(exact_limit=10).update(np.arange(1.0, 6.0))
    b = LatencyWindow(exact_limit=10).update(np.arange(6.0, 11.0))
    a.merge(b)
    assert a.is_exact and a.n == 10
    assert as_list(a) == pytest.approx(list(np.percentile(np.arange(1.0, 11.0), Q)))
    a.merge(LatencyWindow(exact_limit=10).update(np.array([11.0])))
    assert not a.is_exact and a.n == 11


def test_histogram_is_within_relative_accuracy_of_the_order_statistics():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.lognormal(3.0, 1.2, 50_000), rng.uniform(0.5, 2.0, 5000)])
    for alpha in (0.01, 0.05):
        w = LatencyWindow(exact_limit=0, relative_accuracy=alpha).update(x)
        got = as_list(w)
        lower = np.percentile(x, Q, method="lower")
        higher = np.percentile(x, Q, method="higher")
        for g, lo, hi in zip(got, lower, higher):
            assert lo * (1 - alpha) - 1e-12 <= g <= hi * (1 + alpha) + 1e-12


def test_histogram_merge_does_not_depend_on_batching():
    rng = np.random.default_rng(11)
    x = rng.gamma(2.0, 30.0, 20_000)
    whole = LatencyWindow(exact_limit=100).update(x)
    parts = [LatencyWindow(exact_limit=100).update(chunk) for chunk in np.array_split(x, 17)]
    merged = LatencyWindow(exact_limit=100)
    for part in reversed(parts):
        merged.merge(part)
    assert merged.n == whole.n == x.size
    assert as_list(merged) == as_list(whole)


def test_values_outside_the_range_report_observed_extremes():
    w = LatencyWindow(exact_limit=0, min_value=1.0, max_value=100.0)
    w.update(np.array([0.0] * 60 + [5.0] * 30 + [1e6] * 10))
    p50, p95, p99 = as_list(w)
    assert p50 == 0.0
    assert p95 == 1e6 and p99 == 1e6
    zeros = LatencyWindow(exact_limit=0).update(np.zeros(100))
    assert as_list(zeros) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [[-1.0], [np.inf], [1.0, -np.inf]])
def test_invalid_latencies_are_rejected(bad):
    with pytest.raises(ValueError, match="latency_ms"):
        LatencyWindow().update(np.array(bad))


def test_merging_different_sketches_is_rejected():
    with pytest.raises(ValueError, match="relative_accuracy"):
        LatencyWindow(relative_accuracy=0.01).merge(LatencyWindow(relative_accuracy=0.02).update(np.ones(3)))
