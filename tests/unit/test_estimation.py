"""Label-free performance estimation (CBPE): calibration, exact merge, and coverage on seeded streams.

Realized metrics come from ``compute_performance`` (an independent code path);
the calibrator is checked against a plain pool-adjacent-violators loop.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from driftline.streams.core.estimation import (
    ESTIMATED_METRICS,
    CalibrationError,
    EstimatedPerformanceRow,
    EstimationState,
    ScoreCalibrator,
)
from driftline.streams.core.performance import PerformanceRow, compute_performance

WEIGHTS = np.array([1.2, -0.8, 0.6])
BIAS = -0.3


def _pav(y: np.ndarray) -> np.ndarray:
    """Textbook PAV with a stack of blocks, one value per row."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in y.tolist():
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks])


def _stream(rng: np.random.Generator, n: int, shift: float = 0.0, concept: float = 1.0, scale: float = 1.0):
    """Features x ~ N(shift, scale); y ~ Bernoulli(sigmoid(concept * w.x + b)); the model's score is a
    miscalibrated but monotone function of the true logit of the reference concept."""
    x = rng.normal(shift, scale, size=(n, WEIGHTS.size))
    logit = x @ WEIGHTS + BIAS
    y = (rng.random(n) < expit(concept * logit)).astype(np.int64)
    score = expit(1.8 * logit + 0.4)  # overconfident and shifted: calibration has work to do
    return score, y


def _reference(seed: int = 1, n: int = 20_000) -> ScoreCalibrator:
    score, y = _stream(np.random.default_rng(seed), n)
    return ScoreCalibrator.fit(score, y)


def _realized(score: np.ndarray, y: np.ndarray, attributes=None) -> dict[tuple[str, str], float]:
    rows = compute_performance(y, score, None, attributes or {}, task="classification", min_segment_size=1)
    return {(r.segment, r.metric): r.value for r in rows}


def test_isotonic_fit_matches_a_plain_pav_loop():
    rng = np.random.default_rng(3)
    s = rng.random(3_000)
    y = (rng.random(3_000) < s**2).astype(float)
    cal = ScoreCalibrator.fit(s, y, bins=3_000)
    order = np.argsort(s)
    expected = _pav(y[order])
    np.testing.assert_allclose(cal.calibrate(s[order]), expected, atol=1e-12)
    # each bin's block holds the bin's rows; the blocks' positives add up to the reference's
    assert cal.block_rows.sum() == 3_000 and cal.block_positive.sum() == y.sum()


def test_binned_calibration_is_the_mean_fit_of_the_bins_rows():
    rng = np.random.default_rng(4)
    s = rng.random(10_000)
    y = (rng.random(10_000) < s).astype(float)
    cal = ScoreCalibrator.fit(s, y, bins=50)
    order = np.argsort(s)
    fitted = _pav(y[order])
    bins = cal.bin_index(s[order])
    means = np.bincount(bins, fitted) / np.bincount(bins)
    np.testing.assert_allclose(cal.probability, means, atol=1e-12)
    assert cal.n_bins == 50
    assert np.all(np.diff(cal.probability) >= 0)


def test_degenerate_references_raise_a_clear_error():
    with pytest.raises(CalibrationError, match="10 of each class"):
        ScoreCalibrator.fit(np.linspace(0, 1, 500), np.zeros(500))
    with pytest.raises(CalibrationError, match="at least 100"):
        ScoreCalibrator.fit(np.linspace(0, 1, 50), np.arange(50) % 2)
    with pytest.raises(CalibrationError, match="binary labels"):
        ScoreCalibrator.fit(np.linspace(0, 1, 200), np.arange(200) % 3)
    with pytest.raises(CalibrationError, match="scores for"):
        ScoreCalibrator.fit(np.linspace(0, 1, 200), np.arange(199) % 2)
    # rows without score or label are left out before the count
    s = np.r_[np.linspace(0, 1, 200), np.full(50, np.nan)]
    assert ScoreCalibrator.fit(s, np.arange(250) % 2).n == 200


def test_calibrator_round_trips_through_json():
    cal = _reference()
    back = ScoreCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    probe = np.linspace(-0.1, 1.1, 1_001)
    np.testing.assert_array_equal(back.calibrate(probe), cal.calibrate(probe))
    np.testing.assert_array_equal(back.block_variance(), cal.block_variance())
    with pytest.raises(ValueError, match="one probability and one block per bin"):
        ScoreCalibrator.from_dict({**cal.to_dict(), "probability": [0.5]})
    with pytest.raises(ValueError, match="blocks follow them in order"):
        ScoreCalibrator.from_dict({**cal.to_dict(), "block": cal.block[::-1].tolist()})


