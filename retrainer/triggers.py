"""When to ask for a retrain: the policy applied to closed windows, one window at a time.

:func:`evaluate` is a pure function of (policy, state, window, now) that
returns the next state, the retrain requests and the alerts. The worker keeps
one :class:`TriggerState` per model and persists it (``to_dict``).

Three signals are followed, each as *episodes*:

- ``drift``: enough features cross in ``consecutive_windows`` windows in a row;
- ``change``: change detectors fire on the chosen streams (reason ``drift``);
- ``performance``: a metric is worse than the reference or an absolute limit;
- ``estimate``: the label-free estimate of accuracy (a prediction window's
  ``estimated_accuracy``) is more than ``performance.estimated_accuracy_drop``
  below the reference's own estimate (reason ``performance``, before any label);
- ``data_quality``: enough features raise a data-quality alarm (missing values,
  unknown categories, values outside the reference's range; reason ``drift``);
- ``multivariate``: the numeric features together (``__multivariate__``) are
  flagged, e.g. a correlation changed (reason ``drift``);
- ``trend``: the slow-drift evidence (``trend_evidence``) crossed its alarm
  level on enough streams (reason ``drift``).

The ``drift`` signal counts the per-window distribution decision only: the
rows of the other three alarm classes belong to their own signals.

An episode begins when its condition has held long enough and ends after
``hysteresis_windows`` clean windows in a row. One episode makes at most one
request; a request covers every episode open at that moment; automatic
requests of a model are at least ``cooldown_minutes`` apart. A request that
the cooldown holds back is made at the first later window of the same episode
whose condition still holds. Windows with too few labels (performance) or no
matching rows (drift) say nothing: they neither extend nor break a streak.

Request and alert ids are uuid5 of the model, version, signal and the first
window of the episode, so a replay after a crash reproduces the same ids and
the retrainer's dedupe by ``request_id`` holds. For replays to make the same
decisions too, pass event time as ``now_ms`` (e.g. the window's end).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from driftline.retrainer.policy import DRIFTED, QUALITY_METRICS, ModelPolicy
from driftline.retrainer.promotion import TOLERANCE, finite_number
from driftline.streams.core.multivariate import MULTIVARIATE_FEATURE
from driftline.streams.core.sequential import METRIC as TREND_METRIC
from driftline.streams.records import Alert, Evidence, FeatureDrift, RetrainReason, RetrainRequest

Kind = Literal["drift", "change", "performance", "estimate", "data_quality", "multivariate", "trend"]
Status = Literal["hot", "clean", "unknown"]

# The first kind in this order that asks for a retrain names the request's reason (and its id:
# new kinds go last, so that the requests of the older ones keep their ids).
KINDS: tuple[Kind, ...] = ("performance", "estimate", "drift", "change", "multivariate", "trend", "data_quality")
# The request's reason is one of a fixed set (docs/CONTRACTS.md); its evidence names the metric.
REASONS: dict[Kind, RetrainReason] = {
    "performance": "performance",
    "estimate": "performance",
    "drift": "drift",
    "change": "drift",
    "multivariate": "drift",
    "trend": "drift",
    "data_quality": "drift",
}
_SEVERITY: dict[Kind, Literal["info", "warning", "critical"]] = {
    "performance": "critical",
    "estimate": "warning",
    "drift": "warning",
    "change": "warning",
    "multivariate": "warning",
    "trend": "warning",
    "data_quality": "warning",
}
_STARTED: dict[Kind, str] = {
    "performance": "performance_drop",
    "estimate": "estimated_performance_drop",
    "drift": "drift",
    "change": "change",
    "multivariate": "multivariate_drift",
    "trend": "trend",
    "data_quality": "data_quality",
}
_ENDED: dict[Kind, str] = {
    "performance": "performance_recovered",
    "estimate": "estimated_performance_recovered",
    "drift": "drift_resolved",
    "change": "change_resolved",
    "multivariate": "multivariate_drift_resolved",
    "trend": "trend_resolved",
    "data_quality": "data_quality_resolved",
}

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://driftline.dev/ns/v1")
_STATE_FORMAT = 1
_HOUR_MS = 3_600_000
_PERFORMANCE_SEGMENT = ""  # evidence of performance is about the whole population (segment '')


def stable_id(*parts: object) -> str:
    """A uuid5 of ``parts``: the same inputs give the same id in any process.

    >>> stable_id("credit", "3", "drift", 60000) == stable_id("credit", "3", "drift", 60000)
    True
    """
    return str(uuid.uuid5(NAMESPACE, "|".join(str(p) for p in parts)))


@dataclass(frozen=True)
class TriggerInput:
    """What was measured for one model version in one closed window.

    ``drift`` holds the drift engine's rows; ``performance`` the metrics over
    ``n_labeled`` labelled predictions (None: no labels yet);
    ``reference_performance`` the version's registered holdout metrics;
    ``change_events`` the (detector, stream) pairs that fired in the window;
    ``estimated_performance`` the label-free estimates of a prediction window
    (``{'accuracy': .., 'accuracy_lower': ..}``, None: none) and
    ``reference_estimates`` the same metrics estimated on the reference.

    >>> w = TriggerInput("credit", "3", 0, 60_000, change_events=[("adwin", "error")])
    >>> w.window_end - w.window_start
    60000
    """

    model_id: str
    model_version: str
    window_start: int
    window_end: int
    drift: Sequence[FeatureDrift] = ()
    performance: Mapping[str, float] | None = None
    n_labeled: int = 0
    reference_performance: Mapping[str, float] | None = None
    change_events: Sequence[tuple[str, str]] = ()
    estimated_performance: Mapping[str, float] | None = None
    reference_estimates: Mapping[str, float] | None = None


@dataclass(frozen=True)
class Episode:
    """One signal's progress: a streak of hot windows, then an open episode.

    ``start`` is the first window of the episode (None: no episode open).

    >>> Episode().active, Episode(start=0).active
    (False, True)
    """

    streak: int = 0
    streak_start: int | None = None
    start: int | None = None
    clean: int = 0
    requested: bool = False

    @property
    def active(self) -> bool:
        return self.start is not None


class _Episodes(TypedDict, total=False):
    """Episodes by kind, to replace in a :class:`TriggerState` (``replace(state, **episodes)``)."""

    drift: Episode
    change: Episode
    performance: Episode
    estimate: Episode
    data_quality: Episode
    multivariate: Episode
    trend: Episode


@dataclass(frozen=True)
class TriggerState:
    """What the evaluator remembers about one model between windows.

    >>> s = TriggerState("credit", "3", last_request_ms=5)
    >>> TriggerState.from_dict(s.to_dict()) == s
    True
    """

    model_id: str
    model_version: str | None = None
    last_window_end: int | None = None
    drift: Episode = Episode()
    change: Episode = Episode()
    performance: Episode = Episode()
    last_request_ms: int | None = None
    estimate: Episode = Episode()  # last: states saved before it existed load with a fresh episode
    last_request_id: str | None = None
    schedule_anchor_ms: int | None = None
    # last: states saved before they existed load with fresh episodes
    data_quality: Episode = Episode()
    multivariate: Episode = Episode()
    trend: Episode = Episode()

    def episode(self, kind: Kind) -> Episode:
        episodes: _Episodes = {
            "drift": self.drift,
            "change": self.change,
            "performance": self.performance,
            "estimate": self.estimate,
            "data_quality": self.data_quality,
            "multivariate": self.multivariate,
            "trend": self.trend,
        }
        return episodes[kind]

    def for_version(self, model_version: str) -> TriggerState:
        """A fresh start for another version (its reference differs); cooldown and schedule carry over."""
        return TriggerState(
            self.model_id,
            model_version,
            last_request_ms=self.last_request_ms,
            last_request_id=self.last_request_id,
            schedule_anchor_ms=self.schedule_anchor_ms,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = _STATE_FORMAT
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriggerState:
        if not isinstance(data, Mapping) or data.get("format") != _STATE_FORMAT:
            raise ValueError(f"not a trigger state of format {_STATE_FORMAT}: {data!r}")
        values = {k: v for k, v in data.items() if k != "format"}
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"trigger state has unknown keys: {unknown}")
        if "model_id" not in values:
            raise ValueError("trigger state has no model_id")
        try:
            for kind in KINDS:
                if kind in values:
                    values[kind] = Episode(**values[kind])
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"trigger state is malformed: {exc}") from exc


@dataclass(frozen=True)
class Signal:
    """One kind's reading of one window: hot (with evidence), clean or unknown.

    >>> Signal("clean").evidence
    ()
    """

    status: Status
    evidence: tuple[Evidence, ...] = ()
    summary: str = ""


_UNKNOWN = Signal("unknown")
_CLEAN = Signal("clean")


def drift_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when at least ``min_features`` features cross in this window.

    >>> from driftline.retrainer.policy import load_policy
    >>> rows = [FeatureDrift("a", "psi", 0.4, None, 0.2, True), FeatureDrift("b", "psi", 0.05, None, 0.2, False)]
    >>> drift_signal(load_policy(None).for_model("m"), TriggerInput("m", "1", 0, 60_000, drift=rows)).status
    'clean'
    """
    rule = policy.drift
    rows = [
        r
        for r in window.drift
        if (rule.features is None or r.feature in rule.features)
        and (rule.metric == DRIFTED or r.metric == rule.metric)
        and not _own_alarm_class(r)
    ]
    if not rows:
        return _UNKNOWN
    if rule.metric == DRIFTED:
        hits = [r for r in rows if r.drifted]
    else:
        hits = [r for r in rows if rule.crosses(r.value, r.threshold)]
    features = sorted({r.feature for r in hits})
    if len(features) < rule.min_features:
        return _CLEAN
    evidence = tuple(
        Evidence(
            r.metric,
            r.feature,
            float(r.value),
            float(rule.effective_threshold(r.threshold)),
            window.window_start,
            window.window_end,
        )
        for r in hits
    )
    what = (
        "drift"
        if rule.metric == DRIFTED
        else f"{rule.metric} {rule.op} " + ("its threshold" if rule.threshold is None else f"{rule.threshold:g}")
    )
    return Signal("hot", evidence, f"{what} on {len(features)} feature(s) ({', '.join(features)})")


