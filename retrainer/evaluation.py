"""Challenger against champion on one time-based holdout: metrics and the promotion decision.

Pure: scores and labels in, metrics and a :class:`~retrainer.promotion.PromotionDecision`
out. Metrics are those of the monitoring side (``driftline.streams.core.performance``),
so a version's registered holdout metrics and its live performance windows
are computed the same way and can be compared by the performance trigger.

A champion is scored either by its own artifact or, when it has none that
loads (a model trained and served elsewhere), by the predictions it logged.
Logged predictions exist only for the rows that the champion itself served,
so the comparison is made on those rows, for both models; the challenger's
registered holdout metrics still cover the whole holdout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from driftline.retrainer.promotion import PromotionDecision, PromotionRule, decide
from driftline.retrainer.trainers import Task
from driftline.streams.core.performance import compute_performance

ChampionSource = Literal["artifact", "logged predictions"]


class EvaluationError(ValueError):
    """Scores that cannot be evaluated (the wrong length, missing, or not probabilities)."""


def score_metrics(labels: np.ndarray, scores: np.ndarray, task: Task) -> dict[str, float]:
    """Whole-population metrics of ``scores`` against ``labels`` (0/1 for classification).

    Rows without a score are left out; a metric that is undefined on the rows
    (ROC AUC with one class) is absent.

    >>> m = score_metrics(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.9, 0.4, 0.3, 0.2]), "classification")
    >>> m["accuracy"], m["roc_auc"]
    (0.75, 0.75)
    >>> score_metrics(np.array([3.0, 1.0]), np.array([2.0, 2.0]), "regression")
    {'mae': 1.0, 'rmse': 1.0}
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise EvaluationError(f"{scores.size} scores for {labels.size} labels")
    try:
        rows = compute_performance(labels, scores, None, {}, task=task)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    return {r.metric: r.value for r in rows if r.segment == ""}


@dataclass(frozen=True)
class ChampionScores:
    """The champion's scores on the holdout rows (NaN where it has none), and where they came from.

    >>> c = ChampionScores("1", np.array([0.2, np.nan]), "logged predictions")
    >>> c.covered.tolist()
    [True, False]
    """

    version: str
    scores: np.ndarray
    source: ChampionSource
    note: str = ""  # why the source is what it is, e.g. an artifact that failed to load

    @property
    def covered(self) -> np.ndarray:
        return ~np.isnan(np.asarray(self.scores, dtype=np.float64))