def test_confusion_estimates_match_a_hand_worked_window():
    # identity calibration, 2 bins: p = 0.25 below 0.5, 0.75 above
    cal = ScoreCalibrator.identity(bins=2)
    w = EstimationState(cal)
    w.update(np.array([0.1, 0.2, 0.7, 0.8, 0.9, 0.6]))
    e = w.estimates()
    # predicted positives: 4 rows at p=.75 -> E[TP]=3, E[FP]=1; negatives: 2 rows at p=.25 -> E[FN]=.5, E[TN]=1.5
    assert e["accuracy"].value == pytest.approx((3 + 1.5) / 6)
    assert e["precision"].value == pytest.approx(3 / 4)
    assert e["recall"].value == pytest.approx(3 / 3.5)
    assert e["f1"].value == pytest.approx(6 / (6 + 1 + 0.5))
    # AUC: positives 0.5 below, 3 above; negatives 1.5 below, 1 above; pairs across bins 3*1.5, ties half
    n1, n0 = 3.5, 2.5
    u = 3 * 1.5 + 0.5 * (3 * 1 + 0.5 * 1.5)
    assert e["roc_auc"].value == pytest.approx(u / (n1 * n0))
    # accuracy's variance: sum p(1-p) / n^2, no calibration term for identity
    half = 1.959963984540054 * np.sqrt(6 * 0.1875) / 6
    assert e["accuracy"].upper == pytest.approx(min(1.0, 0.75 + half))
    assert e["accuracy"].lower == pytest.approx(0.75 - half)


def test_merge_is_exact_and_order_free():
    cal = _reference()
    rng = np.random.default_rng(5)
    score, _ = _stream(rng, 6_000, shift=0.4)
    attrs = {"channel": rng.choice(["web", "mobile", ""], 6_000), "region": rng.choice(["n", "s"], 6_000)}
    whole = EstimationState(cal)
    whole.update(score, None, attrs)
    parts = [EstimationState(cal) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(rng.permutation(6_000), 3), strict=True):
        part.update(score[rows], None, {k: v[rows] for k, v in attrs.items()})
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert merged.to_dict() == whole.to_dict()
    assert [(r.segment, r.metric, r.value) for r in merged.rows()] == [
        (r.segment, r.metric, r.value) for r in whole.rows()
    ]
    assert "channel=" not in {r.segment for r in whole.rows()}  # '' is no segment


def test_rows_follow_the_performance_contract():
    cal = _reference()
    rng = np.random.default_rng(6)
    score, _ = _stream(rng, 2_000)
    w = EstimationState(cal, min_segment_size=30)
    region = np.where(np.arange(2_000) < 20, "tiny", rng.choice(["eu", "us"], 2_000))
    w.update(np.r_[score[:-5], [np.nan] * 5], None, {"region": region})
    rows = w.rows()
    assert all(isinstance(r, PerformanceRow) and isinstance(r, EstimatedPerformanceRow) for r in rows)
    assert {r.segment for r in rows} == {"", "region=eu", "region=us"}  # region=tiny has 20 < 30 rows
    expected = {f"estimated_{m}{s}" for m in ESTIMATED_METRICS for s in ("", "_lower", "_upper")}
    assert {r.metric for r in rows if r.segment == ""} == expected
    overall = [r for r in rows if r.segment == ""]
    assert {r.n_labeled for r in rows} == {0} and {r.n_predictions for r in overall} == {1_995}
    assert w.n_unscored == 5
    by = {r.metric: r.value for r in overall}
    for m in ESTIMATED_METRICS:
        assert by[f"estimated_{m}_lower"] <= by[f"estimated_{m}"] <= by[f"estimated_{m}_upper"]


def test_bad_batches_raise_and_leave_the_state_unchanged():
    w = EstimationState(ScoreCalibrator.identity(bins=4))
    w.update(np.array([0.2, 0.9]))
    before = w.to_dict()
    with pytest.raises(ValueError, match="infinite"):
        w.update(np.array([0.1, np.inf]))
    with pytest.raises(ValueError, match="predicted_label has 1 values for 2"):
        w.update(np.array([0.1, 0.2]), ["1"])
    with pytest.raises(ValueError, match="attribute 'c' has 1 values"):
        w.update(np.array([0.1, 0.2]), None, {"c": ["a"]})
    with pytest.raises(ValueError, match="different calibrators"):
        w.merge(EstimationState(ScoreCalibrator.identity(bins=5)))
    assert w.to_dict() == before


def test_given_predicted_labels_decide_the_class():
    w = EstimationState(ScoreCalibrator.identity(bins=2))
    w.update(np.array([0.9, 0.9]), ["no", None])  # the first is predicted negative despite its score
    assert w.counts[""].tolist() == [[0, 0], [1, 1]]


