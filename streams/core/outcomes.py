"""What the monitor returns: the outcome of each closed window, and what became of each ingested batch.

These records are the monitor's interface: the worker writes ``WindowOutcome``
and ``PerformanceOutcome`` to the warehouse, and uses ``Ingested`` and
``LabelsIngested`` to hold back messages until their windows are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from driftline.streams.core.estimation import EstimatedPerformanceRow
from driftline.streams.core.explain import RootCause, SegmentWindowDrift
from driftline.streams.core.ledger import Hold
from driftline.streams.core.performance import PerformanceRow
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.core.windows import WindowKey
from driftline.streams.records import DriftReport, FeatureDrift, PredictionBatch

ERROR_FEATURE = "__error__"
NOT_IN_WINDOW = np.iinfo(np.int64).min


@dataclass
class ChangeCount:
    """How often one change detector fired on one stream in one window.

    ``feature`` is ``__prediction__`` for the score stream and ``__error__``
    for the error stream; ``n_values`` is how many values it was fed.

    >>> ChangeCount("adwin", "__prediction__", alarms=2, n_values=1_000).as_feature_drift().drifted
    True
    """

    detector: str
    feature: str
    alarms: int
    n_values: int

    def as_feature_drift(self) -> FeatureDrift:
        return FeatureDrift(self.feature, self.detector, float(self.alarms), None, 1.0, self.alarms > 0)


@dataclass
class WindowOutcome:
    """Everything measured in one closed prediction window of one model version.

    ``report`` is its DriftReport, detector alarm counts included as metrics.

    >>> import numpy as np
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> o = WindowOutcome("m", "1", 0, 60_000, 0, ref.n, [FeatureDrift("x", "psi", 0.3, None, 0.2, True)],
    ...                   WindowProfile.empty(ref, seed=0), {}, 0, [ChangeCount("adwin", "__prediction__", 0, 0)])
    >>> r = o.report(computed_at=61_000)
    >>> r.drifted_features, [m.metric for m in r.metrics]
    (['x'], ['psi', 'adwin'])
    """

    model_id: str
    model_version: str
    window_start: int
    window_end: int
    n_current: int
    n_reference: int
    drift: list[FeatureDrift]
    profile: WindowProfile
    latency: dict[str, float]
    n_latency: int
    changes: list[ChangeCount]
    # the score stream's change detectors after this window (ChangeDetectorBank.stream_state); None: none ran
    detector_state: bytes | None = None
    # rows of this version that arrived late since its previous window closed (see the module docstring)
    late_events: int = 0
    # label-free performance estimate of the window (estimated_<metric>[_lower|_upper], overall and per
    # segment), empty unless the reference carries a calibrator; reference_estimates: the same metrics
    # estimated on the reference itself (ScoreCalibrator.reference_estimates), a policy's baseline
    estimates: list[EstimatedPerformanceRow] = field(default_factory=list)
    reference_estimates: dict[str, float] = field(default_factory=dict)
    # per segment key=value of the attributes the settings name: the model output's and the top
    # features' drift; and, when the window drifted, where its drift comes from (streams.core.explain)
    segment_drift: list[SegmentWindowDrift] = field(default_factory=list)
    root_cause: RootCause | None = None

    def estimated_performance(self) -> dict[str, float]:
        """The whole window's estimates, ``{'accuracy': 0.81, 'accuracy_lower': ..., ...}``."""
        prefix = "estimated_"
        return {r.metric[len(prefix) :]: float(r.value) for r in self.estimates if r.segment == ""}

    @property
    def key(self) -> WindowKey:
        return (self.model_id, self.model_version, self.window_start)

    def report(self, computed_at: int) -> DriftReport:
        """The DriftReport of this window; detector alarm counts are metrics named after the detector."""
        metrics = list(self.drift) + [c.as_feature_drift() for c in self.changes]
        drifted = sorted({m.feature for m in self.drift if m.drifted})
        return DriftReport(
            self.model_id,
            self.model_version,
            self.window_start,
            self.window_end,
            self.n_current,
            self.n_reference,
            drifted,
            metrics,
            computed_at,
        )


@dataclass
class PerformanceOutcome:
    """The performance of the predictions labelled in one closed label window.

    >>> PerformanceOutcome("m", "1", 0, 60_000, n_labeled=0, rows=[], changes=[]).key
    ('m', '1', 0)
    """

    model_id: str
    model_version: str
    window_start: int
    window_end: int
    n_labeled: int
    rows: list[PerformanceRow]
    changes: list[ChangeCount]
    # the error stream's change detectors after this window; None: none ran
    detector_state: bytes | None = None

    @property
    def key(self) -> WindowKey:
        return (self.model_id, self.model_version, self.window_start)


@dataclass
class Ingested:
    """What became of the rows of one ``ingest`` call.

    ``window_ends[i]`` is the end of the window that row ``i`` went into, or
    ``NOT_IN_WINDOW`` when it was late or already written before a restart.
    ``holds`` are extra windows that this call contributed to (labels that
    waited for these predictions), to hold back its last message.

    >>> Ingested(np.array([60_000, NOT_IN_WINDOW]), late=1).late
    1
    """

    window_ends: np.ndarray
    late: int = 0
    replayed: int = 0
    joined_labels: int = 0
    holds: list[Hold] = field(default_factory=list)
    # the positions of the late rows (counted in ``late``), when there are any
    late_rows: np.ndarray | None = None


@dataclass
class Arrival:
    """Rows of one model version to ingest, with where each row stands in the order of arrival.

    ``order`` holds one non-decreasing key per row, comparable across the
    arrivals given to one ``Monitor.ingest_all`` call (the worker passes the
    index of each row's message in the poll). ``has_predictions=False`` is for
    logged features (see ``Monitor.ingest``).

    >>> Arrival(PredictionBatch("m", "1", ["a"], np.array([5])), None, np.array([3])).has_predictions
    True
    """

    batch: PredictionBatch
    reference: ReferenceProfile | None
    order: np.ndarray
    has_predictions: bool = True


@dataclass
class LabelsIngested:
    """What became of one model's labels: joined, waiting for their prediction, late or replayed.

    ``holds[i]`` lists the windows that label ``i`` went into (empty when it
    did not); ``unmatched`` are the ids of the labels left waiting.

    >>> LabelsIngested([[], []], pending=2, unmatched=["a", "b"]).pending
    2
    """

    holds: list[list[Hold]]
    joined: int = 0
    pending: int = 0
    late: int = 0
    replayed: int = 0
    unmatched: list[str] = field(default_factory=list)
