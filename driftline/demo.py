"""The demo scenario: the whole MLOps loop on a simulated credit-scoring model, in about two minutes.

1. A first model (v1) is trained on applicants of the world before the change
   (``simulation.BEFORE``), registered with its lineage (dataset in the
   artifact store, holdout metrics, trainer, parameters) and the reference
   profile of its training data, promoted to champion and announced on ``models``.
2. A simulated service (:mod:`driftline.service_sim`) scores live applicants
   with the champion's artifact and logs predictions, then labels a few
   seconds late, through the SDK. Event time is the wall clock.
3. Once the worker has written a few clean windows, the world changes at a
   window boundary (``simulation.AFTER``: covariate and concept drift).
4. The loop has to close by itself: the worker detects the drift and asks for
   a retrain, the retrainer registers and promotes v2, the service switches
   to v2 on the ``models`` event, performance recovers and drift against v2's
   reference subsides.

Progress is read from the warehouse while it happens; the verdict is read
from the warehouse and the registry at the end (:func:`judge`), never
assumed. The services (worker, retrainer) are started by the caller
(``driftline.demo_cli``); this module only needs the settings to reach them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from driftline import simulation
from driftline.report.versions import VersionInfo
from driftline.service_sim import ServiceStats, SimulatedService, artifact_scorer, training_set

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from driftline.retrainer.policy import ModelPolicy
    from driftline.retrainer.registry import ModelVersion, Registry
    from driftline.settings import Settings
    from driftline.streams.warehouse import Warehouse

ACTOR = "driftline-demo"
FIRST_VERSION = "1"

Out = Callable[[str], None]


class DemoError(RuntimeError):
    """The demo could not run (the model could not be registered or announced).

    >>> str(DemoError("could not publish 2 model event(s): timed out"))
    'could not publish 2 model event(s): timed out'
    """


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class StepTimeouts:
    """Seconds each step may take after the one before it (times ``patience``).

    >>> StepTimeouts().scaled(2.0).detection
    90.0
    """

    first_windows: float = 90.0  # from the first request served to the worker's first clean windows
    detection: float = 45.0  # from the drift to a drifted window
    request: float = 45.0  # from the drifted window to a retrain request
    promotion: float = 120.0  # from the request to a promoted version
    switch: float = 30.0  # from the promotion to the service serving it
    recovery: float = 75.0  # from the switch to enough evidence of recovery

    def scaled(self, factor: float) -> StepTimeouts:
        return StepTimeouts(*(getattr(self, f) * factor for f in self.__dataclass_fields__))


@dataclass(frozen=True)
class DemoOptions:
    """What the demo simulates and how long it may take.

    >>> DemoOptions("credit-1").expected_per_window(5_000)
    2000.0
    """

    model_id: str
    rate: float = 400.0  # requests per second
    warmup_s: float = 20.0  # traffic from the BEFORE world before the drift
    clean_windows: int = 2  # windows written before the drift, at least
    # None: one window. Labels a whole window late keep every label window wholly before or after the
    # drift, so that the performance trigger cannot fire on a half-drifted window (and retrain on it).
    label_delay_s: float | None = None
    training_rows: int = 8_000
    seed: int = 7
    timeout_s: float = 300.0
    timeouts: StepTimeouts = StepTimeouts()
    poll_s: float = 1.0
    heartbeat_s: float = 10.0

    def expected_per_window(self, window_ms: int) -> float:
        return self.rate * window_ms / 1000.0


# --------------------------------------------------------------------------- v1


@dataclass
class FirstVersion:
    """v1 before registration: the trained model, its dataset and what it scored.

    >>> from driftline.retrainer.policy import load_policy
    >>> first = train_first_version(load_policy(None).for_model("credit"), 500, seed=0, end_ms=3_600_000)
    >>> first.dataset.num_rows, first.trainer, sorted(first.categorical), first.start_ms, first.end_ms < 3_600_000
    (500, 'river-linear', ['channel', 'region'], 0, True)
    """

    trained: Any  # retrainer.trainers.TrainedModel
    trainer: str
    dataset: pa.Table
    train_metrics: dict[str, float]
    holdout_metrics: dict[str, float]
    numeric: dict[str, np.ndarray]
    categorical: dict[str, np.ndarray]
    scores: np.ndarray  # v1's scores of every dataset row: the reference of __prediction__
    start_ms: int
    end_ms: int
    # fitted on the holdout's labels: the worker estimates v1's accuracy from its scores alone
    calibrator: dict[str, Any] | None = None


def train_first_version(policy: ModelPolicy, rows: int, seed: int, end_ms: int) -> FirstVersion:
    """Train v1 on ``rows`` applicants of the BEFORE world, dated over the hour before ``end_ms``.

    The oldest rows train and the newest ``retraining.holdout_fraction``
    evaluate, as the retrainer does; the metrics are the monitoring side's,
    so the performance trigger compares like with like.
    """
    from driftline.retrainer.evaluation import fit_calibrator, score_metrics
    from driftline.retrainer.trainers import resolve_trainer, score

    rng = np.random.default_rng(seed)
    applicants = simulation.draw(simulation.BEFORE, rows, rng)
    hour = 3_600_000
    times = end_ms - hour + (np.arange(rows, dtype=np.int64) * hour) // rows
    data = training_set(applicants, times)
    rt = policy.retraining
    train_index, holdout_index = data.split_index(rt.holdout_fraction)
    trained = resolve_trainer(rt.trainer)(data.take(train_index), dict(rt.hyperparameters))
    scores = score(trained.model, data)
    labels = data.label
    train_metrics = score_metrics(labels[train_index], scores[train_index], "classification")
    holdout_metrics = score_metrics(labels[holdout_index], scores[holdout_index], "classification")
    dataset = pa.table(
        {
            "event_id": [f"train-{i}" for i in range(rows)],
            "model_version": [FIRST_VERSION] * rows,
            "event_time": pa.array(times, pa.timestamp("ms", tz="UTC")),
            **{k: pa.array(v) for k, v in applicants.numeric.items()},
            **{k: pa.array(v.tolist(), pa.string()) for k, v in applicants.categorical.items()},
            "prediction": pa.array(scores),
            "label": pa.array(labels),
        }
    )
    return FirstVersion(
        trained,
        rt.trainer,
        dataset,
        train_metrics,
        holdout_metrics,
        dict(applicants.numeric),
        dict(applicants.categorical),
        scores,
        int(times[0]),
        int(times[-1]),
        fit_calibrator("classification", labels[holdout_index], scores[holdout_index]),
    )


def register_first_version(
    settings: Settings,
    registry: Registry,
    warehouse: Warehouse,
    producer: Producer,
    model_id: str,
    policy: ModelPolicy,
    first: FirstVersion,
) -> ModelVersion:
    """Register v1 with its lineage and reference profile, promote it, announce both and mirror the registry."""
    from driftline.retrainer.announce import AnnounceError, mirror_versions, publish_model_events
    from driftline.retrainer.registry import CHAMPION, Lineage

    dataset_sha256 = registry.artifacts.put_table(first.dataset)
    lineage = Lineage(
        dataset_uri=registry.artifacts.uri(dataset_sha256),
        dataset_sha256=dataset_sha256,
        dataset_rows=first.dataset.num_rows,
        dataset_start_ms=first.start_ms,
        dataset_end_ms=first.end_ms,
        trainer=first.trainer,
        hyperparameters=dict(first.trained.params),
        train_metrics=first.train_metrics,
        holdout_metrics=first.holdout_metrics,
    )
    profile = policy.monitoring.reference.profile_builder(
        model_id, first.numeric, first.categorical, first.scores, first.calibrator
    )

    version = registry.register(
        model_id,
        lineage=lineage,
        reference_profile=profile,
        artifact_bytes=first.trained.artifact(),
        tags={"demo": "true", "world": "before"},
        note="the demo's first model, trained before the drift",
        actor=ACTOR,
        reason="demo: the model in service before the drift",
    )
    promoted = registry.promote(model_id, version.version, actor=ACTOR, reason="demo: first champion")
    try:
        publish_model_events(producer, settings, [version.registered_event(), promoted], timeout=30.0)
    except AnnounceError as exc:
        raise DemoError(str(exc)) from exc
    mirror_versions(registry, warehouse, model_id)
    return registry.alias(model_id, CHAMPION) or version


# --------------------------------------------------------------------------- what the warehouse says


@dataclass(frozen=True)
class DriftWindow:
    """A prediction window the worker wrote (``drift_reports``): its features that drifted.

    >>> DriftWindow("1", 0, 5_000, 2_000, ("income",), 7_100).drifted
    ('income',)
    """

    version: str
    start_ms: int
    end_ms: int
    n_current: int
    drifted: tuple[str, ...]
    computed_ms: int
    # v1's accuracy estimated from its scores alone (no label needed), and, when the window
    # drifted, where its drift comes from (root_causes.summary)
    estimated_accuracy: float | None = None
    cause: str = ""
    complete: bool = True  # its last row (window_profiles) is written: the estimate and cause are in


@dataclass(frozen=True)
class LabelWindow:
    """A label window the worker wrote (``performance_metrics``, segment ``''``).

    >>> LabelWindow("2", 0, 5_000, 1_990, 0.71, 0.57, 7_300).n_labeled
    1990
    """

    version: str
    start_ms: int
    end_ms: int
    n_labeled: int
    accuracy: float | None
    log_loss: float | None
    computed_ms: int


@dataclass(frozen=True)
class RequestRow:
    """A retrain request as ``retrain_requests`` holds it now (its latest status).

    >>> RequestRow("r1", "1", "drift", "registered", 10_000, 14_000, "2", None, (("psi", "income", 0.4, 0.2),)).status
    'registered'
    """

    request_id: str
    version: str
    reason: str
    status: str
    requested_ms: int
    updated_ms: int
    registered_version: str | None
    error: str | None
    evidence: tuple[tuple[str, str, float, float], ...]  # (metric, feature, value, threshold)


@dataclass(frozen=True)
class AlertRow:
    """An alert the worker raised (``alerts``).

    >>> AlertRow("a1", "1", "warning", "drift", "drift on 4 feature(s)", 10_000).kind
    'drift'
    """

    alert_id: str
    version: str
    severity: str
    kind: str
    message: str
    occurred_ms: int


@dataclass(frozen=True)
class LoopFacts:
    """Everything the warehouse holds about one model, at one moment (see :func:`read_facts`).

    >>> facts = LoopFacts(drift_windows=(DriftWindow("1", 0, 5_000, 10, (), 0), DriftWindow("2", 0, 5_000, 5, (), 0)))
    >>> [w.n_current for w in facts.windows_of("2")]
    [5]
    """

    drift_windows: tuple[DriftWindow, ...] = ()
    label_windows: tuple[LabelWindow, ...] = ()
    requests: tuple[RequestRow, ...] = ()
    versions: tuple[VersionInfo, ...] = ()
    alerts: tuple[AlertRow, ...] = ()
    predictions: Mapping[str, int] = field(default_factory=dict)  # raw predictions stored, per version
    labels: int = 0

    def windows_of(self, version: str) -> list[DriftWindow]:
        return [w for w in self.drift_windows if w.version == version]

    def label_windows_of(self, version: str) -> list[LabelWindow]:
        return [w for w in self.label_windows if w.version == version]


def _ms(column: str) -> str:
    return f"toUnixTimestamp64Milli({column})"


def read_facts(warehouse: Warehouse, model_id: str) -> LoopFacts:
    """What the worker, the retrainer and the demo wrote about ``model_id`` (ReplacingMergeTrees read FINAL)."""
    p = {"m": model_id}
    estimated = {
        (r["model_version"], int(r["s"])): float(r["value"])
        for r in warehouse.query_rows(
            f"SELECT model_version, {_ms('window_start')} AS s, value FROM performance_metrics FINAL "
            "WHERE model_id = {m:String} AND segment = '' AND metric = 'estimated_accuracy'",
            p,
        )
    }
    causes = {
        (r["model_version"], int(r["s"])): r["summary"]
        for r in warehouse.query_rows(
            f"SELECT model_version, {_ms('window_start')} AS s, summary FROM root_causes FINAL "
            "WHERE model_id = {m:String}",
            p,
        )
    }
    written = {
        (r["model_version"], int(r["s"]))
        for r in warehouse.query_rows(
            f"SELECT DISTINCT model_version, {_ms('window_start')} AS s FROM window_profiles "
            "WHERE model_id = {m:String}",
            p,
        )
    }
    drift = tuple(
        DriftWindow(
            r["model_version"],
            int(r["s"]),
            int(r["e"]),
            int(r["n_current"]),
            tuple(sorted(r["drifted_features"])),
            int(r["c"]),
            estimated.get((r["model_version"], int(r["s"]))),
            causes.get((r["model_version"], int(r["s"])), ""),
            (r["model_version"], int(r["s"])) in written,
        )
        for r in warehouse.query_rows(
            f"SELECT model_version, {_ms('window_start')} AS s, {_ms('window_end')} AS e, n_current, drifted_features, "
            f"{_ms('computed_at')} AS c FROM drift_reports FINAL WHERE model_id = {{m:String}} "
            "ORDER BY window_start, model_version",
            p,
        )
    )
    by_window: dict[tuple[str, int], dict[str, Any]] = {}
    for r in warehouse.query_rows(
        f"SELECT model_version, {_ms('window_start')} AS s, {_ms('window_end')} AS e, metric, value, n_labeled, "
        f"{_ms('computed_at')} AS c FROM performance_metrics FINAL WHERE model_id = {{m:String}} AND segment = '' "
        "AND metric IN ('accuracy', 'log_loss', 'n_labeled')",
        p,
    ):
        w = by_window.setdefault((r["model_version"], int(r["s"])), {"e": int(r["e"]), "c": int(r["c"])})
        w[r["metric"]] = float(r["value"])
        w["c"] = max(w["c"], int(r["c"]))
    labels = tuple(
        LabelWindow(v, s, w["e"], int(w.get("n_labeled", 0)), w.get("accuracy"), w.get("log_loss"), w["c"])
        for (v, s), w in sorted(by_window.items(), key=lambda item: (item[0][1], item[0][0]))
        if "n_labeled" in w  # the marker row is written last: the window is complete
    )
    requests = tuple(
        RequestRow(
            r["request_id"],
            r["model_version"],
            r["reason"],
            r["status"],
            int(r["rq"]),
            int(r["up"]),
            r["registered_version"],
            r["error"],
            tuple(zip(r["evidence_metric"], r["evidence_feature"], r["evidence_value"], r["evidence_threshold"])),
        )
        for r in warehouse.query_rows(
            f"SELECT request_id, model_version, toString(reason) AS reason, toString(status) AS status, "
            f"{_ms('requested_at')} AS rq, {_ms('updated_at')} AS up, registered_version, error, evidence_metric, "
            "evidence_feature, evidence_value, evidence_threshold FROM retrain_requests FINAL "
            "WHERE model_id = {m:String} ORDER BY requested_at",
            p,
        )
    )
    versions = tuple(
        VersionInfo.from_mirror(r)
        for r in warehouse.query_rows(
            "SELECT version, status, aliases, request_id FROM model_versions FINAL WHERE model_id = {m:String} "
            "ORDER BY toUInt64OrZero(version)",
            p,
        )
    )
    alerts = tuple(
        AlertRow(r["alert_id"], r["model_version"], r["severity"], r["kind"], r["message"], int(r["o"]))
        for r in warehouse.query_rows(
            f"SELECT alert_id, model_version, toString(severity) AS severity, kind, message, {_ms('occurred_at')} AS o "
            "FROM alerts FINAL WHERE model_id = {m:String} ORDER BY occurred_at, alert_id",
            p,
        )
    )
    predictions = {
        r["model_version"]: int(r["n"])
        for r in warehouse.query_rows(
            "SELECT model_version, count() AS n FROM predictions WHERE model_id = {m:String} GROUP BY model_version", p
        )
    }
    n_labels = warehouse.query_rows("SELECT count() AS n FROM labels WHERE model_id = {m:String}", p)[0]["n"]
    return LoopFacts(drift, labels, requests, versions, alerts, predictions, int(n_labels))


# --------------------------------------------------------------------------- the verdict (pure)


@dataclass(frozen=True)
class Step:
    """One step of the loop: whether it happened, when (wall clock ms) and the evidence.

    >>> Step(2, "retrain requested", False, None, "no retrain request after the drift").done
    False
    """

    number: int
    name: str
    done: bool
    at_ms: int | None
    evidence: str


@dataclass(frozen=True)
class Champion:
    """What the registry says about the champion (read by the caller, so that :func:`judge` stays pure).

    >>> Champion("2", "r1", 12_000, "1", 2_800, {"log_loss": 0.57}).holdout["log_loss"]
    0.57
    """

    version: str
    request_id: str | None
    promoted_ms: int | None
    parent: str | None
    rows: int | None
    holdout: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """The fixed facts of one run that the verdict needs.

    >>> Context("1", drift_at_ms=None, window_ms=5_000, min_features=2, expected_per_window=2_000.0,
    ...         label_delay_ms=5_000, recovery_labels=3_000).promotion_metric
    'accuracy'
    """

    first_version: str
    drift_at_ms: int | None
    window_ms: int
    min_features: int
    expected_per_window: float
    label_delay_ms: int
    recovery_labels: int  # labels of the new champion needed to judge its performance
    promotion_metric: str = "accuracy"


def _pooled(windows: Sequence[LabelWindow], metric: str) -> tuple[float | None, int]:
    """A mean metric over windows, weighted by their labels (exact for accuracy and log loss)."""
    used = [(getattr(w, metric), w.n_labeled) for w in windows if getattr(w, metric) is not None and w.n_labeled > 0]
    n = sum(k for _, k in used)
    if n == 0:
        return None, 0
    return sum(value * k for value, k in used) / n, n


def _hms(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000).strftime("%H:%M:%S")


def _span(start_ms: int, end_ms: int) -> str:
    return f"{_hms(start_ms)}-{_hms(end_ms)}"


def judge(facts: LoopFacts, champion: Champion | None, service: ServiceStats, ctx: Context) -> list[Step]:
    """Which steps of the loop happened, from the warehouse, the registry and the service's own record.

    >>> ctx = Context("1", 10_000, 5_000, 2, 100.0, 3_000, 150)
    >>> steps = judge(LoopFacts(), None, ServiceStats(), ctx)
    >>> [(s.number, s.done) for s in steps]
    [(1, False), (2, False), (3, False), (4, False), (5, False), (6, False)]
    >>> steps[0].evidence
    'no window of v1 after the drift has 2 or more drifted features yet'
    """
    v1 = ctx.first_version
    drift_at = ctx.drift_at_ms
    steps: list[Step] = []

    # 1. drift detected: a window of v1 after the drift in which enough features drifted to count for the trigger
    after = [w for w in facts.windows_of(v1) if drift_at is not None and w.start_ms >= drift_at]
    detected = next((w for w in after if len(w.drifted) >= ctx.min_features), None)
    if detected is None:
        steps.append(
            Step(
                1,
                "drift detected",
                False,
                None,
                f"no window of v{v1} after the drift has {ctx.min_features} or more drifted features yet",
            )
        )
    else:
        before = [w for w in facts.windows_of(v1) if drift_at is not None and w.end_ms <= drift_at]
        false_alarms = sum(len(w.drifted) >= ctx.min_features for w in before)
        steps.append(
            Step(
                1,
                "drift detected",
                True,
                detected.computed_ms,
                f"v{v1} window {_span(detected.start_ms, detected.end_ms)}: {', '.join(detected.drifted)} "
                f"drifted ({len(detected.drifted)} features; {false_alarms} of {len(before)} windows "
                "before the drift flagged)",
            )
        )

    # 2. a retrain requested after the drift
    requests = [r for r in facts.requests if drift_at is not None and r.requested_ms >= drift_at]
    request = requests[0] if requests else None
    if request is None:
        steps.append(
            Step(2, "retrain requested", False, None, "no retrain request after the drift in retrain_requests")
        )
    else:
        shown = ", ".join(
            f"{m}{' ' + f if f else ''} {v:.3g} (threshold {t:.3g})" for m, f, v, t in request.evidence[:3]
        )
        more = f" +{len(request.evidence) - 3} more" if len(request.evidence) > 3 else ""
        # requested_at is event time (the window's end); the worker decided when it wrote that window
        decided = next(
            (w.computed_ms for w in facts.windows_of(request.version) if w.end_ms == request.requested_ms),
            request.requested_ms,
        )
        steps.append(
            Step(
                2,
                "retrain requested",
                True,
                decided,
                f"request {request.request_id[:8]} ({request.reason}, about v{request.version}): "
                f"{shown}{more}; status {request.status}" + (f" ({request.error})" if request.error else ""),
            )
        )

    # 3. a new version registered for that request and promoted (the registry is the authority)
    new_champion = champion if champion is not None and champion.version != v1 else None
    trained_for_request = (
        new_champion is not None and request is not None and new_champion.request_id == request.request_id
    )
    if not trained_for_request:
        why = "the registry's champion is still v" + (champion.version if champion else "?")
        if new_champion is not None and request is not None:
            why = f"champion v{new_champion.version} was not trained for request {request.request_id[:8]}"
        steps.append(Step(3, "new version registered and promoted", False, None, why))
    else:
        mirrored = next((v for v in facts.versions if v.version == new_champion.version), None)
        mirror = f"model_versions: v{mirrored.version} {mirrored.status}" if mirrored else "not yet in model_versions"
        steps.append(
            Step(
                3,
                f"v{new_champion.version} registered and promoted",
                True,
                new_champion.promoted_ms,
                f"registry: v{new_champion.version} champion, parent v{new_champion.parent or '-'}, "
                f"{new_champion.rows or 0:,} snapshot rows, holdout {ctx.promotion_metric} "
                f"{new_champion.holdout.get(ctx.promotion_metric, math.nan):.3f}; {mirror}",
            )
        )

    # 4. the service serves the version of this loop, and its predictions reached the warehouse
    target = new_champion.version if trained_for_request and new_champion is not None else None
    switch = next((s for s in service.switches if target is not None and s.to_version == target), None)
    stored = facts.predictions.get(target, 0) if target is not None else 0
    if switch is None or stored == 0:
        steps.append(
            Step(
                4,
                "service switched",
                False,
                None,
                "no version of this loop to switch to"
                if target is None
                else f"the service did not switch to v{target}"
                if switch is None
                else f"no v{target} prediction in the warehouse yet",
            )
        )
    else:
        steps.append(
            Step(
                4,
                f"service switched to v{target}",
                True,
                switch.at_ms,
                f"{switch.cause}; {stored:,} v{target} predictions in the warehouse",
            )
        )

    # 5. performance on the changed world: the new champion's log loss below v1's. Log loss, not accuracy,
    # decides: the changed world is noisier (even a perfect model is right only ~70% of the time), so the
    # accuracy gap is small, while v1's probabilities still assume the old default rate.
    if target is None:
        steps.append(Step(5, "performance recovered", False, None, "no new champion to judge"))
        steps.append(Step(6, "drift subsided against the new reference", False, None, "no new champion to judge"))
        return steps
    labels_after = drift_at + ctx.label_delay_ms if drift_at is not None else 0
    v1_before = [w for w in facts.label_windows_of(v1) if w.end_ms <= labels_after]
    v1_after = [w for w in facts.label_windows_of(v1) if w.start_ms >= labels_after]
    new_windows = facts.label_windows_of(target)
    loss = {
        name: _pooled(ws, "log_loss") for name, ws in (("before", v1_before), ("after", v1_after), ("new", new_windows))
    }
    acc = {
        name: _pooled(ws, "accuracy")[0]
        for name, ws in (("before", v1_before), ("after", v1_after), ("new", new_windows))
    }
    f3 = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    perf = (
        f"log loss v{v1} before drift {f3(loss['before'][0])}, after {f3(loss['after'][0])} "
        f"(n={loss['after'][1]:,}) -> v{target} {f3(loss['new'][0])} (n={loss['new'][1]:,}); "
        f"accuracy {f3(acc['before'])} -> {f3(acc['after'])} -> {f3(acc['new'])}"
    )
    n_new = loss["new"][1]
    recovered = (
        loss["new"][0] is not None
        and loss["after"][0] is not None
        and n_new >= ctx.recovery_labels
        and loss["new"][0] < loss["after"][0]
    )
    when = max((w.computed_ms for w in new_windows), default=None)
    steps.append(
        Step(
            5,
            "performance recovered",
            recovered,
            when if recovered else None,
            perf if n_new >= ctx.recovery_labels else f"{perf}; waiting for {ctx.recovery_labels:,} labels",
        )
    )

    # 6. drift against the new reference: complete windows of the new champion, the latest below the trigger
    full = [w for w in facts.windows_of(target) if w.n_current >= 0.8 * ctx.expected_per_window]
    v1_counts = [len(w.drifted) for w in after]
    counts = [len(w.drifted) for w in full]
    evidence = (
        f"drifted features per window: v{target} {counts or '-'} (v{v1} after drift {v1_counts or '-'}); "
        f"the trigger needs {ctx.min_features}"
    )
    subsided = len(full) >= 2 and counts[-1] < ctx.min_features
    steps.append(
        Step(
            6,
            "drift subsided against the new reference",
            subsided,
            full[-1].computed_ms if subsided else None,
            evidence,
        )
    )
    return steps


def summary_table(steps: Sequence[Step], started_ms: int) -> str:
    """The steps as a table: step, when (seconds since start and clock time), evidence.

    >>> table = summary_table([Step(1, "drift detected", True, 12_500, "v1 window ..."),
    ...                        Step(2, "retrain requested", False, None, "no request")], 10_000)
    >>> print(table.splitlines()[0]); print(table.splitlines()[2])
    STEP                 WHEN              EVIDENCE
    2 retrain requested  not seen          no request
    >>> table.splitlines()[1].startswith("1 drift detected     +2.5 s  ")
    True
    """
    rows = [("STEP", "WHEN", "EVIDENCE")]
    for s in steps:
        when = (
            "not seen" if s.at_ms is None or not s.done else f"+{(s.at_ms - started_ms) / 1000:.1f} s  {_hms(s.at_ms)}"
        )
        rows.append((f"{s.number} {s.name}", when, s.evidence))
    w0 = max(len(r[0]) for r in rows) + 2
    w1 = max(len(r[1]) for r in rows) + 2
    return "\n".join(f"{a:<{w0}}{b:<{w1}}{c}".rstrip() for a, b, c in rows)


# --------------------------------------------------------------------------- live progress (pure)


@dataclass
class ProgressView:
    """Turns successive :class:`LoopFacts` into lines saying what is new."""

    first_version: str
    min_features: int
    _windows: set[tuple[str, int]] = field(default_factory=set)
    _labels: set[tuple[str, int]] = field(default_factory=set)
    _alerts: set[str] = field(default_factory=set)
    _requests: dict[str, str] = field(default_factory=dict)
    _versions: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)

    def news(self, facts: LoopFacts) -> list[str]:
        """Lines for every window, alert, request status and registry change not shown before.

        >>> view = ProgressView("1", 2)
        >>> facts = LoopFacts(drift_windows=(DriftWindow("1", 0, 5_000, 2_000, ("age", "income"), 7_000),))
        >>> [line.split("  ")[0] for line in view.news(facts)], view.news(facts)
        (['window'], [])
        """
        lines = []
        for w in facts.drift_windows:
            if (w.version, w.start_ms) in self._windows or not w.complete:
                continue
            self._windows.add((w.version, w.start_ms))
            flag = "DRIFT " if len(w.drifted) >= self.min_features else ""
            drifted = ", ".join(w.drifted) if w.drifted else "none"
            estimate = "" if w.estimated_accuracy is None else f"  est. accuracy {w.estimated_accuracy:.3f}"
            lines.append(
                f"window  v{w.version} {_span(w.start_ms, w.end_ms)}  {w.n_current:>6,} events{estimate}  "
                f"{flag}drifted: {drifted}"
            )
            if flag and w.cause:
                lines.append(f"cause   v{w.version} {_span(w.start_ms, w.end_ms)}  {w.cause}")
        for w in facts.label_windows:
            if (w.version, w.start_ms) in self._labels:
                continue
            self._labels.add((w.version, w.start_ms))
            acc = "-" if w.accuracy is None else f"{w.accuracy:.3f}"
            loss = "-" if w.log_loss is None else f"{w.log_loss:.3f}"
            lines.append(
                f"labels  v{w.version} {_span(w.start_ms, w.end_ms)}  {w.n_labeled:>6,} labelled  "
                f"accuracy {acc}  log loss {loss}"
            )
        for a in facts.alerts:
            if a.alert_id in self._alerts:
                continue
            self._alerts.add(a.alert_id)
            lines.append(f"alert   v{a.version} [{a.severity}] {a.kind}: {a.message}")
        for r in facts.requests:
            state = f"{r.status}/{r.registered_version}"
            if self._requests.get(r.request_id) == state:
                continue
            self._requests[r.request_id] = state
            detail = f" -> v{r.registered_version}" if r.registered_version else ""
            error = f": {r.error}" if r.error else ""
            lines.append(
                f"request {r.request_id[:8]} ({r.reason}, v{r.version}, {len(r.evidence)} evidence): "
                f"{r.status}{detail}{error}"
            )
        for v in facts.versions:
            state = (v.status, v.aliases)
            if self._versions.get(v.version) == state:
                continue
            self._versions[v.version] = state
            aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            request = f" (request {v.request_id[:8]})" if v.request_id else ""
            lines.append(f"registry v{v.version} {v.status}{aliases}{request}")
        return lines


# --------------------------------------------------------------------------- the run (the shell)


@dataclass
class DemoResult:
    """How a run ended: the steps, the failure (None when nothing went wrong) and what was seen.

    >>> DemoResult("credit-1", [Step(1, "drift detected", True, 1, "...")], 0, None, LoopFacts(), ServiceStats()).closed
    True
    """

    model_id: str
    steps: list[Step]
    started_ms: int
    failure: str | None
    facts: LoopFacts
    service: ServiceStats
    interrupted: bool = False

    @property
    def closed(self) -> bool:
        return self.failure is None and all(s.done for s in self.steps)


@dataclass
class _Clock:
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def run_scenario(
    settings: Settings,
    options: DemoOptions,
    *,
    out: Out = print,
    health: Callable[[], str | None] = lambda: None,
) -> DemoResult:
    """Run the loop on ``options.model_id`` against running services; print progress through ``out``.

    ``health`` returns why the services cannot work any more (a crashed
    worker, with its log), or None; the run then stops at once.
    """
    from driftline.retrainer.policy import load_policy
    from driftline.retrainer.registry import Registry
    from driftline.streams import kafka
    from driftline.streams.sdk import PredictionLogger
    from driftline.streams.warehouse import Warehouse

    clock = _Clock()
    started_ms = time.time_ns() // 1_000_000

    said = threading.Lock()  # the models watcher speaks from its own thread; lines must not interleave

    def say(kind: str, text: str) -> None:
        with said:
            out(f"[{clock.elapsed():6.1f}s] {kind:<9}{text}")

    model_id = options.model_id
    policy = load_policy(settings.policy).for_model(model_id)
    window_ms = policy.monitoring.window_ms
    timeouts = options.timeouts
    registry = Registry.from_settings(settings)
    warehouse = Warehouse.from_settings(settings, migrate=True)
    kafka.ensure_topics(settings)
    producer = kafka.producer(settings)
    if options.label_delay_s is None:
        options = replace(options, label_delay_s=window_ms / 1000)
    assert options.label_delay_s is not None
    ctx = Context(
        first_version=FIRST_VERSION,
        drift_at_ms=None,
        window_ms=window_ms,
        min_features=policy.drift.min_features,
        expected_per_window=options.expected_per_window(window_ms),
        label_delay_ms=int(options.label_delay_s * 1000),
        recovery_labels=int(1.5 * options.expected_per_window(window_ms)),
        promotion_metric=policy.retraining.promotion.metric,
    )
    say("model", f"training v1 of {model_id} on {options.training_rows:,} applicants of the world before the drift")
    first = train_first_version(policy, options.training_rows, options.seed, started_ms)
    v1 = register_first_version(settings, registry, warehouse, producer, model_id, policy, first)
    if v1.version != FIRST_VERSION:
        raise DemoError(f"model {model_id} already had versions: pick another --model")
    h = first.holdout_metrics
    say(
        "registry",
        f"v1 registered and promoted: {first.dataset.num_rows:,} rows, holdout accuracy "
        f"{h.get('accuracy', math.nan):.3f}, log loss {h.get('log_loss', math.nan):.3f}; "
        f"dataset {v1.lineage.dataset_uri[:19]}...",
    )

    logger = PredictionLogger(settings, linger_ms=100)
    service = SimulatedService(
        logger,
        model_id,
        artifact_scorer(v1.version, first.trained.artifact()),
        rate=options.rate,
        label_delay_s=options.label_delay_s,
        seed=options.seed + 1,
    )
    from driftline.service_sim import ChampionWatcher

    watcher = ChampionWatcher(
        settings,
        registry,
        service,
        since_ms=started_ms,
        on_event=lambda e: say("models", f"{e.event} v{e.version}" + (f" ({e.alias})" if e.alias else "")),
    )
    service_errors: list[BaseException] = []

    def serve() -> None:
        try:
            service.run()
        except BaseException as exc:  # reported by problems(): the run stops at once
            service_errors.append(exc)

    def problems() -> str | None:
        if service_errors:
            return f"the simulated service failed: {type(service_errors[0]).__name__}: {service_errors[0]}"
        if watcher.error is not None:
            return f"the service stopped reading the models topic: {watcher.error}"
        return health()

    thread = threading.Thread(target=serve, name="driftline-demo-service", daemon=True)
    view = ProgressView(FIRST_VERSION, ctx.min_features)
    failure: str | None = None
    interrupted = False
    facts = LoopFacts()
    champion: Champion | None = None
    try:
        watcher.start()
        thread.start()
        say(
            "service",
            f"scoring {options.rate:g} applicants/s with v1; labels arrive {options.label_delay_s:g} s late; "
            f"windows of {window_ms / 1000:g} s",
        )
        failure = _follow(options, ctx, clock, service, warehouse, registry, view, problems, say, timeouts)
    except KeyboardInterrupt:
        interrupted = True
        failure = "interrupted (Ctrl-C)"
    except Exception as exc:  # the summary still says how far the loop got
        failure = f"{type(exc).__name__}: {exc}"
    finally:
        service.stop()
        if thread.is_alive():
            thread.join(30)
        stats = logger.close(timeout=15)
        watcher.stop()
        if stats.failed or stats.dropped:
            say("sdk", f"{stats.failed} events failed and {stats.dropped} were dropped: {stats.last_error}")
    ctx = replace(ctx, drift_at_ms=service.stats().drift_at_ms)
    try:
        facts = read_facts(warehouse, model_id)
        champion = read_champion(registry, model_id)
    except Exception as exc:  # the verdict says what is missing; the reason goes with it
        failure = failure or f"cannot read the outcome: {exc}"
    finally:
        warehouse.close()
        producer.flush(10)
    steps = judge(facts, champion, service.stats(), ctx)
    return DemoResult(model_id, steps, started_ms, failure, facts, service.stats(), interrupted)


def read_champion(registry: Registry, model_id: str) -> Champion | None:
    from driftline.retrainer.registry import CHAMPION

    version = registry.alias(model_id, CHAMPION)
    if version is None:
        return None
    promoted = [
        e.occurred_at for e in registry.audit_log(model_id) if e.action == "promote" and e.version == version.version
    ]
    return Champion(
        version.version,
        version.lineage.request_id,
        promoted[-1] if promoted else None,
        version.lineage.parent_version,
        version.lineage.dataset_rows,
        {k: v for k, v in version.lineage.holdout_metrics.items() if isinstance(v, (int, float))},
    )


PHASES = ("warmup", "detect", "request", "promote", "switch", "recover")


def _follow(
    options: DemoOptions,
    ctx: Context,
    clock: _Clock,
    service: SimulatedService,
    warehouse: Warehouse,
    registry: Registry,
    view: ProgressView,
    problems: Callable[[], str | None],
    say: Callable[[str, str], None],
    timeouts: StepTimeouts,
) -> str | None:
    """Poll until the loop closes, a step misses its deadline or a service dies; returns the failure or None."""
    phase = "warmup"
    phase_started = clock.elapsed()
    last_heartbeat = clock.elapsed()
    deadline_for = {
        "warmup": options.warmup_s + timeouts.first_windows,
        "detect": timeouts.detection,
        "request": timeouts.request,
        "promote": timeouts.promotion,
        "switch": timeouts.switch,
        "recover": timeouts.recovery,
    }
    waiting_for = {
        "warmup": "the worker's first windows of v1",
        "detect": "a drifted window of v1 after the drift (from the worker)",
        "request": "a retrain request after the drift (from the worker)",
        "promote": "a new version registered and promoted (by the retrainer)",
        "switch": "the service to serve the new champion (a models event)",
        "recover": "enough windows and labels of the new champion to judge it (from the worker)",
    }
    drift_at: int | None = None
    switches_shown: tuple = ()
    while True:
        time.sleep(options.poll_s)
        problem = problems()
        if problem:
            return problem
        facts = read_facts(warehouse, options.model_id)
        for line in view.news(facts):
            kind, _, rest = line.partition(" ")
            say(kind, rest.lstrip())
        stats = service.stats()
        for switch in stats.switches[len(switches_shown) :]:
            say("service", f"now serving v{switch.to_version} (was v{switch.from_version}): {switch.cause}")
        switches_shown = stats.switches
        now = clock.elapsed()
        if now - last_heartbeat >= options.heartbeat_s:
            last_heartbeat = now
            say(
                "service",
                f"{stats.predictions:,} predictions ({stats.by_version_line()}), "
                f"{stats.labels:,} labels sent; "
                f"warehouse holds {sum(facts.predictions.values()):,} predictions, {facts.labels:,} labels",
            )
        if now > options.timeout_s:
            return f"the demo ran out of time ({options.timeout_s:g} s) waiting for {waiting_for[phase]}"
        if now - phase_started > deadline_for[phase]:
            return f"timed out after {deadline_for[phase]:g} s waiting for {waiting_for[phase]}"

        ctx_now = replace(ctx, drift_at_ms=drift_at)
        if phase == "warmup":
            written = facts.windows_of(FIRST_VERSION)
            if len(written) >= options.clean_windows and now >= options.warmup_s:
                # at a window boundary, so that every window is wholly before or wholly after the change
                drift_at = (service.now_ms() // ctx.window_ms + 1) * ctx.window_ms
                service.inject_drift(drift_at)
                say(
                    "drift",
                    f"the world changes at {_hms(drift_at)}: mobile applicants' incomes fall, debt ratios rise, "
                    "mobile takes over (covariate drift), and debt matters more for defaults (concept drift)",
                )
                phase, phase_started = "detect", now
            continue
        steps = judge(facts, read_champion(registry, options.model_id), stats, ctx_now)
        request = next((r for r in facts.requests if drift_at is not None and r.requested_ms >= drift_at), None)
        if request is not None and request.status in ("rejected", "failed"):
            return f"retrain request {request.request_id[:8]} was {request.status}: {request.error}"
        if phase == "detect" and service.now_ms() < (drift_at or 0):
            phase_started = now  # the clock of this step starts with the drift
        done = next((s.number - 1 for s in steps if not s.done), len(steps))
        if done == len(steps):
            return None
        # steps 1-4 each end a phase; steps 5 and 6 are judged together in the last one
        reached = PHASES[1 + min(done, 4)]
        if PHASES.index(reached) > PHASES.index(phase):
            phase, phase_started = reached, now
