"""The monitoring and retraining policy: what to measure, when to retrain, what to promote.

A policy file (YAML, ``DRIFTLINE_POLICY``) has a ``defaults:`` block and a
``models:`` block whose entries override the defaults per model id. Mappings
merge key by key (``defaults`` over the built-in values, a model over
``defaults``); lists, scalars and ``retraining.hyperparameters`` replace as a
whole. docs/POLICY.md is the reference of every key, with a full example.

Parsing checks every key and value and reports all problems at once, each
with its key path (``models.credit.drift.min_features: expected a positive
integer, got 'two'``); unknown keys are errors, with a "did you mean" hint.
pydantic does the walking (structure, unknown keys, locations, collecting);
small checkers here say what each value must be, in the messages' words.
Everything here is pure except :func:`load_policy`, which reads the file.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeAlias

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainValidator, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from driftline.naming import InvalidName, validate_name
from driftline.retrainer.promotion import TOLERANCE, Direction, PromotionRule, metric_direction
from driftline.streams.core import drift
from driftline.streams.core.drift import DEFAULT_THRESHOLDS
from driftline.streams.core.monitor import TREND_LEVELS
from driftline.streams.core.multivariate import CORRELATION_CHANGE, MULTIVARIATE_FEATURE, RECONSTRUCTION_ERROR
from driftline.streams.core.sequential import GUARANTEES as TREND_GUARANTEES
from driftline.streams.core.sequential import METRIC as TREND_METRIC

# The drift engine owns its metric names (those of drift_metrics rows, docs/CONTRACTS.md) and the
# threshold keys it takes; ``drifted`` is the engine's verdict.
DRIFT_METRICS = drift.METRICS
THRESHOLD_KEYS = drift.THRESHOLD_KEYS
DRIFTED = "drifted"
# The alarm classes other than per-window distribution drift, each with a trigger of its own.
QUALITY_METRICS = drift.QUALITY_METRICS
MULTIVARIATE_METRICS = (RECONSTRUCTION_ERROR, CORRELATION_CHANGE)
ALL_FEATURES = "*"
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
SnapshotSince = Literal["lookback", "last_promotion"]


def _frozen_thresholds(raw: Mapping[str, Mapping[str, float | None]]) -> Mapping[str, Mapping[str, float]]:
    # Each feature entry is completed with '*' here, once, so readers never merge;
    # None (null in YAML) removes an inherited threshold.
    everywhere = {m: v for m, v in raw.get(ALL_FEATURES, {}).items() if v is not None}
    out = {ALL_FEATURES: types.MappingProxyType(everywhere)}
    for feature, entry in raw.items():
        if feature != ALL_FEATURES:
            complete = {**everywhere, **entry}
            out[feature] = types.MappingProxyType({m: v for m, v in complete.items() if v is not None})
    return types.MappingProxyType(out)


_HOUR_MS = 3_600_000
_MINUTE_MS = 60_000


class PolicyError(ValueError):
    """A policy file that driftline cannot use; ``problems`` holds (key path, message) pairs.

    >>> try:
    ...     parse_policy({"models": {"credit": {"drift": {"min_features": "two"}}}}, source="p.yaml")
    ... except PolicyError as exc:
    ...     print(exc)
    p.yaml: models.credit.drift.min_features: expected a positive integer, got 'two'
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            path, message = problems[0]
            text = f"{source}: {path}: {message}" if path else f"{source}: {message}"
        else:
            lines = [f"  {path}: {message}" if path else f"  {message}" for path, message in problems]
            text = f"{source}: {len(problems)} problems:\n" + "\n".join(lines)
        super().__init__(text)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ReferenceSettings:
    """How reference profiles are built: histogram bins, kept categories, sample for KS.

    >>> ReferenceSettings().bins
    10
    """

    bins: int = 10
    top_k: int = 20
    sample_size: int = 10_000

    def profile_builder(
        self,
        model_id: str,
        numeric: Mapping[str, Any],
        categorical: Mapping[str, Any],
        predictions: Any = None,
        calibrator: Mapping[str, Any] | None = None,
    ) -> Callable[[str], dict[str, Any]]:
        """The registry's ``reference_profile`` callback: the profile of these columns, once the
        registry has chosen the version number; ``calibrator`` (``ScoreCalibrator.to_dict()``, fitted on
        labelled held-out rows) travels inside it for label-free performance estimates.

        >>> import numpy as np
        >>> build = ReferenceSettings(bins=4, sample_size=100).profile_builder("m", {"x": np.arange(50.0)}, {})
        >>> d = build("3"); d["model_version"], d["model_id"]
        ('3', 'm')
        """
        from driftline.retrainer.reference import build_reference, registered_form

        def build(version: str) -> dict[str, Any]:
            profile = build_reference(
                model_id,
                version,
                numeric,
                categorical,
                predictions,
                bins=self.bins,
                top_k=self.top_k,
                sample_size=self.sample_size,
            )
            return registered_form(profile, calibrator)

        return build


