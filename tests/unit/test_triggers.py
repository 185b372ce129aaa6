"""The trigger evaluator: episodes, consecutive windows, hysteresis, cooldown, deterministic ids."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import pytest

from driftline.retrainer.policy import ModelPolicy, load_policy, parse_policy
from driftline.retrainer.triggers import (
    TriggerInput,
    TriggerState,
    evaluate,
    evaluate_schedule,
    manual_cooldown_remaining_ms,
    manual_request,
    record_request,
    stable_id,
)
from driftline.streams.records import Alert, FeatureDrift, RetrainRequest

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR  # an hour boundary, for readable times
FEATURES = ("age", "debt", "income", "zip")


def model_policy(**sections: dict) -> ModelPolicy:
    return parse_policy({"models": {"m": sections}}).for_model("m")


def rows(drifted: Iterable[str] = (), *, psi: dict[str, float] | None = None) -> list[FeatureDrift]:
    """One psi row per feature; ``drifted`` features have psi 0.5 (threshold 0.2), the others 0.05."""
    drifted = set(drifted)
    psi = psi or {}
    out = []
    for f in FEATURES:
        value = psi.get(f, 0.5 if f in drifted else 0.05)
        out.append(FeatureDrift(f, "psi", value, None, 0.2, value > 0.2))
    return out


def window(i: int, *, drifted: Iterable[str] = (), version: str = "1", minutes: int = 1, **kw: object) -> TriggerInput:
    start = T0 + i * minutes * MINUTE
    drift = kw.pop("drift", rows(drifted))
    return TriggerInput("m", version, start, start + minutes * MINUTE, drift=drift, **kw)  # type: ignore[arg-type]


def run(
    policy: ModelPolicy,
    windows: Sequence[TriggerInput],
    state: TriggerState | None = None,
) -> tuple[TriggerState, list[RetrainRequest], list[Alert]]:
    state = state or TriggerState("m")
    requests: list[RetrainRequest] = []
    alerts: list[Alert] = []
    for w in windows:
        state, new_requests, new_alerts = evaluate(policy, state, w, w.window_end)
        requests += new_requests
        alerts += new_alerts
    return state, requests, alerts


HOT = ("age", "income")  # two features: enough for the default min_features=2


# --------------------------------------------------------------------------- drift episodes


def test_one_request_per_drift_episode() -> None:
    policy = load_policy(None).for_model("m")
    state, requests, alerts = run(policy, [window(i, drifted=HOT) for i in range(40)])
    assert len(requests) == 1
    r = requests[0]
    assert (r.model_id, r.model_version, r.reason) == ("m", "1", "drift")
    assert r.requested_at == T0 + 2 * MINUTE  # the end of the second consecutive window
    assert r.request_id == stable_id("m", "1", "drift", T0)  # keyed by the episode's first window
    assert [a.kind for a in alerts] == ["drift", "retrain_requested"]
    assert [a.severity for a in alerts] == ["warning", "info"]
    assert state.drift.active and state.drift.requested and state.last_request_id == r.request_id


def test_evidence_lists_every_metric_that_crossed() -> None:
    policy = load_policy(None).for_model("m")
    _, requests, _ = run(policy, [window(i, drifted=("age", "income", "zip")) for i in range(2)])
    evidence = requests[0].evidence
    assert [(e.metric, e.feature, e.value, e.threshold) for e in evidence] == [
        ("psi", "age", 0.5, 0.2),
        ("psi", "income", 0.5, 0.2),
        ("psi", "zip", 0.5, 0.2),
    ]
    assert {(e.window_start, e.window_end) for e in evidence} == {(T0 + MINUTE, T0 + 2 * MINUTE)}


def test_consecutive_windows_must_be_consecutive() -> None:
    policy = load_policy(None).for_model("m")
    alternating = [window(i, drifted=HOT if i % 2 == 0 else ()) for i in range(20)]
    assert run(policy, alternating)[1] == []
    # one feature is not enough (min_features=2), however long it lasts
    assert run(policy, [window(i, drifted=("age",)) for i in range(20)])[1] == []
    # three in a row with consecutive_windows=3: the request comes at the third
    policy3 = model_policy(drift={"consecutive_windows": 3})
    seq = [
        window(0, drifted=HOT),
        window(1, drifted=HOT),
        window(2),
        window(3, drifted=HOT),
        window(4, drifted=HOT),
        window(5, drifted=HOT),
    ]
    _, requests, _ = run(policy3, seq)
    assert [r.requested_at for r in requests] == [T0 + 6 * MINUTE]
    assert requests[0].request_id == stable_id("m", "1", "drift", T0 + 3 * MINUTE)


def test_windows_with_nothing_to_judge_neither_extend_nor_break_a_streak() -> None:
    policy = load_policy(None).for_model("m")
    seq = [window(0, drifted=HOT), window(1, drift=[]), window(2, drifted=HOT)]
    _, requests, _ = run(policy, seq)
    assert [r.requested_at for r in requests] == [T0 + 3 * MINUTE]


def test_metric_rule_with_own_threshold_or_the_rows_threshold() -> None:
    psi = {"age": 0.3, "income": 0.28, "debt": 0.22}
    seq = [window(i, drift=rows(psi=psi)) for i in range(2)]
    # threshold 0.25: only age and income cross
    _, requests, _ = run(model_policy(drift={"metric": "psi", "threshold": 0.25, "min_features": 2}), seq)
    assert sorted(e.feature for e in requests[0].evidence) == ["age", "income"]
    assert {e.threshold for e in requests[0].evidence} == {0.25}
    assert run(model_policy(drift={"metric": "psi", "threshold": 0.25, "min_features": 3}), seq)[1] == []
    # no threshold: each row's own (monitoring) threshold, 0.2, so debt crosses too
    _, requests, _ = run(model_policy(drift={"metric": "psi", "min_features": 3}), seq)
    assert sorted(e.feature for e in requests[0].evidence) == ["age", "debt", "income"]
    # a metric the engine did not compute says nothing
    assert run(model_policy(drift={"metric": "ks"}), seq)[1] == []
    # restricting to features
    assert run(model_policy(drift={"features": ["age", "debt"]}), [window(i, drifted=HOT) for i in range(3)])[1] == []


# --------------------------------------------------------------------------- hysteresis and cooldown


def test_hysteresis_keeps_a_flapping_metric_in_one_episode() -> None:
    policy = model_policy(drift={"consecutive_windows": 1}, retraining={"hysteresis_windows": 3, "cooldown_minutes": 0})
    pattern = [HOT, (), (), HOT, (), HOT, (), ()]  # never 3 clean windows in a row
    seq = [window(i, drifted=pattern[i % len(pattern)]) for i in range(80)]
    state, requests, alerts = run(policy, seq)
    assert len(requests) == 1, "one episode, one request, even without a cooldown"
    assert [a.kind for a in alerts] == ["drift", "retrain_requested"]
    # three clean windows end the episode; the next hot window opens a new one with a new id
    end = [window(80 + i) for i in range(3)] + [window(83, drifted=HOT)]
    state, more, alerts = run(policy, end, state)
    assert [a.kind for a in alerts] == ["drift_resolved", "drift", "retrain_requested"]
    assert len(more) == 1 and more[0].request_id == stable_id("m", "1", "drift", T0 + 83 * MINUTE)
    assert more[0].request_id != requests[0].request_id


def test_a_flapping_sequence_makes_at_most_one_request_per_cooldown() -> None:
    # episodes end quickly here (hysteresis 1), so only the cooldown stands between them
    policy = model_policy(
        drift={"consecutive_windows": 1}, retraining={"hysteresis_windows": 1, "cooldown_minutes": 30}
    )
    seq = [window(i, drifted=HOT if i % 2 == 0 else ()) for i in range(180)]  # 3 hours, flapping every minute
    _, requests, alerts = run(policy, seq)
    times = [r.requested_at for r in requests]
    assert len(times) == 6  # one per 30 minutes over 180 minutes
    assert all(b - a >= 30 * MINUTE for a, b in zip(times, times[1:]))
    assert len({r.request_id for r in requests}) == len(requests)
    held = [a for a in alerts if a.kind == "drift" and "held back by the cooldown" in a.message]
    assert held, "the operator is told why a drift episode made no request"


def test_a_held_back_request_goes_out_when_the_cooldown_ends() -> None:
    policy = load_policy(None).for_model("m")  # cooldown 30 minutes
    state = TriggerState("m", "1", last_request_ms=T0)
    _, requests, alerts = run(policy, [window(i, drifted=HOT) for i in range(40)], state)
    assert [r.requested_at for r in requests] == [T0 + 30 * MINUTE]
    # the id is still the episode's, which began at the first window
    assert requests[0].request_id == stable_id("m", "1", "drift", T0)
    assert "held back by the cooldown until" in alerts[0].message


def test_cooldown_spans_reasons() -> None:
    policy = load_policy(None).for_model("m")
    perf = dict(performance={"accuracy": 0.6}, n_labeled=1000, reference_performance={"accuracy": 0.8})
    seq = [window(i, drifted=HOT) for i in range(2)] + [window(i, **perf) for i in range(2, 40)]
    _, requests, _ = run(policy, seq)
    # the performance episode opens at once but waits for the cooldown of the drift request
    assert [(r.reason, r.requested_at) for r in requests] == [
        ("drift", T0 + 2 * MINUTE),
        ("performance", T0 + 32 * MINUTE),
    ]
    assert requests[1].request_id == stable_id("m", "1", "performance", T0 + 2 * MINUTE)


# --------------------------------------------------------------------------- performance


def perf_window(i: int, accuracy: float, n: int, reference: float | None = 0.80, **kw: object) -> TriggerInput:
    ref = None if reference is None else {"accuracy": reference}
    return window(i, drift=[], performance={"accuracy": accuracy}, n_labeled=n, reference_performance=ref, **kw)


def test_performance_drop_needs_enough_labels() -> None:
    policy = load_policy(None).for_model("m")  # max_drop 0.05 over at least 500 labels
    assert run(policy, [perf_window(i, 0.60, 499) for i in range(10)])[1] == []
    state, requests, alerts = run(policy, [perf_window(0, 0.60, 499), perf_window(1, 0.74, 500)])
    assert len(requests) == 1 and requests[0].reason == "performance"
    e = requests[0].evidence[0]
    assert (e.metric, e.feature, e.value, e.threshold) == ("accuracy", "", 0.74, pytest.approx(0.75))
    assert [(a.kind, a.severity) for a in alerts] == [("performance_drop", "critical"), ("retrain_requested", "info")]
    assert "accuracy 0.74 over 500 labels" in alerts[0].message


def test_performance_drop_must_exceed_max_drop() -> None:
    policy = load_policy(None).for_model("m")
    # exactly 0.05 below the reference is not "more than 0.05", despite 0.80 - 0.75 rounding
    assert run(policy, [perf_window(i, 0.75, 1000) for i in range(5)])[1] == []
    assert len(run(policy, [perf_window(0, 0.7499, 1000)])[1]) == 1


def test_performance_limit_without_a_reference() -> None:
    no_limit = load_policy(None).for_model("m")
    assert run(no_limit, [perf_window(i, 0.1, 1000, reference=None) for i in range(5)])[1] == []
    limited = model_policy(performance={"limit": 0.7, "max_drop": None})
    assert run(limited, [perf_window(0, 0.71, 1000, reference=None)])[1] == []
    _, requests, _ = run(limited, [perf_window(0, 0.69, 1000, reference=None)])
    assert requests[0].evidence[0].threshold == 0.7


def test_lower_is_better_metric_drops_by_rising() -> None:
    policy = model_policy(performance={"metric": "mae", "max_drop": 5.0, "min_labels": 100})

    def w(i: int, mae: float) -> TriggerInput:
        return window(i, drift=[], performance={"mae": mae}, n_labeled=200, reference_performance={"mae": 20.0})

    assert run(policy, [w(0, 10.0), w(1, 24.9), w(2, 25.0)])[1] == []  # better, or within 5
    _, requests, _ = run(policy, [w(0, 25.5)])
    assert requests[0].evidence[0].threshold == 25.0


def test_performance_consecutive_windows_skip_windows_without_enough_labels() -> None:
    policy = model_policy(performance={"consecutive_windows": 2})
    seq = [perf_window(0, 0.6, 800), perf_window(1, 0.6, 10), perf_window(2, 0.6, 800)]
    _, requests, _ = run(policy, seq)
    assert [r.requested_at for r in requests] == [T0 + 3 * MINUTE]
    assert requests[0].request_id == stable_id("m", "1", "performance", T0)


def test_performance_wins_the_reason_and_evidence_holds_both() -> None:
    policy = model_policy(drift={"consecutive_windows": 1})
    w = window(0, drifted=HOT, performance={"accuracy": 0.5}, n_labeled=900, reference_performance={"accuracy": 0.8})
    state, requests, alerts = run(policy, [w])
    assert len(requests) == 1 and requests[0].reason == "performance"
    assert {e.metric for e in requests[0].evidence} == {"accuracy", "psi"}
    assert sorted(a.kind for a in alerts) == ["drift", "performance_drop", "retrain_requested"]
    assert state.drift.requested and state.performance.requested  # one request answered both


# --------------------------------------------------------------------------- change detectors


def test_change_detector_trigger() -> None:
    policy = model_policy(change_detectors={"enabled": True, "min_events": 2})
    one = window(0, drift=[], change_events=[("adwin", "error")])
    elsewhere = window(1, drift=[], change_events=[("adwin", "score"), ("adwin", "score")])
    assert run(policy, [one, elsewhere])[1] == []
    two = window(2, drift=[], change_events=[("adwin", "1:error"), ("adwin", "error")])
    _, requests, alerts = run(policy, [two])
    assert requests[0].reason == "drift"
    assert [(e.metric, e.feature, e.value, e.threshold) for e in requests[0].evidence] == [
        ("adwin", "1:error", 1.0, 2.0),
        ("adwin", "error", 1.0, 2.0),
    ]
    assert alerts[0].kind == "change" and alerts[0].severity == "warning"
    # off by default
    assert run(load_policy(None).for_model("m"), [two] * 1)[1] == []


# --------------------------------------------------------------------------- determinism and state


def test_replay_after_a_crash_gives_the_same_request_ids() -> None:
    policy = load_policy(None).for_model("m")
    seq = [window(i, drifted=HOT if i < 20 else ()) for i in range(30)]
    _, uninterrupted, alerts = run(policy, seq)
    # the worker persisted the state after window 0, crashed after window 5, and replays from window 1
    saved = json.loads(json.dumps(run(policy, seq[:1])[0].to_dict()))
    _, first_try, _ = run(policy, seq[1:6], TriggerState.from_dict(saved))
    _, replayed, replay_alerts = run(policy, seq[1:], TriggerState.from_dict(saved))
    assert (
        [r.request_id for r in first_try] == [r.request_id for r in replayed] == [r.request_id for r in uninterrupted]
    )
    assert [a.alert_id for a in replay_alerts] == [a.alert_id for a in alerts]
    assert len({a.alert_id for a in alerts}) == len(alerts)


def test_a_window_seen_before_changes_nothing() -> None:
    policy = load_policy(None).for_model("m")
    state, requests, _ = run(policy, [window(i, drifted=HOT) for i in range(2)])
    assert len(requests) == 1
    again, more, alerts = evaluate(policy, state, window(1, drifted=HOT), T0 + 5 * MINUTE)
    assert (again, more, alerts) == (state, [], [])


def test_request_ids_differ_by_model_version_and_episode() -> None:
    ids = {
        stable_id("m", "1", "drift", T0),
        stable_id("m", "2", "drift", T0),
        stable_id("n", "1", "drift", T0),
        stable_id("m", "1", "drift", T0 + MINUTE),
        stable_id("m", "1", "performance", T0),
    }
    assert len(ids) == 5


def test_a_new_version_starts_afresh_but_keeps_the_cooldown() -> None:
    policy = load_policy(None).for_model("m")
    state, requests, _ = run(policy, [window(i, drifted=HOT) for i in range(2)])
    assert len(requests) == 1
    state, more, _ = run(policy, [window(i, drifted=HOT, version="2") for i in range(2, 40)], state)
    assert state.model_version == "2" and state.drift.requested
    assert [r.requested_at for r in more] == [requests[0].requested_at + 30 * MINUTE]
    assert more[0].model_version == "2" and more[0].request_id == stable_id("m", "2", "drift", T0 + 2 * MINUTE)


def test_state_round_trips_through_json() -> None:
    policy = load_policy(None).for_model("m")
    state, _, _ = run(policy, [window(0, drifted=HOT)])
    assert state.drift.streak == 1
    data = json.loads(json.dumps(state.to_dict()))
    assert TriggerState.from_dict(data) == state
    with pytest.raises(ValueError, match="format"):
        TriggerState.from_dict({"model_id": "m"})
    with pytest.raises(ValueError, match="unknown keys: \\['surprise'\\]"):
        TriggerState.from_dict({**data, "surprise": 1})
    with pytest.raises(ValueError, match="no model_id"):
        TriggerState.from_dict({"format": 1})
    with pytest.raises(ValueError, match="malformed"):
        TriggerState.from_dict({**data, "drift": {"streek": 1}})


def test_disabled_monitoring_and_wrong_models() -> None:
    off = model_policy(monitoring={"enabled": False})
    assert run(off, [window(i, drifted=HOT) for i in range(10)])[1] == []
    policy = load_policy(None).for_model("m")
    with pytest.raises(ValueError, match="model ids differ"):
        evaluate(policy, TriggerState("other"), window(0), T0)
    with pytest.raises(ValueError, match="before it starts"):
        evaluate(policy, TriggerState("m"), TriggerInput("m", "1", T0, T0), T0)


# --------------------------------------------------------------------------- schedule and manual


def test_schedule_trigger() -> None:
    policy = model_policy(schedule={"every_hours": 2})
    state, requests, _ = evaluate_schedule(policy, TriggerState("m", "1"), T0)
    assert requests == [] and state.schedule_anchor_ms == T0  # the clock starts when the model is first seen
    state, requests, _ = evaluate_schedule(policy, state, T0 + 2 * HOUR - 1)
    assert requests == []
    state, requests, alerts = evaluate_schedule(policy, state, T0 + 2 * HOUR + 5)
    assert [r.reason for r in requests] == ["schedule"] and alerts[0].kind == "retrain_requested"
    assert requests[0].request_id == stable_id("m", "1", "schedule", T0 + 2 * HOUR)
    assert evaluate_schedule(policy, state, T0 + 3 * HOUR)[1] == []
    assert len(evaluate_schedule(policy, state, T0 + 4 * HOUR + 5)[1]) == 1
    # no schedule in the policy, or no version known yet: nothing
    assert evaluate_schedule(load_policy(None).for_model("m"), state, T0 + 100 * HOUR)[1] == []
    assert evaluate_schedule(policy, TriggerState("m", schedule_anchor_ms=0), T0)[1] == []


def test_any_request_restarts_the_schedule_clock() -> None:
    policy = model_policy(schedule={"every_hours": 1})
    state, _, _ = evaluate_schedule(policy, TriggerState("m", "1"), T0)
    state, requests, _ = run(policy, [window(i, drifted=HOT, minutes=15) for i in range(2)], state)
    assert requests[0].requested_at == T0 + 30 * MINUTE
    assert evaluate_schedule(policy, state, T0 + HOUR + 1)[1] == []
    assert len(evaluate_schedule(policy, state, T0 + 90 * MINUTE)[1]) == 1


def test_manual_requests() -> None:
    a = manual_request("m", "1", T0, "alice")
    assert a == manual_request("m", "1", T0, "alice")
    assert a.request_id != manual_request("m", "1", T0, "bob").request_id
    assert a.request_id != manual_request("m", "1", T0 + 1, "alice").request_id
    assert (a.reason, a.requested_at, a.evidence[0].feature) == ("manual", T0, "alice")
    with pytest.raises(ValueError, match="requested_by"):
        manual_request("m", "1", T0, "")
    # always allowed by default; a policy may space them out
    assert manual_cooldown_remaining_ms(load_policy(None).for_model("m"), T0, T0) == 0
    spaced = model_policy(manual={"cooldown_minutes": 5})
    assert manual_cooldown_remaining_ms(spaced, T0, T0 + MINUTE) == 4 * MINUTE
    assert manual_cooldown_remaining_ms(spaced, T0, T0 + 5 * MINUTE) == 0


def test_a_recorded_manual_request_answers_the_open_episode() -> None:
    policy = model_policy(drift={"consecutive_windows": 3})
    state, _, _ = run(policy, [window(i, drifted=HOT) for i in range(3)], TriggerState("m", "1", last_request_ms=T0))
    assert state.drift.active and not state.drift.requested  # held back by the cooldown
    state = record_request(state, manual_request("m", "1", T0 + 10 * MINUTE, "alice"))
    assert state.drift.requested and state.last_request_ms == T0 + 10 * MINUTE
    assert run(policy, [window(i, drifted=HOT) for i in range(3, 60)], state)[1] == []
    # an older request does not move the clocks back
    assert record_request(state, manual_request("m", "1", T0, "bob")) == state


# --------------------------------------------------------------------------- data quality, multivariate, trend


def quality_rows(alarmed: Iterable[str] = (), metric: str = "missing_rate") -> list[FeatureDrift]:
    """Calm psi rows, plus one data-quality row per feature; ``alarmed`` features flagged (0.08 against 0.031)."""
    alarmed = set(alarmed)
    return rows() + [
        FeatureDrift(f, metric, 0.08 if f in alarmed else 0.0, None, 0.031, f in alarmed, "data_quality")
        for f in FEATURES
    ]


def test_data_quality_alarms_never_count_as_drift_and_trigger_only_when_enabled() -> None:
    default = load_policy(None).for_model("m")
    assert not default.data_quality.enabled  # retraining on a broken pipeline's data would learn the breakage
    windows = [window(i, drift=quality_rows(HOT)) for i in range(6)]
    state, requests, alerts = run(default, windows)
    assert requests == [] and alerts == []  # two features alarmed, but not the drift trigger's business
    assert not state.drift.active and not state.data_quality.active

    policy = model_policy(data_quality={"enabled": True})
    state, requests, alerts = run(policy, windows)
    assert len(requests) == 1
    r = requests[0]
    assert r.reason == "drift" and r.requested_at == T0 + 2 * MINUTE  # consecutive_windows 2
    assert r.request_id == stable_id("m", "1", "data_quality", T0)
    assert sorted((e.metric, e.feature, e.value, e.threshold) for e in r.evidence) == [
        ("missing_rate", "age", 0.08, 0.031),
        ("missing_rate", "income", 0.08, 0.031),
    ]
    assert (r.evidence[0].window_start, r.evidence[0].window_end) == (T0 + MINUTE, T0 + 2 * MINUTE)
    assert [a.kind for a in alerts] == ["data_quality", "retrain_requested"]
    assert "missing_rate(age) 0.08 > 0.031" in alerts[0].message and "2 windows in a row" in alerts[0].message


def test_data_quality_metrics_features_and_min_features() -> None:
    windows = [window(i, drift=quality_rows(["zip"], "new_category_rate")) for i in range(3)]
    only_missing = model_policy(data_quality={"enabled": True, "metrics": ["missing_rate"]})
    assert run(only_missing, windows)[1] == []
    other_feature = model_policy(data_quality={"enabled": True, "features": ["age"]})
    assert run(other_feature, windows)[1] == []
    two = model_policy(data_quality={"enabled": True, "min_features": 2})
    assert run(two, windows)[1] == []
    one = model_policy(data_quality={"enabled": True, "consecutive_windows": 1})
    (request,) = run(one, windows)[1]
    assert [(e.metric, e.feature) for e in request.evidence] == [("new_category_rate", "zip")]
    assert request.requested_at == T0 + MINUTE


def multivariate_rows(flagged: bool, value: float = 0.62) -> list[FeatureDrift]:
    return rows() + [
        FeatureDrift("__multivariate__", "reconstruction_error", 1.01, 0.4, 1.2, False),
        FeatureDrift("__multivariate__", "correlation_change", value, 1e-9 if flagged else 0.6, 0.21, flagged),
    ]


def test_multivariate_drift_triggers_after_two_windows_with_its_statistic_as_evidence() -> None:
    policy = load_policy(None).for_model("m")
    assert policy.multivariate.enabled and policy.multivariate.consecutive_windows == 2
    windows = [window(0, drift=multivariate_rows(False, 0.05))] + [
        window(i, drift=multivariate_rows(True)) for i in range(1, 5)
    ]
    state, requests, alerts = run(policy, windows)
    (r,) = requests
    assert r.reason == "drift" and r.requested_at == T0 + 3 * MINUTE
    assert r.request_id == stable_id("m", "1", "multivariate", T0 + MINUTE)
    assert [(e.metric, e.feature, e.value, e.threshold) for e in r.evidence] == [
        ("correlation_change", "__multivariate__", 0.62, 0.21)
    ]
    assert [a.kind for a in alerts] == ["multivariate_drift", "retrain_requested"]
    assert not state.drift.active  # the __multivariate__ row is not one of the drift trigger's features
    off = model_policy(multivariate={"enabled": False})
    assert run(off, windows)[1] == []
    reconstruction_only = model_policy(multivariate={"metrics": ["reconstruction_error"]})
    assert run(reconstruction_only, windows)[1] == []


def test_multivariate_rows_without_a_value_say_nothing() -> None:
    # a window with too few complete rows gets NaN statistics: neither hot nor clean, the streak holds
    nan = [FeatureDrift("__multivariate__", "correlation_change", math.nan, None, math.nan, False)]
    windows = [
        window(0, drift=multivariate_rows(True)),
        window(1, drift=rows() + nan),
        window(2, drift=multivariate_rows(True)),
    ]
    (r,) = run(load_policy(None).for_model("m"), windows)[1]
    assert r.requested_at == T0 + 3 * MINUTE


def trend_rows(evidence: dict[str, float]) -> list[FeatureDrift]:
    level = 600.0  # k / alpha
    return rows() + [
        FeatureDrift(f, "trend_evidence", e, min(1.0, 30 / e), level, e >= level) for f, e in evidence.items()
    ]


def test_trend_triggers_the_second_window_its_evidence_stays_above_the_alarm_level() -> None:
    policy = load_policy(None).for_model("m")
    assert policy.trend.enabled and policy.trend.consecutive_windows == 2
    series = [1.0, 4.0, 90.0, 2.4e3, 5.1e5, 1e30]
    windows = [window(i, drift=trend_rows({"__prediction__": e, "income": 1.0})) for i, e in enumerate(series)]
    state, requests, alerts = run(policy, windows)
    (r,) = requests
    assert r.requested_at == T0 + 5 * MINUTE  # 2,400 >= 600 in window 3, confirmed in window 4
    assert r.request_id == stable_id("m", "1", "trend", T0 + 3 * MINUTE)
    assert [(e.metric, e.feature, e.value, e.threshold) for e in r.evidence] == [
        ("trend_evidence", "__prediction__", 5.1e5, 600.0)
    ]
    assert [a.kind for a in alerts] == ["trend", "retrain_requested"]
    assert not state.drift.active
    at_once = model_policy(trend={"consecutive_windows": 1})
    assert run(at_once, windows)[1][0].requested_at == T0 + 4 * MINUTE
    only_income = model_policy(trend={"features": ["income"]})
    assert run(only_income, windows)[1] == []
    two_streams = model_policy(trend={"min_features": 2})
    assert run(two_streams, windows)[1] == []


def test_every_alarm_class_in_one_request_names_them_all() -> None:
    policy = model_policy(data_quality={"enabled": True, "consecutive_windows": 1})
    drift = (
        quality_rows(["zip"])
        + multivariate_rows(True)[len(FEATURES) :]
        + trend_rows({"__prediction__": 1e4})[len(FEATURES) :]
    )
    windows = [window(i, drift=drift) for i in range(2)]
    state, requests, _ = run(policy, windows)
    (r,) = requests
    # data quality needs one window here and asks first, naming every signal hot in that window; the
    # multivariate and trend episodes open a window later, inside the cooldown, so no second request
    assert r.request_id == stable_id("m", "1", "data_quality", T0) and r.requested_at == T0 + MINUTE
    assert {(e.metric, e.feature) for e in r.evidence} == {
        ("trend_evidence", "__prediction__"),
        ("missing_rate", "zip"),
        ("correlation_change", "__multivariate__"),
    }
    assert state.multivariate.active and not state.multivariate.requested
    assert state.trend.active and not state.trend.requested
    assert TriggerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_a_state_saved_before_the_new_alarm_classes_loads() -> None:
    policy = load_policy(None).for_model("m")
    state, _, _ = run(policy, [window(0, drifted=HOT)])
    old = {k: v for k, v in state.to_dict().items() if k not in ("data_quality", "multivariate", "trend")}
    assert TriggerState.from_dict(old) == state


def test_alarm_evidence_is_the_rows_that_crossed_their_own_threshold() -> None:
    # the engine flags every data-quality row of a feature with the feature's decision
    flagged = [
        FeatureDrift("b", "missing_rate", 0.2, None, 0.03, True, "data_quality"),
        FeatureDrift("b", "out_of_range_rate", 0.0, None, 0.01, True, "data_quality"),
    ]
    policy = model_policy(data_quality={"enabled": True, "consecutive_windows": 1})
    (r,) = run(policy, [window(0, drift=rows() + flagged)])[1]
    assert [(e.metric, e.feature) for e in r.evidence] == [("missing_rate", "b")]
    # a decision no single row explains keeps all the feature's flagged rows
    below = [FeatureDrift("b", m, 0.0, None, 0.01, True, "data_quality") for m in ("missing_rate", "out_of_range_rate")]
    (r,) = run(policy, [window(0, drift=rows() + below)])[1]
    assert sorted(e.metric for e in r.evidence) == ["missing_rate", "out_of_range_rate"]
