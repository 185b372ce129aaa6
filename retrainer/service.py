"""The retrainer service: retrain requests in, registered (and perhaps promoted) model versions out.

:class:`Retrainer` handles one :class:`~streams.records.RetrainRequest`:

1. **dedupe**: a request whose ``retrain_requests`` row already has a final
   status is a duplicate; one whose version is in the registry (lineage
   ``request_id``) but has no final status was interrupted, and is finished
   rather than trained again, so a request delivered twice registers once;
2. **snapshot**: the labelled predictions over the policy's range, from the
   warehouse, stored content-addressed as Parquet; too few rows reject it;
3. **train** with the policy's trainer (an entry point of ``driftline.trainers``
   or ``module:function``) on the oldest rows;
4. **evaluate** challenger and champion on the same newest rows
   (:mod:`driftline.retrainer.evaluation`) and decide (:func:`driftline.retrainer.promotion.decide`);
5. **register** the version with its lineage and reference profile; the
   decision is stored with it (tag ``decision``), so that an interrupted
   request finishes the way it was decided;
6. **apply** the decision (promote, or alias ``challenger``), **publish** the
   ModelEvents on ``models``, write the request's final status and mirror the
   registry to ``model_versions``.

A failure in steps 2-5 (a trainer that raises, unusable data) fails the
request, with the error recorded, and the service goes on. A failure to
record an outcome (Kafka, warehouse or registry unreachable) is not the
request's fault: :class:`RetrainerService` leaves its offset uncommitted,
seeks back and tries again after a pause.

:class:`RetrainerService` consumes ``retrain-requests`` with manual commits
and commits a message only after its outcome is recorded. The service holds
no statistics and no SQL of its own.
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from driftline.redaction import redact
from driftline.retrainer.announce import AnnounceError, mirror_versions, publish_model_events
from driftline.retrainer.evaluation import ChampionScores, Evaluation, evaluate, fit_calibrator
from driftline.retrainer.policy import ModelPolicy, Policy, load_policy
from driftline.retrainer.registry import (
    CHALLENGER,
    CHAMPION,
    Lineage,
    ModelNotFoundError,
    ModelVersion,
    Registry,
    RegistryError,
)
from driftline.retrainer.snapshot import Snapshot, SnapshotRef, event_time_range
from driftline.retrainer.trainers import (
    TrainedModel,
    TrainerError,
    TrainerFn,
    artifact_allowlist,
    load_model,
    resolve_trainer,
    score,
)
from driftline.retrainer.triggers import manual_cooldown_remaining_ms
from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.codec import Codec, DecodeError
from driftline.streams.records import RetrainRequest
from driftline.streams.supervision import INTERNAL_ERROR, error_detail
from driftline.streams.warehouse import Warehouse, WarehouseError
from driftline.unpickling import Allowlist

log = logging.getLogger(__name__)

ACTOR = "driftline-retrainer"
FINAL_STATUSES = ("registered", "rejected", "failed")
DECISION_TAG = "decision"  # "promote" or "keep", decided before registering
PROMOTE, KEEP = "promote", "keep"

Stage = Literal["snapshot", "training", "evaluating", "registering", "done"]
OutcomeStatus = Literal["registered", "rejected", "failed", "duplicate"]


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Progress:
    """How far the retrainer has got with one request, for logs and live views.

    >>> Progress("r1", "credit", "training", 3, 4, "batch 3/4").percent
    75
    """

    request_id: str
    model_id: str
    stage: Stage
    done: int
    total: int
    message: str

    @property
    def percent(self) -> int:
        return 100 if self.total <= 0 else int(100 * self.done / self.total)


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Outcome:
    """What became of one request.

    ``status`` is the request's final status, or ``duplicate`` when it had
    one already; ``reason`` says why (the decision, the rejection or the error).

    >>> Outcome("r1", "credit", "registered", version="2", promoted=True).line()
    'request r1 (credit): registered version 2, promoted'
    """

    request_id: str
    model_id: str
    status: OutcomeStatus
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    holdout_metrics: Mapping[str, float] = field(default_factory=dict)

    def line(self) -> str:
        text = f"request {self.request_id} ({self.model_id}): {self.status}"
        if self.version is not None:
            text += f" version {self.version}, " + ("promoted" if self.promoted else "kept as challenger")
        return text + (f": {self.reason}" if self.reason else "")


@dataclass
class _Candidate:
    """A trained and evaluated challenger, ready to register."""

    snapshot: SnapshotRef
    data: Snapshot
    trained: TrainedModel
    trainer: str
    scores: np.ndarray  # the challenger's score of every snapshot row, for the reference profile
    evaluation: Evaluation
    parent: str | None
    # ScoreCalibrator JSON fitted on the holdout's scores and labels (binary classifiers), or None
    calibrator: dict[str, Any] | None = None


class RetryLater(RuntimeError):
    """An outcome could not be recorded (Kafka, warehouse or registry); the request is handled again."""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _plain(value: Any) -> Any:
    # the policy keeps hyperparameters frozen (mapping proxies, tuples); trainers get plain JSON values
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _accepts_progress(fn: TrainerFn) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in parameters


# --------------------------------------------------------------------------- one request


class Retrainer:
    """Handles retrain requests one at a time, wiring warehouse, trainer, evaluation, registry and Kafka.

    ``producer`` publishes ModelEvents on the ``models`` topic; ``progress``
    receives :class:`Progress` updates (the demo's live view). The policy's
    ``manual.cooldown_minutes`` is enforced here, per process: a manual request
    that comes too soon after the last one this process accepted is rejected.
    Usage: ``Retrainer.from_settings(settings).handle(request)``; see
    tests/integration/test_retrainer.py (it needs Kafka and a warehouse).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        registry: Registry,
        warehouse: Warehouse,
        producer: Producer,
        policy: Policy,
        codec: Codec | None = None,
        progress: ProgressCallback | None = None,
        flush_timeout_seconds: float = 30.0,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.warehouse = warehouse
        self.producer = producer
        self.policy = policy
        self.codec = codec or Codec.from_settings(settings)
        self._progress_cb = progress
        self.flush_timeout_seconds = flush_timeout_seconds
        self._last_manual: dict[str, tuple[int, str]] = {}  # model -> (requested_at, request_id) last accepted
        self._last_stamp = 0

    @classmethod
    def from_settings(cls, settings: Settings, *, progress: ProgressCallback | None = None) -> Retrainer:
        policy = load_policy(settings.policy)
        registry = Registry.from_settings(settings)
        warehouse = Warehouse.from_settings(settings, migrate=True)
        return cls(
            settings,
            registry=registry,
            warehouse=warehouse,
            producer=kafka.producer(settings),
            policy=policy,
            progress=progress,
        )

    def close(self) -> None:
        self.producer.flush(self.flush_timeout_seconds)
        self.warehouse.close()

    # -- the request ------------------------------------------------------------
    def handle(self, request: RetrainRequest) -> Outcome:
        """Handle one request to its final status; raises :class:`RetryLater` when that status cannot be recorded."""
        try:
            status = (self.warehouse.retrain_request_status(request.request_id) or {}).get("status")
            earlier = self.registry.find_by_request(request.model_id, request.request_id)
        except Exception as exc:
            raise RetryLater(f"cannot look up request {request.request_id}: {exc}") from exc
        if status in FINAL_STATUSES:
            log.info(
                "request %s (%s) is already %s; skipping the duplicate", request.request_id, request.model_id, status
            )
            return Outcome(request.request_id, request.model_id, "duplicate", reason=f"already {status}")
        if earlier:
            log.info(
                "request %s (%s) registered version %s before it was interrupted; finishing it",
                request.request_id,
                request.model_id,
                earlier[-1].version,
            )
            return self._finish(request, earlier[-1])

        policy = self.policy.for_model(request.model_id)
        last_manual = self._last_manual.get(request.model_id)
        if request.reason == "manual" and (last_manual is None or last_manual[1] != request.request_id):
            wait_ms = manual_cooldown_remaining_ms(
                policy, None if last_manual is None else last_manual[0], request.requested_at
            )
            if wait_ms:
                return self._reject(
                    request,
                    f"manual requests of {request.model_id} are "
                    f"{policy.manual.cooldown_minutes:g} minutes apart "
                    f"(manual.cooldown_minutes); try again after "
                    f"{_iso(request.requested_at + wait_ms)}",
                )
            self._last_manual[request.model_id] = (request.requested_at, request.request_id)
        self._record(request, "training")
        log.info(
            "request %s: retraining %s (reason %s, version %s, %d evidence)",
            request.request_id,
            request.model_id,
            request.reason,
            request.model_version,
            len(request.evidence),
        )
        try:
            prepared = self._prepare(request, policy)
            if isinstance(prepared, str):
                return self._reject(request, prepared)
            version = self._register(request, policy, prepared)
        except Exception as exc:  # the request's own failure (trainer, data); the service goes on
            error = f"{type(exc).__name__}: {exc}"
            log.error(
                "request %s (%s) failed: %s",
                request.request_id,
                request.model_id,
                error,
                exc_info=not isinstance(exc, TrainerError),
            )
            self._record(request, "failed", error=error)
            return Outcome(request.request_id, request.model_id, "failed", reason=error)
        return self._finish(request, version)

    # -- snapshot, train, evaluate -----------------------------------------------
    def _prepare(self, request: RetrainRequest, policy: ModelPolicy) -> _Candidate | str:
        """A trained, evaluated challenger; or why the request is rejected."""
        rt = policy.retraining
        last_promotion = self._last_promotion_ms(request.model_id) if rt.snapshot.since == "last_promotion" else None
        start, end = rt.snapshot.range(request.requested_at, last_promotion)
        span = f"[{_iso(start)}, {_iso(end)})"
        self._progress(request, "snapshot", 0, 1, f"reading labelled predictions in {span}")
        table = self.warehouse.training_snapshot(request.model_id, start, end)
        if table.num_rows < rt.min_rows:
            return (
                f"the snapshot has {table.num_rows} labelled predictions in {span}, fewer than the "
                f"{rt.min_rows} the policy needs (retraining.min_rows)"
            )
        sha256 = self.registry.artifacts.put_table(table)
        first, last = event_time_range(table)
        ref = SnapshotRef(self.registry.artifacts.uri(sha256), sha256, table.num_rows, first, last, start, end)
        data = Snapshot.from_table(table)
        dropped = f"; {data.dropped_unlabelled} rows without a label dropped" if data.dropped_unlabelled else ""
        if data.dropped_features:  # kept in the stored snapshot's metadata too
            dropped += f"; left out {', '.join(map(str, data.dropped_features))}"
        self._progress(
            request,
            "snapshot",
            1,
            1,
            f"{table.num_rows:,} labelled rows in {span}, {len(data.data.numeric)} numeric and "
            f"{len(data.data.categorical)} categorical features, task {data.data.task}, stored as "
            f"{ref.uri}{dropped}",
        )
        train_index, holdout_index = data.split_index(rt.holdout_fraction)
        if len(train_index) == 0 or len(holdout_index) == 0:
            return (
                f"the snapshot's {data.n} rows do not split into training and holdout rows at "
                f"holdout_fraction {rt.holdout_fraction:g}"
            )
        train, holdout = data.take(train_index), data.take(holdout_index)

        trainer = resolve_trainer(rt.trainer)
        params = _plain(rt.hyperparameters)
        self._progress(
            request,
            "training",
            0,
            1,
            f"training {rt.trainer} on {train.n:,} rows (holdout "
            f"{holdout.n:,}), policy hyperparameters {json.dumps(params)}",
        )
        started = time.monotonic()
        trained = self._train(request, trainer, rt.trainer, train, params)
        self._progress(request, "training", 1, 1, f"trained {rt.trainer} in {time.monotonic() - started:.1f} s")

        self._progress(request, "evaluating", 0, 1, f"scoring challenger and champion on {holdout.n:,} holdout rows")
        scores = score(trained.model, data.data)
        champion = self._champion(request.model_id)
        champion_scores = (
            None if champion is None else self._champion_scores(champion, holdout, artifact_allowlist(trainer))
        )
        evaluation = evaluate(
            data.data.task,
            train.data.label,
            scores[train_index],
            holdout.data.label,
            scores[holdout_index],
            champion_scores,
            rt.promotion,
        )
        train_metrics = {**evaluation.train, **trained.train_metrics}
        evaluation = replace(evaluation, train=train_metrics)
        self._progress(request, "evaluating", 1, 1, evaluation.summary())
        parent = champion.version if champion is not None else self._existing_version(request)
        # calibrated on held-out rows: scores of the training rows are over-confident
        calibrator = fit_calibrator(data.data.task, holdout.data.label, scores[holdout_index])
        return _Candidate(ref, data, trained, rt.trainer, scores, evaluation, parent, calibrator)

    def _train(
        self, request: RetrainRequest, trainer: TrainerFn, name: str, train: Snapshot, params: dict[str, Any]
    ) -> TrainedModel:
        reported = [-1]

        def progress(done: int, total: int) -> None:
            self._notify(
                Progress(request.request_id, request.model_id, "training", done, total, f"batch {done}/{total}")
            )
            tenth = 10 * done // max(total, 1)
            if tenth > reported[0]:  # log every 10%, not every batch
                reported[0] = tenth
                log.info(
                    "request %s: training %s %d%% (%d/%d batches)",
                    request.request_id,
                    name,
                    100 * done // max(total, 1),
                    done,
                    total,
                )

        try:
            if _accepts_progress(trainer):
                trained = trainer(train.data, params, progress=progress)
            else:
                trained = trainer(train.data, params)
        except Exception as exc:
            raise TrainerError(f"trainer {name!r} failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(trained, TrainedModel):
            raise TrainerError(f"trainer {name!r} returned {type(trained).__name__}, not a TrainedModel")
        return trained

    def _champion(self, model_id: str) -> ModelVersion | None:
        try:
            return self.registry.alias(model_id, CHAMPION)
        except ModelNotFoundError:
            return None

    def _existing_version(self, request: RetrainRequest) -> str | None:
        # without a champion, the version the request is about is the closest ancestor
        try:
            return self.registry.get(request.model_id, request.model_version).version
        except RegistryError:
            return None

    def _champion_scores(self, champion: ModelVersion, holdout: Snapshot, allow: Allowlist) -> ChampionScores:
        if champion.artifact_sha256 is not None:
            try:
                model = load_model(self.registry.load_artifact(champion.model_id, champion.version), allow)
                return ChampionScores(champion.version, score(model, holdout.data), "artifact")
            except Exception as exc:  # e.g. a model that river cannot score: fall back to what it logged
                note = f"its artifact could not be scored ({type(exc).__name__}: {exc})"
                log.warning(
                    "champion %s v%s: %s; using its logged predictions", champion.model_id, champion.version, note
                )
                return ChampionScores(
                    champion.version, holdout.logged_scores(champion.version), "logged predictions", note
                )
        return ChampionScores(
            champion.version, holdout.logged_scores(champion.version), "logged predictions", "it has no artifact"
        )

    def _last_promotion_ms(self, model_id: str) -> int | None:
        try:
            entries = self.registry.audit_log(model_id)
        except ModelNotFoundError:
            return None
        moves = [e.occurred_at for e in entries if e.action in ("promote", "rollback")]
        return moves[-1] if moves else None

    # -- register, then finish ----------------------------------------------------
    def _register(self, request: RetrainRequest, policy: ModelPolicy, c: _Candidate) -> ModelVersion:
        ev = c.evaluation
        self._progress(request, "registering", 0, 1, f"registering {request.model_id} with parent {c.parent or '-'}")
        lineage = Lineage(
            dataset_uri=c.snapshot.uri,
            dataset_sha256=c.snapshot.sha256,
            dataset_rows=c.snapshot.rows,
            dataset_start_ms=c.snapshot.start_ms,
            dataset_end_ms=c.snapshot.end_ms,
            trainer=c.trainer,
            hyperparameters=dict(c.trained.params),
            train_metrics=ev.train,
            holdout_metrics=ev.holdout,
            parent_version=c.parent,
            request_id=request.request_id,
            evidence=list(request.evidence),
        )
        tags = {
            DECISION_TAG: PROMOTE if ev.decision.promote else KEEP,
            "task": ev.task,
            "train_rows": str(c.data.n - ev.holdout_rows),
            "holdout_rows": str(ev.holdout_rows),
            "snapshot_range": f"{_iso(c.snapshot.range_start_ms)}/{_iso(c.snapshot.range_end_ms)}",
        }
        if ev.champion is not None:
            tags["champion_scored_by"] = ev.champion.source
        if c.data.dropped_features:  # what the snapshot left out so that one odd event could not fail it
            tags["dropped_features"] = "; ".join(map(str, c.data.dropped_features))
        profile = policy.monitoring.reference.profile_builder(
            request.model_id, c.data.data.numeric, c.data.data.categorical, c.scores, c.calibrator
        )

        version = self.registry.register(
            request.model_id,
            lineage=lineage,
            reference_profile=profile,
            artifact_bytes=c.trained.artifact(),
            tags=tags,
            note=ev.summary(),
            actor=ACTOR,
            reason=f"retrain request {request.request_id} ({request.reason})",
        )
        self._progress(request, "registering", 1, 1, f"registered {request.model_id} version {version.version}")
        return version

    def _finish(self, request: RetrainRequest, version: ModelVersion) -> Outcome:
        """Apply the registered decision, publish, record the status and mirror; idempotent, so an
        interrupted request can be finished again."""
        try:
            version, promoted = self._apply_decision(request, version)
            events = [
                version.registered_event(alias=None if promoted or CHALLENGER not in version.aliases else CHALLENGER)
            ]
            if promoted:
                events.append(version.event("promoted", occurred_at=_now_ms(), alias=CHAMPION))
            try:
                publish_model_events(
                    self.producer, self.settings, events, codec=self.codec, timeout=self.flush_timeout_seconds
                )
            except AnnounceError as exc:
                raise RetryLater(str(exc)) from exc
            self._record(request, "registered", registered_version=version.version)
            mirror_versions(self.registry, self.warehouse, request.model_id)
        except RetryLater:
            raise
        except Exception as exc:
            raise RetryLater(
                f"request {request.request_id}: version {version.version} is registered but its "
                f"outcome could not be recorded: {exc}"
            ) from exc
        reason = version.note or ""
        self._progress(
            request,
            "done",
            1,
            1,
            f"{request.model_id} version {version.version} "
            + ("promoted to champion" if promoted else "kept as challenger"),
        )
        outcome = Outcome(
            request.request_id,
            request.model_id,
            "registered",
            version.version,
            promoted,
            reason,
            dict(version.lineage.holdout_metrics),
        )
        log.info("%s", outcome.line())
        return outcome

    def _apply_decision(self, request: RetrainRequest, version: ModelVersion) -> tuple[ModelVersion, bool]:
        decision = version.tags.get(DECISION_TAG, KEEP)
        if version.status != "registered":  # applied before an interruption, or changed by a person since
            return version, decision == PROMOTE and version.status == "champion"
        why = version.note or ""
        if decision == PROMOTE:
            champion = self._champion(request.model_id)
            if champion is None or champion.version == version.lineage.parent_version:
                self.registry.promote(request.model_id, version.version, actor=ACTOR, reason=why)
                return self.registry.get(request.model_id, version.version), True
            why = (
                f"decided to promote, but the champion moved to version {champion.version} since; "
                f"kept as challenger ({why})"
            )
        self.registry.set_alias(request.model_id, CHALLENGER, version.version, actor=ACTOR, reason=why)
        return self.registry.get(request.model_id, version.version), False

    def _reject(self, request: RetrainRequest, reason: str) -> Outcome:
        log.warning("request %s (%s) rejected: %s", request.request_id, request.model_id, reason)
        self._record(request, "rejected", error=reason)
        return Outcome(request.request_id, request.model_id, "rejected", reason=reason)

    # -- adapters ---------------------------------------------------------------
    def _stamp(self) -> int:
        # strictly increasing, so that the latest of two statuses written in one millisecond wins (FINAL)
        self._last_stamp = max(_now_ms(), self._last_stamp + 1)
        return self._last_stamp

    def _record(
        self, request: RetrainRequest, status: str, *, error: str | None = None, registered_version: str | None = None
    ) -> None:
        try:
            self.warehouse.upsert_retrain_request(
                request, status, error, registered_version=registered_version, updated_at=self._stamp()
            )
        except Exception as exc:
            raise RetryLater(f"cannot record request {request.request_id} as {status}: {exc}") from exc

    def _progress(self, request: RetrainRequest, stage: Stage, done: int, total: int, message: str) -> None:
        log.info("request %s: %s %d%%: %s", request.request_id, stage, 100 * done // max(total, 1), message)
        self._notify(Progress(request.request_id, request.model_id, stage, done, total, message))

    def _notify(self, progress: Progress) -> None:
        if self._progress_cb is None:
            return
        try:
            self._progress_cb(progress)
        except Exception:  # a broken live view must not fail the retrain
            log.exception("the progress callback failed")


# --------------------------------------------------------------------------- the consumer loop


@dataclass(frozen=True)
class RetrainerOptions:
    """How the service consumes: its group, and when it stops (by default never).

    ``once`` stops when every request on the topic at start-up is handled;
    ``idle_exit_seconds`` stops after that long without a message;
    ``max_requests`` stops after that many messages (duplicates and failures count).

    >>> RetrainerOptions(max_requests=1).group_id
    'driftline-retrainer'
    """

    group_id: str = "driftline-retrainer"
    once: bool = False
    max_requests: int | None = None
    idle_exit_seconds: float | None = None
    poll_seconds: float = 0.5
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0


@dataclass
class RunSummary:
    """What a run of the service did, and why it stopped.

    >>> s = RunSummary([Outcome("r1", "m", "registered", "2"), Outcome("r1", "m", "duplicate")], undecodable=1)
    >>> s.handled, s.counts()
    (3, {'registered': 1, 'duplicate': 1, 'undecodable': 1})
    >>> s.counts_line(), RunSummary().counts_line()
    ('1 duplicate, 1 registered, 1 undecodable', 'no requests')
    """

    outcomes: list[Outcome] = field(default_factory=list)
    undecodable: int = 0
    retries: int = 0
    stopped_because: str = ""
    poison: int = 0  # messages whose handling raised: dead-lettered as internal_error

    @property
    def handled(self) -> int:
        return len(self.outcomes) + self.undecodable + self.poison

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        if self.undecodable:
            out["undecodable"] = self.undecodable
        if self.poison:
            out["internal_error"] = self.poison
        return out

    def counts_line(self) -> str:
        """The counts as one line for logs and the CLI (statuses in alphabetical order)."""
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items())) or "no requests"


class RetrainerService:
    """Consumes ``retrain-requests`` and hands each request to a :class:`Retrainer`.

    Offsets are committed one message at a time, after the outcome is
    recorded; an undecodable message goes to the DLQ and is committed.
    Usage: ``RetrainerService(settings, RetrainerOptions(once=True)).run()``
    (needs Kafka; see tests/integration/test_retrainer.py).
    """

    def __init__(
        self,
        settings: Settings,
        options: RetrainerOptions = RetrainerOptions(),
        *,
        retrainer: Retrainer | None = None,
        progress: ProgressCallback | None = None,
    ) -> None:
        self.settings = settings
        self.options = options
        self.retrainer = retrainer or Retrainer.from_settings(settings, progress=progress)
        self._owns_retrainer = retrainer is None
        self._stop = threading.Event()
        self._assigned: list[TopicPartition] = []
        self._assignment_changed = False
        self._next: dict[tuple[str, int], int] = {}
        self._end: dict[tuple[str, int], int] | None = None

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current request (safe from signal handlers and threads)."""
        self._stop.set()

    def run(self) -> RunSummary:
        topic = self.settings.topic("retrain-requests")
        kafka.ensure_topics(self.settings, ["retrain-requests", "models", "dlq"])
        consumer = kafka.consumer(
            self.settings, self.options.group_id, **{"enable.auto.commit": False, "enable.auto.offset.store": False}
        )
        summary = RunSummary()
        backoff = self.options.retry_initial_seconds
        last_activity = time.monotonic()
        consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("retrainer consuming %s as group %s", topic, self.options.group_id)
        try:
            while True:
                if self._stop.is_set():
                    summary.stopped_because = "stopped"
                    break
                if self.options.max_requests is not None and summary.handled >= self.options.max_requests:
                    summary.stopped_because = f"handled {summary.handled} request(s) (--max-requests)"
                    break
                if self.options.once and self._caught_up(consumer):
                    summary.stopped_because = "handled every request that was waiting (--once)"
                    break
                if self._assignment_changed:
                    self._assignment_changed = False
                    last_activity = time.monotonic()
                idle = self.options.idle_exit_seconds
                if idle is not None and time.monotonic() - last_activity >= idle:
                    summary.stopped_because = f"idle for {idle:g} s (--idle-exit)"
                    break
                msg = consumer.poll(self.options.poll_seconds)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    if err.fatal():
                        raise KafkaException(err)
                    log.warning("consumer error: %s", err)
                    continue
                last_activity = time.monotonic()
                try:
                    self._handle_message(msg, summary)
                except RetryLater as exc:
                    summary.retries += 1
                    log.error("%s; trying again in %.0f s", exc, backoff)
                    consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.options.retry_max_seconds)
                    continue
                backoff = self.options.retry_initial_seconds
                consumer.commit(message=msg, asynchronous=False)
                self._next[(msg.topic(), msg.partition())] = msg.offset() + 1
        finally:
            consumer.close()
            if self._owns_retrainer:
                self.retrainer.close()
        log.info("retrainer stopped: %s; %s", summary.stopped_because, summary.counts_line())
        return summary

    def _handle_message(self, msg: Message, summary: RunSummary) -> None:
        """Decode and handle one request. An undecodable message, or one whose handling raises
        anything but :class:`RetryLater` (an outage), goes to the DLQ (``internal_error`` with the
        exception's class and message) and is committed: the next request is not held up by it."""
        raw = msg.value() or b""
        try:
            request = self.retrainer.codec.decode(raw, topic="retrain-requests")
            summary.outcomes.append(self.retrainer.handle(request))
        except RetryLater:
            raise
        except (WarehouseError, KafkaException, ConnectionError, TimeoutError) as exc:
            # an outage, not the message's fault: the request is tried again
            raise RetryLater(f"handling {msg.topic()}[{msg.partition()}]@{msg.offset()} failed: {redact(exc)}") from exc
        except DecodeError as exc:
            log.error(
                "message %s[%d]@%d is not a RetrainRequest (%s); sent to the DLQ",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                exc,
            )
            self._dead_letter(msg, exc)
            summary.undecodable += 1
        except Exception as exc:
            kind, detail = error_detail(exc)
            log.error(
                "handling message %s[%d]@%d raised %s: %s; sent to the DLQ",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                kind,
                detail,
                exc_info=exc,
            )
            self._dead_letter(msg, DecodeError(INTERNAL_ERROR, f"{kind}: {detail}"), error_class=kind)
            summary.poison += 1

    def _dead_letter(self, msg: Message, error: DecodeError, error_class: str = "") -> None:
        failures: list[str] = []  # a failed delivery is reported here, not by flush()'s count

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(str(err))

        try:
            kafka.send_to_dlq(
                self.retrainer.producer,
                self.settings,
                msg.value() or b"",
                msg.key(),
                error,
                msg.topic(),
                on_delivery=delivered,
                error_class=error_class,
            )
            if self.retrainer.producer.flush(self.retrainer.flush_timeout_seconds):
                raise RetryLater("the DLQ message was not delivered in time")
            if failures:
                raise RetryLater(f"the DLQ message was not delivered: {'; '.join(failures)}")
        except KafkaException as kexc:
            raise RetryLater(f"cannot send a message to the DLQ: {kexc}") from kexc

    # -- assignment, for --once ------------------------------------------------------
    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned = list(partitions)
        self._assignment_changed = True
        self._end = None

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned = []
        self._end = None

    def _caught_up(self, consumer: Any) -> bool:
        """Whether every assigned partition is read up to where it ended when it was assigned."""
        if not self._assigned:
            return False
        if self._end is None:
            self._end = {}
            committed = consumer.committed(self._assigned, timeout=10)
            for tp in committed:
                low, high = consumer.get_watermark_offsets(tp, timeout=10)
                key = (tp.topic, tp.partition)
                self._end[key] = high
                self._next[key] = tp.offset if tp.offset >= 0 else low
        return all(self._next.get(key, 0) >= high for key, high in self._end.items())