@dataclass(frozen=True)
class Monitoring:
    """Windowing and drift thresholds for one model.

    ``thresholds`` maps ``'*'`` (every feature) and feature names to
    ``{metric: value}``; a feature's entry is complete (already merged with
    ``'*'``), so :meth:`threshold` and the drift engine never merge again.

    >>> raw = {"thresholds": {"*": {"psi": 0.2}, "income": {"psi": 0.3, "hellinger": None}}}
    >>> m = parse_policy({"defaults": {"monitoring": raw}}).defaults.monitoring
    >>> m.threshold("income", "psi"), m.threshold("age", "psi"), m.threshold("age", "ks")
    (0.3, 0.2, None)
    >>> m.threshold("age", "hellinger"), m.threshold("income", "hellinger")
    (0.05, None)
    """

    enabled: bool = True
    window_seconds: int = 60
    allowed_lateness_seconds: int = 10
    thresholds: Mapping[str, Mapping[str, float]] = field(
        default_factory=lambda: _frozen_thresholds(DEFAULT_THRESHOLDS)
    )
    fdr_q: float = 0.05
    reference: ReferenceSettings = ReferenceSettings()
    detectors: tuple[str, ...] = ("adwin",)
    # event attributes whose values get their own drift rows and root-cause segments (docs/POLICY.md)
    segments: tuple[str, ...] = ()
    # the slow-drift detector's false-alarm guarantee: 'rate' (at most alpha of the windows) or 'ever'
    trend_guarantee: str = "rate"
    # whom that guarantee covers: 'model' (the model's streams together) or 'stream' (each stream alone)
    trend_level: str = "model"

    def threshold(self, feature: str, metric: str) -> float | None:
        entry = self.thresholds.get(feature)
        if entry is None:
            entry = self.thresholds.get(ALL_FEATURES, {})
        return entry.get(metric)

    @property
    def window_ms(self) -> int:
        return self.window_seconds * 1000

    @property
    def allowed_lateness_ms(self) -> int:
        return self.allowed_lateness_seconds * 1000


@dataclass(frozen=True)
class DriftTrigger:
    """Retrain when ``min_features`` features cross for ``consecutive_windows`` windows in a row.

    ``metric='drifted'`` counts the drift engine's per-feature verdict (any
    metric of the feature drifted); another metric compares each row's value
    with ``op`` and ``threshold``, or with the row's own threshold (the
    monitoring threshold of that feature) when ``threshold`` is None.

    >>> t = DriftTrigger(metric="psi", op=">", threshold=0.2)
    >>> t.crosses(0.25, row_threshold=0.5), t.crosses(0.15, row_threshold=0.1)
    (True, False)
    """

    enabled: bool = True
    metric: str = DRIFTED
    op: str = ">"
    threshold: float | None = None
    min_features: int = 2
    consecutive_windows: int = 2
    features: tuple[str, ...] | None = None

    def crosses(self, value: float, row_threshold: float) -> bool:
        """``value op threshold``; a NaN value or threshold (nothing measured) never crosses."""
        limit = self.effective_threshold(row_threshold)
        return math.isfinite(value) and math.isfinite(limit) and bool(OPS[self.op](value, limit))

    def effective_threshold(self, row_threshold: float) -> float:
        return row_threshold if self.threshold is None else self.threshold


@dataclass(frozen=True)
class PerformanceTrigger:
    """Retrain when a metric is worse than the reference by more than ``max_drop``, or worse than ``limit``.

    The reference is the model version's registered holdout metric. Windows
    with fewer than ``min_labels`` labels say nothing either way. ``limit`` is
    an absolute bound: a floor for higher-is-better metrics, a ceiling for
    lower-is-better ones.

    >>> PerformanceTrigger(metric="mae", max_drop=0.5).worse_than(2.0)
    2.5
    """

    enabled: bool = True
    metric: str = "accuracy"
    direction: Direction | None = None
    max_drop: float | None = 0.05
    limit: float | None = None
    min_labels: int = 500
    consecutive_windows: int = 1
    # label-free: retrain when a prediction window's estimated accuracy (CBPE, streams.core.estimation)
    # is more than this below the reference's own estimate; None: off. Needs a calibrated reference.
    estimated_accuracy_drop: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return metric_direction(self.metric, self.direction) == "higher"

    def worse_than(self, reference: float) -> float:
        """The value past which the metric has dropped too far from ``reference``."""
        drop = self.max_drop or 0.0
        return reference - drop if self.higher_is_better else reference + drop

    def is_worse(self, value: float, bound: float) -> bool:
        """Strictly past ``bound``; a difference within rounding (``TOLERANCE``) is not."""
        return value < bound - TOLERANCE if self.higher_is_better else value > bound + TOLERANCE


