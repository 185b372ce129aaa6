"""Whether a freshly trained challenger replaces the champion.

Both models are scored on the same time-based holdout (the newest part of the
retraining snapshot), so their metrics are directly comparable. The rule is a
single metric and a minimum improvement in that metric's own units; which way
is "better" is known for the usual metrics and can be given for others.

This module also owns the vocabulary of metric directions, which the trigger
policy uses to decide what a performance *drop* means.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]

# Metric differences below this are floating-point rounding, not signal:
# 0.85 - 0.80 must count as an improvement of 0.05.
TOLERANCE = 1e-9

HIGHER_IS_BETTER = frozenset(
    {"accuracy", "balanced_accuracy", "f1", "precision", "recall", "roc_auc", "pr_auc", "average_precision", "r2"}
)
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "mae", "mse", "rmse", "mape", "error_rate"})


def metric_direction(metric: str, direction: Direction | None = None) -> Direction:
    """Which way ``metric`` improves: the given ``direction``, else the known one.

    >>> metric_direction("roc_auc"), metric_direction("log_loss")
    ('higher', 'lower')
    >>> metric_direction("lift", "higher")
    'higher'
    >>> metric_direction("lift")
    Traceback (most recent call last):
    ...
    ValueError: metric 'lift' has no known direction; give direction: higher or lower
    """
    if direction is not None:
        if direction not in ("higher", "lower"):
            raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
        return direction
    if metric in HIGHER_IS_BETTER:
        return "higher"
    if metric in LOWER_IS_BETTER:
        return "lower"
    raise ValueError(f"metric {metric!r} has no known direction; give direction: higher or lower")


def improvement(metric: str, new: float, old: float, direction: Direction | None = None) -> float:
    """How much better ``new`` is than ``old``, in the metric's units (negative: worse).

    >>> improvement("accuracy", 0.91, 0.89) > 0, improvement("rmse", 3.0, 2.5)
    (True, -0.5)
    """
    return new - old if metric_direction(metric, direction) == "higher" else old - new


@dataclass(frozen=True)
class PromotionRule:
    """Promote when the challenger beats the champion by at least ``min_improvement``.

    A tie passes with the default ``min_improvement=0``: the challenger learnt
    from fresher data, so equal holdout performance favours it.

    >>> PromotionRule("log_loss", 0.01).direction_resolved
    'lower'
    >>> PromotionRule("lift")
    Traceback (most recent call last):
    ...
    ValueError: metric 'lift' has no known direction; give direction: higher or lower
    """

    metric: str = "accuracy"
    min_improvement: float = 0.0
    direction: Direction | None = None

    def __post_init__(self) -> None:
        if not self.metric:
            raise ValueError("a promotion rule needs a metric")
        metric_direction(self.metric, self.direction)
        if not math.isfinite(self.min_improvement):
            raise ValueError(f"min_improvement must be finite, got {self.min_improvement}")

    @property
    def direction_resolved(self) -> Direction:
        return metric_direction(self.metric, self.direction)


@dataclass(frozen=True)
class PromotionDecision:
    """The outcome of :func:`decide`, with the numbers behind it.

    ``margin`` is how much better the challenger is, direction-adjusted
    (positive: better), or None when there was nothing to compare.

    >>> decide({"accuracy": 0.9}, None, PromotionRule()).promote
    True
    """

    promote: bool
    reason: str
    metric: str
    challenger_value: float | None
    champion_value: float | None
    margin: float | None


def finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (numpy scalars too), else None.

    A string is not parsed: a metric that arrives as text is a bug upstream.

    >>> finite_number(1), finite_number(float("nan")), finite_number("0.9"), finite_number(True)
    (1.0, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _value(metrics: Mapping[str, float], metric: str) -> float | None:
    return finite_number(metrics.get(metric))


def decide(
    challenger_metrics: Mapping[str, float],
    champion_metrics: Mapping[str, float] | None,
    rule: PromotionRule,
) -> PromotionDecision:
    """Whether the challenger should become the champion.

    Without a champion the challenger is promoted (there is nothing to keep).
    A metric that is missing or not a finite number on either side blocks the
    promotion with a reason saying which side lacks it.

    >>> rule = PromotionRule("rmse", min_improvement=0.1)
    >>> d = decide({"rmse": 2.0}, {"rmse": 2.5}, rule)
    >>> d.promote, d.margin, d.reason
    (True, 0.5, 'rmse 2 is better than the champion 2.5 by 0.5 (lower is better; needed 0.1)')
    >>> decide({"rmse": 2.45}, {"rmse": 2.5}, rule).promote
    False
    >>> print(decide({"rmse": 2.5}, {"rmse": 2.5}, PromotionRule("rmse")).reason)  # doctest: +NORMALIZE_WHITESPACE
    rmse 2.5 ties the champion 2.5; a tie promotes:
    the challenger learnt from fresher data (lower is better; needed 0)
    """
    metric = rule.metric
    direction = rule.direction_resolved
    challenger = _value(challenger_metrics, metric)
    if challenger is None:
        raw = challenger_metrics.get(metric)
        what = "has no" if raw is None else f"has a non-finite or non-numeric ({raw!r})"
        return PromotionDecision(
            False,
            f"the challenger {what} {metric}; cannot judge it",
            metric,
            None,
            _value(champion_metrics or {}, metric),
            None,
        )
    if champion_metrics is None:
        return PromotionDecision(
            True, f"no champion yet; challenger {metric} {challenger:g}", metric, challenger, None, None
        )
    champion = _value(champion_metrics, metric)
    if champion is None:
        raw = champion_metrics.get(metric)
        what = "has no" if raw is None else f"has a non-finite or non-numeric ({raw!r})"
        return PromotionDecision(False, f"the champion {what} {metric}; cannot compare", metric, challenger, None, None)
    margin = improvement(metric, challenger, champion, direction)
    promote = margin >= rule.min_improvement - TOLERANCE
    terms = f"({direction} is better; needed {rule.min_improvement:g})"
    if abs(margin) <= TOLERANCE:
        verdict = "a tie promotes: the challenger learnt from fresher data" if promote else "a tie is not enough"
        reason = f"{metric} {challenger:g} ties the champion {champion:g}; {verdict} {terms}"
    else:
        better = "better" if margin > 0 else "worse"
        reason = f"{metric} {challenger:g} is {better} than the champion {champion:g} by {abs(margin):g} {terms}"
    return PromotionDecision(promote, reason, metric, challenger, champion, margin)
