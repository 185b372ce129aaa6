"""A simulated credit-scoring service: it scores applicants, logs predictions and, later, their labels.

It behaves like a real service instrumented with the SDK: every request is
scored by the model in service, logged with :class:`~streams.sdk.PredictionLogger`
(features, score, latency, ``region``/``channel`` attributes), and its true
outcome is logged as a label ``label_delay_s`` later, in event time and in wall
time alike. Applicants come from :mod:`driftline.simulation`; from
``drift_at_ms`` on they come from the changed world (``simulation.AFTER``).

The model in service changes when the registry's champion changes:
:class:`ChampionWatcher` reads the ``models`` topic, loads the new champion's
artifact from the registry and hands the service a new :class:`Scorer`.

The demo runs :meth:`SimulatedService.run` on a thread; ``driftline simulate``
runs it in the foreground.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from driftline import simulation
from driftline.retrainer.trainers import TrainingSet, load_model, score
from driftline.simulation import AFTER, BEFORE, Applicants, Timeline, World

if TYPE_CHECKING:
    from driftline.retrainer.registry import Registry
    from driftline.settings import Settings
    from driftline.streams.records import ModelEvent
    from driftline.streams.sdk import PredictionLogger

log = logging.getLogger(__name__)

ATTRIBUTES = ("region", "channel")  # categorical inputs also logged as segment tags


def training_set(applicants: Applicants, event_time: np.ndarray | None = None) -> TrainingSet:
    """Applicants as a trainer's input (label: 1.0 = defaulted).

    >>> a = simulation.draw(BEFORE, 4, np.random.default_rng(0))
    >>> ts = training_set(a)
    >>> ts.n, sorted(ts.numeric), sorted(ts.categorical), ts.task
    (4, ['age', 'debt_ratio', 'income'], ['channel', 'region'], 'classification')
    """
    times = np.arange(applicants.n, dtype=np.int64) if event_time is None else event_time
    return TrainingSet(
        dict(applicants.numeric), dict(applicants.categorical), applicants.default.astype(np.float64), times
    )


@dataclass(frozen=True)
class Scorer:
    """A model version in service: how it turns applicants into default probabilities.

    >>> s = oracle_scorer("1")
    >>> s.version, s.source
    ('1', 'oracle: the BEFORE world')
    >>> p = s.score(simulation.draw(BEFORE, 5, np.random.default_rng(0)))
    >>> p.shape, bool(((p > 0) & (p < 1)).all())
    ((5,), True)
    """

    version: str
    score: Callable[[Applicants], np.ndarray]
    source: str


def artifact_scorer(version: str, artifact: bytes) -> Scorer:
    """A scorer from a registered artifact (a pickled river pipeline, as ``driftline.retrainer.trainers`` writes)."""
    model = load_model(artifact)
    return Scorer(version, lambda applicants: score(model, training_set(applicants)), "registry artifact")


def oracle_scorer(version: str, world: World = BEFORE) -> Scorer:
    """A scorer that knows ``world``'s true default probabilities: a model perfectly fit before any drift."""

    def probability(applicants: Applicants) -> np.ndarray:
        return simulation.default_probability(world, applicants.numeric, applicants.categorical)

    name = "BEFORE" if world is BEFORE else "AFTER" if world is AFTER else "custom"
    return Scorer(version, probability, f"oracle: the {name} world")


def champion_scorer(registry: Registry, model_id: str) -> Scorer | None:
    """The registry champion's scorer, or None when the model has no champion."""
    from driftline.retrainer.registry import CHAMPION

    champion = registry.alias(model_id, CHAMPION)
    if champion is None:
        return None
    return artifact_scorer(champion.version, registry.load_artifact(model_id, champion.version))


@dataclass(frozen=True)
class Switch:
    """The service changed models: when (wall clock ms), from which version to which, and why.

    >>> Switch(1_000, "1", "2", "models event: promoted version 2").to_version
    '2'
    """

    at_ms: int
    from_version: str
    to_version: str
    cause: str