@dataclass(frozen=True)
class DataQualityTrigger:
    """Retrain when ``min_features`` features raise a data-quality alarm for ``consecutive_windows`` windows.

    A data-quality alarm is a row of one of ``metrics`` (missing values, unknown
    categories, values outside the reference's range) whose ``drifted`` is set:
    the drift engine's decision against the reference's own rate. Off by
    default: such alarms usually mean a broken pipeline, which a model trained
    on the broken data would learn.

    >>> t = DataQualityTrigger(enabled=True, metrics=("missing_rate",))
    >>> t.watches("income", "missing_rate"), t.watches("income", "out_of_range_rate")
    (True, False)
    """

    enabled: bool = False
    metrics: tuple[str, ...] = QUALITY_METRICS
    min_features: int = 1
    consecutive_windows: int = 2
    features: tuple[str, ...] | None = None

    def watches(self, feature: str, metric: str) -> bool:
        return metric in self.metrics and (self.features is None or feature in self.features)


@dataclass(frozen=True)
class MultivariateTrigger:
    """Retrain when a multivariate statistic (feature ``__multivariate__``) is flagged ``consecutive_windows`` in a row.

    It sees a change in how the numeric features relate that leaves every
    marginal unchanged (docs/STATISTICS.md); each window's test holds its
    level, so two windows in a row keep false requests rare, as for drift.

    >>> MultivariateTrigger().watches("__multivariate__", "correlation_change")
    True
    """

    enabled: bool = True
    metrics: tuple[str, ...] = MULTIVARIATE_METRICS
    consecutive_windows: int = 2

    def watches(self, feature: str, metric: str) -> bool:
        return feature == MULTIVARIATE_FEATURE and metric in self.metrics


@dataclass(frozen=True)
class TrendTrigger:
    """Retrain when the slow-drift evidence (``trend_evidence``) crosses its alarm level on ``min_features`` streams.

    The evidence is accumulated across the version's windows, so its alarm
    already holds its false-alarm guarantee over any number of windows
    (``monitoring.trend_guarantee``), for the model's streams together or for
    each stream alone (``monitoring.trend_level``: at ``'stream'`` a model of
    many streams alarms falsely more often, and ``min_features`` above 1 is the
    way to ask for agreement). Two windows all the same: an abrupt
    change crosses it in its first window, and the second keeps it from asking
    before the drift trigger's own confirmation (and before the snapshot holds
    data from after the change). A trend that goes on keeps alarming, so a
    slow trend loses about one window: in ``'ever'`` mode the evidence stays
    once crossed; in ``'rate'`` mode a stream keeps what it has beyond the
    alarm level (up to one level), which the next window of a trend lifts over
    it again, while a false alarm's evidence is spent.

    >>> TrendTrigger(features=("__prediction__",)).watches("income", "trend_evidence")
    False
    """

    enabled: bool = True
    min_features: int = 1
    consecutive_windows: int = 2
    features: tuple[str, ...] | None = None

    def watches(self, feature: str, metric: str) -> bool:
        return metric == TREND_METRIC and (self.features is None or feature in self.features)


@dataclass(frozen=True)
class ChangeDetectorTrigger:
    """Retrain when change detectors fire at least ``min_events`` times in one window.

    ``streams`` are stream names such as ``error`` or ``score``.

    >>> ChangeDetectorTrigger(enabled=True).matches("adwin", "v3:error")
    True
    """

    enabled: bool = False
    detectors: tuple[str, ...] = ("adwin",)
    streams: tuple[str, ...] = ("error",)
    min_events: int = 1

    def matches(self, detector: str, stream: str) -> bool:
        # The detector bank keys streams as "<version>:<name>"; the policy names only the stream.
        return detector in self.detectors and stream.rpartition(":")[2] in self.streams


@dataclass(frozen=True)
class ScheduleTrigger:
    """Retrain when ``every_hours`` have passed since the last retrain request of any reason.

    >>> ScheduleTrigger(every_hours=24).period_ms
    86400000
    """

    every_hours: float | None = None

    @property
    def enabled(self) -> bool:
        return self.every_hours is not None

    @property
    def period_ms(self) -> int | None:
        return None if self.every_hours is None else int(round(self.every_hours * _HOUR_MS))


@dataclass(frozen=True)
class ManualTrigger:
    """Manual requests are always allowed; ``cooldown_minutes`` only spaces them out (0: none).

    >>> ManualTrigger(cooldown_minutes=2).cooldown_ms
    120000
    """

    cooldown_minutes: float = 0.0

    @property
    def cooldown_ms(self) -> int:
        return int(round(self.cooldown_minutes * _MINUTE_MS))


@dataclass(frozen=True)
class SnapshotRange:
    """Which rows a retrain learns from: the last ``lookback_hours``, or everything since
    the last promotion (then ``lookback_hours`` is the fallback when nothing was promoted).

    >>> SnapshotRange(since="last_promotion", lookback_hours=1).range(10 * 3_600_000, 9 * 3_600_000 + 5)
    (32400005, 36000000)
    >>> SnapshotRange(lookback_hours=2).range(10 * 3_600_000, None)
    (28800000, 36000000)
    """

    since: SnapshotSince = "lookback"
    lookback_hours: float = 168.0

    def range(self, now_ms: int, last_promotion_ms: int | None) -> tuple[int, int]:
        """``[start, end)`` in epoch milliseconds."""
        if self.since == "last_promotion" and last_promotion_ms is not None:
            return last_promotion_ms, now_ms
        return now_ms - int(round(self.lookback_hours * _HOUR_MS)), now_ms


