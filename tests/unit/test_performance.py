import math

import numpy as np
import pytest
from scipy import stats

from driftline.streams.core.performance import (
    PerformanceRow,
    PerformanceWindow,
    compute_performance,
    parse_labels,
    prediction_errors,
)

# Hand-worked example (threshold 0.5):
#   y     1    1    1    0    0    0    1    0
#   s    .9   .8   .4   .6   .3   .3   .3   .1
#   pred  1    1    0    1    0    0    0    0
# TP=2 FN=2 FP=1 TN=3; AUC: 4 + 4 + 3 + (0 + .5 + .5 + 1) = 13 of 16 pairs.
Y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
S = np.array([0.9, 0.8, 0.4, 0.6, 0.3, 0.3, 0.3, 0.1])


def overall(rows: list[PerformanceRow]) -> dict[str, float]:
    return {r.metric: r.value for r in rows if r.segment == ""}


def by(rows, segment, metric):
    [row] = [r for r in rows if r.segment == segment and r.metric == metric]
    return row


def test_hand_worked_classification():
    got = overall(compute_performance(Y, S, None, {}))
    log_loss = (
        -(
            math.log(0.9)
            + math.log(0.8)
            + math.log(0.4)
            + math.log(0.3)
            + math.log(0.4)
            + math.log(0.7)
            + math.log(0.7)
            + math.log(0.9)
        )
        / 8
    )
    assert got == pytest.approx(
        {
            "accuracy": 5 / 8,
            "precision": 2 / 3,
            "recall": 2 / 4,
            "f1": 4 / 7,
            "roc_auc": 13 / 16,
            "log_loss": log_loss,
            "brier": 1.45 / 8,
        }
    )


def test_string_labels_give_the_same_result():
    words = np.array(["yes", "Yes", "TRUE", "no", "false", "0", "1", "n"], dtype=object)
    numbers = overall(compute_performance(Y, S, None, {}))
    assert overall(compute_performance(words, S, None, {})) == pytest.approx(numbers)
    mixed = np.array([1.0, "1", "true", 0, "0.0", False, "1.0", "no"], dtype=object)
    assert overall(compute_performance(mixed, S, None, {})) == pytest.approx(numbers)


def test_parse_labels():
    values, words = parse_labels(np.array(["1", "0", None, "nan", 2.5], dtype=object))
    assert values.tolist()[:2] == [1.0, 0.0] and np.isnan(values[2:4]).all() and values[4] == 2.5
    assert not words
    with pytest.raises(ValueError, match="multiclass"):
        parse_labels(["cat", "dog"])
    with pytest.raises(ValueError, match="infinite"):
        parse_labels(np.array([1.0, np.inf]))


def test_auc_matches_mann_whitney_with_ties():
    rng = np.random.default_rng(5)
    y = (rng.random(2000) < 0.3).astype(int)
    s = np.round(np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1), 1)  # heavy ties
    u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    expected = u / ((y == 1).sum() * (y == 0).sum())
    assert overall(compute_performance(y, s, None, {}))["roc_auc"] == pytest.approx(expected, rel=1e-12)


def test_per_segment_metrics_match_a_segment_by_segment_computation():
    rng = np.random.default_rng(9)
    n = 5000
    region = rng.choice(["eu", "us", "apac", "latam", "mena"], n)
    y = (rng.random(n) < 0.25).astype(float)
    s = np.round(rng.beta(2 + 2 * y, 4 - 2 * y), 2)
    rows = compute_performance(y, s, None, {"region": region})
    aucs = []
    for r in np.unique(region):
        m = region == r
        u = stats.mannwhitneyu(s[m & (y == 1)], s[m & (y == 0)]).statistic
        auc = u / ((m & (y == 1)).sum() * (m & (y == 0)).sum())
        aucs.append(auc)
        assert by(rows, f"region={r}", "roc_auc").value == pytest.approx(auc, rel=1e-12)
        assert by(rows, f"region={r}", "roc_auc").n_labeled == m.sum()
        pred = s[m] >= 0.5
        assert by(rows, f"region={r}", "accuracy").value == pytest.approx(np.mean(pred == y[m]))
        assert by(rows, f"region={r}", "brier").value == pytest.approx(np.mean((s[m] - y[m]) ** 2))
    gap = by(rows, "region=*", "roc_auc_gap")
    assert gap.value == pytest.approx(max(aucs) - min(aucs))
    assert gap.n_labeled == n