def _own_alarm_class(row: FeatureDrift) -> bool:
    """A row of data quality, the multivariate statistics or the slow-drift evidence: not the drift signal's.

    By metric name, not ``kind``: rows read back from the warehouse to rebuild a state carry no kind.
    """
    return row.metric in QUALITY_METRICS or row.feature == MULTIVARIATE_FEATURE or row.metric == TREND_METRIC


def _alarm_signal(
    window: TriggerInput, watched: list[FeatureDrift], min_features: int, what: str, unit: str = "feature(s)"
) -> Signal:
    """Hot when the engine flagged ``watched`` rows of at least ``min_features`` features; those rows are the evidence.

    Rows without a finite value (nothing measured) say nothing.
    """
    rows = [r for r in watched if math.isfinite(r.value)]
    if not rows:
        return _UNKNOWN
    hits = [r for r in rows if r.drifted]
    features = sorted({r.feature for r in hits})
    if len(features) < min_features:
        return _CLEAN
    # Every row of a feature carries the feature's decision for its alarm class; the evidence is the rows
    # that crossed their own threshold (all of the feature's flagged rows when none did on its own).
    crossed = {r.feature for r in hits if r.value > r.threshold}
    hits = [r for r in hits if r.feature not in crossed or r.value > r.threshold]
    evidence = tuple(
        Evidence(r.metric, r.feature, float(r.value), float(r.threshold), window.window_start, window.window_end)
        for r in hits
    )
    values = ", ".join(f"{r.metric}({r.feature}) {r.value:.4g} > {r.threshold:.4g}" for r in hits)
    return Signal("hot", evidence, f"{what} on {len(features)} {unit}: {values}")