@dataclass(frozen=True)
class Retraining:
    """How a retrain runs and when its result is promoted.

    ``cooldown_minutes`` spaces automatic requests of one model;
    ``hysteresis_windows`` clean windows in a row end a drift or performance
    episode, so that one episode makes one request.

    >>> Retraining().cooldown_ms, Retraining().promotion.metric
    (1800000, 'accuracy')
    """

    snapshot: SnapshotRange = SnapshotRange()
    holdout_fraction: float = 0.2
    min_rows: int = 1000
    trainer: str = "river-linear"
    hyperparameters: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))
    promotion: PromotionRule = PromotionRule()
    cooldown_minutes: float = 30.0
    hysteresis_windows: int = 3

    @property
    def cooldown_ms(self) -> int:
        return int(round(self.cooldown_minutes * _MINUTE_MS))


@dataclass(frozen=True)
class ModelPolicy:
    """Everything the policy says about one model.

    >>> p = load_policy(None).for_model("credit")
    >>> p.drift.min_features, p.drift.consecutive_windows, p.performance.max_drop
    (2, 2, 0.05)
    >>> p.thresholds["*"]["hellinger"]
    0.05
    """

    model_id: str
    monitoring: Monitoring = Monitoring()
    drift: DriftTrigger = DriftTrigger()
    performance: PerformanceTrigger = PerformanceTrigger()
    change_detectors: ChangeDetectorTrigger = ChangeDetectorTrigger()
    schedule: ScheduleTrigger = ScheduleTrigger()
    manual: ManualTrigger = ManualTrigger()
    retraining: Retraining = Retraining()
    data_quality: DataQualityTrigger = DataQualityTrigger()
    multivariate: MultivariateTrigger = MultivariateTrigger()
    trend: TrendTrigger = TrendTrigger()

    @property
    def thresholds(self) -> dict[str, dict[str, float]]:
        """``{feature or '*': {metric: threshold}}`` for the drift engine (a fresh copy)."""
        return {feature: dict(entry) for feature, entry in self.monitoring.thresholds.items()}

    def threshold(self, feature: str, metric: str) -> float | None:
        return self.monitoring.threshold(feature, metric)


@dataclass(frozen=True)
class Policy:
    """The parsed policy file: defaults and per-model overrides.

    >>> policy = parse_policy({"models": {"credit": {"drift": {"min_features": 3}}}})
    >>> policy.for_model("credit").drift.min_features, policy.for_model("churn").drift.min_features
    (3, 2)
    """

    defaults: ModelPolicy
    models: Mapping[str, ModelPolicy]
    source: str = "<built-in defaults>"

    def for_model(self, model_id: str) -> ModelPolicy:
        found = self.models.get(model_id)
        return found if found is not None else replace(self.defaults, model_id=model_id)


# --------------------------------------------------------------------------- built-in values


def _plain(value: Any) -> Any:
    """The YAML-shaped form of a policy record: mappings, lists and scalars."""
    if is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# The dataclass defaults are the one source of the built-in values.
BUILTIN: dict[str, Any] = {k: v for k, v in _plain(ModelPolicy(ALL_FEATURES)).items() if k != "model_id"}

# These replace the inherited value as a whole: hyperparameters belong to one trainer.
_REPLACED = {("retraining", "hyperparameters")}


# --------------------------------------------------------------------------- validation
# pydantic walks the file, forbids unknown keys and collects every problem with its location; the
# checkers below only say what a value must be, in the words the error messages use.

_Loc = tuple[Any, ...]


def _fail(message: str, found: list[tuple[_Loc, str]] | None = None) -> NoReturn:
    """Reject a value; ``found`` lists problems inside it, each at a location relative to the value."""
    raise PydanticCustomError("policy", "{message}", {"message": message, "found": found or [((), message)]})


def _mapping(what: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            _fail(f"expected {what}, got {value!r}")
        return value

    return BeforeValidator(check)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(minimum: int, what: str) -> PlainValidator:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            _fail(f"expected {what}, got {value!r}")
        return value

    return PlainValidator(check)


def _number(accept: Callable[[float], bool], what: str, optional: bool = False) -> PlainValidator:
    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        if not _is_number(value) or not math.isfinite(value) or not accept(value):
            _fail(f"expected {what}, got {value!r}")
        return float(value)

    return PlainValidator(check)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(f"expected true or false, got {value!r}")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(f"expected a non-empty string, got {value!r}")
    return value


def _choice(options: tuple[str, ...], hint: str = "", optional: bool = False) -> PlainValidator:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if value not in options:
            listed = ", ".join(repr(o) for o in options)
            _fail(f"expected one of {listed}, got {value!r}{_did_you_mean(value, options)}{hint}")
        return str(value)

    return PlainValidator(check)


def _names(options: Callable[[], tuple[str, ...]] | None = None, optional: bool = False) -> PlainValidator:
    """A non-empty list of distinct names, each among ``options()`` when given."""

    def check(value: Any) -> list[str] | None:
        if value is None and optional:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            _fail(f"expected a list of names, got {value!r}")
        if not value:
            _fail("expected at least one name, got an empty list")
        if len(set(value)) != len(value):
            _fail(f"names repeat in {value!r}")
        if options is not None:
            known = options()
            for v in value:
                if v not in known:
                    _fail(f"unknown name {v!r}{_did_you_mean(v, known)}; known: {', '.join(known)}")
        return list(value)

    return PlainValidator(check)


def _detector_names() -> tuple[str, ...]:
    # Imported here: the detector module pulls in river, which a CLI that only reads the policy does not need.
    from driftline.streams.core.detectors import DETECTORS

    return tuple(DETECTORS)


def _trainer(value: Any) -> str:
    if not isinstance(value, str) or not (
        re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value)
        or re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", value)
    ):
        _fail(f"expected an entry-point name such as 'river-linear' or 'module:function', got {value!r}")
    return value


