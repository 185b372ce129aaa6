"""A demo-sized monitoring history, written through the Warehouse adapter and the Registry.

Three hours of five-minute windows for one credit model:

- version 1 serves from the start; from window 12 the inputs ``income`` and
  ``debt_ratio`` drift (over three windows), the prediction drifts with them
  and accuracy falls;
- a drift alert, a performance alert and a retrain request (reason drift,
  with evidence) follow; version 2 is trained, registered as challenger and
  promoted; it takes the traffic from window 17 and accuracy recovers;
- latency has a spike, the DLQ a burst of bad JSON, labels lag two windows;
- a replayed window and a second registry sync write some rows twice, so a
  query without FINAL where it matters counts them twice;
- the other alarm classes: ``income`` loses values while it drifts (a
  data-quality alarm on ``missing_rate`` in windows 13 and 14 of v1), the
  numeric features together (``__multivariate__``) are flagged in windows 13 to
  15 of v1, and the slow-drift evidence (``trend_evidence``) of the drifting
  streams crosses its alarm level from window 13 until v1 stops serving; every
  prediction window has label-free estimates (``estimated_accuracy``,
  ``estimated_roc_auc`` with their 95% band), the last ones before any label;
  the raw labels carry an event time an hour after their prediction's (as a
  label logged when the outcome is known does), and the last labelled window
  has labels for half its predictions only, so ``estimated_vs_realized`` must
  grade each prediction window by its own predictions' labels.

Values are deterministic for a given seed; times end at ``end_ms`` (default:
now, rounded down to the window) so that "this week" queries find them.
:class:`SeededRun` carries the ground truth the tests compare queries with,
computed here from the same arrays that were written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import numpy as np
from scipy import stats

from driftline.retrainer.registry import ArtifactStore, Lineage, Registry
from driftline.streams.records import (
    PREDICTION_FEATURE,
    Alert,
    DriftReport,
    Evidence,
    FeatureDrift,
    LabelEvent,
    PredictionBatch,
    RetrainRequest,
)
from driftline.streams.warehouse import Warehouse
from driftline.streams.warehouse.rows import PerformanceRow, RejectedEventRow, WindowProfileRow

MINUTE = 60_000
WINDOW_MS = 5 * MINUTE
N_WINDOWS = 36
DRIFT_AT = 12  # first window whose inputs drift
RETRAIN_AT = 14  # the window after which the policy asks for a retrain
V2_SERVES_FROM = 17  # v1 and v2 both serve in this window, then only v2
LABEL_LAG = 2  # the last windows have no labels yet, so no performance
NUMERIC = ("income", "age", "debt_ratio")
CATEGORICAL = ("region", "channel")
DRIFTING = ("income", "debt_ratio")
REGIONS = ("north", "south", "east", "west")
CHANNELS = ("web", "branch", "mobile")
# Per numeric feature: reference mean, std, and the mean once drifted.
FEATURE_SHAPE = {"income": (52_000.0, 14_000.0, 39_000.0), "age": (41.0, 12.0, 41.0), "debt_ratio": (0.29, 0.12, 0.47)}
WASSERSTEIN_THRESHOLD = {"income": 4_000.0, "age": 3.0, "debt_ratio": 0.05, PREDICTION_FEATURE: 0.05}
THRESHOLDS = {"psi": 0.2, "ks": 0.1, "missing_rate": 0.05, "chi2": 16.9, "new_category_rate": 0.01, "adwin": 1.0}
EVENTS_PER_WINDOW = 40  # raw predictions kept per version and window (the metrics assume ~300)
QUALITY_AT = (DRIFT_AT + 1, DRIFT_AT + 2)  # v1 windows where income's missing_rate raises a data-quality alarm
MISSING_ALARM = 0.09  # income's missing_rate in those windows (its threshold: 0.05)
MULTIVARIATE_AT = (DRIFT_AT + 1, DRIFT_AT + 2, DRIFT_AT + 3)  # v1 windows flagged by __multivariate__
MULTIVARIATE = "__multivariate__"
TREND_STREAMS = (*NUMERIC, PREDICTION_FEATURE)
TREND_LEVEL = len(TREND_STREAMS) / 0.05  # k / alpha
ESTIMATED = ("accuracy", "roc_auc")
ESTIMATE_HALF_BAND = 0.03
LABEL_DELAY_MS = 60 * MINUTE  # a raw label's event time is this long after its prediction's
PARTLY_LABELLED = N_WINDOWS - LABEL_LAG - 1  # the window whose labels have half arrived


@dataclass(frozen=True)
class RawWindow:
    """The raw events seeded for one version and window: what a realized metric is graded from."""

    scores: np.ndarray
    predicted: np.ndarray  # the decision, 1.0 or 0.0: score >= 0.5 (the labels 'default'/'repaid' are no binary words)
    labels: np.ndarray  # 0.0/1.0, NaN where the label has not arrived

    @property
    def n_labeled(self) -> int:
        return int((~np.isnan(self.labels)).sum())

    def realized(self, metric: str) -> float | None:
        """The window's ``accuracy`` (numpy) or ``roc_auc`` (scipy's Mann-Whitney U) on its labelled rows."""
        known = ~np.isnan(self.labels)
        y, s = self.labels[known], self.scores[known]
        n1, n0 = int((y == 1).sum()), int((y == 0).sum())
        if metric == "accuracy":
            return float(np.mean(self.predicted[known] == y)) if known.any() else None
        if metric == "roc_auc":
            return float(stats.mannwhitneyu(s[y == 1], s[y == 0]).statistic / (n1 * n0)) if n1 and n0 else None
        raise ValueError(f"no hand grading for {metric!r}")


@dataclass
class SeededRun:
    """What was written, and the truths that queries over it must find."""

    model_id: str
    start_ms: int
    end_ms: int
    window_ms: int
    registry: Registry
    retrain_request_id: str
    v2_registered_ms: int
    promoted_ms: int
    drifted_windows: dict[str, int]  # feature -> (version, window) pairs with a drifted metric, deduplicated
    drifted_window_count: int  # (version, window) pairs with any drifted input or prediction metric
    rejected_by_reason: dict[str, int]
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows inserted, duplicates included
    # (version, window) -> the raw predictions' scores and labels (NaN: no label yet), in the order written
    raw: dict[tuple[str, int], RawWindow] = field(default_factory=dict)

    def window_start(self, k: int) -> int:
        return self.start_ms + k * self.window_ms


@contextlib.contextmanager
def registry_clock(at_ms: int) -> Iterator[None]:
    """Make the registry stamp its changes at ``at_ms``, so they fall inside the seeded history."""
    with mock.patch("driftline.retrainer.registry.store.now_ms", lambda: at_ms):
        yield


def open_registry(root) -> Registry:
    """A throwaway SQLite registry with its artifact store under ``root``."""
    return Registry(f"sqlite:///{root}/registry.db", ArtifactStore(str(root / "artifacts")))


def seed_run(
    warehouse: Warehouse,
    registry: Registry,
    *,
    model_id: str = "credit",
    end_ms: int | None = None,
    seed: int = 7,
) -> SeededRun:
    """Write the whole history into ``warehouse`` (already migrated) and ``registry``."""
    rng = np.random.default_rng(seed)
    if end_ms is None:
        end_ms = time.time_ns() // 1_000_000 // WINDOW_MS * WINDOW_MS
    start_ms = end_ms - N_WINDOWS * WINDOW_MS
    k = np.arange(N_WINDOWS)
    starts = start_ms + k * WINDOW_MS
    ends = starts + WINDOW_MS
    # how far the world has moved: 0 before the drift, 1 once it is complete
    shift = np.clip((k - DRIFT_AT + 1) / 3.0, 0.0, 1.0)
    serving = {"1": k <= V2_SERVES_FROM, "2": k >= V2_SERVES_FROM}
    # v2 was trained on drifted data: relative to its own reference the world barely moves
    moved = {"1": shift, "2": np.zeros(N_WINDOWS)}

    retrain_ms = int(ends[RETRAIN_AT]) + 5_000
    v2_registered_ms = int(ends[RETRAIN_AT + 1]) + 2 * MINUTE
    promoted_ms = int(ends[RETRAIN_AT + 2]) + 30_000
    request_id = f"{model_id}-drift-{int(starts[DRIFT_AT])}"
    rows: dict[str, int] = {}

    def count(table: str, n: int) -> None:
        rows[table] = rows.get(table, 0) + n

    # ---- drift: one DriftReport per version and window ----------------------------------------------
    reports: list[DriftReport] = []
    drifted_pairs: dict[str, set[tuple[str, int]]] = {
        f: set() for f in (*NUMERIC, *CATEGORICAL, PREDICTION_FEATURE, MULTIVARIATE)
    }
    # the new alarm classes draw from their own generator: the older rows keep their values
    extra = np.random.default_rng(seed + 1)
    for version, active in serving.items():
        for w in np.flatnonzero(active):
            v1 = version == "1"
            metrics = _window_metrics(
                rng,
                float(moved[version][w]),
                detector_fired=(v1 and w == DRIFT_AT + 1),
                income_missing=MISSING_ALARM if v1 and w in QUALITY_AT else None,
            )
            metrics += _multivariate_metrics(extra, flagged=v1 and w in MULTIVARIATE_AT)
            metrics += _trend_metrics(extra, windows_drifting=int(w) - DRIFT_AT + 1 if v1 else 0)
            drifted = sorted({m.feature for m in metrics if m.drifted})
            for feature in drifted:
                drifted_pairs[feature].add((version, int(w)))
            computed = int(ends[w]) + 1_500
            reports.append(
                DriftReport(model_id, version, int(starts[w]), int(ends[w]), 300, 20_000, drifted, metrics, computed)
            )
    count("drift_metrics", sum(len(r.metrics) for r in reports))
    warehouse.insert_drift_reports(reports)
    # a worker that crashed after writing replays its last windows: the same results, computed again
    replayed = [
        r
        for r in reports
        if r.model_version == "1" and DRIFT_AT <= (r.window_start - start_ms) // WINDOW_MS <= RETRAIN_AT
    ]
    replayed = [dataclasses.replace(r, computed_at=r.computed_at + 60_000) for r in replayed]
    count("drift_metrics", sum(len(r.metrics) for r in replayed))
    warehouse.insert_drift_reports(replayed)

    # ---- profiles ---------------------------------------------------------------------------------------
    warehouse.insert_window_profiles(_profiles(rng, model_id, serving, moved, starts, ends))

    # ---- performance and latency ------------------------------------------------------------------------
    perf = _performance(rng, model_id, serving, shift, starts, ends)
    count("performance_metrics", len(perf))
    warehouse.insert_performance_metrics(perf)

    # ---- raw predictions and labels ------------------------------------------------------------------
    batches, labels, raw = _raw_events(rng, model_id, serving, moved, starts)
    count("predictions", sum(b.n for b in batches))
    count("labels", len(labels))
    warehouse.insert_predictions(batches)
    warehouse.insert_labels(labels)

    # ---- alerts -------------------------------------------------------------------------------------------
    def alert(kind: str, severity: str, version: str, w: int, message: str) -> Alert:
        return Alert(
            f"{model_id}-{version}-{kind}-{int(starts[w])}",
            model_id,
            version,
            severity,
            kind,
            message,
            int(ends[w]) + 2_000,
            int(starts[w]),
            int(ends[w]),
        )

    alerts = [
        alert("drift", "warning", "1", DRIFT_AT + 1, "income, debt_ratio and the prediction drifted (psi above 0.2)"),
        alert("performance_drop", "critical", "1", RETRAIN_AT, "accuracy fell below 0.80"),
        alert("performance_recovered", "info", "2", V2_SERVES_FROM + 2, "accuracy is back above 0.80"),
        alert("latency", "warning", "2", 24, "p99 latency above 100 ms"),
    ]
    count("alerts", len(alerts))
    warehouse.insert_alerts(alerts)

    # ---- retraining --------------------------------------------------------------------------------------
    evidence = [
        Evidence(m.metric, m.feature, m.value, m.threshold, r.window_start, r.window_end)
        for r in reports
        if r.model_version == "1" and DRIFT_AT + 1 <= (r.window_start - start_ms) // WINDOW_MS <= RETRAIN_AT
        for m in r.metrics
        if m.drifted and m.metric == "psi" and m.feature in DRIFTING
    ]
    request = RetrainRequest(request_id, model_id, "1", "drift", retrain_ms, evidence)
    warehouse.upsert_retrain_request(request, "requested", updated_at=retrain_ms)
    warehouse.upsert_retrain_request(request, "training", updated_at=retrain_ms + 20_000)
    warehouse.upsert_retrain_request(request, "registered", registered_version="2", updated_at=v2_registered_ms)
    manual = RetrainRequest(f"{model_id}-manual-{int(starts[4])}", model_id, "1", "manual", int(ends[4]))
    warehouse.upsert_retrain_request(manual, "requested", updated_at=int(ends[4]))
    warehouse.upsert_retrain_request(
        manual, "failed", "not enough labelled rows: 812 < 2000", updated_at=int(ends[4]) + 15_000
    )
    count("retrain_requests", 5)

    # ---- registry and its mirror ----------------------------------------------------------------------
    v1_at = start_ms - 2 * 60 * MINUTE
    with registry_clock(v1_at):
        registry.register(
            model_id,
            lineage=Lineage(
                dataset_uri=f"file:///data/{model_id}/train-2025q3.parquet",
                dataset_sha256=_sha("v1 training set"),
                dataset_rows=20_000,
                dataset_start_ms=start_ms - 30 * 24 * 60 * MINUTE,
                dataset_end_ms=start_ms - 24 * 60 * MINUTE,
                code_version="0.1.0+g1a2b3c4d5e6f",
                trainer="river-linear",
                hyperparameters={"epochs": 3, "l2": 0.001, "learning_rate": 0.05},
                train_metrics={"accuracy": 0.874, "roc_auc": 0.893},
                holdout_metrics={"accuracy": 0.861, "roc_auc": 0.881},
            ),
            reference_profile={"features": list(NUMERIC + CATEGORICAL)},
            artifact_bytes=b"credit model v1",
            actor="ana",
            reason="first model",
        )
    with registry_clock(v1_at + 10 * MINUTE):
        registry.promote(model_id, "1", actor="ana", reason="baseline")
    with registry_clock(v2_registered_ms):
        registry.register(
            model_id,
            lineage=Lineage(
                dataset_uri=f"clickhouse://driftline/predictions?model_id={model_id}&start={starts[0]}&end={ends[RETRAIN_AT]}",
                dataset_sha256=_sha("v2 snapshot"),
                dataset_rows=4_620,
                dataset_start_ms=int(starts[0]),
                dataset_end_ms=int(ends[RETRAIN_AT]),
                code_version="0.1.0+g1a2b3c4d5e6f",
                trainer="river-linear",
                hyperparameters={"epochs": 3, "l2": 0.001, "learning_rate": 0.05},
                train_metrics={"accuracy": 0.852, "roc_auc": 0.879},
                holdout_metrics={"accuracy": 0.843, "roc_auc": 0.871, "champion_roc_auc": 0.742},
                parent_version="1",
                request_id=request_id,
                evidence=evidence,
            ),
            reference_profile={"features": list(NUMERIC + CATEGORICAL)},
            artifact_bytes=b"credit model v2",
            actor="retrainer",
            reason=f"retrain request {request_id}",
        )
        registry.set_alias(model_id, "challenger", "2", actor="retrainer", reason="candidate")
        warehouse.upsert_model_versions(registry.mirror_rows(model_id))
    with registry_clock(promoted_ms):
        registry.promote(
            model_id, "2", actor="retrainer", reason="challenger beat champion: holdout roc_auc 0.871 > 0.742"
        )
        warehouse.upsert_model_versions(registry.mirror_rows(model_id))
    count("model_versions", 4)

    # ---- DLQ --------------------------------------------------------------------------------------------
    rejected = _rejected(rng, model_id, starts)
    count("rejected_events", len(rejected))
    warehouse.insert_rejected_events(rejected)
    by_reason: dict[str, int] = {}
    for r in rejected:
        by_reason[r.reason] = by_reason.get(r.reason, 0) + 1

    drifted_any: set[tuple[str, int]] = set().union(*drifted_pairs.values())
    return SeededRun(
        model_id=model_id,
        start_ms=start_ms,
        end_ms=end_ms,
        window_ms=WINDOW_MS,
        registry=registry,
        retrain_request_id=request_id,
        v2_registered_ms=v2_registered_ms,
        promoted_ms=promoted_ms,
        drifted_windows={f: len(p) for f, p in drifted_pairs.items()},
        drifted_window_count=len(drifted_any),
        rejected_by_reason=by_reason,
        rows=rows,
        raw=raw,
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _window_metrics(
    rng: np.random.Generator, moved: float, *, detector_fired: bool, income_missing: float | None = None
) -> list[FeatureDrift]:
    """The metrics of one window; inputs in DRIFTING (and the prediction) move with ``moved``."""
    out: list[FeatureDrift] = []

    def add(feature: str, metric: str, value: float, threshold: float, p_value: float | None = None) -> None:
        kind = "data_quality" if metric in ("missing_rate", "new_category_rate") else "drift"
        if feature == "income" and metric == "missing_rate" and income_missing is not None:
            value = income_missing
        out.append(FeatureDrift(feature, metric, float(value), p_value, threshold, bool(value > threshold), kind))

    for feature in (*NUMERIC, PREDICTION_FEATURE):
        m = moved if feature in DRIFTING or feature == PREDICTION_FEATURE else 0.0
        gain = 0.6 if feature == PREDICTION_FEATURE else 1.0
        psi = 0.025 + 0.45 * m * gain + abs(rng.normal(0, 0.012))
        ks = 0.035 + 0.26 * m * gain + abs(rng.normal(0, 0.008))
        # the KS p-value for n=300 against a large reference
        p_value = float(stats.kstwo.sf(ks, 300))
        add(feature, "psi", psi, THRESHOLDS["psi"])
        add(feature, "ks", ks, THRESHOLDS["ks"], p_value)
        w_thr = WASSERSTEIN_THRESHOLD[feature]
        add(feature, "wasserstein", w_thr * (0.3 + 3.0 * m * gain + abs(rng.normal(0, 0.1))), w_thr)
        if feature != PREDICTION_FEATURE:
            add(feature, "missing_rate", abs(rng.normal(0.008, 0.004)), THRESHOLDS["missing_rate"])
    add(PREDICTION_FEATURE, "adwin", 1.0 if detector_fired else 0.0, THRESHOLDS["adwin"] - 0.5)
    for feature in CATEGORICAL:
        chi2 = float(rng.chisquare(3 if feature == "region" else 2))
        add(feature, "chi2", chi2, THRESHOLDS["chi2"], float(stats.chi2.sf(chi2, 3 if feature == "region" else 2)))
        add(feature, "new_category_rate", 0.0, THRESHOLDS["new_category_rate"])
        add(feature, "missing_rate", abs(rng.normal(0.004, 0.002)), THRESHOLDS["missing_rate"])
    return out


def _multivariate_metrics(rng: np.random.Generator, *, flagged: bool) -> list[FeatureDrift]:
    """The two statistics of all numeric features together; ``flagged``: a correlation changed."""
    error = (1.35 if flagged else 1.0) + abs(rng.normal(0, 0.02))
    change = (0.55 if flagged else 0.06) + abs(rng.normal(0, 0.02))
    return [
        FeatureDrift(MULTIVARIATE, "reconstruction_error", error, 1e-6 if flagged else 0.4, 1.15, error > 1.15),
        FeatureDrift(MULTIVARIATE, "correlation_change", change, 1e-9 if flagged else 0.5, 0.21, change > 0.21),
    ]


def _trend_metrics(rng: np.random.Generator, *, windows_drifting: int) -> list[FeatureDrift]:
    """Slow-drift e-values: about 1 without a trend; for the drifting streams a decade more per drifted window."""
    out = []
    for stream in TREND_STREAMS:
        moving = windows_drifting > 0 and (stream in DRIFTING or stream == PREDICTION_FEATURE)
        value = 10 ** (1.4 * windows_drifting) if moving else float(np.exp(rng.normal(-0.5, 0.4)))
        p_value = min(1.0, len(TREND_STREAMS) / value)
        out.append(FeatureDrift(stream, "trend_evidence", value, p_value, TREND_LEVEL, value > TREND_LEVEL))
    return out


def _estimates(
    model_id: str, version: str, w: int, shift: float, n: int, start: int, end: int, computed: int
) -> list[PerformanceRow]:
    """The label-free estimates of a prediction window, written when it closes (n_labeled 0), near the truth."""
    rng = np.random.default_rng(1_000 * w + int(version))  # its own stream: the labelled rows keep their values
    drop = shift if version == "1" else 0.0
    expected = {
        "accuracy": (0.862 if version == "1" else 0.845) - 0.16 * drop,
        "roc_auc": (0.881 if version == "1" else 0.871) - 0.15 * drop,
    }
    out = []
    for metric in ESTIMATED:
        value = expected[metric] + float(rng.normal(0, 0.005))
        for name, v in (
            (f"estimated_{metric}", value),
            (f"estimated_{metric}_lower", value - ESTIMATE_HALF_BAND),
            (f"estimated_{metric}_upper", value + ESTIMATE_HALF_BAND),
        ):
            out.append(PerformanceRow(model_id, version, name, start, end, v, 0, computed, n_predictions=n))
    return out


def _profiles(rng, model_id, serving, moved, starts, ends) -> list[WindowProfileRow]:
    levels = [0.05, 0.25, 0.5, 0.75, 0.95]
    out: list[WindowProfileRow] = []
    for version, active in serving.items():
        for w in np.flatnonzero(active):
            computed = int(ends[w]) + 1_500
            for feature in NUMERIC:
                mean0, std, mean1 = FEATURE_SHAPE[feature]
                # v2's reference already sits at the drifted mean
                base = mean1 if version == "2" else mean0
                mean = base + (mean1 - mean0) * float(moved[version][w]) + rng.normal(0, std / 20)
                edges = np.linspace(mean0 - 3 * std, mean0 + 3 * std, 11)
                hist = np.round(300 * np.diff(stats.norm.cdf(edges, mean, std))).astype(np.int64)
                out.append(
                    WindowProfileRow(
                        model_id,
                        version,
                        feature,
                        int(starts[w]),
                        int(ends[w]),
                        count=300,
                        missing=int(rng.integers(0, 5)),
                        computed_at=computed,
                        mean=float(mean),
                        std=float(std * rng.uniform(0.95, 1.05)),
                        min=float(mean - 3.1 * std),
                        max=float(mean + 3.2 * std),
                        quantile_levels=levels,
                        quantiles=stats.norm.ppf(levels, mean, std).tolist(),
                        bin_edges=edges.tolist(),
                        histogram=hist.tolist(),
                    )
                )
            for feature, names, p in (
                ("region", REGIONS, (0.3, 0.3, 0.2, 0.2)),
                ("channel", CHANNELS, (0.5, 0.3, 0.2)),
            ):
                counts = rng.multinomial(300, p)
                out.append(
                    WindowProfileRow(
                        model_id,
                        version,
                        feature,
                        int(starts[w]),
                        int(ends[w]),
                        count=300,
                        missing=0,
                        computed_at=computed,
                        kind="categorical",
                        categories=dict(zip(names, counts.tolist())),
                    )
                )
    return out


def _performance(rng, model_id, serving, shift, starts, ends) -> list[PerformanceRow]:
    out: list[PerformanceRow] = []
    region_offset = {"north": 0.02, "south": -0.01, "east": -0.03, "west": 0.01}
    for version, active in serving.items():
        for w in np.flatnonzero(active):
            s, e, computed = int(starts[w]), int(ends[w]), int(ends[w]) + 3 * MINUTE
            n = 150 if w == V2_SERVES_FROM else 300
            # latency is known at once; a v2 feature lookup makes it a little slower
            base = 14.0 if version == "2" else 11.0
            spike = 3.0 if w in (24, 25) else 1.0
            for metric, factor in (("latency_p50", 1.0), ("latency_p95", 2.5), ("latency_p99", 4.4 * spike)):
                value = base * factor * rng.uniform(0.93, 1.07)
                out.append(PerformanceRow(model_id, version, metric, s, e, float(value), n, computed, n_predictions=n))
            out += _estimates(model_id, version, w, float(shift[w]), n, s, e, int(ends[w]) + 1_500)
            if w >= N_WINDOWS - LABEL_LAG:
                continue  # labels have not arrived yet
            drop = float(shift[w]) if version == "1" else 0.0
            accuracy = (0.862 if version == "1" else 0.845) - 0.16 * drop + rng.normal(0, 0.008)
            auc = (0.881 if version == "1" else 0.871) - 0.15 * drop + rng.normal(0, 0.006)
            for metric, value in (
                ("accuracy", accuracy),
                ("roc_auc", auc),
                ("f1", accuracy - 0.21 + rng.normal(0, 0.01)),
                ("log_loss", 0.33 + 0.35 * drop + abs(rng.normal(0, 0.01))),
                ("brier", 0.10 + 0.09 * drop + abs(rng.normal(0, 0.004))),
            ):
                out.append(
                    PerformanceRow(
                        model_id, version, metric, s, e, float(value), int(n * 0.93), computed, n_predictions=n
                    )
                )
            per_region = {r: accuracy + off + rng.normal(0, 0.012) for r, off in region_offset.items()}
            for region, value in per_region.items():
                out.append(
                    PerformanceRow(
                        model_id,
                        version,
                        "accuracy",
                        s,
                        e,
                        float(value),
                        int(n * 0.93 / 4),
                        computed,
                        segment=f"region={region}",
                        n_predictions=n // 4,
                    )
                )
            gap = max(per_region.values()) - min(per_region.values())
            out.append(
                PerformanceRow(
                    model_id,
                    version,
                    "accuracy_gap",
                    s,
                    e,
                    float(gap),
                    int(n * 0.93),
                    computed,
                    segment="region=*",
                    n_predictions=n,
                )
            )
    return out


def _raw_events(
    rng, model_id, serving, moved, starts
) -> tuple[list[PredictionBatch], list[LabelEvent], dict[tuple[str, int], RawWindow]]:
    batches: list[PredictionBatch] = []
    labels: list[LabelEvent] = []
    raw: dict[tuple[str, int], RawWindow] = {}
    n = EVENTS_PER_WINDOW
    for version, active in serving.items():
        for w in np.flatnonzero(active):
            m = float(moved["1"][w])  # the world moves whatever version serves
            income = np.exp(rng.normal(np.log(52_000) - 0.3 * m, 0.3, n))
            age = np.clip(rng.normal(41, 12, n), 18, 90)
            debt = rng.beta(2 + 1.5 * m, 5 - m, n)
            debt[rng.random(n) < 0.01] = np.nan  # a missing value now and then
            z_income = (np.log(income) - 10.8) / 0.5
            z_debt = np.nan_to_num(debt, nan=0.3) - 0.3
            # the world's odds of default; after the change debt ratio matters much more
            logit_true = 2.0 * (-1.0 - 0.9 * z_income + (2.5 + 3.5 * m) * z_debt)
            truth = rng.random(n) < 1 / (1 + np.exp(-logit_true))
            # v1 keeps the old weights; v2 learnt the new ones
            w_debt = 2.5 if version == "1" else 6.0
            score = 1 / (1 + np.exp(-2.0 * (-1.0 - 0.9 * z_income + w_debt * z_debt)))
            times = int(starts[w]) + np.sort(rng.integers(0, WINDOW_MS, n)).astype(np.int64)
            ids = [f"{model_id}-{version}-{w:02d}-{i:03d}" for i in range(n)]
            batches.append(
                PredictionBatch(
                    model_id,
                    version,
                    ids,
                    times,
                    numeric={"income": income, "age": age, "debt_ratio": debt},
                    categorical={
                        "region": list(rng.choice(REGIONS, n)),
                        "channel": list(rng.choice(CHANNELS, n, p=(0.5, 0.3, 0.2))),
                    },
                    predictions=score,
                    predicted_labels=["default" if s >= 0.5 else "repaid" for s in score],
                    latency_ms=rng.lognormal(np.log(11 if version == "1" else 14), 0.4, n),
                    attributes={"region": list(rng.choice(REGIONS, n)), "channel": list(rng.choice(CHANNELS, n))},
                )
            )
            arrived = np.full(n, w < N_WINDOWS - LABEL_LAG)
            if w == PARTLY_LABELLED:
                arrived[n // 2 :] = False
            labels.extend(
                LabelEvent(i, model_id, int(t) + LABEL_DELAY_MS, float(y))
                for i, t, y, a in zip(ids, times, truth, arrived)
                if a
            )
            raw[(version, int(w))] = RawWindow(
                score, (score >= 0.5).astype(np.float64), np.where(arrived, truth.astype(np.float64), np.nan)
            )
    return batches, labels, raw


def _rejected(rng, model_id, starts) -> list[RejectedEventRow]:
    out: list[RejectedEventRow] = []
    offset = 1_000

    def add(w: int, reason: str, detail: str, raw: bytes, model: str, topic: str = "driftline.predictions") -> None:
        nonlocal offset
        offset += int(rng.integers(50, 400))
        at = int(starts[w]) + int(rng.integers(0, WINDOW_MS))
        out.append(RejectedEventRow(topic, int(rng.integers(0, 4)), offset, reason, raw, at, detail, model))

    for w in range(1, N_WINDOWS, 3):  # a steady trickle from one flaky producer
        add(w, "invalid_value", "numeric input 'income' holds an infinite value", b"\xc3\x01" + bytes(30), model_id)
    for w in (6, 19, 30):
        add(
            w,
            "future_event_time",
            "event_time is 7300 s ahead of the clock",
            b"\xc3\x01" + bytes(24),
            model_id,
            "driftline.labels",
        )
    for w in (20, 21, 22):  # a producer deploy sends JSON without model_version
        for _ in range(8):
            add(
                w,
                "json_schema",
                "missing required field 'model_version'",
                b'{"event_id": "x", "model_id": "credit"}',
                model_id,
            )
        for _ in range(2):
            add(
                w,
                "unknown_fingerprint",
                "no schema in schemas/avro/ has fingerprint 0x5a1f...",
                b"\xc3\x01\x5a\x1f" + bytes(20),
                "",
            )
    add(21, "truncated", "the message ends inside the Avro body", b"\xc3\x01\x00", "")
    return out


@dataclass(frozen=True)
class Seeded:
    """A seeded warehouse database (its HTTP URL) and what was written to it."""

    url: str
    run: SeededRun


_SEEDED: dict[str, Seeded] = {}


def seeded_once(server, root) -> Seeded:
    """One seeded database per test session and server, shared by the read-only tests of several modules.

    ``server`` is the session's embedded ClickHouse server (``warehouse_server``),
    ``root`` a directory that lives as long as the session (the registry's home).
    """
    key = server.url()
    if key not in _SEEDED:
        url = server.url(f"dl_seed_{uuid.uuid4().hex[:8]}")
        root.mkdir(parents=True, exist_ok=True)
        with Warehouse.connect(url, migrate=True) as warehouse:
            run = seed_run(warehouse, open_registry(root))
        _SEEDED[key] = Seeded(url, run)
    return _SEEDED[key]