def data_quality_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when at least ``data_quality.min_features`` features raise a data-quality alarm.

    >>> from driftline.retrainer.policy import parse_policy
    >>> p = parse_policy({"defaults": {"data_quality": {"enabled": True}}}).for_model("m")
    >>> rows = [FeatureDrift("income", "missing_rate", 0.08, None, 0.031, True, "data_quality"),
    ...         FeatureDrift("income", "psi", 0.01, None, 0.2, False)]
    >>> s = data_quality_signal(p, TriggerInput("m", "1", 0, 60_000, drift=rows))
    >>> s.status, [(e.metric, e.feature, e.value) for e in s.evidence]
    ('hot', [('missing_rate', 'income', 0.08)])
    >>> s.summary
    'data-quality alarm on 1 feature(s): missing_rate(income) 0.08 > 0.031'
    """
    rule = policy.data_quality
    watched = [r for r in window.drift if rule.watches(r.feature, r.metric)]
    return _alarm_signal(window, watched, rule.min_features, "data-quality alarm")


def multivariate_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when a statistic of all numeric features together (``__multivariate__``) is flagged.

    >>> from driftline.retrainer.policy import load_policy
    >>> rows = [FeatureDrift("__multivariate__", "correlation_change", 0.62, 1e-9, 0.21, True)]
    >>> multivariate_signal(load_policy(None).for_model("m"), TriggerInput("m", "1", 0, 60_000, drift=rows)).summary
    'multivariate drift on 1 statistic(s): correlation_change(__multivariate__) 0.62 > 0.21'
    """
    rule = policy.multivariate
    watched = [r for r in window.drift if rule.watches(r.feature, r.metric)]
    return _alarm_signal(window, watched, 1, "multivariate drift", "statistic(s)")