def _did_you_mean(value: Any, options: Any) -> str:
    """The hint pydantic lacks: the closest known name, if one is close.

    >>> _did_you_mean("cooldown_minuts", ["cooldown_minutes", "min_rows"])
    " (did you mean 'cooldown_minutes'?)"
    """
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _json_value(value: Any, at: _Loc, found: list[tuple[_Loc, str]]) -> Any:
    # Hyperparameters go into lineage JSON, which refuses anything JSON cannot spell.
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            found.append((at, f"expected a finite number, got {value!r}"))
        return value
    if isinstance(value, list):
        return [_json_value(v, at + (i,), found) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                found.append((at, f"keys must be strings, got {k!r}"))
                continue
            out[k] = _json_value(v, at + (k,), found)
        return out
    found.append((at, f"expected a JSON-like value (number, string, list, mapping), got {value!r}"))
    return None


def _hyperparameters(value: Any) -> Any:
    if not isinstance(value, dict):
        _fail(f"expected a mapping of hyperparameters, got {value!r}")
    found: list[tuple[_Loc, str]] = []
    checked = _json_value(value, (), found)
    if found:
        _fail(found[0][1], found)
    return checked


def _feature(value: Any) -> str:
    if not isinstance(value, str) or not value:
        _fail(f"feature names must be non-empty strings, got {value!r}")
    return value


def _threshold_key(metric: Any) -> str:
    if metric in drift.TEST_LEVEL_KEYS:
        _fail(f"not a threshold: {drift.TEST_LEVEL_HINT}")
    if metric not in THRESHOLD_KEYS:
        _fail(f"unknown metric{_did_you_mean(metric, THRESHOLD_KEYS)}; known: {', '.join(THRESHOLD_KEYS)}")
    return str(metric)


_Limit: TypeAlias = Annotated[
    Any, _number(lambda v: v >= 0, "a non-negative number (or null to remove it)", optional=True)
]
_FeatureName: TypeAlias = Annotated[Any, PlainValidator(_feature)]
_ThresholdKey: TypeAlias = Annotated[Any, PlainValidator(_threshold_key)]
_FeatureThresholds: TypeAlias = Annotated[dict[_ThresholdKey, _Limit], _mapping("a mapping of metric to threshold")]
_Thresholds: TypeAlias = Annotated[
    dict[_FeatureName, _FeatureThresholds], _mapping("a mapping of feature (or '*') to {metric: threshold}")
]
_OP_HINT = " (quote it in YAML: op: '>')"
_Bool: TypeAlias = Annotated[Any, PlainValidator(_bool)]
_Name: TypeAlias = Annotated[Any, PlainValidator(_name)]
_PositiveInt: TypeAlias = Annotated[Any, _int(1, "a positive integer")]
_NonNegativeInt: TypeAlias = Annotated[Any, _int(0, "a non-negative integer")]
_Bins: TypeAlias = Annotated[Any, _int(2, "an integer of at least 2")]
_AnyNumber: TypeAlias = Annotated[Any, _number(lambda v: True, "a number")]
_OptionalNumber: TypeAlias = Annotated[Any, _number(lambda v: True, "a number", optional=True)]
_Fraction: TypeAlias = Annotated[Any, _number(lambda v: 0 < v < 1, "a fraction between 0 and 1")]
_FdrQ: TypeAlias = Annotated[Any, _number(lambda v: 0 < v < 1, "a number between 0 and 1")]
_MaxDrop: TypeAlias = Annotated[Any, _number(lambda v: v >= 0, "a non-negative number", optional=True)]
_Hours: TypeAlias = Annotated[Any, _number(lambda v: v > 0, "a positive number of hours")]
_OptionalHours: TypeAlias = Annotated[Any, _number(lambda v: v > 0, "a positive number of hours", optional=True)]
_Minutes: TypeAlias = Annotated[Any, _number(lambda v: v >= 0, "a non-negative number of minutes")]
_Direction: TypeAlias = Annotated[Any, _choice(("higher", "lower"), optional=True)]
_DriftMetric: TypeAlias = Annotated[Any, _choice((DRIFTED,) + DRIFT_METRICS)]
_Op: TypeAlias = Annotated[Any, _choice(tuple(OPS), _OP_HINT)]
_Since: TypeAlias = Annotated[Any, _choice(("lookback", "last_promotion"))]
_TrendGuarantee: TypeAlias = Annotated[Any, _choice(TREND_GUARANTEES)]
_TrendLevel: TypeAlias = Annotated[Any, _choice(TREND_LEVELS)]
_Detectors: TypeAlias = Annotated[Any, _names(_detector_names)]
_Names: TypeAlias = Annotated[Any, _names()]
_QualityMetrics: TypeAlias = Annotated[Any, _names(lambda: QUALITY_METRICS)]
_MultivariateMetrics: TypeAlias = Annotated[Any, _names(lambda: MULTIVARIATE_METRICS)]
_OptionalNames: TypeAlias = Annotated[Any, _names(optional=True)]
_Trainer: TypeAlias = Annotated[Any, PlainValidator(_trainer)]
_Hyperparameters: TypeAlias = Annotated[Any, PlainValidator(_hyperparameters)]
_Unchecked: TypeAlias = Annotated[Any, PlainValidator(lambda value: value)]


class _Section(BaseModel):
    """A partial block of the file: every key optional, none unknown. Defaults are placeholders:
    only the keys the file sets are read (``model_dump(exclude_unset=True)``)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            off = value is None or isinstance(value, bool)
            hint = "; to turn a trigger off write enabled: false" if off and "enabled" in cls.model_fields else ""
            _fail(f"expected a mapping, got {value!r}{hint}")
        return value


class _Reference(_Section):
    bins: _Bins = None
    top_k: _PositiveInt = None
    sample_size: _PositiveInt = None


class _Monitoring(_Section):
    enabled: _Bool = None
    window_seconds: _PositiveInt = None
    allowed_lateness_seconds: _NonNegativeInt = None
    thresholds: _Thresholds = {}
    fdr_q: _FdrQ = None
    reference: _Reference = _Reference()
    detectors: _Detectors = None
    segments: _Names = None
    trend_guarantee: _TrendGuarantee = None
    trend_level: _TrendLevel = None


class _Drift(_Section):
    enabled: _Bool = None
    metric: _DriftMetric = None
    op: _Op = None
    threshold: _OptionalNumber = None
    min_features: _PositiveInt = None
    consecutive_windows: _PositiveInt = None
    features: _OptionalNames = None


class _Performance(_Section):
    enabled: _Bool = None
    metric: _Name = None
    direction: _Direction = None
    max_drop: _MaxDrop = None
    limit: _OptionalNumber = None
    min_labels: _PositiveInt = None
    consecutive_windows: _PositiveInt = None
    estimated_accuracy_drop: _MaxDrop = None


class _DataQuality(_Section):
    enabled: _Bool = None
    metrics: _QualityMetrics = None
    min_features: _PositiveInt = None
    consecutive_windows: _PositiveInt = None
    features: _OptionalNames = None


class _Multivariate(_Section):
    enabled: _Bool = None
    metrics: _MultivariateMetrics = None
    consecutive_windows: _PositiveInt = None


class _Trend(_Section):
    enabled: _Bool = None
    min_features: _PositiveInt = None
    consecutive_windows: _PositiveInt = None
    features: _OptionalNames = None


class _ChangeDetectors(_Section):
    enabled: _Bool = None
    detectors: _Detectors = None
    streams: _Names = None
    min_events: _PositiveInt = None


class _Schedule(_Section):
    every_hours: _OptionalHours = None


class _Manual(_Section):
    cooldown_minutes: _Minutes = None


class _Snapshot(_Section):
    since: _Since = None
    lookback_hours: _Hours = None


class _Promotion(_Section):
    metric: _Name = None
    min_improvement: _AnyNumber = None
    direction: _Direction = None


class _Retraining(_Section):
    snapshot: _Snapshot = _Snapshot()
    holdout_fraction: _Fraction = None
    min_rows: _PositiveInt = None
    trainer: _Trainer = None
    hyperparameters: _Hyperparameters = None
    promotion: _Promotion = _Promotion()
    cooldown_minutes: _Minutes = None
    hysteresis_windows: _PositiveInt = None


class _ModelSection(_Section):
    """What ``defaults:`` and each entry of ``models:`` may say."""

    monitoring: _Monitoring = _Monitoring()
    drift: _Drift = _Drift()
    performance: _Performance = _Performance()
    change_detectors: _ChangeDetectors = _ChangeDetectors()
    schedule: _Schedule = _Schedule()
    manual: _Manual = _Manual()
    retraining: _Retraining = _Retraining()
    data_quality: _DataQuality = _DataQuality()
    multivariate: _Multivariate = _Multivariate()
    trend: _Trend = _Trend()


def _version(value: Any) -> int:
    if value != 1 or isinstance(value, bool):
        _fail(f"expected 1 (the only policy format so far), got {value!r}")
    return 1


_Version: TypeAlias = Annotated[Any, PlainValidator(_version)]


class _File(_Section):
    version: _Version = None
    defaults: _Unchecked = None  # checked as a _ModelSection, at its own path
    models: _Unchecked = None  # each entry checked at its own path, once its id is valid


_TOP = tuple(_File.model_fields)


def _join(path: str, key: str) -> str:
    if path and re.fullmatch(r"[A-Za-z0-9_.-]+|\*", key) is None:
        key = repr(key)
    return f"{path}.{key}" if path else key


def _locate(data: Any, loc: _Loc, at: _Loc = ()) -> tuple[list[int], str]:
    """Where ``loc`` points in ``data``: its place in file order, and its path under ``at``, as people
    write it (odd keys quoted, list items ``[i]``).

    >>> _locate({"hp": {"a": 1, "layers": [4, 5]}}, ("hp", "layers", 1), ("defaults",))
    ([0, 1, 1], 'defaults.hp.layers[1]')
    >>> _locate({"my feature": {}}, ("my feature", "psi"), ("t",))
    ([0, 0], "t.'my feature'.psi")
    """
    path = ""
    for key in at:
        path = _join(path, str(key))
    # pydantic reports in the order of its fields; people read problems in the order of their file.
    order = []
    for key in loc:
        if isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data):
            order.append(key)
            path = f"{path}[{key}]"
            data = data[key]
            continue
        if isinstance(data, dict):
            keys = list(data)
            order.append(keys.index(key) if key in keys else len(keys))
            data = data.get(key)
        else:
            order.append(0)
            data = None
        path = _join(path, str(key))
    return order, path


def _model_at(model: type[BaseModel], loc: _Loc) -> type[BaseModel] | None:
    for key in loc:
        found = model.model_fields.get(key) if isinstance(key, str) else None
        if found is None or not (isinstance(found.annotation, type) and issubclass(found.annotation, BaseModel)):
            return None
        model = found.annotation
    return model


def _drop(data: Any, loc: _Loc) -> None:
    for key in loc[:-1]:
        data = data.get(key) if isinstance(data, dict) else None
    if isinstance(data, dict):
        data.pop(loc[-1], None)


def _check_section(model: type[_Section], value: Any, at: _Loc, problems: list[tuple[str, str]]) -> dict[str, Any]:
    """The keys ``value`` sets, validated; its problems go to ``problems`` (located under ``at``), in
    file order. A key with a problem is left out, so that rules spanning keys still see the rest."""
    try:
        return model.model_validate(value).model_dump(exclude_unset=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    found: list[tuple[list[int], str, str]] = []
    bad: list[_Loc] = []
    # a key with a problem of its own: its value is not looked at (pydantic checks both)
    bad_keys = [tuple(error["loc"][:-1]) for error in errors if error["loc"][-1:] == ("[key]",)]
    for error in errors:
        loc = tuple(k for k in error["loc"] if k != "[key]")  # a dict key's own problem: report it at the key
        if error["loc"][-1:] != ("[key]",) and any(loc[: len(k)] == k for k in bad_keys):
            continue
        bad.append(loc)
        if error["type"] == "policy":
            order = _locate(value, loc)[0]  # problems inside one value stay in the order its checker found them
            for inner, message in error["ctx"]["found"]:
                found.append((order, _locate(value, loc + inner, at)[1], message))
        elif error["type"] in ("extra_forbidden", "invalid_key"):  # a key not among the fields, maybe not a string
            section = _model_at(model, loc[:-1])
            known = list(section.model_fields) if section is not None else []
            message = f"unknown key{_did_you_mean(loc[-1], known)}; known: {', '.join(known)}"
            found.append((*_locate(value, loc, at), message))
        else:  # not raised by the checkers above; pydantic's own words then
            found.append((*_locate(value, loc, at), f"{error['msg']}, got {error['input']!r}"))
    problems.extend((path, message) for _, path, message in sorted(found, key=lambda f: f[0]))
    if not bad or () in bad:
        return {}
    rest = copy.deepcopy(value)
    for loc in bad:
        _drop(rest, loc)
    try:
        return model.model_validate(rest).model_dump(exclude_unset=True)
    except ValidationError:
        return {}


def _merge(base: dict[str, Any], override: dict[str, Any], at: tuple[str, ...] = ()) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        here = at + (key,)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and here not in _REPLACED:
            merged[key] = _merge(merged[key], value, here)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _cross_checks(config: dict[str, Any]) -> list[tuple[str, str]]:
    """Rules that span keys, on a complete (merged) configuration; paths are relative."""
    found = []
    drift = config["drift"]
    if drift["enabled"] and drift["metric"] == DRIFTED and drift["threshold"] is not None:
        found.append(
            (
                "drift.threshold",
                "metric 'drifted' counts the engine's verdict and takes no threshold; "
                "remove threshold, or pick a metric such as psi",
            )
        )
    perf = config["performance"]
    if perf["enabled"]:
        try:
            metric_direction(perf["metric"], perf["direction"])
        except ValueError as exc:
            found.append(("performance.metric", str(exc)))
        if perf["max_drop"] is None and perf["limit"] is None:
            found.append(("performance", "an enabled performance trigger needs max_drop, limit or both"))
    promotion = config["retraining"]["promotion"]
    try:
        metric_direction(promotion["metric"], promotion["direction"])
    except ValueError as exc:
        found.append(("retraining.promotion.metric", str(exc)))
    change = config["change_detectors"]
    if change["enabled"]:
        missing = [d for d in change["detectors"] if d not in config["monitoring"]["detectors"]]
        if missing:
            found.append(
                (
                    "change_detectors.detectors",
                    f"{', '.join(missing)} not in monitoring.detectors {config['monitoring']['detectors']}; "
                    "a detector must run before it can trigger",
                )
            )
    return found


def _freeze_json(value: Any) -> Any:
    if isinstance(value, dict):
        return types.MappingProxyType({k: _freeze_json(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze_json(v) for v in value)
    return value


def _tuples(section: dict[str, Any]) -> dict[str, Any]:
    # records keep sequences as tuples, so that they stay frozen
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def _build(model_id: str, c: dict[str, Any]) -> ModelPolicy:
    """A complete, validated configuration as records (numbers are already floats where they should be)."""
    mon, rt = c["monitoring"], c["retraining"]
    return ModelPolicy(
        model_id=model_id,
        monitoring=Monitoring(
            **{
                **_tuples(mon),
                "thresholds": _frozen_thresholds(mon["thresholds"]),
                "reference": ReferenceSettings(**mon["reference"]),
            }
        ),
        drift=DriftTrigger(**_tuples(c["drift"])),
        performance=PerformanceTrigger(**c["performance"]),
        change_detectors=ChangeDetectorTrigger(**_tuples(c["change_detectors"])),
        schedule=ScheduleTrigger(**c["schedule"]),
        manual=ManualTrigger(**c["manual"]),
        data_quality=DataQualityTrigger(**_tuples(c["data_quality"])),
        multivariate=MultivariateTrigger(**_tuples(c["multivariate"])),
        trend=TrendTrigger(**_tuples(c["trend"])),
        retraining=Retraining(
            **{
                **rt,
                "snapshot": SnapshotRange(**rt["snapshot"]),
                "hyperparameters": _freeze_json(rt["hyperparameters"]),
                "promotion": PromotionRule(**rt["promotion"]),
            }
        ),
    )


def parse_policy(data: Mapping[str, Any] | None, source: str = "<policy>") -> Policy:
    """Validate a policy mapping (as read from YAML) and build the :class:`Policy`.

    ``source`` names the file in error messages. Every problem is collected
    and raised together in one :class:`PolicyError`.

    >>> try:
    ...     parse_policy({"defaults": {"retraining": {"cooldown_minuts": 5}}})
    ... except PolicyError as exc:
    ...     path, message = exc.problems[0]
    >>> path, message.split(";")[0]
    ('defaults.retraining.cooldown_minuts', "unknown key (did you mean 'cooldown_minutes'?)")
    """
    problems: list[tuple[str, str]] = []
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise PolicyError(source, [("", f"expected a mapping with keys {', '.join(_TOP)}, got {data!r}")])
    _check_section(_File, dict(data), (), problems)

    defaults_raw = data.get("defaults")
    defaults_partial = {}
    if defaults_raw is not None:
        defaults_partial = _check_section(_ModelSection, defaults_raw, ("defaults",), problems)
    defaults_config = _merge(BUILTIN, defaults_partial)
    default_cross = _cross_checks(defaults_config)
    for rel, message in default_cross:
        problems.append((f"defaults.{rel}", message))

    models_raw = data.get("models")
    models_config: dict[str, dict[str, Any]] = {}
    if models_raw is not None and not isinstance(models_raw, dict):
        problems.append(("models", f"expected a mapping of model id to its settings, got {models_raw!r}"))
    elif models_raw:
        for model_id, section in models_raw.items():
            path = _join("models", str(model_id))
            try:
                validate_name(model_id)
            except InvalidName as exc:
                problems.append((path, str(exc)))
                continue
            partial = {} if section is None else _check_section(_ModelSection, section, ("models", model_id), problems)
            config = _merge(defaults_config, partial)
            for rel, message in _cross_checks(config):
                if (rel, message) not in default_cross:  # reported once, at defaults
                    problems.append((f"{path}.{rel}", message))
            models_config[model_id] = config

    if problems:
        raise PolicyError(source, problems)
    return Policy(
        defaults=_build(ALL_FEATURES, defaults_config),
        models=types.MappingProxyType({m: _build(m, c) for m, c in models_config.items()}),
        source=source,
    )


def load_policy(path: str | os.PathLike[str] | None) -> Policy:
    """Read and parse a policy file; ``None`` gives the built-in defaults.

    >>> load_policy(None).for_model("any").retraining.cooldown_minutes
    30.0
    """
    if path is None:
        return parse_policy({}, source="<built-in defaults>")
    p = Path(path)
    source = str(p)
    if not p.is_file():
        raise PolicyError(source, [("", "policy file does not exist")])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PolicyError(source, [("", f"not valid YAML: {exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise PolicyError(source, [("", f"not UTF-8 text: {exc}")]) from exc
    return parse_policy(data, source=source)