def _windows(shifts: np.ndarray, concept: float = 1.0, seed: int = 11, n: int = 2_000, scales=None):
    cal = _reference()
    rng = np.random.default_rng(seed)
    out = []
    scales = np.ones(shifts.size) if scales is None else scales
    for shift, scale in zip(shifts.tolist(), scales.tolist(), strict=True):
        score, y = _stream(rng, n, shift=shift, concept=concept, scale=scale)
        w = EstimationState(cal)
        w.update(score)
        out.append((w.estimates(), _realized(score, y)))
    return out


def test_covariate_shift_is_followed_within_the_band():
    # x moves 0.6 sigma and narrows to 0.4 sigma, crowding the decision boundary: accuracy and AUC fall,
    # P(y|x) does not change
    windows = _windows(np.linspace(0.0, 0.6, 150), scales=np.linspace(1.0, 0.4, 150))
    realized = np.array([r[("", "accuracy")] for _, r in windows])
    assert realized[:20].mean() - realized[-20:].mean() > 0.08  # the shift does move the metric
    for metric, mae_max in (("accuracy", 0.02), ("roc_auc", 0.03), ("precision", 0.03), ("recall", 0.03), ("f1", 0.03)):
        est = np.array([e[metric].value for e, _ in windows])
        lo = np.array([e[metric].lower for e, _ in windows])
        hi = np.array([e[metric].upper for e, _ in windows])
        real = np.array([r[("", metric)] for _, r in windows])
        coverage = np.mean((lo <= real) & (real <= hi))
        assert np.mean(np.abs(est - real)) <= mae_max, metric
        assert coverage >= 0.9, (metric, coverage)
        assert coverage <= 0.995 or metric == "roc_auc", (metric, coverage)  # a band too wide says nothing


def test_concept_drift_is_not_followed():
    # same inputs, weaker relation between x and y: the realized accuracy falls, the estimate cannot know
    before = _windows(np.zeros(30), concept=1.0, seed=12)
    after = _windows(np.zeros(30), concept=0.3, seed=13)
    est_before = np.mean([e["accuracy"].value for e, _ in before])
    est_after = np.mean([e["accuracy"].value for e, _ in after])
    real_before = np.mean([r[("", "accuracy")] for _, r in before])
    real_after = np.mean([r[("", "accuracy")] for _, r in after])
    assert real_before - real_after > 0.1
    assert abs(est_after - est_before) < 0.01
    covered = np.mean([e["accuracy"].lower <= r[("", "accuracy")] <= e["accuracy"].upper for e, r in after])
    assert covered < 0.1


def test_segment_estimates_match_their_own_windows():
    cal = _reference()
    rng = np.random.default_rng(14)
    score, y = _stream(rng, 8_000, shift=0.5)
    channel = rng.choice(["web", "mobile"], 8_000)
    w = EstimationState(cal)
    w.update(score, None, {"channel": channel})
    alone = EstimationState(cal)
    alone.update(score[channel == "mobile"])
    assert w.estimates("channel=mobile") == alone.estimates()
    real = _realized(score, y, {"channel": channel})
    assert abs(w.estimates("channel=mobile")["accuracy"].value - real[("channel=mobile", "accuracy")]) < 0.03


def test_reference_estimate_is_the_baseline_of_the_windows():
    score, y = _stream(np.random.default_rng(1), 20_000)
    cal = ScoreCalibrator.fit(score, y)
    ref = cal.reference_estimates()
    real = _realized(score, y)
    # isotonic calibration reproduces the reference's own outcomes up to the rows of blocks astride the threshold
    assert abs(ref["accuracy"].value - real[("", "accuracy")]) < 0.005
    assert abs(ref["roc_auc"].value - real[("", "roc_auc")]) < 0.01
    # windows drawn like the reference estimate the same, on average
    windows = _windows(np.zeros(20), seed=15)
    assert abs(np.mean([e["accuracy"].value for e, _ in windows]) - ref["accuracy"].value) < 0.005
    back = ScoreCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back.reference_estimates() == ref
    assert ScoreCalibrator.identity().reference_estimates() == {}


def test_metrics_undefined_on_a_window_are_left_out():
    w = EstimationState(ScoreCalibrator.identity(bins=10))
    w.update(np.array([0.05, 0.15, 0.25]))  # nothing predicted positive: no precision
    found = w.estimates()
    assert "precision" not in found and {"accuracy", "recall", "f1", "roc_auc"} <= set(found)
    assert found["accuracy"].value == pytest.approx(1 - (0.05 + 0.15 + 0.25) / 3)
    assert "estimated_precision" not in {r.metric for r in w.rows()}
    assert EstimationState(ScoreCalibrator.identity()).rows() == []
