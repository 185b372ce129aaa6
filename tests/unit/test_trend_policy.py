"""The slow-drift guarantee and level in the policy (``monitoring.trend_guarantee``, ``monitoring.trend_level``)
and on their way to the monitor."""

from __future__ import annotations

import pytest

from driftline.retrainer.policy import PolicyError, load_policy, parse_policy
from driftline.streams.core.monitor import TREND_LEVELS
from driftline.streams.core.sequential import GUARANTEES, TrendDetector
from driftline.streams.worker import WorkerOptions, monitor_settings


def test_rate_is_the_default_guarantee_everywhere() -> None:
    assert load_policy(None).for_model("m").monitoring.trend_guarantee == "rate"
    assert monitor_settings(load_policy(None), WorkerOptions(), "m").trend_guarantee == "rate"
    det = TrendDetector(["x"], ref_count=[100], ref_mean=[0.0], ref_std=[1.0])
    assert det.guarantee == "rate" and GUARANTEES == ("rate", "ever")


def test_ever_is_selectable_per_model_and_reaches_the_monitor_settings() -> None:
    policy = parse_policy(
        {
            "defaults": {"monitoring": {"trend_guarantee": "ever"}},
            "models": {"credit": {"monitoring": {"trend_guarantee": "rate"}}},
        }
    )
    assert policy.for_model("other").monitoring.trend_guarantee == "ever"
    assert policy.for_model("credit").monitoring.trend_guarantee == "rate"
    assert monitor_settings(policy, WorkerOptions(), "other").trend_guarantee == "ever"
    assert monitor_settings(policy, WorkerOptions(), "credit").trend_guarantee == "rate"


def test_an_unknown_guarantee_is_an_error_naming_the_key() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"defaults": {"monitoring": {"trend_guarantee": "evr"}}}, source="p.yaml")
    assert str(info.value) == (
        "p.yaml: defaults.monitoring.trend_guarantee: expected one of 'rate', 'ever', got 'evr' (did you mean 'ever'?)"
    )


def test_the_model_level_is_the_default_and_the_stream_level_is_selectable_per_model() -> None:
    assert load_policy(None).for_model("m").monitoring.trend_level == "model"
    assert monitor_settings(load_policy(None), WorkerOptions(), "m").trend_level == "model"
    assert TREND_LEVELS == ("model", "stream")
    policy = parse_policy(
        {
            "defaults": {"monitoring": {"trend_level": "stream"}},
            "models": {"credit": {"monitoring": {"trend_level": "model"}}},
        }
    )
    assert policy.for_model("other").monitoring.trend_level == "stream"
    assert policy.for_model("credit").monitoring.trend_level == "model"
    assert monitor_settings(policy, WorkerOptions(), "other").trend_level == "stream"
    assert monitor_settings(policy, WorkerOptions(), "credit").trend_level == "model"


def test_an_unknown_level_is_an_error_naming_the_key() -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy({"models": {"credit": {"monitoring": {"trend_level": "streams"}}}}, source="p.yaml")
    assert str(info.value) == (
        "p.yaml: models.credit.monitoring.trend_level: expected one of 'model', 'stream', got 'streams'"
        " (did you mean 'stream'?)"
    )