def test_gaps_min_segment_size_and_missing_attribute():
    y = np.array([1, 0, 1, 0, 1, 1, 0])
    s = np.array([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.4])
    region = ["eu", "eu", "us", "us", "", "", "asia"]
    rows = compute_performance(y, s, None, {"region": region}, min_segment_size=2)
    segments = {r.segment for r in rows}
    # '' (no attribute) is not a segment; asia has 1 row < min_segment_size
    assert segments == {"", "region=eu", "region=us", "region=*"}
    assert by(rows, "region=eu", "accuracy").value == 1.0
    assert by(rows, "region=us", "accuracy").value == 0.5
    assert by(rows, "region=*", "accuracy_gap").value == 0.5
    assert by(rows, "region=*", "accuracy_gap").n_labeled == 4
    assert by(rows, "", "accuracy").n_labeled == 7
    # one class only in a segment: its roc_auc is undefined and not reported, so no gap either
    rows = compute_performance(
        np.array([1, 1, 0, 1]), np.array([0.9, 0.8, 0.2, 0.7]), None, {"g": ["a", "a", "b", "b"]}, min_segment_size=1
    )
    assert [r.segment for r in rows if r.metric.startswith("roc_auc")] == ["", "g=b"]


def test_predicted_labels_override_the_threshold_and_fall_back_per_row():
    y = np.array([1, 0, 1, 0])
    s = np.array([0.9, 0.8, np.nan, 0.1])
    predicted = [None, "no", "yes", None]  # rows 0 and 3 use the threshold
    rows = compute_performance(y, s, predicted, {})
    assert by(rows, "", "accuracy").value == 1.0 and by(rows, "", "accuracy").n_labeled == 4
    # row 2 has no score: it counts for accuracy but not for the score-based metrics
    assert by(rows, "", "brier").n_labeled == 3
    assert by(rows, "", "brier").value == pytest.approx((0.01 + 0.64 + 0.01) / 3)
    empty = compute_performance(y[[0, 1, 3]], s[[0, 1, 3]], [], {})
    assert by(empty, "", "accuracy").value == pytest.approx(2 / 3)


def test_unlabeled_rows_are_skipped():
    y = np.array(["1", None, "0", "nan"], dtype=object)
    rows = compute_performance(y, np.array([0.7, 0.2, 0.4, 0.9]), None, {})
    assert by(rows, "", "accuracy").value == 1.0 and by(rows, "", "accuracy").n_labeled == 2
    assert compute_performance(np.array([np.nan]), np.array([0.5]), None, {}) == []


def test_regression_hand_worked_and_inferred():
    y = np.array([3.0, -1.0, 2.0, 7.0])
    s = np.array([2.5, 0.0, 2.0, 4.0])
    got = overall(compute_performance(y, s, None, {}))
    assert got == pytest.approx({"mae": (0.5 + 1 + 0 + 3) / 4, "rmse": math.sqrt((0.25 + 1 + 0 + 9) / 4)})
    # string numbers too, and explicit task for a 0/1 regression target
    assert overall(compute_performance(np.array(["3", "-1", "2", "7"]), s, None, {})) == pytest.approx(got)
    zero_one = compute_performance(np.array([0.0, 1.0]), np.array([0.5, 2.0]), None, {}, task="regression")
    assert overall(zero_one) == pytest.approx({"mae": 0.75, "rmse": math.sqrt((0.25 + 1) / 2)})


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match="binary"):
        compute_performance(np.array([0.0, 2.0]), np.array([0.1, 0.2]), None, {}, task="classification")
    with pytest.raises(ValueError, match="must be numbers"):
        compute_performance(np.array(["yes", "2"]), np.array([0.1, 0.2]), None, {}, task="regression")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compute_performance(Y, S * 2, None, {})
    with pytest.raises(ValueError, match="task"):
        compute_performance(Y, S, None, {}, task="ranking")
    with pytest.raises(ValueError, match="attribute 'region'"):
        compute_performance(Y, S, None, {"region": ["eu"]})
    with pytest.raises(ValueError, match="score"):
        compute_performance(Y, S[:3], None, {})
    with pytest.raises(ValueError, match="predicted labels must be binary"):
        compute_performance(Y[:2], S[:2], ["2", "1"], {})