def trend_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when the slow-drift evidence crossed its alarm level on at least ``trend.min_features`` streams.

    >>> from driftline.retrainer.policy import load_policy
    >>> rows = [FeatureDrift("__prediction__", "trend_evidence", 2.5e3, 0.008, 600.0, True),
    ...         FeatureDrift("income", "trend_evidence", 3.0, 1.0, 600.0, False)]
    >>> s = trend_signal(load_policy(None).for_model("m"), TriggerInput("m", "1", 0, 60_000, drift=rows))
    >>> s.status, s.evidence[0].feature, s.evidence[0].value
    ('hot', '__prediction__', 2500.0)
    """
    rule = policy.trend
    watched = [r for r in window.drift if rule.watches(r.feature, r.metric)]
    return _alarm_signal(window, watched, rule.min_features, "slow drift (trend evidence)", "stream(s)")


def change_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when the chosen detectors fired at least ``min_events`` times on the chosen streams."""
    rule = policy.change_detectors
    counts = Counter((d, s) for d, s in window.change_events if rule.matches(d, s))
    total = sum(counts.values())
    if total < rule.min_events:
        return _CLEAN
    evidence = tuple(
        Evidence(d, s, float(n), float(rule.min_events), window.window_start, window.window_end)
        for (d, s), n in sorted(counts.items())
    )
    fired = ", ".join(f"{d} on {s} ({n}x)" for (d, s), n in sorted(counts.items()))
    return Signal("hot", evidence, f"change detected: {fired}")