@dataclass(frozen=True)
class Evaluation:
    """What the challenger scored on its training rows and on the holdout, and the verdict.

    ``compared_rows`` is how many holdout rows both models were judged on;
    ``challenger_compared`` and ``champion_metrics`` are their metrics on those rows.

    >>> y = np.array([1.0, 0.0, 1.0, 0.0])
    >>> logged = ChampionScores("1", np.array([0.8, 0.3, np.nan, np.nan]), "logged predictions")
    >>> ev = evaluate("classification", y, y, y, np.array([0.9, 0.2, 0.4, 0.1]), logged, PromotionRule())
    >>> ev.holdout["accuracy"], ev.compared_rows, ev.challenger_compared["accuracy"], ev.champion_metrics["accuracy"]
    (0.75, 2, 1.0, 1.0)
    >>> print(ev.summary())  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    challenger accuracy 0.75 on 4 holdout rows;
    champion v1 (logged predictions) 1 vs challenger 1 on 2 rows: promote: ...
    """

    task: Task
    train: dict[str, float]
    holdout: dict[str, float]
    holdout_rows: int
    champion: ChampionScores | None
    champion_metrics: dict[str, float] | None
    challenger_compared: dict[str, float]
    compared_rows: int
    decision: PromotionDecision

    def summary(self) -> str:
        """One line for logs and the registry note."""
        metric = self.decision.metric
        line = f"challenger {metric} {_fmt(self.holdout.get(metric))} on {self.holdout_rows} holdout rows"
        if self.champion is not None:
            source = self.champion.source + (f"; {self.champion.note}" if self.champion.note else "")
            line += (
                f"; champion v{self.champion.version} ({source}) "
                f"{_fmt((self.champion_metrics or {}).get(metric))} vs challenger "
                f"{_fmt(self.challenger_compared.get(metric))} on {self.compared_rows} rows"
            )
        verdict = "promote" if self.decision.promote else "keep as challenger"
        return f"{line}: {verdict}: {self.decision.reason}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def evaluate(
    task: Task,
    train_labels: np.ndarray,
    train_scores: np.ndarray,
    holdout_labels: np.ndarray,
    challenger_scores: np.ndarray,
    champion: ChampionScores | None,
    rule: PromotionRule,
) -> Evaluation:
    """Metrics of the challenger (train and holdout) and of the champion, and whether to promote.

    Without a champion the challenger is promoted. A champion that scored
    none of the holdout rows, or whose scores cannot be evaluated, blocks
    the promotion with a reason saying so.

    >>> y = np.array([1.0, 0.0, 1.0, 0.0])
    >>> good, bad = np.array([0.9, 0.1, 0.8, 0.3]), np.array([0.2, 0.7, 0.9, 0.1])
    >>> ev = evaluate("classification", y, good, y, good, ChampionScores("1", bad, "artifact"), PromotionRule())
    >>> ev.holdout["accuracy"], ev.champion_metrics["accuracy"], ev.decision.promote
    (1.0, 0.5, True)
    """
    train = _challenger_metrics(train_labels, train_scores, task, "training")
    holdout = _challenger_metrics(holdout_labels, challenger_scores, task, "holdout")
    n = int(np.asarray(holdout_labels).size)
    if champion is None:
        return Evaluation(task, train, holdout, n, None, None, holdout, n, decide(holdout, None, rule))
    champion_scores = np.asarray(champion.scores, dtype=np.float64)
    if champion_scores.shape != (n,):
        raise EvaluationError(f"the champion has {champion_scores.size} scores for {n} holdout rows")
    covered = champion.covered
    compared = int(covered.sum())
    name = f"the champion (version {champion.version}, {champion.source})"
    if compared == 0:
        reason = f"{name} has no score for any of the {n} holdout rows; cannot compare"
        return Evaluation(task, train, holdout, n, champion, None, {}, 0, _blocked(rule, holdout, reason))
    labels = np.asarray(holdout_labels, dtype=np.float64)[covered]
    challenger_compared = holdout if compared == n else score_metrics(labels, challenger_scores[covered], task)
    try:
        champion_metrics = score_metrics(labels, champion_scores[covered], task)
    except EvaluationError as exc:
        reason = f"{name} cannot be evaluated: {exc}"
        return Evaluation(
            task,
            train,
            holdout,
            n,
            champion,
            None,
            challenger_compared,
            compared,
            _blocked(rule, challenger_compared, reason),
        )
    decision = decide(challenger_compared, champion_metrics, rule)
    return Evaluation(task, train, holdout, n, champion, champion_metrics, challenger_compared, compared, decision)


def _challenger_metrics(labels: np.ndarray, scores: np.ndarray, task: Task, part: str) -> dict[str, float]:
    scores = np.asarray(scores, dtype=np.float64)
    missing = int(np.isnan(scores).sum())
    if missing:
        # a challenger judged on the rows it chose to score would look better than it is
        raise EvaluationError(f"the challenger gave no score for {missing} of {scores.size} {part} rows")
    return score_metrics(labels, scores, task)


def _blocked(rule: PromotionRule, challenger: Mapping[str, float], reason: str) -> PromotionDecision:
    value = challenger.get(rule.metric)
    return PromotionDecision(False, reason, rule.metric, value, None, None)


def fit_calibrator(task: Task | None, labels: np.ndarray | None, scores: np.ndarray | None) -> dict[str, Any] | None:
    """The JSON of a score calibrator for label-free performance estimates, or None where none fits.

    Fitted for binary classification only (labels 0/1, scores in [0, 1]), on rows
    with both a label and a score; the decision threshold is the monitor's, 0.5.
    A reference too small or one-sided to calibrate (``CalibrationError``) gets
    none: its windows then have no estimate rather than a misleading one.

    >>> rng = np.random.default_rng(0)
    >>> s = rng.random(2_000); y = (rng.random(2_000) < s).astype(float)
    >>> fit_calibrator("classification", y, s)["threshold"]
    0.5
    >>> fit_calibrator("regression", y, s) is None, fit_calibrator("classification", y[:50], s[:50]) is None
    (True, True)
    """
    from driftline.streams.core.estimation import CalibrationError, ScoreCalibrator

    if task != "classification" or labels is None or scores is None:
        return None
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(scores, dtype=np.float64)
    if y.shape != p.shape:
        return None
    known = ~np.isnan(y) & ~np.isnan(p)
    y, p = y[known], p[known]
    if not np.isin(y, (0.0, 1.0)).all() or p.size == 0 or p.min() < 0.0 or p.max() > 1.0:
        return None  # not a binary classifier's probability
    try:
        return ScoreCalibrator.fit(p, y, threshold=0.5).to_dict()
    except CalibrationError:
        return None