def test_window_merge_equals_one_computation():
    rng = np.random.default_rng(2)
    n = 3000
    y = (rng.random(n) < 0.4).astype(int)
    s = rng.random(n)
    region = rng.choice(["eu", "us"], n)
    channel = rng.choice(["web", "app", "store"], n)
    predicted = np.where(rng.random(n) < 0.5, None, np.where(s > 0.3, "1", "0")).astype(object)
    labels = np.where(y == 1, "yes", "no").astype(object)
    # batch 2 lacks the channel attribute: its rows count as "no channel"
    expected_channel = channel.copy()
    expected_channel[1000:2000] = ""
    expected = compute_performance(labels, s, predicted, {"region": region, "channel": expected_channel})

    a, b, c = PerformanceWindow(), PerformanceWindow(), PerformanceWindow()
    a.update(labels[:1000], s[:1000], predicted[:1000], {"region": region[:1000], "channel": channel[:1000]})
    b.update(labels[1000:2000], s[1000:2000], predicted[1000:2000], {"region": region[1000:2000]})
    c.update(labels[2000:], s[2000:], predicted[2000:], {"region": region[2000:], "channel": channel[2000:]})
    merged = a.merge(b.merge(c))
    assert merged.n == n
    got = merged.rows()
    assert [(r.segment, r.metric, r.n_labeled) for r in got] == [(r.segment, r.metric, r.n_labeled) for r in expected]
    assert [r.value for r in got] == pytest.approx([r.value for r in expected], rel=1e-12)
    assert PerformanceWindow().rows() == []


def test_many_segments_are_fast():
    import time

    rng = np.random.default_rng(0)
    n = 50_000
    y = (rng.random(n) < 0.2).astype(int)
    s = rng.random(n)
    attrs = {"shop": rng.integers(0, 500, n).astype(str), "region": rng.choice(["a", "b", "c"], n)}
    t = time.perf_counter()
    rows = compute_performance(y, s, None, attrs)
    assert time.perf_counter() - t < 1.0
    assert len({r.segment for r in rows}) == 1 + 500 + 3 + 2


def test_prediction_errors_feed_the_change_detectors():
    errors, task = prediction_errors(Y, S, None)
    # preds 1 1 0 1 0 0 0 0 vs y 1 1 1 0 0 0 1 0
    assert task == "classification" and errors.tolist() == [0, 0, 1, 1, 0, 0, 1, 0]
    errors, _ = prediction_errors(
        np.array(["1", None, "0"], dtype=object), np.array([np.nan, 0.9, 0.7]), ["1", None, None]
    )
    assert errors[0] == 0.0 and np.isnan(errors[1]) and errors[2] == 1.0
    errors, task = prediction_errors(np.array([0.0, 1.0]), np.array([0.5, 3.0]), task="regression")
    assert task == "regression" and errors.tolist() == [0.5, 2.0]
    # the accuracy of the rows with an error value is 1 - their mean error
    rng = np.random.default_rng(4)
    y, s = (rng.random(500) < 0.3).astype(int), rng.random(500)
    errors, _ = prediction_errors(y, s)
    assert 1 - errors.mean() == pytest.approx(overall(compute_performance(y, s, None, {}))["accuracy"])


def test_a_windows_error_stream_falls_back_to_the_score_where_a_predicted_label_is_none():
    w = PerformanceWindow()
    # predicted labels 0, none (score 0.9 -> 1), 1, none (score 0.2 -> 0); then a batch without any
    w.update(np.array([1, 1, 0, 1]), np.array([0.9, 0.9, 0.1, 0.2]), ["0", None, "1", None], {})
    w.update(np.array([0, 1]), np.array([0.7, np.nan]), None, {})
    errors, task = w.errors()
    assert task == "classification"
    assert errors[:5].tolist() == [1.0, 0.0, 1.0, 1.0, 1.0] and np.isnan(errors[5])  # no score, no label: none
    # the same rows at once give the same stream, and 1 - mean error is the window's accuracy
    once, _ = prediction_errors(
        np.array([1, 1, 0, 1, 0, 1]), np.array([0.9, 0.9, 0.1, 0.2, 0.7, np.nan]), ["0", None, "1", None, None, None]
    )
    assert np.array_equal(errors, once, equal_nan=True)
    assert 1 - np.nanmean(errors) == pytest.approx(overall(w.rows())["accuracy"])
    regression = PerformanceWindow()
    regression.update(np.array([1.0, 2.5]), np.array([2.0, 2.0]), None, {})
    assert regression.errors()[0].tolist() == [1.0, 0.5] and regression.errors()[1] == "regression"
    assert PerformanceWindow().errors()[0].size == 0


def test_window_rejects_a_bad_batch_without_losing_the_others():
    w = PerformanceWindow(task="classification", min_segment_size=1)
    w.update(Y, S, None, {})
    with pytest.raises(ValueError, match="binary"):
        w.update(np.array([2.0]), np.array([0.5]), None, {})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        w.update(np.array([1.0]), np.array([1.5]), None, {})
    with pytest.raises(ValueError, match="infinite"):
        w.update(np.array([1.0]), np.array([np.inf]), None, {})
    assert w.n == Y.size
    assert overall(w.rows()) == pytest.approx(overall(compute_performance(Y, S, None, {})))