def performance_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when the metric is worse than reference by more than ``max_drop``, or worse than ``limit``.

    >>> from driftline.retrainer.policy import load_policy
    >>> p = load_policy(None).for_model("m")
    >>> w = TriggerInput("m", "1", 0, 60_000, performance={"accuracy": 0.70}, n_labeled=800,
    ...                   reference_performance={"accuracy": 0.80})
    >>> performance_signal(p, w).summary
    'accuracy 0.7 over 800 labels: worse than 0.75 (reference 0.8 - 0.05)'
    """
    rule = policy.performance
    if window.performance is None or window.n_labeled < rule.min_labels:
        return _UNKNOWN
    value = finite_number(window.performance.get(rule.metric))
    if value is None:
        return _UNKNOWN
    reference = finite_number((window.reference_performance or {}).get(rule.metric))
    bounds: list[tuple[float, str]] = []
    if rule.max_drop is not None and reference is not None:
        sign = "-" if rule.higher_is_better else "+"
        bounds.append((rule.worse_than(reference), f"(reference {reference:g} {sign} {rule.max_drop:g})"))
    if rule.limit is not None:
        bounds.append((rule.limit, "(the limit)"))
    if not bounds:
        return _UNKNOWN  # nothing to compare with: no reference and no limit
    crossed = [(bound, why) for bound, why in bounds if rule.is_worse(value, bound)]
    if not crossed:
        return _CLEAN
    evidence = tuple(
        Evidence(rule.metric, _PERFORMANCE_SEGMENT, value, bound, window.window_start, window.window_end)
        for bound, _ in crossed
    )
    reasons = "; ".join(f"worse than {bound:g} {why}" for bound, why in crossed)
    return Signal("hot", evidence, f"{rule.metric} {value:g} over {window.n_labeled} labels: {reasons}")


ESTIMATED_METRIC = "accuracy"  # the estimate a policy compares: estimated_accuracy


def estimate_signal(policy: ModelPolicy, window: TriggerInput) -> Signal:
    """Hot when the window's estimated accuracy is more than ``estimated_accuracy_drop`` below the reference's.

    Both sides are estimated the same way (from calibrated scores, no label),
    so a calibration error common to both cancels.

    >>> from driftline.retrainer.policy import parse_policy
    >>> p = parse_policy({"defaults": {"performance": {"estimated_accuracy_drop": 0.05}}}).for_model("m")
    >>> w = TriggerInput("m", "1", 0, 60_000, estimated_performance={"accuracy": 0.70},
    ...                   reference_estimates={"accuracy": 0.80})
    >>> s = estimate_signal(p, w)
    >>> s.status, s.evidence[0].metric, s.summary
    ('hot', 'estimated_accuracy', 'estimated_accuracy 0.7 (no labels): worse than 0.75 (reference estimate 0.8 - 0.05)')
    """
    drop = policy.performance.estimated_accuracy_drop
    if drop is None or not window.estimated_performance:
        return _UNKNOWN
    value = finite_number(window.estimated_performance.get(ESTIMATED_METRIC))
    reference = finite_number((window.reference_estimates or {}).get(ESTIMATED_METRIC))
    if value is None or reference is None:
        return _UNKNOWN
    bound = reference - drop
    if not value < bound - TOLERANCE:
        return _CLEAN
    metric = f"estimated_{ESTIMATED_METRIC}"
    evidence = (Evidence(metric, _PERFORMANCE_SEGMENT, value, bound, window.window_start, window.window_end),)
    return Signal(
        "hot",
        evidence,
        f"{metric} {value:g} (no labels): worse than {bound:g} (reference estimate {reference:g} - {drop:g})",
    )


def _advance(episode: Episode, signal: Signal, window_start: int, need: int, clear: int) -> Episode:
    """The episode after one window: ``need`` hot windows in a row open it, ``clear`` clean ones close it."""
    if signal.status == "unknown":
        return episode
    if signal.status == "hot":
        if episode.active:
            return replace(episode, clean=0)
        streak_start = window_start if episode.streak == 0 else episode.streak_start
        if episode.streak + 1 >= need:
            return Episode(start=streak_start)
        return Episode(streak=episode.streak + 1, streak_start=streak_start)
    if episode.active:
        return Episode() if episode.clean + 1 >= clear else replace(episode, clean=episode.clean + 1)
    return Episode()


def cooldown_remaining_ms(policy: ModelPolicy, state: TriggerState, now_ms: int) -> int:
    """How long automatic requests must still wait (0: they may go now).

    >>> from driftline.retrainer.policy import load_policy
    >>> cooldown_remaining_ms(load_policy(None).for_model("m"), TriggerState("m", last_request_ms=0), 60_000)
    1740000
    """
    if state.last_request_ms is None:
        return 0
    return max(0, state.last_request_ms + policy.retraining.cooldown_ms - now_ms)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _request_made(state: TriggerState, request: RetrainRequest) -> TriggerState:
    # one retrain answers every episode open now, so none of them asks again
    covered: _Episodes = {}
    for k in KINDS:
        if state.episode(k).active:
            covered[k] = replace(state.episode(k), requested=True)
    return replace(state, last_request_ms=request.requested_at, last_request_id=request.request_id, **covered)


def _requested_alert(request: RetrainRequest, window: TriggerInput | None) -> Alert:
    return Alert(
        alert_id=stable_id("alert", request.request_id),
        model_id=request.model_id,
        model_version=request.model_version,
        severity="info",
        kind="retrain_requested",
        message=f"{request.model_id} v{request.model_version}: retrain requested ({request.reason}), "
        f"request {request.request_id}",
        occurred_at=request.requested_at,
        window_start=None if window is None else window.window_start,
        window_end=None if window is None else window.window_end,
    )


def evaluate(
    policy: ModelPolicy, state: TriggerState, window: TriggerInput, now_ms: int
) -> tuple[TriggerState, list[RetrainRequest], list[Alert]]:
    """Apply the policy to one closed window.

    A window of another version than the state's starts afresh for that
    version; a window that ends no later than the last one seen (a replay)
    changes nothing and emits nothing.

    >>> from driftline.retrainer.policy import load_policy
    >>> policy = load_policy(None).for_model("m")
    >>> rows = [FeatureDrift(f, "psi", 0.5, None, 0.2, True) for f in ("a", "b")]
    >>> state = TriggerState("m")
    >>> for i in range(3):
    ...     w = TriggerInput("m", "1", i * 60_000, (i + 1) * 60_000, drift=rows)
    ...     state, requests, alerts = evaluate(policy, state, w, w.window_end)
    ...     print(i, [r.reason for r in requests], [a.kind for a in alerts])
    0 [] []
    1 ['drift'] ['drift', 'retrain_requested']
    2 [] []
    """
    if not (policy.model_id == state.model_id == window.model_id):
        raise ValueError(
            f"model ids differ: policy {policy.model_id!r}, state {state.model_id!r}, window {window.model_id!r}"
        )
    if window.window_end <= window.window_start:
        raise ValueError(f"window ends ({window.window_end}) before it starts ({window.window_start})")
    if state.model_version != window.model_version:
        state = state.for_version(window.model_version)
    elif state.last_window_end is not None and window.window_end <= state.last_window_end:
        return state, [], []
    anchor = now_ms if state.schedule_anchor_ms is None else state.schedule_anchor_ms
    state = replace(state, last_window_end=window.window_end, schedule_anchor_ms=anchor)
    if not policy.monitoring.enabled:
        return state, [], []

    before = state
    state, signals = _read_window(policy, state, window)
    wanting = [
        k
        for k in KINDS
        if k in signals and signals[k].status == "hot" and state.episode(k).active and not state.episode(k).requested
    ]
    wait_ms = cooldown_remaining_ms(policy, state, now_ms) if wanting else 0
    alerts = _episode_alerts(policy, before, state, signals, window, now_ms, wait_ms)
    if not wanting or wait_ms:
        return state, [], alerts
    first = wanting[0]
    request = RetrainRequest(
        request_id=stable_id(window.model_id, window.model_version, first, state.episode(first).start),
        model_id=window.model_id,
        model_version=window.model_version,
        reason=REASONS[first],
        requested_at=now_ms,
        evidence=[e for k in KINDS if k in signals and signals[k].status == "hot" for e in signals[k].evidence],
    )
    return _request_made(state, request), [request], alerts + [_requested_alert(request, window)]


def _read_window(
    policy: ModelPolicy,
    state: TriggerState,
    window: TriggerInput,
) -> tuple[TriggerState, dict[Kind, Signal]]:
    """Every enabled signal's reading of the window, and the episodes advanced by it."""
    enabled = {
        "drift": policy.drift.enabled,
        "change": policy.change_detectors.enabled,
        "performance": policy.performance.enabled,
        "estimate": policy.performance.estimated_accuracy_drop is not None,
        "data_quality": policy.data_quality.enabled,
        "multivariate": policy.multivariate.enabled,
        "trend": policy.trend.enabled,
    }
    readers = {
        "drift": drift_signal,
        "change": change_signal,
        "performance": performance_signal,
        "estimate": estimate_signal,
        "data_quality": data_quality_signal,
        "multivariate": multivariate_signal,
        "trend": trend_signal,
    }
    signals: dict[Kind, Signal] = {}
    for kind in KINDS:
        if not enabled[kind]:
            state = _with_episode(state, kind, Episode())  # a trigger turned off by a policy reload
            continue
        signals[kind] = readers[kind](policy, window)
        episode = _advance(
            state.episode(kind),
            signals[kind],
            window.window_start,
            _needed(policy, kind),
            policy.retraining.hysteresis_windows,
        )
        state = _with_episode(state, kind, episode)
    return state, signals


