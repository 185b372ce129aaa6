"""A calibrated binary model and its ground truth, for the worker's label-free estimate tests.

The model scores ``sigmoid(0.8 a - 0.5 c + 0.3 e)`` and is calibrated on its reference: a row's
label is a Bernoulli draw of its score. The realized metrics that grade the worker's estimates
are computed here by hand (numpy, and scipy's Mann-Whitney U for ROC AUC), not by driftline.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu
from worker_harness import FEATURES, REGIONS, WorkerEnv

from driftline.retrainer.evaluation import fit_calibrator
from driftline.retrainer.policy import ReferenceSettings
from driftline.retrainer.registry import Lineage
from driftline.streams import kafka
from driftline.streams.core.estimation import ScoreCalibrator
from driftline.streams.records import RetrainRequest

THRESHOLD = 0.5  # the monitor's decision threshold: predicted positive when score >= 0.5


def score(numeric: dict[str, np.ndarray]) -> np.ndarray:
    """The model's score of a batch of inputs.

    >>> float(score({"a": np.array([0.0]), "c": np.array([0.0]), "e": np.array([0.0])})[0])
    0.5
    """
    z = 0.8 * numeric["a"] - 0.5 * numeric["c"] + 0.3 * numeric["e"]
    return 1.0 / (1.0 + np.exp(-z))


def inputs(rng: np.random.Generator, n: int, shifted: bool = False) -> dict[str, np.ndarray]:
    """``n`` rows of the five features; ``shifted`` moves a and narrows a, c, e (covariate shift):
    the scores crowd 0.5, where the model is least sure.

    >>> sorted(inputs(np.random.default_rng(0), 3))
    ['a', 'b', 'c', 'd', 'e']
    """
    numeric = {f: rng.normal(size=n) for f in FEATURES}
    if shifted:
        numeric["a"] = 0.3 + 0.35 * numeric["a"]
        numeric["c"] = 0.35 * numeric["c"]
        numeric["e"] = 0.35 * numeric["e"]
    return numeric


def realized_accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    """The share of rows whose decision (``score >= 0.5``) matches the label.

    >>> realized_accuracy(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.9, 0.2, 0.4, 0.5]))
    0.5
    """
    return float(np.mean((scores >= THRESHOLD) == (labels == 1.0)))


def realized_roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U of the positives' scores over the negatives', ties counting half.

    >>> realized_roc_auc(np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.9, 0.2, 0.4, 0.4]))
    0.875
    """
    positives, negatives = scores[labels == 1.0], scores[labels == 0.0]
    return float(mannwhitneyu(positives, negatives).statistic / (positives.size * negatives.size))


def register_calibrated(
    env: WorkerEnv, model: str, rng: np.random.Generator, n: int = 20_000, *, with_holdout: bool = False
) -> tuple[str, ScoreCalibrator, float]:
    """Register and promote a version whose reference profile carries a calibrator fitted on ``n``
    labelled reference rows; ``with_holdout`` also registers the reference's realized accuracy as the
    holdout metric (the label-driven performance trigger's baseline). Returns the version, the
    calibrator and that realized accuracy."""
    numeric = inputs(rng, n)
    s = score(numeric)
    labels = (rng.random(n) < s).astype(float)  # calibrated: P(y | x) is the score
    categorical = {"region": rng.choice(REGIONS, n).tolist()}
    calibrator = fit_calibrator("classification", labels, s)
    assert calibrator is not None
    accuracy = realized_accuracy(labels, s)
    lineage = Lineage(dataset_rows=n, holdout_metrics={"accuracy": accuracy} if with_holdout else {})
    profile = ReferenceSettings().profile_builder(model, numeric, categorical, s, calibrator)
    version = env.registry.register(model, lineage=lineage, reference_profile=profile).version
    env.registry.promote(model, version)
    return version, ScoreCalibrator.from_dict(calibrator), accuracy


def retrain_requests(env: WorkerEnv, model: str) -> list[RetrainRequest]:
    """Every retrain request for ``model`` on the test's own topic, read up to its end offsets (no idle
    wait for requests that will not come: the workers have stopped)."""
    on_topic = sum(env.end_offsets("retrain-requests").values())
    received = kafka.consume_records(env.settings, env.settings.topic("retrain-requests"), on_topic, timeout=15)
    assert len(received) == on_topic
    return [r.record for r in received if isinstance(r.record, RetrainRequest) and r.record.model_id == model]