@dataclass(frozen=True)
class ServiceStats:
    """What the service has done so far.

    >>> ServiceStats(predictions=10, labels=4, by_version={"1": 10}).pending_labels
    6
    >>> ServiceStats(by_version={"2": 300, "1": 1200}).by_version_line()
    'v1 1,200, v2 300'
    """

    predictions: int = 0
    labels: int = 0
    by_version: dict[str, int] = field(default_factory=dict)
    after_drift: int = 0
    version: str = ""
    drift_at_ms: int | None = None
    first_by_version: dict[str, int] = field(default_factory=dict)
    switches: tuple[Switch, ...] = ()
    labels_enabled: bool = True

    @property
    def pending_labels(self) -> int:
        return self.predictions - self.labels if self.labels_enabled else 0

    def by_version_line(self) -> str:
        """Predictions per version, for progress lines."""
        return ", ".join(f"v{v} {n:,}" for v, n in sorted(self.by_version.items()))


class SimulatedService:
    """Scores simulated applicants at ``rate`` requests per second and logs them with the SDK.

    Event time is the wall clock, so the stream is live: windows close as
    time passes. Requests are handled in ticks of ``tick_s`` (a micro-batch
    per tick, as a service under load would); each request's ``latency_ms``
    is the measured time to score its micro-batch.

    ``clock`` returns seconds (``time.time``); tests pass their own.

    >>> from driftline.streams.sdk import PredictionLogger
    >>> logger = PredictionLogger("127.0.0.1:1")  # nothing listens: events are buffered, then dropped
    >>> now = [1_700_000_000.0]
    >>> service = SimulatedService(logger, "credit", oracle_scorer("1"), rate=100, label_delay_s=1.0,
    ...                            clock=lambda: now[0])
    >>> service.start(); now[0] += 1.0
    >>> service.step()  # the requests of the first second (both ends included)
    101
    >>> now[0] += 1.0
    >>> service.step()  # the next second's requests; the first batch's labels are due now
    100
    >>> stats = service.stats()
    >>> stats.predictions, stats.labels, stats.by_version
    (201, 101, {'1': 201})
    >>> _ = logger.close(timeout=0.1)
    """

    def __init__(
        self,
        logger: PredictionLogger,
        model_id: str,
        scorer: Scorer,
        *,
        rate: float,
        label_delay_s: float | None = 3.0,
        seed: int = 0,
        tick_s: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if label_delay_s is not None and label_delay_s < 0:
            raise ValueError(f"label delay cannot be negative, got {label_delay_s}")
        self.logger = logger
        self.model_id = model_id
        self.rate = rate
        self.label_delay_ms = None if label_delay_s is None else int(label_delay_s * 1000)
        self.tick_s = tick_s
        self.clock = clock
        self._rng = np.random.default_rng(seed)
        self._scorer = scorer
        self._lock = threading.Lock()
        self._timeline: Timeline | None = None
        self._drift_at_ms: int | None = None
        # per served micro-batch: (due ms, event ids, labels, label event times)
        self._labels: deque[tuple[int, list[str], np.ndarray, np.ndarray]] = deque()
        self._predictions = 0
        self._labelled = 0
        self._after_drift = 0
        self._by_version: dict[str, int] = {}
        self._first_by_version: dict[str, int] = {}
        self._switches: list[Switch] = []
        self._stop = threading.Event()

    # -- control (any thread) ------------------------------------------------------

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    @property
    def version(self) -> str:
        return self._scorer.version

    def inject_drift(self, at_ms: int) -> None:
        """From ``at_ms`` (event time) on, applicants come from ``simulation.AFTER``."""
        with self._lock:
            self._drift_at_ms = int(at_ms)
            if self._timeline is not None:
                self._timeline.drift_at_ms = self._drift_at_ms

    def use(self, scorer: Scorer, cause: str) -> bool:
        """Serve ``scorer`` from the next request on; False when that version is already in service."""
        with self._lock:
            if scorer.version == self._scorer.version:
                return False
            self._switches.append(Switch(self.now_ms(), self._scorer.version, scorer.version, cause))
            self._scorer = scorer
        log.debug("service switched to %s version %s (%s)", self.model_id, scorer.version, cause)
        return True

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> ServiceStats:
        with self._lock:
            return ServiceStats(
                predictions=self._predictions,
                labels=self._labelled,
                by_version=dict(self._by_version),
                after_drift=self._after_drift,
                version=self._scorer.version,
                drift_at_ms=self._drift_at_ms,
                first_by_version=dict(self._first_by_version),
                switches=tuple(self._switches),
                labels_enabled=self.label_delay_ms is not None,
            )

    # -- the work ------------------------------------------------------------------

    def start(self, at_ms: int | None = None) -> None:
        """Begin the stream at ``at_ms`` (default: now); :meth:`step` then serves what is due."""
        with self._lock:
            self._timeline = Timeline(
                start_ms=self.now_ms() if at_ms is None else at_ms, rate=self.rate, drift_at_ms=self._drift_at_ms
            )

    def step(self, now_ms: int | None = None) -> int:
        """Serve every request due by ``now_ms`` and log every label due by then; returns the requests served."""
        if self._timeline is None:
            self.start()
        now = self.now_ms() if now_ms is None else now_ms
        timeline = self._timeline
        assert timeline is not None
        step_ms = 1000.0 / self.rate
        due = int((now - timeline.clock_ms) // step_ms) + 1 if now >= timeline.clock_ms else 0
        if due:
            self._serve(timeline.next_times(due))
        self._log_labels(now)
        return due

    def _serve(self, times: np.ndarray) -> None:
        with self._lock:
            scorer = self._scorer
            drift_at = self._drift_at_ms
        after = np.zeros(times.size, dtype=bool) if drift_at is None else times >= drift_at
        applicants = _draw_mixed(after, self._rng)
        started = time.perf_counter()
        scores = scorer.score(applicants)
        latency_ms = (time.perf_counter() - started) * 1000.0
        ids = [str(uuid.uuid4()) for _ in range(times.size)]
        numeric = {k: v.tolist() for k, v in applicants.numeric.items()}
        categorical = {k: v.tolist() for k, v in applicants.categorical.items()}
        for i, (event_id, event_time, prediction) in enumerate(zip(ids, times.tolist(), scores.tolist())):
            features: dict[str, float | str] = {k: v[i] for k, v in numeric.items()}
            features.update({k: v[i] for k, v in categorical.items()})
            self.logger.log_prediction(
                self.model_id,
                scorer.version,
                features=features,
                prediction=prediction,
                latency_ms=latency_ms,
                attributes={k: categorical[k][i] for k in ATTRIBUTES},
                event_id=event_id,
                event_time=event_time,
            )
        if self.label_delay_ms is not None:
            # each label's event time is exactly its prediction's plus the delay; a micro-batch's labels
            # are logged together once the last of them is due
            label_times = times + self.label_delay_ms
            self._labels.append((int(label_times[-1]), ids, applicants.default.astype(np.float64), label_times))
        with self._lock:
            self._predictions += times.size
            self._after_drift += int(after.sum())
            self._by_version[scorer.version] = self._by_version.get(scorer.version, 0) + times.size
            self._first_by_version.setdefault(scorer.version, int(times[0]))

    def _log_labels(self, now: int) -> None:
        while self._labels and self._labels[0][0] <= now:
            _, ids, labels, label_times = self._labels.popleft()
            for event_id, label, event_time in zip(ids, labels.tolist(), label_times.tolist()):
                self.logger.log_label(self.model_id, event_id, label, event_time=event_time)
            with self._lock:
                self._labelled += len(ids)

    def run(self, duration_s: float | None = None, until: Callable[[], bool] | None = None) -> ServiceStats:
        """Serve in real time until ``duration_s`` has passed, ``until()`` is true, or :meth:`stop`.

        The stream starts now unless :meth:`start` was called before.
        Labels still pending at the end are logged too (with their due event
        time), so that every prediction gets its label.
        """
        if self._timeline is None:
            self.start()
        assert self._timeline is not None
        end_ms = None if duration_s is None else self._timeline.start_ms + int(duration_s * 1000)
        while not self._stop.is_set():
            now = self.now_ms()
            if end_ms is not None and now >= end_ms:
                self.step(end_ms - 1)  # every request of the duration, none after it
                break
            if until is not None and until():
                break
            self.step(now)
            self._stop.wait(self.tick_s)
        self.drain_labels()
        return self.stats()

    def drain_labels(self) -> None:
        """Log every label still waiting, at its due event time, without waiting for it."""
        last = self._labels[-1][0] if self._labels else None
        if last is not None:
            self._log_labels(last)


def _draw_mixed(after: np.ndarray, rng: np.random.Generator) -> Applicants:
    """Applicants of the BEFORE world where ``after`` is False and of the AFTER world where it is True."""
    n_after = int(after.sum())
    if n_after == 0:
        return simulation.draw(BEFORE, after.size, rng)
    if n_after == after.size:
        return simulation.draw(AFTER, after.size, rng)
    before_part = simulation.draw(BEFORE, after.size - n_after, rng)
    after_part = simulation.draw(AFTER, n_after, rng)
    # times are sorted, so the BEFORE rows come first
    return Applicants(
        {k: np.concatenate([before_part.numeric[k], after_part.numeric[k]]) for k in before_part.numeric},
        {k: np.concatenate([before_part.categorical[k], after_part.categorical[k]]) for k in before_part.categorical},
        np.concatenate([before_part.default, after_part.default]),
    )


class ChampionWatcher:
    """Reads the ``models`` topic and switches the service to each new champion of its model.

    Its consumer is assigned every partition at the offsets of ``since_ms``
    (no consumer group to join, so no event published after ``since_ms`` is
    missed while a group rebalances). On a ``promoted`` or ``rolled_back``
    event of the model, the registry says which version is champion now and
    its artifact (verified against its hash) becomes the service's model.

    >>> import tempfile
    >>> from driftline.settings import Settings
    >>> from driftline.retrainer.registry import ArtifactStore, Registry
    >>> from driftline.streams.sdk import PredictionLogger
    >>> d = tempfile.mkdtemp()
    >>> service = SimulatedService(PredictionLogger("127.0.0.1:1"), "credit", oracle_scorer("1"), rate=10)
    >>> watcher = ChampionWatcher(Settings(), Registry(f"sqlite:///{d}/r.db", ArtifactStore(d)), service, since_ms=0)
    >>> watcher.since_ms, watcher.error  # start() assigns the models topic at since_ms and follows it
    (0, None)
    >>> _ = service.logger.close(timeout=0.1)
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        service: SimulatedService,
        *,
        since_ms: int | None = None,
        on_event: Callable[[ModelEvent], None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.service = service
        self.since_ms = since_ms if since_ms is not None else time.time_ns() // 1_000_000
        self.on_event = on_event
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="driftline-champion-watcher", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start reading; returns once the consumer is assigned (raises if it could not be)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(
                f"the models topic {self.settings.topic('models')} could not be read within {timeout:g} s"
            )
        if self.error is not None:
            raise RuntimeError(f"cannot read the models topic: {self.error}") from self.error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        from confluent_kafka import TopicPartition

        from driftline.streams import kafka

        topic = self.settings.topic("models")
        consumer = kafka.consumer(
            self.settings, f"driftline-service-{uuid.uuid4().hex[:12]}", **{"enable.auto.commit": False}
        )
        try:
            meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"topic {topic} does not exist (run the worker, or kafka.ensure_topics, first)")
            wanted = [TopicPartition(topic, p, self.since_ms) for p in sorted(meta.partitions)]
            consumer.assign(consumer.offsets_for_times(wanted, timeout=10))
        except BaseException as exc:  # reported to start(); the thread ends
            self.error = exc
            self._ready.set()
            consumer.close()
            return
        self._ready.set()
        try:
            kafka.follow_model_events(consumer, self._stop, self._on_model_event, poll_seconds=0.25)
        except BaseException as exc:  # kept for the caller: a dead watcher means the service never switches
            self.error = exc
            log.exception("the champion watcher stopped")
        finally:
            consumer.close()

    def _on_model_event(self, event: ModelEvent) -> None:
        if event.model_id != self.service.model_id:
            return
        if self.on_event is not None:
            self.on_event(event)
        if event.event not in ("promoted", "rolled_back"):
            return
        scorer = champion_scorer(self.registry, self.service.model_id)
        if scorer is not None:
            request = f", request {event.request_id}" if event.request_id else ""
            self.service.use(scorer, f"models event: {event.event} version {event.version}{request}")