def _with_episode(state: TriggerState, kind: Kind, episode: Episode) -> TriggerState:
    episodes: _Episodes = {}
    episodes[kind] = episode
    return replace(state, **episodes)


def _needed(policy: ModelPolicy, kind: Kind) -> int:
    # a change detector's alarm is already a confirmed change: one window is enough
    return {
        "drift": policy.drift.consecutive_windows,
        "change": 1,
        "performance": policy.performance.consecutive_windows,
        "estimate": policy.performance.consecutive_windows,
        "data_quality": policy.data_quality.consecutive_windows,
        "multivariate": policy.multivariate.consecutive_windows,
        "trend": policy.trend.consecutive_windows,
    }[kind]


def _episode_alerts(
    policy: ModelPolicy,
    before: TriggerState,
    after: TriggerState,
    signals: dict[Kind, Signal],
    window: TriggerInput,
    now_ms: int,
    wait_ms: int,
) -> list[Alert]:
    """An alert for every episode that began or ended in this window."""
    alerts = []
    name = f"{window.model_id} v{window.model_version}"
    for kind in signals:
        old, new = before.episode(kind), after.episode(kind)
        if new.active and not old.active:
            message = f"{name}: {signals[kind].summary}"
            if _needed(policy, kind) > 1:
                message += f", {_needed(policy, kind)} windows in a row"
            if wait_ms:
                message += f"; retrain held back by the cooldown until {_iso(now_ms + wait_ms)}"
            alert_id = stable_id("alert", window.model_id, window.model_version, kind, new.start)
            alerts.append(
                Alert(
                    alert_id,
                    window.model_id,
                    window.model_version,
                    _SEVERITY[kind],
                    _STARTED[kind],
                    message,
                    now_ms,
                    window.window_start,
                    window.window_end,
                )
            )
        elif old.start is not None and not new.active:  # old.active, spelt so that start is known
            message = (
                f"{name}: the {kind} episode that began {_iso(old.start)} ended after "
                f"{policy.retraining.hysteresis_windows} clean window(s)"
            )
            alert_id = stable_id("alert", window.model_id, window.model_version, _ENDED[kind], old.start)
            alerts.append(
                Alert(
                    alert_id,
                    window.model_id,
                    window.model_version,
                    "info",
                    _ENDED[kind],
                    message,
                    now_ms,
                    window.window_start,
                    window.window_end,
                )
            )
    return alerts


