"""Concept drift: P(y | x) changes while the inputs and the scores stay as they were. The label-free
estimate cannot see it and must not pretend to; only the labels tell.

A calibrated binary model runs through real Kafka and ClickHouse. After four 2,000-event windows the
labels flip for the rows with ``a > 0.5`` (about 31% of the traffic); the inputs keep their
distribution, so the scores, and with them the estimate, stay where they were. The labels arrive an
hour later on their own topic: the worker joins them and writes the realized accuracy, which falls,
and the label-driven performance trigger (not the estimate's) requests the retrain.
"""

from __future__ import annotations

import numpy as np
import pytest
from estimate_stream import inputs, realized_accuracy, register_calibrated, retrain_requests, score
from worker_harness import INPUT_MONITORS_OFF, REPO, T0, WINDOW_MS, WorkerEnv, env  # noqa: F401 (env: the fixture)

from driftline.streams.records import LabelEvent, PredictionBatch

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

PER_WINDOW = 2_000  # one event per millisecond in 2-second windows
WINDOWS = 10
STEADY = 4  # windows before the concept drift
CHUNK = 500
LABEL_DELAY_MS = 3_600_000  # a multiple of the window: label window w holds exactly prediction window w's labels
FLIPPED_ABOVE = 0.5  # the label flips where feature a exceeds this


def test_estimate_does_not_follow_concept_drift_while_the_labels_show_it(env: WorkerEnv, unique: str) -> None:
    model = f"concept-{unique}"
    rng = np.random.default_rng(17)
    version, calibrator, reference_accuracy = register_calibrated(env, model, rng, with_holdout=True)
    reference_estimate = calibrator.reference_estimates()["accuracy"].value

    # the inputs do not move: the input monitors are off so that nothing but performance speaks; both
    # performance triggers are armed, the label-driven one and the estimate's
    performance = {"metric": "accuracy", "max_drop": 0.05, "estimated_accuracy_drop": 0.05}
    policy = {**INPUT_MONITORS_OFF, "performance": performance}

    truth: list[tuple[np.ndarray, np.ndarray]] = []  # per window: the labels sent, the scores
    for w in range(WINDOWS):
        x = inputs(rng, PER_WINDOW)  # the same input distribution throughout
        s = score(x)
        y = (rng.random(PER_WINDOW) < s).astype(float)
        if w >= STEADY:
            y = np.where(x["a"] > FLIPPED_ABOVE, 1.0 - y, y)  # P(y | x) becomes 1 - score there
        truth.append((y, s))
        times = T0 + w * WINDOW_MS + np.arange(PER_WINDOW, dtype=np.int64)
        ids = [f"w{w}-{i}" for i in range(PER_WINDOW)]
        for lo in range(0, PER_WINDOW, CHUNK):
            part = slice(lo, lo + CHUNK)
            batch = PredictionBatch(
                model, version, ids[part], times[part], numeric={f: v[part] for f, v in x.items()}, predictions=s[part]
            )
            env.publish("predictions", model, batch)
        for event_id, t, label in zip(ids, times.tolist(), y.tolist()):
            env.publish("labels", model, LabelEvent(event_id, model, t + LABEL_DELAY_MS, label))
    env.flush()

    worker = env.start_worker("w1", f"app-{unique}", idle_seconds=2.0, policy=policy)

    def label_windows() -> int:
        return env.count("performance_metrics", "model_id = {m:String} AND metric = 'n_labeled'", m=model)

    env.wait(
        lambda: env.windows_written(model) >= WINDOWS and label_windows() >= WINDOWS,
        120,
        "every prediction window and every label window",
    )
    assert worker.stop() == 0
    mine = retrain_requests(env, model)

    rows = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, metric, value, n_labeled FROM performance_metrics FINAL "
        "WHERE model_id = {m:String} AND segment = '' "
        "AND metric IN ('accuracy', 'estimated_accuracy', 'estimated_accuracy_lower', 'estimated_accuracy_upper')",
        m=model,
    )
    by = {(r["ws"], r["metric"]): r for r in rows}
    estimated, lower, upper, realized = (np.empty(WINDOWS) for _ in range(4))
    for w, (y, s) in enumerate(truth):
        start, labelled = T0 + w * WINDOW_MS, T0 + LABEL_DELAY_MS + w * WINDOW_MS
        estimated[w] = by[(start, "estimated_accuracy")]["value"]
        lower[w] = by[(start, "estimated_accuracy_lower")]["value"]
        upper[w] = by[(start, "estimated_accuracy_upper")]["value"]
        assert by[(start, "estimated_accuracy")]["n_labeled"] == 0  # written before any label
        # the worker's realized accuracy is the labels' own, graded here by hand
        realized[w] = realized_accuracy(y, s)
        assert by[(labelled, "accuracy")]["n_labeled"] == PER_WINDOW
        assert by[(labelled, "accuracy")]["value"] == pytest.approx(realized[w], abs=1e-12), w
    before, after = slice(0, STEADY), slice(STEADY, WINDOWS)

    # before the concept drift the estimate is right: the band covers the realized accuracy, the error is small
    assert np.mean(np.abs(estimated[before] - realized[before])) <= 0.02, (estimated, realized)
    assert np.sum((lower[before] <= realized[before]) & (realized[before] <= upper[before])) >= STEADY - 1
    # after it the realized accuracy falls...
    assert realized[after].mean() < realized[before].mean() - 0.1, realized
    # ...while the estimate stays at the reference's: no band covers what the labels show
    assert np.all(np.abs(estimated - reference_estimate) <= 0.02), (estimated, reference_estimate)
    assert abs(estimated[after].mean() - estimated[before].mean()) <= 0.01, estimated
    assert np.all(realized[after] < lower[after]), (realized, lower)

    # only the labels can ask for the retrain: the performance trigger fires on the realized accuracy,
    # the estimate's trigger stays quiet
    assert len(mine) == 1 and mine[0].reason == "performance", mine
    assert [e.metric for e in mine[0].evidence] == ["accuracy"]
    assert mine[0].evidence[0].window_start >= T0 + LABEL_DELAY_MS + STEADY * WINDOW_MS
    kinds = {r["kind"] for r in env.query("SELECT kind FROM alerts FINAL WHERE model_id = {m:String}", m=model)}
    assert "estimated_performance_drop" not in kinds and {"performance_drop", "retrain_requested"} <= kinds, kinds
    print(
        f"RESULT concept-drift windows={WINDOWS} reference realized={reference_accuracy:.3f} "
        f"estimated={reference_estimate:.3f}; before: realized={realized[before].mean():.3f} "
        f"estimated={estimated[before].mean():.3f}; after: realized={realized[after].mean():.3f} "
        f"estimated={estimated[after].mean():.3f} band=[{lower[after].mean():.3f}, {upper[after].mean():.3f}]"
    )


def test_the_docs_say_when_to_trust_the_estimate_and_when_only_labels_can_tell() -> None:
    text = (REPO / "docs" / "ESTIMATION.md").read_text()
    heading = "### When to trust the estimate, and when only labels can tell"
    assert heading in text
    section = text.split(heading, 1)[1].split("\n### ", 1)[0]
    assert "**Covariate shift**" in section and "trust it" in section
    assert "**Concept drift**" in section and "Only labels tell" in section
    # the measured figures are this test's and the covariate-shift test's
    assert "tests/integration/test_worker_concept_drift.py" in section
    assert "tests/integration/test_worker_estimates.py" in section
