"""The label-free estimate wired into the monitor, the reference profile, the retrainer and the policy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from driftline.retrainer.evaluation import fit_calibrator
from driftline.retrainer.policy import PolicyError, ReferenceSettings, parse_policy
from driftline.retrainer.triggers import TriggerInput, TriggerState, estimate_signal, evaluate
from driftline.streams.core.batches import take_rows
from driftline.streams.core.estimation import EstimationState, ScoreCalibrator
from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.outcomes import WindowOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 10_000


def calibrated(n: int, seed: int, spread: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=spread, size=n)
    score = 1.0 / (1.0 + np.exp(-1.5 * x))
    return x, score, (rng.random(n) < score).astype(float)


def reference(with_calibrator: bool = True) -> ReferenceProfile:
    x, score, y = calibrated(5_000, 0)
    ref = ReferenceProfile.build("m", "1", {"x": x}, {}, score)
    return replace(ref, calibrator=fit_calibrator("classification", y, score)) if with_calibrator else ref


def batch(n: int, seed: int, spread: float = 1.0, predicted: list | None = None) -> PredictionBatch:
    x, score, _ = calibrated(n, seed, spread)
    rng = np.random.default_rng(seed + 100)
    return PredictionBatch(
        "m",
        "1",
        [f"e{seed}-{i}" for i in range(n)],
        T0 + np.arange(n, dtype=np.int64) * 5,
        numeric={"x": x},
        predictions=score,
        predicted_labels=predicted or [],
        attributes={"channel": rng.choice(["web", "app"], n).tolist()},
    )


def closed(ref: ReferenceProfile, batches: list[PredictionBatch]) -> WindowOutcome:
    monitor = Monitor(lambda _: MonitorSettings(Windowing(10_000, 0), detectors=(), min_segment_size=30))
    for b in batches:
        if monitor.needs_recovery("m", "1"):
            monitor.recover("m", "1", None)
        monitor.ingest(b, ref, source=0, now_ms=0)
    monitor.ingest(
        replace(batch(1, 99), event_ids=["late"], event_times=np.array([T0 + 60_000])), ref, source=0, now_ms=0
    )
    (outcome,) = [o for o in monitor.close_due(0) if isinstance(o, WindowOutcome)]
    return outcome


def test_profile_keeps_the_calibrator_and_old_profiles_still_load() -> None:
    ref = reference()
    d = ref.to_dict()
    assert ReferenceProfile.from_dict(d).calibrator == ref.calibrator
    old = reference(with_calibrator=False).to_dict()
    assert "calibrator" not in old  # a profile without one reads and writes exactly as before
    assert ReferenceProfile.from_dict(old).calibrator is None and ReferenceProfile.from_dict(old).to_dict() == old


def test_window_estimates_equal_one_state_fed_every_row_whatever_the_batches() -> None:
    ref = reference()
    whole = batch(2_000, 1, spread=0.5)  # covariate shift: scores crowd 0.5
    parts = [take_rows(whole, np.arange(lo, hi)) for lo, hi in ((0, 333), (333, 1_500), (1_500, 2_000))]
    outcome = closed(ref, parts)
    oracle = EstimationState(ScoreCalibrator.from_dict(ref.calibrator), min_segment_size=30)
    oracle.update(whole.predictions, None, whole.attributes)
    got = {(r.segment, r.metric): (r.value, r.n_labeled, r.n_predictions) for r in outcome.estimates}
    assert got == {(r.segment, r.metric): (r.value, 0, r.n_predictions) for r in oracle.rows()}
    assert {s for s, _ in got} == {"", "channel=app", "channel=web"}
    assert got[("", "estimated_accuracy")][2] == 2_000
    # the realized accuracy of these rows, graded with labels the monitor never saw
    _, score, y = calibrated(2_000, 1, 0.5)
    realized = float(((score >= 0.5) == (y == 1)).mean())
    lo, hi = got[("", "estimated_accuracy_lower")][0], got[("", "estimated_accuracy_upper")][0]
    assert lo <= realized <= hi
    reference_estimates = ScoreCalibrator.from_dict(ref.calibrator).reference_estimates()
    assert outcome.reference_estimates == {m: e.value for m, e in reference_estimates.items()}
    assert outcome.estimated_performance()["accuracy"] == got[("", "estimated_accuracy")][0]
    assert outcome.reference_estimates["accuracy"] - outcome.estimated_performance()["accuracy"] > 0.05


def test_no_calibrator_or_a_broken_one_means_no_estimate_and_no_error() -> None:
    for ref in (reference(with_calibrator=False), replace(reference(), calibrator={"format": 99})):
        outcome = closed(ref, [batch(500, 2)])
        assert outcome.estimates == [] and outcome.reference_estimates == {}
        assert outcome.n_current == 500 and outcome.drift


def test_labels_a_binary_calibrator_cannot_read_cost_the_estimate_only() -> None:
    outcome = closed(reference(), [batch(500, 3, predicted=["cat", "dog"] * 250)])
    assert outcome.estimates == [] and outcome.n_current == 500


def test_fit_calibrator_only_for_binary_scores_with_enough_labels() -> None:
    _, score, y = calibrated(3_000, 4)
    assert fit_calibrator("classification", y, score) == ScoreCalibrator.fit(score, y, threshold=0.5).to_dict()
    assert fit_calibrator("regression", y, score) is None
    assert fit_calibrator("classification", y * 2, score) is None  # labels not 0/1
    assert fit_calibrator("classification", y, score * 3) is None  # not probabilities
    assert fit_calibrator("classification", y[:50], score[:50]) is None  # too few to calibrate
    assert fit_calibrator("classification", None, score) is None
    profile = ReferenceSettings().profile_builder(
        "m", {"s": score}, {}, score, fit_calibrator("classification", y, score)
    )
    assert ReferenceProfile.from_dict(profile("7")).calibrator["threshold"] == 0.5


def test_policy_key_parses_and_is_checked() -> None:
    p = parse_policy({"defaults": {"performance": {"estimated_accuracy_drop": 0.05}}}).for_model("m")
    assert p.performance.estimated_accuracy_drop == 0.05
    assert parse_policy(None).for_model("m").performance.estimated_accuracy_drop is None
    with pytest.raises(PolicyError, match="performance.estimated_accuracy_drop"):
        parse_policy({"defaults": {"performance": {"estimated_accuracy_drop": -0.1}}})


def test_estimate_trigger_requests_a_retrain_without_labels() -> None:
    policy = parse_policy(
        {"defaults": {"drift": {"enabled": False}, "performance": {"estimated_accuracy_drop": 0.05}}}
    ).for_model("m")
    ref = {"accuracy": 0.80}

    def window(i: int, estimate: float | None) -> TriggerInput:
        return TriggerInput(
            "m",
            "1",
            i * 60_000,
            (i + 1) * 60_000,
            reference_estimates=ref,
            estimated_performance=None if estimate is None else {"accuracy": estimate},
        )

    assert estimate_signal(policy, window(0, None)).status == "unknown"
    assert estimate_signal(policy, window(0, 0.76)).status == "clean"
    assert estimate_signal(policy, window(0, 0.75)).status == "clean"  # at the bound: not past it
    state, requests, _ = evaluate(policy, TriggerState("m"), window(0, 0.78), 60_000)
    assert requests == []
    state, requests, alerts = evaluate(policy, state, window(1, 0.70), 120_000)
    assert [(r.reason, [(e.metric, e.value, e.threshold) for e in r.evidence]) for r in requests] == [
        ("performance", [("estimated_accuracy", 0.70, pytest.approx(0.75))])
    ]
    assert [a.kind for a in alerts] == ["estimated_performance_drop", "retrain_requested"]
    # without the key the estimate says nothing
    off = parse_policy({"defaults": {"drift": {"enabled": False}}}).for_model("m")
    assert evaluate(off, TriggerState("m"), window(1, 0.50), 120_000)[1] == []


def test_trigger_states_saved_before_the_estimate_load() -> None:
    saved = TriggerState("m", "1").to_dict()
    del saved["estimate"]
    assert TriggerState.from_dict(saved) == TriggerState("m", "1")