def evaluate_schedule(
    policy: ModelPolicy, state: TriggerState, now_ms: int
) -> tuple[TriggerState, list[RetrainRequest], list[Alert]]:
    """Ask for a retrain when ``every_hours`` have passed since the last request of any reason.

    Before any request, the clock starts at the first time the state saw this
    model (a window or a schedule check). Scheduled requests ignore the
    cooldown (the period is the user's explicit choice) and need a known
    model version.

    >>> from driftline.retrainer.policy import parse_policy
    >>> policy = parse_policy({"defaults": {"schedule": {"every_hours": 1}}}).for_model("m")
    >>> state, requests, _ = evaluate_schedule(policy, TriggerState("m", "1"), 0)
    >>> state, requests, _ = evaluate_schedule(policy, state, 3_600_000)
    >>> [(r.reason, r.evidence[0].value) for r in requests]
    [('schedule', 1.0)]
    """
    if policy.model_id != state.model_id:
        raise ValueError(f"model ids differ: policy {policy.model_id!r}, state {state.model_id!r}")
    anchor = state.schedule_anchor_ms
    if anchor is None:
        anchor = now_ms
        state = replace(state, schedule_anchor_ms=anchor)
    period, hours = policy.schedule.period_ms, policy.schedule.every_hours  # both None or neither
    if period is None or hours is None or state.model_version is None:
        return state, [], []
    since = state.last_request_ms if state.last_request_ms is not None else anchor
    due = since + period
    if now_ms < due:
        return state, [], []
    request = RetrainRequest(
        request_id=stable_id(state.model_id, state.model_version, "schedule", due),
        model_id=state.model_id,
        model_version=state.model_version,
        reason="schedule",
        requested_at=now_ms,
        evidence=[Evidence("schedule", "", (now_ms - since) / _HOUR_MS, float(hours), since, now_ms)],
    )
    return _request_made(state, request), [request], [_requested_alert(request, None)]


