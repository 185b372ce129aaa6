"""Challenger vs champion on one holdout: metrics checked against scipy and hand-worked numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from driftline.retrainer.evaluation import ChampionScores, EvaluationError, evaluate, score_metrics
from driftline.retrainer.promotion import PromotionRule


def _data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(float)
    good = np.clip(0.5 + (y - 0.5) * 0.6 + rng.normal(0, 0.2, n), 0, 1)  # informative
    noise = rng.random(n)  # uninformative
    return y, good, noise


def test_classification_metrics_match_scipy_and_hand_computation() -> None:
    y, s, _ = _data()
    m = score_metrics(y, s, "classification")
    u = stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic
    assert m["roc_auc"] == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    predicted = s >= 0.5
    assert m["accuracy"] == pytest.approx((predicted == (y == 1)).mean())
    tp = (predicted & (y == 1)).sum()
    assert m["precision"] == pytest.approx(tp / predicted.sum())
    assert m["recall"] == pytest.approx(tp / (y == 1).sum())
    clipped = np.clip(s, 1e-15, 1 - 1e-15)
    assert m["log_loss"] == pytest.approx(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    assert m["brier"] == pytest.approx(np.mean((s - y) ** 2))


def test_regression_metrics() -> None:
    y = np.array([1.0, 2.0, 4.0, 8.0])
    s = np.array([1.5, 2.0, 3.0, 10.0])
    m = score_metrics(y, s, "regression")
    assert m == pytest.approx({"mae": (0.5 + 0 + 1 + 2) / 4, "rmse": np.sqrt((0.25 + 0 + 1 + 4) / 4)})


def test_scores_of_the_wrong_length_are_an_error() -> None:
    with pytest.raises(EvaluationError, match="3 scores for 2 labels"):
        score_metrics(np.array([0.0, 1.0]), np.array([0.1, 0.2, 0.3]), "classification")


def test_without_a_champion_the_challenger_is_promoted() -> None:
    y, s, _ = _data()
    ev = evaluate("classification", y, s, y, s, None, PromotionRule("roc_auc"))
    assert ev.decision.promote and ev.champion_metrics is None
    assert ev.decision.reason.startswith("no champion yet")
    assert ev.compared_rows == ev.holdout_rows == len(y)


def test_better_challenger_is_promoted_worse_is_kept() -> None:
    y, good, noise = _data()
    rule = PromotionRule("roc_auc", min_improvement=0.05)
    up = evaluate("classification", y, good, y, good, ChampionScores("1", noise, "artifact"), rule)
    assert up.decision.promote
    champion_auc = score_metrics(y, noise, "classification")["roc_auc"]
    assert up.decision.margin == pytest.approx(up.holdout["roc_auc"] - champion_auc)
    assert "champion v1 (artifact)" in up.summary() and ": promote:" in up.summary()

    down = evaluate("classification", y, noise, y, noise, ChampionScores("1", good, "artifact"), rule)
    assert not down.decision.promote
    assert "keep as challenger" in down.summary()


def test_a_tie_is_kept_when_a_margin_is_required() -> None:
    y, good, _ = _data()
    ev = evaluate(
        "classification",
        y,
        good,
        y,
        good,
        ChampionScores("1", good.copy(), "artifact"),
        PromotionRule("accuracy", min_improvement=0.01),
    )
    assert ev.decision.margin == 0.0 and not ev.decision.promote


def test_lower_is_better_metrics() -> None:
    y, good, noise = _data()
    ev = evaluate("classification", y, good, y, good, ChampionScores("1", noise, "artifact"), PromotionRule("log_loss"))
    assert ev.decision.promote and ev.holdout["log_loss"] < ev.champion_metrics["log_loss"]


def test_logged_predictions_compare_both_models_on_the_rows_the_champion_served() -> None:
    # the challenger is perfect on the first half and wrong on the second; the champion logged only the second half
    y = np.array([1.0, 0.0] * 10)
    challenger = np.where(np.arange(20) < 10, y, 1 - y)
    champion = np.full(20, np.nan)
    champion[10:] = y[10:] * 0.8 + 0.1  # right on every row it served
    ev = evaluate(
        "classification",
        y,
        y,
        y,
        challenger,
        ChampionScores("1", champion, "logged predictions"),
        PromotionRule("accuracy"),
    )
    assert ev.holdout["accuracy"] == 0.5  # registered metrics: the whole holdout
    assert ev.compared_rows == 10
    assert ev.challenger_compared["accuracy"] == 0.0 and ev.champion_metrics["accuracy"] == 1.0
    assert not ev.decision.promote


def test_a_champion_that_served_none_of_the_holdout_blocks_promotion() -> None:
    y, good, _ = _data(20)
    ev = evaluate(
        "classification",
        y,
        good,
        y,
        good,
        ChampionScores("3", np.full(20, np.nan), "logged predictions"),
        PromotionRule(),
    )
    assert not ev.decision.promote
    assert ev.decision.reason == (
        "the champion (version 3, logged predictions) has no score for any of the 20 holdout rows; cannot compare"
    )


def test_a_champion_whose_scores_are_not_probabilities_blocks_promotion() -> None:
    y, good, _ = _data(20)
    ev = evaluate(
        "classification", y, good, y, good, ChampionScores("1", good * 5, "logged predictions"), PromotionRule()
    )
    assert not ev.decision.promote
    assert "cannot be evaluated: classification scores must be probabilities" in ev.decision.reason


def test_a_challenger_without_scores_is_an_error() -> None:
    y, good, _ = _data(20)
    holes = good.copy()
    holes[3] = np.nan
    with pytest.raises(EvaluationError, match="no score for 1 of 20 holdout rows"):
        evaluate("classification", y, good, y, holes, None, PromotionRule())
