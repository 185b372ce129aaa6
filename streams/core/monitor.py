"""The monitoring of models over event-time windows, without any I/O.

``Monitor`` takes decoded, validated batches and returns what each closed
window measured. The streams worker feeds it and writes what it returns; the
same calls drive it in tests, with the wall clock passed in.

Per model it keeps two sets of tumbling windows:

- **prediction windows**, by the predictions' (and logged features') event
  time: a ``WindowProfile`` against the version's reference profile, the
  latency percentiles, and the scores for the change detectors;
- **label windows**, by the labels' event time: the labelled predictions
  (joined by ``event_id`` in a bounded ``PredictionIndex``) for the
  performance metrics, and the errors for the change detectors. Labels come
  hours after their predictions, whose windows are long closed by then, so
  performance is reported for the window in which the labels arrived.

Replays are exact: a window's sampling seed comes from its key, and a window
already written before a restart (``recover``) is never opened again.

Rows are judged late in the order they arrived, whatever batch or message
kind brought them (``ingest_all`` takes a poll's batches of one model with the
arrival position of each row), so a backlog read and a live read of the same
log give the same windows. A late row is counted (``late_events``) in the
first prediction window of its model version to close after it arrived: the
first whose end is above the watermark that made the row late.

The change detectors see each window when it closes, its values sorted by
event time (then value): what they see does not depend on how the events
were cut into batches or interleaved across partitions. Their state after
each window goes out with it (``detector_state``), so that a restarted worker
resumes them from the last written window (``restore_detectors``). A window
keeps its scores and their event times until it closes (``ScoreLog``: 8 to
12 bytes per prediction; none when the model runs no detectors), and a label
window its labelled rows.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from driftline.streams.core.batches import (
    _positions_by_version,
    take_rows,
)
from driftline.streams.core.detector_state import join_detector_state, split_detector_state
from driftline.streams.core.detectors import BINARY_DETECTORS, ChangeDetectorBank
from driftline.streams.core.drift import evaluate_window, window_moments
from driftline.streams.core.estimation import EstimationState
from driftline.streams.core.explain import (
    MAX_SEGMENT_VALUES,
    MIN_SEGMENT_SIZE,
    RootCause,
    SegmentWindowDrift,
    drift_features,
    explain,
    segment_drift,
    update_segments,
)
from driftline.streams.core.labels import IndexBudget, PredictionIndex
from driftline.streams.core.latency import LatencyWindow
from driftline.streams.core.ledger import Hold
from driftline.streams.core.multivariate import MultivariateWindow
from driftline.streams.core.outcomes import (
    ERROR_FEATURE,
    NOT_IN_WINDOW,
    Arrival,
    ChangeCount,
    Ingested,
    LabelsIngested,
    PerformanceOutcome,
    WindowOutcome,
)
from driftline.streams.core.performance import PerformanceWindow
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.reference_models import multivariate_model, reference_calibrator, reference_estimates
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.sequential import TrendDetector
from driftline.streams.core.window_profile import PendingMoments, WindowProfile
from driftline.streams.core.windows import EventClock, Windowing, WindowKey, WindowStore
from driftline.streams.records import PREDICTION_FEATURE, FeatureDrift, PredictionBatch

PREDICTIONS = "predictions"  # hold stream names (see streams.core.ledger)
LABELS = "labels"
# who shares the slow-drift detector's alpha (policy monitoring.trend_level): the model's streams
# together (at most alpha of the windows alarm on any stream) or each stream alone (at most alpha
# of its own windows: of the (stream, window) pairs)
TREND_LEVELS = ("model", "stream")
# values whose exact sums may wait in the monitor's queue (8 bytes each: 32 MiB) before it sums them
_PENDING_VALUES = 4_000_000


@dataclass(frozen=True)
class MonitorSettings:
    """How one model is monitored (the shell builds it from the policy).

    ``task`` is ``'classification'``, ``'regression'`` or None (inferred from
    the labels of each window).

    >>> MonitorSettings(Windowing(size_ms=5_000)).windowing.size_ms
    5000
    """

    windowing: Windowing = Windowing()
    thresholds: Mapping[str, Mapping[str, float]] | None = None
    fdr_q: float = 0.05
    detectors: tuple[str, ...] = ("adwin",)
    task: str | None = None
    min_segment_size: int = 30
    # event attributes whose values get their own drift rows and root-cause segments (policy
    # monitoring.segments), at most max_segment_values values each, those of min_drift_segment
    # events or more (a segment's drift and estimates have their own minimum sizes)
    segments: tuple[str, ...] = ()
    max_segment_values: int = MAX_SEGMENT_VALUES
    min_drift_segment: int = MIN_SEGMENT_SIZE
    # the slow-drift detector's false-alarm guarantee (policy monitoring.trend_guarantee: 'rate' or 'ever')
    trend_guarantee: str = "rate"
    # whom the slow-drift alarm's alpha covers (policy monitoring.trend_level: 'model' or 'stream')
    trend_level: str = "model"


class ScoreLog:
    """The scores of an open window and their event times, kept until it closes, in less room than raw.

    The change detectors take a window's values in event order when it closes
    (``_in_event_order``), and a row of any time in the window may come until
    then: the values must wait. Their times only order them, so they are kept
    as offsets from the window's start, 4 bytes (8 for a window over 24 days),
    and as runs of equal times for a chunk in time order whose times repeat
    (at a few events per millisecond): 12 bytes an event, down to about 8 at
    full speed, instead of 16. Arrays that are views of a larger buffer (a
    decoded message) are copied, so the window does not keep the whole buffer.

    >>> log = ScoreLog(start_ms=1_000)
    >>> log.append(np.array([0.5, 0.1, 0.4]), np.array([1_020, 1_010, 1_010]))
    >>> log.append(np.array([0.9, 0.3, 0.2, 0.7]), np.array([1_000, 1_000, 1_000, 1_030]))  # runs: 2 times
    >>> log.n, log.in_event_order().tolist()
    (7, [0.2, 0.3, 0.9, 0.1, 0.4, 0.5, 0.7])
    """

    def __init__(self, start_ms: int) -> None:
        self.start_ms = int(start_ms)
        self.n = 0
        self._scores: list[np.ndarray] = []
        # per chunk: the time offsets, one per score; or the offsets of its runs and their lengths
        self._times: list[tuple[np.ndarray, np.ndarray | None]] = []

    def append(self, scores: np.ndarray, event_times: np.ndarray) -> None:
        values = np.asarray(scores, dtype=np.float64)
        if values.base is not None:
            values = values.copy()
        offsets = np.asarray(event_times, dtype=np.int64) - self.start_ms
        n = offsets.size
        if n != values.size:
            raise ValueError(f"{values.size} scores for {n} event times")
        if n == 0:
            return
        narrow = np.int32 if int(offsets.max()) < 2**31 and int(offsets.min()) >= -(2**31) else np.int64
        steps = np.diff(offsets)
        if (steps >= 0).all():
            changes = np.flatnonzero(steps) + 1
            if 2 * (changes.size + 1) <= n:
                firsts = np.concatenate([[0], changes])
                lengths = np.diff(np.append(firsts, n)).astype(np.int32)
                self._times.append((offsets[firsts].astype(narrow), lengths))
                self._scores.append(values)
                self.n += n
                return
        self._times.append((offsets.astype(narrow), None))
        self._scores.append(values)
        self.n += n

    def in_event_order(self) -> np.ndarray:
        """Every score, sorted by event time then value (see ``_in_event_order``)."""
        if not self._scores:
            return np.empty(0, dtype=np.float64)
        times = np.concatenate(
            [t.astype(np.int64) if runs is None else np.repeat(t.astype(np.int64), runs) for t, runs in self._times]
        )
        return _in_event_order(np.concatenate(self._scores), times)


@dataclass
class _Window:
    reference: ReferenceProfile
    profile: WindowProfile
    latency: LatencyWindow
    # None when the reference carries no multivariate model
    multivariate: MultivariateWindow | None = None
    # the scores and their event times, for the change detectors at close (None: the model runs none)
    scores: ScoreLog | None = None
    # None when the reference has no calibrator (no estimate for this version)
    estimation: EstimationState | None = None
    # one profile per segment key=value of the attributes the settings name
    segments: dict[str, WindowProfile] = field(default_factory=dict)


@dataclass
class _LabelWindow:
    # its rows also give the error stream for the change detectors, when the window closes;
    # label_times holds the labels' event times in the order of the performance window's rows
    performance: PerformanceWindow
    label_times: list[np.ndarray] = field(default_factory=list)


@dataclass(frozen=True)
class _Label:
    # what waits in the PredictionIndex for its prediction: the label and when it was observed;
    # ``restored``: read back from the warehouse after a restart (see Monitor.restore_labels)
    value: object
    event_time: int
    restored: bool = False


W = TypeVar("W")


class _Stream(Generic[W]):
    """One stream of windows of a model: predictions by their event time, or labels by theirs.

    Its event clock, its open windows, and how far each version's windows were
    written before a restart (``recovered``: version -> end of the last one, None: none).

    >>> s: _Stream[int] = _Stream(lateness_ms=0, idle_ms=None)
    >>> s.recover("m", "1", 60_000)
    >>> s.recovered, s.is_done(Hold(LABELS, "m", "1", 60_000)), s.is_done(Hold(LABELS, "m", "1", 120_000))
    ({'1': 60000}, True, False)
    """

    def __init__(
        self, lateness_ms: int, idle_ms: int | None, new_window: Callable[[WindowKey], W] | None = None
    ) -> None:
        self.clock = EventClock(lateness_ms, idle_ms)
        self.windows: WindowStore[W] = WindowStore(new_window)
        self.recovered: dict[str, int | None] = {}

    def recover(self, model_id: str, model_version: str, closed_through: int | None) -> None:
        self.recovered[model_version] = closed_through
        if closed_through is not None:
            self.windows.mark_closed(model_id, model_version, closed_through)
            self.clock.raise_floor(model_id, closed_through)

    def is_done(self, hold: Hold) -> bool:
        through = self.windows.closed_through(hold.model_id, hold.model_version)
        return through is not None and hold.window_end <= through

    def close(self, model_id: str, now_ms: int, size_ms: int) -> list[tuple[WindowKey, W]]:
        """The windows the watermark has passed, oldest first."""
        return self.windows.close(model_id, self.clock.watermark(model_id, now_ms), size_ms)


class _Track:
    """Everything the monitor keeps for one model id: its prediction and label streams, and what they share."""

    def __init__(
        self, model_id: str, settings: MonitorSettings, idle_ms: int | None, index_ttl_ms: int, budget: IndexBudget
    ) -> None:
        self.model_id = model_id
        self.settings = settings
        w = settings.windowing
        self.predictions: _Stream[_Window] = _Stream(w.lateness_ms, idle_ms)
        self.labels: _Stream[_LabelWindow] = _Stream(w.lateness_ms, idle_ms, self._new_label_window)
        self.index = PredictionIndex(ttl_ms=index_ttl_ms, budget=budget)
        # per version: the watermark in force when each late row (still to be counted) arrived
        self.late: dict[str, list[np.ndarray]] = {}
        self.detectors = ChangeDetectorBank(names=settings.detectors) if settings.detectors else None
        # per version: the slow-drift detector and the reference it measures against (_reference_key)
        self.trends: dict[str, tuple[str, TrendDetector]] = {}
        # labels restored from the warehouse: whether that was done, how many may still join, and the
        # ids of those that joined (their own message, if Kafka delivers it again, is then a replay;
        # at most as many as were restored, themselves at most the index's max_pending)
        self.labels_restored = False
        self.restored_waiting = 0
        self.restored_joined: set[str] = set()
        # per version: the wall clock of its last prediction batch; and, for a version released while
        # idle (Monitor.release_idle), how far it had been recovered, so it resumes as if never released
        self.last_seen: dict[str, int] = {}
        self.released: dict[str, int | None] = {}

    def _new_label_window(self, key: WindowKey) -> _LabelWindow:
        s = self.settings
        return _LabelWindow(PerformanceWindow(task=s.task, min_segment_size=s.min_segment_size))


class Monitor:
    """Windowed drift, latency, performance and change detection for many models.

    ``settings_for(model_id)`` gives a model's windows and thresholds (the
    policy). The caller passes the reference profile with each batch, and the
    wall clock (``now_ms``) with each call. Before the first batch of a model
    version, the caller says how far that version was already written
    (``recover``), so that a replay after a crash does not write a window twice.
    ``index_max_entries`` bounds the predictions waiting for their labels in
    all the models together (the earliest added go first, whichever model's).

    >>> import numpy as np
    >>> from driftline.streams.core.reference import ReferenceProfile
    >>> rng = np.random.default_rng(0)
    >>> ref = ReferenceProfile.build("m", "1", {"x": rng.normal(size=2000)}, {}, rng.random(2000))
    >>> monitor = Monitor(lambda model_id: MonitorSettings(Windowing(size_ms=1_000), detectors=()))
    >>> monitor.recover("m", "1", None)
    >>> batch = PredictionBatch("m", "1", [f"e{i}" for i in range(300)], np.arange(300) * 10,
    ...                         numeric={"x": rng.normal(size=300)}, predictions=rng.random(300))
    >>> ingested = monitor.ingest(batch, ref, source=0, now_ms=0)
    >>> sorted(set(ingested.window_ends.tolist()))
    [1000, 2000, 3000]
    >>> [(o.window_start, o.n_current) for o in monitor.close_due(now_ms=0)]
    [(0, 100), (1000, 100)]
    """

    def __init__(
        self,
        settings_for: Callable[[str], MonitorSettings],
        *,
        idle_ms: int | None = None,
        index_ttl_ms: int = 24 * 3_600_000,
        index_max_entries: int = 200_000,
    ) -> None:
        self.settings_for = settings_for
        self.idle_ms = idle_ms
        self.index_ttl_ms = index_ttl_ms
        self.index_max_entries = index_max_entries
        # one bound on the predictions waiting for labels, shared by every model (the oldest go first)
        self._index_budget = IndexBudget(index_max_entries)
        self._tracks: dict[str, _Track] = {}
        # the exact sums of the short batches of many versions, taken together (per poll, or at a read)
        self._pending = PendingMoments()

    # -- bookkeeping ---------------------------------------------------------------

    def _track(self, model_id: str) -> _Track:
        track = self._tracks.get(model_id)
        if track is None:
            track = self._tracks[model_id] = _Track(
                model_id, self.settings_for(model_id), self.idle_ms, self.index_ttl_ms, self._index_budget
            )
        return track

    def needs_recovery(self, model_id: str, model_version: str) -> bool:
        """Whether the caller must still say how far this version's prediction windows were written."""
        track = self._tracks.get(model_id)
        return track is None or model_version not in track.predictions.recovered

    def recover(self, model_id: str, model_version: str, closed_through: int | None) -> None:
        """The end of the last prediction window of this version already written (None: none)."""
        track = self._track(model_id)
        if model_version in track.released:
            # released while idle: its closed windows are still marked; replays are judged as before
            track.predictions.recovered[model_version] = track.released.pop(model_version)
            return
        track.predictions.recover(model_id, model_version, closed_through)

    def needs_label_recovery(self, model_id: str, model_version: str) -> bool:
        track = self._tracks.get(model_id)
        return track is None or model_version not in track.labels.recovered

    def recover_labels(self, model_id: str, model_version: str, closed_through: int | None) -> None:
        """The end of the last label (performance) window of this version already written."""
        self._track(model_id).labels.recover(model_id, model_version, closed_through)

    def restore_detectors(self, model_id: str, model_version: str, stream: str, state: bytes) -> list[str] | None:
        """Resume the change detectors of a version's ``stream`` (``'score'`` or ``'error'``) from the
        ``detector_state`` of its last written window; return the detectors resumed.

        Call it right after ``recover``/``recover_labels``, before the stream's
        next window closes. Returns None (and changes nothing) when the model
        runs no detectors or the stream already ran in this monitor; raises
        ValueError on a state it cannot read.
        """
        if stream not in ("score", "error"):
            raise ValueError(f"stream must be 'score' or 'error', not {stream!r}")
        track = self._track(model_id)
        key = f"{model_version}:{stream}"
        bank_state, trend = split_detector_state(state)
        if trend is not None and model_version not in track.trends:
            track.trends[model_version] = trend
        if track.detectors is None or key in track.detectors.keys() or bank_state is None:  # noqa: SIM118 - a bank, not a dict
            return None
        return track.detectors.restore_stream(key, bank_state)

    def needs_label_restore(self, model_id: str) -> bool:
        """Whether the labels that waited for their predictions before a restart are still to be restored."""
        track = self._tracks.get(model_id)
        return track is None or not track.labels_restored

    def restore_labels(
        self,
        model_id: str,
        event_ids: Sequence[str],
        labels: Sequence[object],
        event_times: np.ndarray,
        *,
        now_ms: int,
    ) -> int:
        """Labels that waited for their prediction before a restart, read back from the warehouse.

        Their messages were acknowledged, so Kafka does not deliver them again:
        they wait again, oldest first, as if they had just come. Call it before
        the model's first batch; returns how many wait. If one of their own
        messages is delivered again after the restored label joined, it is
        counted as replayed rather than joined twice.
        """
        track = self._track(model_id)
        track.labels_restored = True
        times = np.asarray(event_times, dtype=np.int64)
        if times.size == 0:
            return 0
        values = [_Label(v, int(t), restored=True) for v, t in zip(labels, times.tolist())]
        joined = track.index.join(list(event_ids), values)
        # nothing joins before the model's first batch; if something did, it has no message to hold back
        self._add_labelled(track, joined, now_ms)
        track.restored_waiting += len(joined.unmatched)
        return len(joined.unmatched)

    def touch(self, model_id: str, source: Hashable, now_ms: int, *, labels: bool = False) -> None:
        """A batch from ``source`` (or of labels) was just processed: the source is not idle (see EventClock.touch)."""
        track = self._tracks.get(model_id)
        if track is not None:
            if labels:
                track.labels.clock.touch(model_id, LABELS, now_ms)
            else:
                track.predictions.clock.touch(model_id, source, now_ms)

    def hold_clocks(self, now_ms: int) -> None:
        """The reader was held back until ``now_ms``: no model's silence up to then counts as idle
        (see EventClock.hold)."""
        for track in self._tracks.values():
            track.predictions.clock.hold(now_ms)
            track.labels.clock.hold(now_ms)

    def is_done(self, hold: Hold) -> bool:
        """Whether the window a message waits for is closed (the caller has it written before acknowledging)."""
        track = self._tracks.get(hold.model_id)
        if track is None:
            return False
        return (track.predictions if hold.stream == PREDICTIONS else track.labels).is_done(hold)

    def open_windows(self) -> list[WindowKey]:
        return sorted(k for t in self._tracks.values() for k in t.predictions.windows.keys())  # noqa: SIM118 - a WindowStore, not a dict

    def open_label_windows(self) -> list[WindowKey]:
        return sorted(k for t in self._tracks.values() for k in t.labels.windows.keys())  # noqa: SIM118 - a WindowStore, not a dict

    def release_idle(self, now_ms: int, idle_ms: int) -> list[tuple[str, str]]:
        """Release the prediction-side state of versions silent for ``idle_ms``: (model_id, version) each.

        A version goes once its prediction windows have all closed and no late
        row waits to be counted: its score-stream detectors and slow-drift
        detector are dropped, as a restart would have lost them. Like a fresh
        start, it then ``needs_recovery`` before its next batch: the caller
        resumes the detectors from the warehouse (``restore_detectors``), and
        ``recover`` keeps how far it had been recovered, so replays and late
        rows count as if it had never been released. Its labels' state (label
        windows, error detectors, the predictions waiting for labels) stays.

        >>> import numpy as np
        >>> from driftline.streams.core.reference import ReferenceProfile
        >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
        >>> settings = MonitorSettings(Windowing(size_ms=1_000), detectors=())
        >>> monitor = Monitor(lambda model_id: settings, idle_ms=1_000)  # an idle model's clock follows the wall
        >>> monitor.recover("m", "1", None)
        >>> batch = PredictionBatch("m", "1", ["a"], np.array([10]), numeric={"x": np.ones(1)}, predictions=np.ones(1))
        >>> _ = monitor.ingest(batch, ref, source=0, now_ms=0)
        >>> monitor.release_idle(now_ms=60_000, idle_ms=30_000)  # its window is still open
        []
        >>> [o.window_start for o in monitor.close_due(now_ms=60_000)]
        [0]
        >>> monitor.release_idle(now_ms=60_000, idle_ms=30_000), monitor.needs_recovery("m", "1")
        ([('m', '1')], True)
        """
        released: list[tuple[str, str]] = []
        for model_id, track in sorted(self._tracks.items()):
            busy = {k[1] for k in track.predictions.windows.keys()}  # noqa: SIM118 - a WindowStore, not a dict
            for version, seen in sorted(track.last_seen.items()):
                if now_ms - seen < idle_ms or version in busy or track.late.get(version):
                    continue
                del track.last_seen[version]
                track.released[version] = track.predictions.recovered.pop(version, None)
                track.trends.pop(version, None)
                if track.detectors is not None:
                    track.detectors.forget(f"{version}:score")
                released.append((model_id, version))
        return released

    def reset(self) -> None:
        """Forget everything (after a rebalance, Kafka delivers the unwritten messages again)."""
        self._tracks.clear()
        self._index_budget = IndexBudget(self.index_max_entries)

    def pending_labels(self) -> int:
        return sum(t.index.n_pending for t in self._tracks.values())

    def index_stats(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for t in self._tracks.values():
            for name, value in vars(t.index.stats).items():
                totals[name] = totals.get(name, 0) + value
        return totals

    # -- predictions and features --------------------------------------------------

    def ingest(
        self,
        batch: PredictionBatch,
        reference: ReferenceProfile,
        *,
        source: Hashable,
        now_ms: int,
        has_predictions: bool = True,
    ) -> Ingested:
        """Add a batch of one model version to its windows, in arrival order.

        ``has_predictions=False`` is for logged features: they count for the
        inputs' drift but not for the model output's. Rows in a window that
        already closed are late and left out (counted); so are rows of a
        window written before a restart (``replayed``).
        """
        arrival = Arrival(batch, reference, np.zeros(len(batch.event_ids), dtype=np.int64), has_predictions)
        return self.ingest_all(batch.model_id, [arrival], source=source, now_ms=now_ms)[0]

    def ingest_all(
        self, model_id: str, arrivals: Sequence[Arrival], *, source: Hashable, now_ms: int
    ) -> list[Ingested]:
        """Add batches of one model that arrived together from ``source``, each row judged late against the
        watermark as it stood when that row arrived (``Arrival.order``), whatever its batch.

        One ``Ingested`` per arrival, as ``ingest`` gives it.

        >>> import numpy as np
        >>> from driftline.streams.core.reference import ReferenceProfile
        >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
        >>> monitor = Monitor(lambda model_id: MonitorSettings(Windowing(size_ms=1_000), detectors=()))
        >>> monitor.recover("m", "1", None)
        >>> def rows(*times):
        ...     ids = [f"e{t}" for t in times]
        ...     return PredictionBatch("m", "1", ids, np.array(times), numeric={"x": np.ones(len(times))})
        >>> # message 0 is a single event of window 0, message 1 a batch of window 1000: nothing is late
        >>> got = monitor.ingest_all("m", [Arrival(rows(1_500, 1_600), ref, np.array([1, 1]), False),
        ...                                Arrival(rows(900), ref, np.array([0]), False)], source=0, now_ms=0)
        >>> [g.late for g in got], [(o.window_start, o.n_current) for o in monitor.close_due(now_ms=0)]
        ([0, 0], [(0, 1)])
        """
        track = self._track(model_id)
        w = track.settings.windowing
        for a in arrivals:
            if a.batch.model_id != model_id:
                raise ValueError(f"a batch of {a.batch.model_id!r} given with the batches of {model_id!r}")
            if a.batch.model_version not in track.predictions.recovered:
                raise RuntimeError(
                    f"recover({model_id!r}, {a.batch.model_version!r}, ...) must come before its first batch"
                )
        times = [np.asarray(a.batch.event_times, dtype=np.int64) for a in arrivals]
        all_times = np.concatenate(times) if times else np.zeros(0, dtype=np.int64)
        if all_times.size == 0:
            return [Ingested(np.full(t.size, NOT_IN_WINDOW, dtype=np.int64)) for t in times]
        # the watermark in force at each row's arrival, rows of every batch taken in arrival order
        order = np.argsort(np.concatenate([np.asarray(a.order, dtype=np.int64) for a in arrivals]), kind="stable")
        in_force = np.empty_like(all_times)
        in_force[order] = w.in_force(all_times[order], track.predictions.clock.watermark(model_id, now_ms))
        track.predictions.clock.observe(model_id, source, int(all_times.max()), now_ms)
        bounds = np.cumsum([0, *(t.size for t in times)])
        ingested = [
            self._ingest_version(track, a, t, in_force[lo:hi], now_ms)
            for a, t, lo, hi in zip(arrivals, times, bounds[:-1].tolist(), bounds[1:].tolist())
        ]
        if self._pending.values > _PENDING_VALUES:
            self._pending.flush()
        return ingested

    def _ingest_version(
        self, track: _Track, arrival: Arrival, times: np.ndarray, in_force: np.ndarray, now_ms: int
    ) -> Ingested:
        batch, reference, has_predictions = arrival.batch, arrival.reference, arrival.has_predictions
        w = track.settings.windowing
        n = times.size
        ends = np.full(n, NOT_IN_WINDOW, dtype=np.int64)
        if n == 0:
            return Ingested(ends)
        track.last_seen[batch.model_version] = now_ms
        row_ends = w.starts(times) + w.size_ms
        through = track.predictions.windows.closed_through(batch.model_id, batch.model_version)
        if through is not None:
            in_force = np.maximum(in_force, through)
        late = row_ends <= in_force
        recovered = track.predictions.recovered[batch.model_version]
        replayed = late & (row_ends <= recovered) if recovered is not None else np.zeros(n, dtype=bool)
        counted = late & ~replayed
        if counted.any():
            track.late.setdefault(batch.model_version, []).append(in_force[counted])

        accepted = np.flatnonzero(~late)
        holds: list[Hold] = []
        joined = 0
        if accepted.size:
            ends[accepted] = row_ends[accepted]
            part = batch if accepted.size == n else take_rows(batch, accepted)

            def new_window(key: WindowKey) -> _Window:
                if reference is None:  # the worker rejects a batch with no reference before it gets here
                    raise ValueError(
                        f"no reference profile for model {batch.model_id!r} "
                        f"version {batch.model_version!r}: cannot open its window"
                    )
                calibrator = reference_calibrator(reference)
                model = multivariate_model(reference)
                return _Window(
                    reference,
                    WindowProfile.empty(reference, seed=stable_seed(*key)),
                    LatencyWindow(),
                    None if model is None else model.window(),
                    None if track.detectors is None else ScoreLog(key[2]),
                    estimation=None
                    if calibrator is None
                    else EstimationState(calibrator, min_segment_size=track.settings.min_segment_size),
                )

            for start, rows in w.split(part.event_times):
                key = (batch.model_id, batch.model_version, start)
                window = track.predictions.windows.get(key, new_window)
                chunk = part if rows.size == part.n else take_rows(part, rows)
                window.profile.update(
                    chunk.numeric,
                    chunk.categorical,
                    chunk.predictions if has_predictions else None,
                    pending=self._pending,
                )
                named = {k: chunk.attributes[k] for k in track.settings.segments if k in chunk.attributes}
                if named:
                    update_segments(
                        window.segments,
                        window.reference,
                        stable_seed(*key),
                        chunk.numeric,
                        chunk.categorical,
                        named,
                        chunk.predictions if has_predictions else None,
                        max_values=track.settings.max_segment_values,
                    )
                if window.multivariate is not None:
                    model = multivariate_model(window.reference)
                    # a batch with none of the model's features (predictions logged apart from
                    # their features) would only add rows at the reference mean
                    if model is not None and any(f in chunk.numeric for f in model.features):
                        window.multivariate.update(model, chunk.numeric, n=chunk.n)
                if has_predictions:
                    if chunk.latency_ms is not None:
                        window.latency.update(chunk.latency_ms)
                    if window.scores is not None:
                        window.scores.append(chunk.predictions, chunk.event_times)
                    if window.estimation is not None:
                        predicted = chunk.predicted_labels
                        try:
                            window.estimation.update(
                                chunk.predictions,
                                predicted if any(p is not None for p in predicted) else None,
                                chunk.attributes,
                            )
                        except ValueError:
                            # labels a binary calibrator cannot read (a multiclass model registered with
                            # one): the window's drift stands, it just gets no estimate
                            window.estimation = None
        if has_predictions:
            waiting = track.index.add(
                batch.event_ids,
                batch.model_version,
                times,
                batch.predictions,
                batch.predicted_labels or None,
                batch.attributes,
            )
            if waiting.n:
                joined = waiting.n
                holds = self._add_labelled(track, waiting, now_ms)[0]
        return Ingested(
            ends,
            late=int(counted.sum()),
            replayed=int(replayed.sum()),
            joined_labels=joined,
            holds=holds,
            late_rows=np.flatnonzero(counted) if counted.any() else None,
        )

    # -- labels --------------------------------------------------------------------

    def ingest_labels(
        self,
        model_id: str,
        event_ids: Sequence[str],
        labels: Sequence[object],
        event_times: np.ndarray,
        *,
        now_ms: int,
    ) -> LabelsIngested:
        """Join labels of one model to their predictions and add them to their label windows.

        Labels whose prediction is not known yet wait in the index (bounded,
        with a time to live) and join when it arrives.
        """
        track = self._track(model_id)
        times = np.asarray(event_times, dtype=np.int64)
        n = times.size
        if n == 0:
            return LabelsIngested([])
        ids = list(event_ids)
        values = [_Label(v, int(t)) for v, t in zip(labels, times.tolist())]
        again = 0
        if track.restored_joined:
            # a label restored after a restart stood in for its message, which Kafka delivers again
            # when the label had joined before the crash and its window was not written yet
            fresh = [i for i, event_id in enumerate(ids) if event_id not in track.restored_joined]
            again = n - len(fresh)
            if again:
                track.restored_joined.difference_update(ids)
                ids, values = [ids[i] for i in fresh], [values[i] for i in fresh]
        joined = track.index.join(ids, values)
        holds_by_id, late, replayed = self._add_labelled(track, joined, now_ms, by_id=True)
        position = {event_id: i for i, event_id in enumerate(event_ids)}
        holds: list[list[Hold]] = [[] for _ in range(n)]
        for event_id, hold in holds_by_id:
            holds[position[event_id]].append(hold)
        return LabelsIngested(
            holds,
            joined=joined.n,
            pending=len(joined.unmatched),
            late=late,
            replayed=replayed + again,
            unmatched=list(joined.unmatched),
        )

    def remember(self, batch: PredictionBatch, *, now_ms: int) -> dict[str, list[Hold]]:
        """Predictions written before (found in the warehouse), for the labels waiting for them.

        They only join waiting labels: their own windows were measured when they
        first came. Returns, per joined label id, the label windows it went into.
        """
        track = self._track(batch.model_id)
        waiting = track.index.add(
            batch.event_ids,
            batch.model_version,
            np.asarray(batch.event_times, dtype=np.int64),
            batch.predictions,
            batch.predicted_labels or None,
            batch.attributes,
        )
        if not waiting.n:
            return {}
        holds: dict[str, list[Hold]] = {}
        for event_id, hold in self._add_labelled(track, waiting, now_ms, by_id=True)[0]:
            holds.setdefault(event_id, []).append(hold)
        return holds

    def _add_labelled(self, track: _Track, joined: Any, now_ms: int, by_id: bool = False) -> Any:
        """Put joined rows into the label windows of their labels' event times.

        The label clock follows joined labels only, as one source per model: a
        label waiting for its prediction does not close the windows it may
        still go into, and labels joined from either topic move the same clock.
        """
        w = track.settings.windowing
        label_times = np.fromiter((lab.event_time for lab in joined.labels), dtype=np.int64, count=joined.n)
        if joined.n == 0:
            return [], 0, 0
        watermark = track.labels.clock.watermark(track.model_id, now_ms)
        label_values = [lab.value for lab in joined.labels]
        if track.restored_waiting:
            restored = [event_id for event_id, lab in zip(joined.event_ids.tolist(), joined.labels) if lab.restored]
            track.restored_joined.update(restored)
            # those that expire or are evicted unjoined leave the pending store too
            track.restored_waiting = max(min(track.restored_waiting - len(restored), track.index.n_pending), 0)
        holds: list[Any] = []
        late_total = replayed_total = 0
        for version, rows in _positions_by_version(joined.model_versions):
            if version not in track.labels.recovered:
                # the shell recovers versions of predictions; labels of another version start fresh
                track.labels.recovered[version] = None
            t = label_times[rows]
            row_ends = w.starts(t) + w.size_ms
            late = w.late_mask(t, watermark)
            through = track.labels.windows.closed_through(track.model_id, version)
            if through is not None:
                late |= row_ends <= through
            recovered = track.labels.recovered[version]
            replayed = late & (row_ends <= recovered) if recovered is not None else np.zeros(rows.size, dtype=bool)
            late_total += int((late & ~replayed).sum())
            replayed_total += int(replayed.sum())
            keep = rows[~late]
            for start, sub in w.split(label_times[keep]):
                idx = keep[sub]
                key = (track.model_id, version, start)
                window = track.labels.windows.get(key)
                y = [label_values[i] for i in idx.tolist()]
                scores = joined.scores[idx]
                predicted = joined.predicted_labels[idx]
                has_predicted = any(p is not None for p in predicted.tolist())
                window.performance.update(
                    y,
                    scores,
                    predicted if has_predicted else None,
                    {k: v[idx].astype(str) for k, v in joined.attributes.items()},
                )
                window.label_times.append(label_times[idx])
                hold = Hold(LABELS, track.model_id, version, start + w.size_ms)
                if by_id:
                    holds.extend((event_id, hold) for event_id in joined.event_ids[idx].tolist())
                elif hold not in holds:
                    holds.append(hold)
        track.labels.clock.observe(track.model_id, LABELS, int(label_times.max()), now_ms)
        return holds, late_total, replayed_total

    # -- closing ---------------------------------------------------------------------

    def close_due(self, now_ms: int) -> list[WindowOutcome | PerformanceOutcome]:
        """Close every window whose end the watermark has passed, oldest first per model."""
        out: list[WindowOutcome | PerformanceOutcome] = []
        self._pending.flush()
        for model_id in sorted(self._tracks):
            track = self._tracks[model_id]
            size = track.settings.windowing.size_ms
            for key, window in track.predictions.close(model_id, now_ms, size):
                out.append(self._window_outcome(track, key, window))
            for key, lw in track.labels.close(model_id, now_ms, size):
                out.append(self._performance_outcome(track, key, lw))
            wm = track.predictions.clock.watermark(model_id, now_ms)
            if wm is not None:
                track.index.expire(wm)
        return out

    def _window_outcome(self, track: _Track, key: WindowKey, window: _Window) -> WindowOutcome:
        model_id, version, start = key
        s = track.settings
        # read once from the exact sums, for the drift tests and the slow-drift detector
        moments = window_moments(window.profile)
        drift = evaluate_window(
            window.reference, window.profile, thresholds=s.thresholds, fdr_q=s.fdr_q, moments=moments
        )
        trend = _trend_for(track, version, window.reference, s.trend_guarantee, s.trend_level)
        if trend is not None:
            # a stream with no values in this window (no predictions: features logged alone) learns
            # nothing from it and gets no row, as the per-window tests give none
            drift += [r for r in trend.update_window(window.profile, moments) if moments[r.feature][0]]
        model = multivariate_model(window.reference)
        if model is not None and window.multivariate is not None:
            drift += model.evaluate(window.multivariate)
        cause, segments = _explain(s, window, drift)
        changes: list[ChangeCount] = []
        state = None
        if track.detectors is not None and window.scores is not None and window.scores.n:
            scores = window.scores.in_event_order()
            stream = f"{version}:score"
            events = track.detectors.update(stream, scores)
            fed = int((~np.isnan(scores)).sum())
            for name in track.detectors.detector_names(stream):
                changes.append(ChangeCount(name, PREDICTION_FEATURE, sum(e.detector == name for e in events), fed))
            state = track.detectors.stream_state(stream)
        if trend is not None:
            state = join_detector_state(state, (_reference_key(window.reference), trend))
        end = start + s.windowing.size_ms
        late = 0
        pending = track.late.get(version)
        if pending:
            # the late rows whose watermark this window's end is above: it is the first to close after them
            waiting = np.concatenate(pending)
            counted = waiting < end
            late = int(counted.sum())
            track.late[version] = [waiting[~counted]] if late < waiting.size else []
        return WindowOutcome(
            model_id,
            version,
            start,
            end,
            n_current=int(window.profile.n),
            n_reference=int(window.reference.n),
            drift=drift,
            profile=window.profile,
            latency=window.latency.quantiles() if window.latency.n else {},
            n_latency=int(window.latency.n),
            changes=changes,
            detector_state=state,
            late_events=late,
            estimates=window.estimation.rows() if window.estimation is not None else [],
            reference_estimates=reference_estimates(window.reference) if window.estimation is not None else {},
            segment_drift=segments,
            root_cause=cause,
        )

    def _performance_outcome(self, track: _Track, key: WindowKey, lw: _LabelWindow) -> PerformanceOutcome:
        model_id, version, start = key
        changes: list[ChangeCount] = []
        state = None
        if track.detectors is not None and lw.performance.n:
            errors, task = lw.performance.errors()
            binary = task == "classification"
            stream = f"{version}:error"
            names = (
                track.detectors.names
                if binary
                else tuple(n for n in track.detectors.names if n not in BINARY_DETECTORS)
            )
            if names:
                errors = _in_event_order(errors, np.concatenate(lw.label_times))
                events = track.detectors.update(stream, errors, binary=binary)
                fed = int((~np.isnan(errors)).sum())
                for name in track.detectors.detector_names(stream):
                    changes.append(ChangeCount(name, ERROR_FEATURE, sum(e.detector == name for e in events), fed))
                state = track.detectors.stream_state(stream)
        return PerformanceOutcome(
            model_id,
            version,
            start,
            start + track.settings.windowing.size_ms,
            n_labeled=lw.performance.n,
            rows=lw.performance.rows(),
            changes=changes,
            detector_state=state,
        )


def _explain(
    s: MonitorSettings, window: _Window, drift: list[FeatureDrift]
) -> tuple[RootCause | None, list[SegmentWindowDrift]]:
    """The window's root cause when it drifted, and the drift of its segments (when the settings name
    attributes): the model output's and the top features' by effect over the whole window."""
    drifted = any(m.drifted for m in drift)
    if not drifted and not window.segments:
        return None, []
    cause = explain(window.reference, window.profile, window.segments, min_segment_size=s.min_drift_segment)
    segments = segment_drift(
        window.reference,
        window.segments,
        drift_features(cause),
        thresholds=s.thresholds,
        fdr_q=s.fdr_q,
        min_segment_size=s.min_drift_segment,
    )
    return (cause if drifted else None), segments


def _reference_key(reference: ReferenceProfile) -> str:
    # what tells one baseline from the next: with baseline='champion' a version's reference
    # changes when another version is promoted
    return f"{reference.model_id}:{reference.model_version}:{reference.n}"


def _trend_for(
    track: _Track, version: str, reference: ReferenceProfile, guarantee: str, level: str = "model"
) -> TrendDetector | None:
    """The version's slow-drift detector, started afresh from ``reference`` on a re-baseline (or when the
    policy changed its guarantee or level: the evidence of one alarm level means nothing at another)."""
    key = _reference_key(reference)
    held = track.trends.get(version)
    if held is not None and held[0] == key:
        trend = held[1]
        if trend.guarantee == guarantee and trend.shared_by == _trend_shared_by(level, len(trend.names)):
            return trend
    # a stream whose reference has no finite mean and spread has no baseline to drift from
    streams = [f for f, r in reference.numeric.items() if r.count > 0 and np.isfinite([r.mean, r.std]).all()]
    if not streams:
        return None
    shared_by = _trend_shared_by(level, len(streams))
    trend = TrendDetector.from_reference(reference, streams, guarantee=guarantee, shared_by=shared_by)
    track.trends[version] = (key, trend)
    return trend


def _trend_shared_by(level: str, streams: int) -> int:
    """How many streams share the slow-drift alarm's alpha at ``level`` (Bonferroni over the model's ``streams``).

    >>> _trend_shared_by("model", 23), _trend_shared_by("stream", 23)
    (23, 1)
    """
    if level not in TREND_LEVELS:
        raise ValueError(f"trend level must be one of {TREND_LEVELS}, got {level!r}")
    return streams if level == "model" else 1


def _in_event_order(values: np.ndarray, event_times: np.ndarray) -> np.ndarray:
    """A window's values sorted by event time, then by value: the order in which its change detectors see them.

    Arrival order depends on batching and on how partitions interleave, so a
    replay after a crash would feed the same values in another order. Ties in
    time are broken by the value itself: equal (time, value) pairs are
    interchangeable for a detector, so this order is total for what it sees.

    >>> _in_event_order(np.array([0.3, 0.9, 0.1, np.nan]), np.array([20, 10, 20, 10])).tolist()
    [0.9, nan, 0.1, 0.3]
    """
    if values.size != event_times.size:
        raise ValueError(f"{values.size} values for {event_times.size} event times")
    if values.size < 2 or (event_times[1:] > event_times[:-1]).all():
        return values  # in order, without ties: the common case, at no cost
    # events come nearly in time order: a stable sort by time alone is close to linear, and
    # suffices without ties; the full sort by (time, value) costs about 30 ms per 200,000 values
    order = np.argsort(event_times, kind="stable")
    times = event_times[order]
    if (times[1:] > times[:-1]).all():
        return values[order]
    return values[np.lexsort((values, event_times))]