def manual_request(model_id: str, model_version: str, now_ms: int, requested_by: str) -> RetrainRequest:
    """A retrain asked for by a person (``driftline retrain --model M``).

    Manual requests are always allowed; the only brake is the policy's
    ``manual.cooldown_minutes`` (0 by default), checked with
    :func:`manual_cooldown_remaining_ms` by whoever accepts the request.
    ``requested_by`` is kept as the evidence's ``feature`` (the record has no
    other field for it).

    >>> r = manual_request("credit", "3", 1_700_000_000_000, "alice")
    >>> r.reason, r.evidence[0].metric, r.evidence[0].feature
    ('manual', 'manual', 'alice')
    >>> r.request_id == manual_request("credit", "3", 1_700_000_000_000, "alice").request_id
    True
    """
    for name, value in (("model_id", model_id), ("model_version", model_version), ("requested_by", requested_by)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return RetrainRequest(
        request_id=stable_id(model_id, model_version, "manual", requested_by, now_ms),
        model_id=model_id,
        model_version=model_version,
        reason="manual",
        requested_at=now_ms,
        evidence=[Evidence("manual", requested_by, 0.0, 0.0, now_ms, now_ms)],
    )


def manual_cooldown_remaining_ms(policy: ModelPolicy, last_manual_ms: int | None, now_ms: int) -> int:
    """How long a new manual request must still wait (0: accept it now).

    >>> from driftline.retrainer.policy import parse_policy
    >>> p = parse_policy({"defaults": {"manual": {"cooldown_minutes": 2}}}).for_model("m")
    >>> manual_cooldown_remaining_ms(p, 0, 60_000), manual_cooldown_remaining_ms(p, None, 0)
    (60000, 0)
    """
    if last_manual_ms is None:
        return 0
    return max(0, last_manual_ms + policy.manual.cooldown_ms - now_ms)


def record_request(state: TriggerState, request: RetrainRequest) -> TriggerState:
    """Tell the state about a request made elsewhere (manual, another worker): it restarts the
    cooldown and the schedule clock, and covers the episodes open now.

    >>> s = record_request(TriggerState("m", "1"), manual_request("m", "1", 10, "bob"))
    >>> s.last_request_ms
    10
    """
    if request.model_id != state.model_id:
        raise ValueError(f"request for {request.model_id!r} given to the state of {state.model_id!r}")
    if state.last_request_ms is not None and request.requested_at <= state.last_request_ms:
        return state
    if request.model_version != state.model_version:
        return replace(state, last_request_ms=request.requested_at, last_request_id=request.request_id)
    return _request_made(state, request)
