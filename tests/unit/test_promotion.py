"""The promotion decision: direction-aware, margin-aware, and explicit about missing metrics."""

from __future__ import annotations

import math

import pytest

from driftline.retrainer.promotion import (
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    PromotionRule,
    decide,
    improvement,
    metric_direction,
)


def test_no_champion_promotes() -> None:
    d = decide({"accuracy": 0.61}, None, PromotionRule("accuracy", min_improvement=0.5))
    assert d.promote
    assert (d.challenger_value, d.champion_value, d.margin) == (0.61, None, None)
    assert "no champion" in d.reason


@pytest.mark.parametrize(
    ("challenger", "champion", "min_improvement", "promote"),
    [
        (0.90, 0.85, 0.0, True),
        (0.85, 0.80, 0.05, True),  # exactly the margin, despite 0.85 - 0.80 = 0.04999999999999993
        (0.84, 0.80, 0.05, False),
        (0.80, 0.80, 0.0, True),  # a tie favours the model trained on fresher data
        (0.80, 0.80, 0.001, False),
        (0.79, 0.80, 0.0, False),
        (0.79, 0.80, -0.02, True),  # a negative margin tolerates a small loss
    ],
)
def test_higher_is_better(challenger: float, champion: float, min_improvement: float, promote: bool) -> None:
    d = decide({"roc_auc": challenger}, {"roc_auc": champion}, PromotionRule("roc_auc", min_improvement))
    assert d.promote is promote
    assert d.margin == pytest.approx(challenger - champion)
    assert (d.challenger_value, d.champion_value, d.metric) == (challenger, champion, "roc_auc")


def test_a_tie_says_so_and_why_it_promotes() -> None:
    d = decide({"roc_auc": 0.8}, {"roc_auc": 0.8}, PromotionRule("roc_auc"))
    assert d.promote and d.margin == 0.0
    assert d.reason == (
        "roc_auc 0.8 ties the champion 0.8; a tie promotes: the challenger learnt from fresher data "
        "(higher is better; needed 0)"
    )
    # within floating-point rounding is a tie too, never "worse by 1e-17"
    rounded = decide({"accuracy": 0.1 + 0.2}, {"accuracy": 0.3}, PromotionRule("accuracy"))
    assert rounded.promote and "ties the champion" in rounded.reason and "worse" not in rounded.reason
    strict = decide({"log_loss": 0.4}, {"log_loss": 0.4}, PromotionRule("log_loss", min_improvement=0.01))
    assert not strict.promote
    assert strict.reason == "log_loss 0.4 ties the champion 0.4; a tie is not enough (lower is better; needed 0.01)"
    better = decide({"roc_auc": 0.9}, {"roc_auc": 0.8}, PromotionRule("roc_auc"))
    assert better.reason == "roc_auc 0.9 is better than the champion 0.8 by 0.1 (higher is better; needed 0)"


@pytest.mark.parametrize("metric", ["log_loss", "brier", "mae", "rmse"])
def test_lower_is_better(metric: str) -> None:
    rule = PromotionRule(metric, min_improvement=0.1)
    better = decide({metric: 1.0}, {metric: 1.5}, rule)
    assert better.promote and better.margin == pytest.approx(0.5)
    assert "lower is better" in better.reason
    worse = decide({metric: 1.5}, {metric: 1.0}, rule)
    assert not worse.promote and worse.margin == pytest.approx(-0.5)
    assert "worse" in worse.reason
    not_enough = decide({metric: 1.45}, {metric: 1.5}, rule)
    assert not not_enough.promote and not_enough.margin == pytest.approx(0.05)


def test_missing_metric_on_the_challenger_blocks_with_a_reason() -> None:
    d = decide({"f1": 0.7}, {"accuracy": 0.8}, PromotionRule("accuracy"))
    assert not d.promote
    assert d.reason == "the challenger has no accuracy; cannot judge it"
    assert d.challenger_value is None and d.champion_value == 0.8


def test_missing_metric_on_the_champion_blocks_with_a_reason() -> None:
    d = decide({"accuracy": 0.9}, {"f1": 0.7}, PromotionRule("accuracy"))
    assert not d.promote
    assert d.reason == "the champion has no accuracy; cannot compare"
    assert d.margin is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.9", None, True])
def test_non_finite_or_non_numeric_values_block(bad: object) -> None:
    d = decide({"accuracy": bad}, {"accuracy": 0.8}, PromotionRule())
    assert not d.promote and "challenger" in d.reason
    d = decide({"accuracy": 0.9}, {"accuracy": bad}, PromotionRule())
    assert not d.promote and "champion" in d.reason


def test_directions_of_known_metrics() -> None:
    assert {"accuracy", "f1", "roc_auc"} <= HIGHER_IS_BETTER
    assert {"log_loss", "brier", "mae", "rmse"} <= LOWER_IS_BETTER
    assert not HIGHER_IS_BETTER & LOWER_IS_BETTER
    for metric in HIGHER_IS_BETTER:
        assert improvement(metric, 2.0, 1.0) == 1.0
    for metric in LOWER_IS_BETTER:
        assert improvement(metric, 2.0, 1.0) == -1.0


def test_unknown_metric_needs_a_direction() -> None:
    with pytest.raises(ValueError, match="'lift' has no known direction"):
        PromotionRule("lift")
    with pytest.raises(ValueError, match="direction must be"):
        metric_direction("lift", "up")  # type: ignore[arg-type]
    rule = PromotionRule("lift", direction="lower")
    assert decide({"lift": 1.0}, {"lift": 2.0}, rule).promote
    assert not decide({"lift": 2.0}, {"lift": 1.0}, rule).promote


def test_rule_rejects_non_finite_margin() -> None:
    with pytest.raises(ValueError, match="min_improvement"):
        PromotionRule("accuracy", math.nan)
