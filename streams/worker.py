"""The streams worker's service: decode, validate, monitor, write, and say what may be acknowledged.

Everything here is synchronous and independent of Kafka and Faust: the app
(``driftline.streams.app``) hands each batch of consumed messages to
:meth:`WorkerService.handle` on one dedicated thread, and acknowledges the
tokens it returns. The same object can be driven directly in tests.

Delivery and crash safety:

- a message is acknowledged (its offset may be committed) only when every
  window it contributed to has been written (``driftline.streams.core.ledger``), and
  only in offset order per partition. After a crash, Kafka delivers again
  everything from the oldest message of the oldest open window;
- before the first batch of a model version, the worker reads how far that
  version was already written (``latest_closed_window``); replayed rows of
  those windows are dropped, so a window is never written from part of its
  events. Windows sample with seeds derived from their key, so the rewrite of
  an open window is bit-identical;
- after a rebalance, everything in memory is dropped: the consumer starts
  every assigned partition again from its committed offset;
- the raw rows are inserted on a writer thread while the service goes on
  with the next messages; before :meth:`WorkerService.handle` (or ``tick``)
  releases anything, it waits for every insert submitted so far, so no
  message is acknowledged before its raw rows are in the warehouse either.
"""

from __future__ import annotations

import logging
import sys
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from driftline.retrainer.policy import ModelPolicy, Policy, load_policy
from driftline.retrainer.triggers import (
    TriggerInput,
    TriggerState,
    evaluate,
    evaluate_schedule,
    record_request,
)
from driftline.settings import Settings
from driftline.streams.codec import (
    BulkDecoded,
    Codec,
    DecodedGroup,
    DecodeError,
    decode_bulk,
    decode_labels,
    default_codec,
)
from driftline.streams.core.batches import concat_batches, in_arrival_order, take_rows
from driftline.streams.core.explain import root_cause_evidence
from driftline.streams.core.ledger import AckLedger, Hold
from driftline.streams.core.monitor import PREDICTIONS, Monitor, MonitorSettings
from driftline.streams.core.outcomes import NOT_IN_WINDOW, Arrival, PerformanceOutcome, WindowOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.reference_models import reference_estimates
from driftline.streams.core.validation import (
    MIN_EVENT_TIME_MS,
    UNKNOWN_MODEL,
    Rejection,
    check_batch,
    check_labels,
)
from driftline.streams.core.windows import Windowing
from driftline.streams.messages import Incoming, Messages, Offset
from driftline.streams.observability import WorkerMetrics
from driftline.streams.outbox import Outbox
from driftline.streams.records import FeatureBatch, LabelBatch, LabelColumns, LabelEvent, ModelEvent, PredictionBatch
from driftline.streams.references import ReferenceProvider
from driftline.streams.sinks import ClosedLabelWindow, ClosedWindow, Rejected, SinkError, Sinks
from driftline.streams.supervision import INTERNAL_ERROR, Supervisor, error_detail, isolate
from driftline.streams.warehouse.queries import WarehouseQueries

log = logging.getLogger("driftline.worker")

INPUT_TOPICS = ("predictions", "features", "labels")
LATE_EVENT = "late_event"  # the DLQ reason of a message with late rows (WorkerOptions.keep_late_events)
# How long raw rows and closed windows may gather while a backlog is read, when the insert
# threshold is not reached first (a backlog that stops short of it).
BACKLOG_GATHER_SECONDS = 0.5
# Poison messages remembered (a few hundred bytes each), so that a replay dead-letters them before
# anything changes; the oldest is forgotten first (long committed by then).
KNOWN_POISON = 10_000


@dataclass(frozen=True)
class WorkerOptions:
    """How the worker runs; the policy decides the rest, per model.

    ``window_seconds`` and ``lateness_seconds`` override the policy's for
    every model when set. ``idle_seconds`` is how long a model may be silent
    before its event clock follows the wall clock (None: never). A version
    without predictions for ``release_idle_seconds`` (None: never), its windows
    closed and written, releases its reference and score detectors; its next
    batch reads them back as a restart would (see ``Monitor.release_idle``).
    A poll takes at most ``batch_size`` messages and, after the first, about
    ``max_poll_bytes``. ``max_take_events`` bounds the events handled at once:
    a poll of messages of batches is handled in parts of about that many
    events, so its memory and the wait of the windows it closes stay bounded.
    ``index_max_entries`` bounds the predictions kept for the label join by all
    the worker's models together (the earliest added go first, whichever
    model's), at about 300 bytes each (200,000: about 60 MiB). ``keep_late_events`` also
    sends each message with late rows to the DLQ and ``rejected_events``, reason
    ``late_event`` (its other rows are accepted as usual). While a backlog is read, raw rows
    gather into inserts of ``raw_insert_rows``, or fewer once they hold about
    ``raw_insert_bytes`` (up to three inserts' rows and Arrow tables are alive at once). Events
    before ``min_event_time_ms`` (epoch ms; default 2000-01-01) or more than
    ``max_future_seconds`` ahead go to the DLQ.

    >>> WorkerOptions(window_seconds=5).window_seconds, WorkerOptions().idle_seconds
    (5, 30.0)
    """

    app_id: str = "driftline-worker"
    window_seconds: float | None = None
    lateness_seconds: float | None = None
    idle_seconds: float | None = 30.0
    release_idle_seconds: float | None = None
    tick_seconds: float = 1.0
    batch_size: int = 1000
    batch_within_seconds: float = 0.5
    max_poll_bytes: int = 16 * 1024 * 1024
    max_take_events: int = 50_000
    max_future_seconds: float = 3600.0
    min_event_time_ms: int = MIN_EVENT_TIME_MS
    baseline: str = "version"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    datadir: str | None = None
    partitions: int = 1
    session_timeout_seconds: float = 30.0
    index_ttl_hours: float = 24.0
    index_max_entries: int = 200_000
    write_raw: bool = True
    raw_insert_rows: int = 100_000
    raw_insert_bytes: int = 16 * 1024 * 1024
    task: str | None = None
    keep_late_events: bool = False


@dataclass
class _Group:
    """The batches of one model version in one take, and for each row the index of its message."""

    batches: list[PredictionBatch] = field(default_factory=list)
    owners: list[np.ndarray] = field(default_factory=list)

    def add(self, batch: PredictionBatch, owners: np.ndarray) -> None:
        # a batch comes from one message; a batch of single events has one message per row
        self.batches.append(batch)
        self.owners.append(owners)


@dataclass
class _Part:
    """Decoded messages of one part of a poll: single events in columns, every other message alone.

    ``groups`` and ``others`` index ``messages`` (see :class:`driftline.streams.codec.BulkDecoded`).
    """

    messages: Messages
    groups: list[DecodedGroup]
    others: list[tuple[int, Any]]

    def __len__(self) -> int:
        return len(self.messages)

    def slice(self, lo: int, hi: int) -> _Part:
        """Its messages ``[lo, hi)``, with their single events and other records (indices from ``lo``)."""
        groups = []
        for g in self.groups:
            a, b = (int(x) for x in np.searchsorted(g.messages, [lo, hi]))
            if a < b:
                batch = g.batch if b - a == g.batch.n else take_rows(g.batch, np.arange(a, b))
                groups.append(DecodedGroup(batch, g.has_predictions, g.messages[a:b] - lo))
        others = [(i - lo, record) for i, record in self.others if lo <= i < hi]
        return _Part(self.messages.slice(lo, hi), groups, others)


@dataclass
class _Prepared:
    """What a part of a poll comes to before anything is changed: refused messages, and the
    accepted events by (model, version, has predictions), each row with the index of its message."""

    rejected: list[Rejected] = field(default_factory=list)
    groups: dict[tuple[str, str, bool], _Group] = field(default_factory=dict)
    # the reference of each (model, version) looked up, None for an unknown one: one lookup a part
    references: dict[tuple[str, str], ReferenceProfile | None] = field(default_factory=dict)

    def shifted(self, offset: int) -> _Prepared:
        if offset:
            for group in self.groups.values():
                group.owners = [owners + offset for owners in group.owners]
        return self

    @staticmethod
    def merge(parts: list[_Prepared]) -> _Prepared:
        """Parts prepared apart, as if prepared together (in message order)."""
        out = _Prepared()
        for part in parts:
            out.rejected.extend(part.rejected)
            out.references.update(part.references)
            for key, group in part.groups.items():
                into = out.groups.setdefault(key, _Group())
                into.batches.extend(group.batches)
                into.owners.extend(group.owners)
        return out


# Failures that are not a message's fault: the warehouse, the broker or the registry. They stop the
# batch (nothing of it is acknowledged) rather than dead-letter messages that did nothing wrong.
def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    from confluent_kafka import KafkaException

    from driftline.streams.warehouse import WarehouseError

    return (
        SinkError,
        WarehouseError,
        KafkaException,
        ConnectionError,
        TimeoutError,
        sqlite3.OperationalError,
        MemoryError,
    )


_INFRASTRUCTURE_ERRORS = _infrastructure_errors()


def infrastructure_errors() -> tuple[type[BaseException], ...]:
    """The failures that stop a batch, as of now: with a PostgreSQL registry, psycopg's too.

    psycopg (9 MiB) is imported by the PostgreSQL registry when it connects, and only then
    can its errors be raised, so a worker on a SQLite registry never loads it.

    >>> import sqlite3
    >>> sqlite3.OperationalError in infrastructure_errors()
    True
    """
    psycopg = sys.modules.get("psycopg")
    operational = getattr(psycopg, "OperationalError", None)
    return _INFRASTRUCTURE_ERRORS if operational is None else (*_INFRASTRUCTURE_ERRORS, operational)


class Replay(RuntimeError):
    """Handling a message raised after the service's state had changed: the state is dropped, and
    Kafka must deliver everything not acknowledged again (``WorkerService.on_replay``).

    >>> str(Replay("ZeroDivisionError: division by zero"))
    'ZeroDivisionError: division by zero'
    """


def _offset_token(partition: tuple[str, int], offset: int) -> Offset:
    """The acknowledgement token of a ledger run's last message (partition: ``(full topic, number)``)."""
    return Offset(partition[0], partition[1], offset)


def _partition_codes(messages: Messages) -> tuple[list[tuple[str, int]], np.ndarray]:
    """The partitions ``(full topic, partition)`` of a poll's messages, and per message the index of
    its partition among them.

    >>> ms = Messages("p", "t.p", np.array([1, 0, 1]), np.array([5, 9, 6]), [None] * 3, [b""] * 3)
    >>> parts, codes = _partition_codes(ms)
    >>> parts, codes.tolist()
    ([('t.p', 0), ('t.p', 1)], [1, 0, 1])
    """
    numbers = messages.partitions
    if numbers.size == 0:
        return [], numbers
    if numbers.min() == numbers.max():  # one partition, the usual poll
        return [(messages.full_topic, int(numbers[0]))], np.zeros(numbers.size, dtype=np.int64)
    distinct, codes = np.unique(numbers, return_inverse=True)
    return [(messages.full_topic, p) for p in distinct.tolist()], codes.reshape(-1)


@dataclass(frozen=True)
class _Poison:
    """A message whose decoding raised something other than a DecodeError."""

    error: Exception


def _hold_runs(
    messages: Messages,
    window: np.ndarray,
    window_holds: Sequence[tuple[Hold, ...]],
    alone: dict[int, tuple[Hold, ...]],
) -> Iterator[tuple[tuple[str, int], int, int, tuple[Hold, ...], int]]:
    """The messages as ledger runs: per partition, the longest stretches of messages (in offset order)
    that wait for the same holds, as ``(partition, first offset, last offset, holds, count)``.

    Message ``i`` waits for ``alone[i]`` if given, else for ``window_holds[window[i]]`` (-1: nothing).
    The messages must be fresh (``_fresh``): offsets increase per partition in message order.

    >>> ms = Messages("p", "t.p", np.zeros(4, dtype=np.int64), np.arange(4, 8), [None] * 4, [b""] * 4)
    >>> h, g = Hold("predictions", "m", "1", 60_000), Hold("labels", "m", "1", 60_000)
    >>> for run in _hold_runs(ms, np.array([0, 0, -1, 0]), [(h,)], {1: (h, g)}):
    ...     print(run[:3], [x.stream for x in run[3]], run[4])
    (('t.p', 0), 4, 4) ['predictions'] 1
    (('t.p', 0), 5, 5) ['predictions', 'labels'] 1
    (('t.p', 0), 6, 6) [] 1
    (('t.p', 0), 7, 7) ['predictions'] 1
    """
    n = len(messages)
    if n == 0:
        return
    offsets = messages.offsets
    partitions, positions = _partition_codes(messages)
    combos: list[tuple[Hold, ...]] = [(), *window_holds]
    combo = window + 1
    for i, holds in alone.items():
        combo[i] = len(combos)
        combos.append(holds)
    order = np.argsort(positions, kind="stable") if len(partitions) > 1 else np.arange(n)
    part, held = positions[order], combo[order]
    cuts = np.flatnonzero((part[1:] != part[:-1]) | (held[1:] != held[:-1])) + 1
    starts, ends = [0, *cuts.tolist()], [*cuts.tolist(), n]
    for start, end in zip(starts, ends):
        first, last = int(order[start]), int(order[end - 1])
        yield (
            partitions[int(part[start])],
            int(offsets[first]),
            int(offsets[last]),
            combos[int(held[start])],
            end - start,
        )


def part_bounds(events: np.ndarray, max_events: int) -> list[tuple[int, int]]:
    """Message ranges ``[lo, hi)`` of about ``max_events`` events each: a part ends at the message that
    reaches the bound, and holds at least one message.

    >>> part_bounds(np.array([100, 100, 100, 100, 1]), 250)
    [(0, 3), (3, 5)]
    >>> part_bounds(np.array([1000, 1]), 250)
    [(0, 1), (1, 2)]
    """
    total = np.cumsum(events)
    bounds: list[tuple[int, int]] = []
    lo, base = 0, 0
    while lo < events.size:
        hi = min(max(int(np.searchsorted(total, base + max_events, side="left")) + 1, lo + 1), events.size)
        bounds.append((lo, hi))
        base, lo = int(total[hi - 1]), hi
    return bounds


@dataclass
class _RecoveryReads:
    """The warehouse's answers for the recoveries of one poll, read together (see WorkerService._recovery_reads)."""

    waiting: dict[str, list[LabelEvent]] = field(default_factory=dict)
    through: dict[tuple[str, str], int | None] = field(default_factory=dict)
    label_through: dict[tuple[str, str], int | None] = field(default_factory=dict)


class WorkerService:
    """Wires the monitor to Kafka records and to the sinks; holds no statistics of its own.

    Its adapters (warehouse, Kafka producer, registry) are real services, so it
    is exercised by tests/integration/test_worker*.py rather than by an example here.
    """

    def __init__(
        self,
        settings: Settings,
        options: WorkerOptions,
        *,
        references: ReferenceProvider,
        sinks: Sinks,
        policy: Policy | None = None,
        metrics: WorkerMetrics | None = None,
        codec: Codec | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.options = options
        self.references = references
        self.sinks = sinks
        self.queries = WarehouseQueries(sinks.warehouse, retry=sinks.retry)  # reads wait out outages as writes do
        self.policy = policy or load_policy(settings.policy)
        # each model's policy, looked up once: Policy.for_model builds a new record per call for a model
        # without a section of its own, and a poll, a tick and a window close ask for hundreds of models
        self._model_policies: tuple[Policy, dict[str, ModelPolicy]] = (self.policy, {})
        self.metrics = metrics or WorkerMetrics()
        self.codec = codec or default_codec()
        self.clock = clock
        self.monitor = self._new_monitor()
        self.ledger: AckLedger[Offset] = AckLedger(_offset_token)
        self._last_offset: dict[tuple[str, int], int] = {}
        self._triggers: dict[tuple[str, str], TriggerState] = {}
        self._released: set[tuple[str, str]] = set()  # versions released while idle (see _release_idle)
        self.max_future_ms = int(options.max_future_seconds * 1000)
        # Raw rows and closed windows are written on their own thread, overlapped with decoding and
        # monitoring; a message is acknowledged once the write that covers it has landed.
        self._backlog = False  # the last poll came back full
        self.outbox = Outbox(
            self.sinks.write_predictions,
            self._write_windows,
            raw_insert_rows=options.raw_insert_rows,
            write_labels=self.sinks.write_labels,
            raw_insert_bytes=options.raw_insert_bytes,
        )
        sinks.on_retry = lambda sink: self.metrics.errors.labels(sink=sink).inc()
        # messages of a part whose handling raised, applied one by one when delivered again; and those
        # that raised alone (see _apply): kept across the reset that follows, by (topic, partition, offset)
        self._suspects: set[tuple[str, int, int]] = set()
        self._known_poison: dict[tuple[str, int, int], Exception] = {}
        self._unacked = 0  # messages waiting for their writes, as of the last batch (for health)
        self._outages_counted = 0
        self.on_replay: Callable[[], None] | None = (
            None  # the app's: the consumer delivers again (BatchConsumer.replay)
        )
        # background threads, shown with their state in /metrics and /health (see streams.supervision)
        self.supervisor = Supervisor(on_restart=lambda name: self.metrics.thread_restarts.labels(thread=name).inc())
        for writer in (self.outbox.raw_writer, self.outbox.window_writer):
            self.supervisor.watch(writer.name, partial(self._writer_state, writer))
        webhook = getattr(sinks, "webhook", None)
        if webhook is not None and hasattr(webhook, "_thread"):
            self.supervisor.watch("driftline-webhook", lambda: "running" if webhook._thread.is_alive() else None)

    def _new_monitor(self) -> Monitor:
        o = self.options
        return Monitor(
            self.monitor_settings,
            idle_ms=None if o.idle_seconds is None else int(o.idle_seconds * 1000),
            index_ttl_ms=int(o.index_ttl_hours * 3_600_000),
            index_max_entries=o.index_max_entries,
        )

    def model_policy(self, model_id: str) -> ModelPolicy:
        """``self.policy.for_model(model_id)``, kept per model until ``self.policy`` is replaced.

        >>> from driftline.streams.references import StaticReferences
        >>> sinks = Sinks(Settings(), warehouse=None, producer=None)  # nothing is written here
        >>> service = WorkerService(Settings(), WorkerOptions(), references=StaticReferences({}), sinks=sinks)
        >>> first = service.model_policy("credit")
        >>> first is service.model_policy("credit"), first == service.policy.for_model("credit")
        (True, True)
        """
        policy, by_model = self._model_policies
        if policy is not self.policy:
            policy, by_model = self._model_policies = (self.policy, {})
        found = by_model.get(model_id)
        if found is None:
            found = by_model[model_id] = policy.for_model(model_id)
        return found

    def monitor_settings(self, model_id: str) -> MonitorSettings:
        return monitor_settings(self.policy, self.options, model_id)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _writer_state(self, writer: Any) -> str:
        if writer.submitted > writer.completed and not self.sinks.outage.up:
            return "waiting for the warehouse"
        return "running" if writer.alive else "idle"

    def health(self) -> dict[str, Any]:
        """What operators see at ``/health`` (and the gauges of ``/metrics``, refreshed here): the
        warehouse's state, every background thread's, and the messages waiting; any thread may call it.

        >>> from driftline.streams.references import StaticReferences
        >>> sinks = Sinks(Settings(), warehouse=None, producer=None)  # nothing is written here
        >>> service = WorkerService(Settings(), WorkerOptions(), references=StaticReferences({}), sinks=sinks)
        >>> report = service.health()
        >>> report["warehouse"]["up"], sorted(report["threads"])
        (True, ['driftline-raw-writes', 'driftline-window-writes'])
        >>> report["threads"]["driftline-raw-writes"]
        {'state': 'idle', 'restarts': 0, 'last_error': ''}
        """
        outage = self.sinks.outage
        down = outage.down_seconds()
        self.metrics.warehouse_up.set(1 if outage.up else 0)
        self.metrics.warehouse_outage_seconds.set(down)
        # (plain counts, not the registry's samples: /metrics is scraped often and collecting costs)
        if outage.outages > self._outages_counted:
            self.metrics.warehouse_outages.inc(outage.outages - self._outages_counted)
            self._outages_counted = outage.outages
        threads = self.supervisor.health()
        for name, state in threads.items():
            self.metrics.thread_up.labels(thread=name).set(1 if state["state"] in ("running", "idle") else 0)
        return {
            "warehouse": {
                "up": outage.up,
                "outage_seconds": round(down, 1),
                "outages": outage.outages,
                "last_error": outage.last_error,
            },
            "threads": threads,
            "unacked_messages": self._unacked,
        }

    def poisoned(self, m: Incoming, exc: Exception) -> None:
        """Dead-letter one message read outside the input topics (the ``models`` follower) whose handling raised."""
        rejected = self._poisoned(m, exc, self.now_ms())
        self._reject([rejected], batch_token(Messages.of(m.topic, [m], m.full_topic)))

    # -- entry points ------------------------------------------------------------------

    def handle(self, topic: str, messages: Messages | Sequence[Incoming], backlog: bool = False) -> list[Offset]:
        """Process one poll's messages of one input topic; return the offsets that may be acknowledged.

        ``messages``: the poll's columns (``BatchConsumer.poll``), or messages one by one (tests,
        benchmarks: a message without a full topic name is this deployment's).
        ``backlog``: more messages are waiting (the poll came back full), so raw rows may gather
        into a bigger insert; otherwise they are written now.
        """
        started = time.perf_counter()
        if not isinstance(messages, Messages):
            messages = Messages.of(topic, messages, self.settings.topic(topic))
        fresh = self._fresh(messages)
        self.metrics.messages.labels(topic=topic).inc(len(messages))
        if topic == "labels":
            parts: Iterable[Any] = [(self._handle_labels, fresh, fresh.slice)]
        elif topic in ("predictions", "features"):
            parts = (
                (lambda part: self._handle_inputs(topic, part), part, part.slice) for part in self._parts(topic, fresh)
            )
        else:
            raise ValueError(f"the worker does not consume topic {topic!r}")
        for handle_part, part, cut in parts:
            read = self._apply(handle_part, part, cut)
            done = self.now_ms()
            for model_id, source in read:
                self.monitor.touch(model_id, source, done, labels=topic == "labels")
            self._close(done)
        self._backlog = backlog
        released = self._release(flush=not backlog)
        self.metrics.batch_seconds.labels(topic=topic).observe(time.perf_counter() - started)
        return released

    def tick(self, reading: bool = True) -> list[Any]:
        """Close windows that the clock (idle models) has passed, and ask for scheduled retrains;
        return the tokens that may be acknowledged.

        ``reading`` is False while the consumer is paused (the warehouse is down, the service is
        stuck) or cannot reach the broker: a model is idle when its stream is quiet, not when nothing
        is read, so neither lets the wall clock close a window whose events wait unread in Kafka.
        """
        now = self.now_ms()
        if not reading:
            self.monitor.hold_clocks(now)
        self._close(now)
        self._release_idle(now)
        self._scheduled(now)
        # Out of a backlog, raw rows and windows wait at most a tick to be written, so queries see
        # them soon; in one, they gather into big inserts for up to BACKLOG_GATHER_SECONDS.
        return self._release(flush=not self._backlog or self.outbox.waited() >= BACKLOG_GATHER_SECONDS)

    def _release_idle(self, now: int) -> None:
        """Let versions silent for ``release_idle_seconds`` release their state, once every window is written."""
        after = self.options.release_idle_seconds
        writer = self.outbox.window_writer
        if after is None or self.outbox.waited() > 0 or writer.completed < writer.submitted:
            return  # a closed window not yet written: its detector state is not in the warehouse yet
        for model_id, version in self.monitor.release_idle(now, int(after * 1000)):
            self._released.add((model_id, version))
            self.references.release(model_id, version)
            log.info(
                "%s v%s: idle for %g s, its state is released until its next event",
                model_id,
                version,
                after,
                extra={"model_id": model_id, "version": version, "released": True},
            )

    def drain(self) -> list[Any]:
        """Write everything gathered and wait for it; return every token that may now be
        acknowledged (before the worker stops, and in tests)."""
        return self._release(flush=True) + self.outbox.drain()

    def connect(self) -> None:
        """Open the warehouse sessions of this thread and of the outbox's writers before the first batch.

        Each thread has a session of its own, and opening one asks the server for its settings: a
        round trip that the first batch and the first writes would otherwise wait for. A failure
        here is only logged: the sessions are opened again on first use, with the sinks' retries.
        """

        def open_session() -> None:
            try:
                _ = self.sinks.warehouse.client  # the property opens this thread's session
            except Exception as exc:
                log.warning("could not open a warehouse session ahead of the first batch: %s", exc)

        open_session()
        self.outbox.raw_writer.submit(open_session)
        self.outbox.window_writer.submit(open_session)

    def _raw(self, batches: list[PredictionBatch], token: str) -> None:
        # Raw rows gather into inserts of about ``raw_insert_rows``: ClickHouse takes one insert
        # of 100,000 rows far faster than a hundred of 1,000 (a part per insert, then merges).
        self.outbox.add_raw(batches, token)

    def _release(self, flush: bool) -> list[Any]:
        # A message done with its windows waits in the outbox for the writes that cover its raw rows
        # and windows. While a backlog is read, they gather into fewer, bigger inserts.
        self.outbox.release(self.ledger.release(self.monitor.is_done))
        if flush:
            self.outbox.flush()
        written = self.outbox.written()
        self._gauges()  # after the written tokens have left the outbox: they are no longer unacknowledged
        return written

    def _write_windows(self, closed_windows: list[ClosedWindow | ClosedLabelWindow]) -> None:
        """Closed prediction and label windows, on the outbox's window thread: a round trip per table,
        not per window."""
        started = time.perf_counter()
        windows = [w for w in closed_windows if isinstance(w, ClosedWindow)]
        label_windows = [w for w in closed_windows if isinstance(w, ClosedLabelWindow)]
        reports = self.sinks.write_windows(windows)
        self.sinks.write_label_windows(label_windows)
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        for labelled in label_windows:
            done = labelled.outcome
            self.metrics.windows.labels(kind="performance").inc()
            log.info(
                "label window %s v%s [%d, %d) written: %d labelled",
                done.model_id,
                done.model_version,
                done.window_start,
                done.window_end,
                done.n_labeled,
                extra={
                    "model_id": done.model_id,
                    "version": done.model_version,
                    "window_start": done.window_start,
                    "n_labeled": done.n_labeled,
                },
            )
        for closed, report in zip(windows, reports):
            outcome = closed.outcome
            self.metrics.windows.labels(kind="drift").inc()
            log.info(
                "window %s v%s [%d, %d) written: %d events, drifted: %s",
                outcome.model_id,
                outcome.model_version,
                outcome.window_start,
                outcome.window_end,
                outcome.n_current,
                ", ".join(report.drifted_features) or "none",
                extra={
                    "model_id": outcome.model_id,
                    "version": outcome.model_version,
                    "window_start": outcome.window_start,
                    "window_end": outcome.window_end,
                    "n_current": outcome.n_current,
                    "drifted_features": report.drifted_features,
                },
            )

    def reset(self, why: str = "a rebalance") -> int:
        """Forget all state (after a rebalance, Kafka redelivers from the committed offsets).

        Returns how many unacknowledged messages were dropped.
        """
        # their messages are not acknowledged: Kafka delivers them again, and they are written then
        dropped = self.ledger.clear() + self.outbox.clear()
        self.monitor = self._new_monitor()
        self._last_offset.clear()
        self._triggers.clear()
        self._released.clear()
        if why == "a rebalance":
            self.metrics.rebalances.inc()
        self._gauges()
        log.info(
            "state dropped for %s: %d unacknowledged messages will be redelivered",
            why,
            dropped,
            extra={"unacked": dropped},
        )
        return dropped

    # -- a message whose handling raises after state changed --------------------------------
    #
    # Preparing a part (decoding, validation, grouping) changes nothing, so a message whose preparation
    # raises is isolated by bisection in place (_handle_inputs). Applying it (the monitor, the ledger,
    # the writes) changes state, which a failure may leave half changed. Then everything in memory is
    # dropped and Kafka delivers again from the last acknowledged message (Replay), as after a rebalance;
    # the messages of the failed part are "suspects" and are applied one at a time; a suspect that fails
    # alone is poison, and the next delivery dead-letters it in its preparation (internal_error), before
    # anything changes. Two deliveries again find a poison message, and the others are processed as if
    # it had never been there.

    def _apply(
        self, handle_part: Callable[[Any], set[tuple[str, Any]]], part: Any, cut: Callable[[int, int], Any]
    ) -> set[tuple[str, Any]]:
        messages: Messages = part.messages if isinstance(part, _Part) else part
        suspect = [messages.position(i) in self._suspects for i in range(len(messages))] if self._suspects else []
        if not any(suspect):
            return self._apply_once(handle_part, part, messages, alone=False)
        read: set[tuple[str, Any]] = set()
        lo = 0
        while lo < len(messages):
            hi = lo + 1
            if not suspect[lo]:
                while hi < len(messages) and not suspect[hi]:
                    hi += 1
            read |= self._apply_once(handle_part, cut(lo, hi), messages.slice(lo, hi), alone=suspect[lo])
            lo = hi
        return read

    def _apply_once(
        self, handle_part: Callable[[Any], set[tuple[str, Any]]], part: Any, messages: Messages, alone: bool
    ) -> set[tuple[str, Any]]:
        try:
            read = handle_part(part)
        except infrastructure_errors():
            raise
        except Exception as exc:
            kind, detail = error_detail(exc)
            if alone:
                # kept until forgotten as the oldest of KNOWN_POISON: it comes again with every replay
                # until the offsets after it are committed, which the service does not see
                self._known_poison[messages.position(0)] = exc
                while len(self._known_poison) > KNOWN_POISON:
                    del self._known_poison[next(iter(self._known_poison))]
            else:
                self._suspects.update(messages.position(i) for i in range(len(messages)))
            first = messages[0]
            log.error(
                "handling %s[%d]@%d..%d raised %s: %s; %s",
                first.topic,
                first.partition,
                first.offset,
                int(messages.offsets[-1]),
                kind,
                detail,
                "the message is poison and is dead-lettered when it comes again"
                if alone
                else "its messages are delivered again and handled one by one to find the one at fault",
                exc_info=exc,
                extra={"topic": first.topic, "partition": first.partition, "error_class": kind},
            )
            self.metrics.replays.inc()
            self.reset("a message whose handling raised")
            if self.on_replay is not None:
                self.on_replay()
            raise Replay(f"{kind}: {detail}") from exc
        if self._suspects:
            self._suspects.difference_update(messages.position(i) for i in range(len(messages)))
        return read

    def _poison_of(self, messages: Messages, i: int) -> Exception | None:
        """The exception message ``i`` raised when it was applied alone before (it is poison), if any."""
        return self._known_poison.get(messages.position(i)) if self._known_poison else None

    def on_model_event(self, event: ModelEvent) -> None:
        """A registry change: the next windows of that model use the new baseline."""
        self.references.on_model_event(event)

    # -- inputs --------------------------------------------------------------------------

    def _fresh(self, messages: Messages) -> Messages:
        """The messages after the last offset seen of their partition (no rebalance in between): one
        at or below it would count twice."""
        if not len(messages):
            return messages
        partitions, codes = _partition_codes(messages)
        offsets = messages.offsets
        keep = np.ones(len(messages), dtype=bool)
        for code, key in enumerate(partitions):
            rows = np.flatnonzero(codes == code) if len(partitions) > 1 else np.arange(len(messages))
            seen = offsets[rows]
            # each message against the highest offset before it: the last one seen, then the poll's own
            before = np.maximum.accumulate(np.concatenate(([self._last_offset.get(key, -1)], seen)))[:-1]
            stale = seen <= before
            if stale.any():
                keep[rows[stale]] = False
                for offset in seen[stale].tolist():
                    log.warning("skipping %s[%d]@%d, already processed", key[0], key[1], offset)
            self._last_offset[key] = int(before[-1]) if seen[-1] <= before[-1] else int(seen[-1])
        return messages if keep.all() else messages.take(np.flatnonzero(keep))

    def _parts(self, topic: str, messages: Messages) -> Iterator[_Part]:
        """The messages decoded, in parts of at most about ``max_take_events`` events (at least one message).

        Single events are decoded together, straight into columns (``decode_bulk``); batches and
        anything else one by one.
        """
        if not messages:
            return
        decoded = self._decode(topic, messages)
        events = np.ones(len(messages), dtype=np.int64)
        for i, record in decoded.others:
            if isinstance(record, (PredictionBatch, FeatureBatch)):
                events[i] = record.n
        whole = _Part(messages, decoded.groups, decoded.others)
        for lo, hi in part_bounds(events, self.options.max_take_events):
            yield whole.slice(lo, hi)

    def _decode(self, topic: str, messages: Messages) -> BulkDecoded:
        """``decode_bulk`` of the messages; a message whose decoding raises anything but a
        DecodeError stands alone as a :class:`_Poison` among the others."""

        def attempt(lo: int, hi: int) -> BulkDecoded:
            decoded = decode_bulk(self.codec, messages.values[lo:hi], topic=topic)
            return BulkDecoded(
                [DecodedGroup(g.batch, g.has_predictions, g.messages + lo) for g in decoded.groups],
                [(i + lo, record) for i, record in decoded.others],
            )

        def merge(parts: list[BulkDecoded]) -> BulkDecoded:
            return BulkDecoded([g for p in parts for g in p.groups], [o for p in parts for o in p.others])

        return isolate(
            len(messages),
            attempt,
            lambda i, exc: BulkDecoded([], [(i, _Poison(exc))]),
            merge,
            passes=infrastructure_errors(),
        )

    def _rejected(self, m: Incoming, reason: str, detail: str, now: int, model_id: str = "") -> Rejected:
        # counted and logged by _reject, once the part is settled: a part may be prepared more than once
        return Rejected(m.full_topic, m.partition, m.offset, m.key, m.value, reason, detail, now, model_id)

    def _poisoned(self, m: Incoming, exc: BaseException, now: int) -> Rejected:
        """A message whose handling raised: dead-lettered as ``internal_error`` with the exception."""
        kind, detail = error_detail(exc)
        log.error(
            "handling %s[%d]@%d raised %s: %s; the message goes to the DLQ",
            m.topic,
            m.partition,
            m.offset,
            kind,
            detail,
            exc_info=exc,
            extra={"topic": m.topic, "partition": m.partition, "offset": m.offset, "error_class": kind},
        )
        self.metrics.poison.labels(topic=m.topic, error_class=kind).inc()
        rejected = self._rejected(m, INTERNAL_ERROR, f"{kind}: {detail}", now)
        rejected.error_class = kind
        return rejected

    def _reject(self, rejected: list[Rejected], token: str) -> None:
        for r in rejected:
            prefix = self.settings.topic_prefix
            topic = r.source_topic[len(prefix) :] if r.source_topic.startswith(prefix) else r.source_topic
            self.metrics.dlq.labels(reason=r.reason).inc()
            self.metrics.events.labels(topic=topic, outcome="rejected").inc()
            log.warning(
                "rejected %s[%d]@%d: %s: %s",
                r.source_topic,
                r.partition,
                r.offset,
                r.reason,
                r.detail[:1000],
                extra={"topic": topic, "partition": r.partition, "offset": r.offset, "reason": r.reason},
            )
        self.sinks.reject(rejected, token)

    def _handle_inputs(self, topic: str, part: _Part) -> set[tuple[str, Any]]:
        """Ingest one decoded part: its batches, its single events (already in columns per model
        version), and the DecodeErrors of messages that did not decode.

        Preparing (validation and grouping) changes nothing, so a message whose preparation raises
        is found by bisection (``driftline.streams.supervision.isolate``) and dead-lettered, and the others
        are prepared again without it; only then does anything change."""
        messages = part.messages
        now = self.now_ms()

        def attempt(lo: int, hi: int) -> _Prepared:
            for i in range(lo, hi) if self._known_poison else ():
                known = self._poison_of(messages, i)
                if known is not None:
                    raise known
            return self._prepare_inputs(part.slice(lo, hi), now).shifted(lo)

        prepared = isolate(
            len(messages),
            attempt,
            lambda i, exc: _Prepared([self._poisoned(messages[i], exc, now)]),
            _Prepared.merge,
            passes=infrastructure_errors(),
        )
        return self._apply_inputs(topic, part, now, prepared)

    def _prepare_inputs(self, part: _Part, now: int) -> _Prepared:
        """Validate and group one part's records; changes nothing (it may run again on fewer messages)."""
        messages = part.messages
        rejected: list[Rejected] = []
        groups: dict[tuple[str, str, bool], _Group] = {}
        # the references of the part's versions not cached yet, in one registry read (a fresh worker meets
        # a thousand versions in its first polls); then one lookup per version, not per message
        self.references.load(
            [(r.model_id, r.model_version) for _, r in part.others if isinstance(r, (PredictionBatch, FeatureBatch))]
            + [(g.batch.model_id, g.batch.model_version) for g in part.groups]
        )
        references: dict[tuple[str, str], ReferenceProfile | None] = {}
        for i, record in part.others:
            if isinstance(record, _Poison):
                raise record.error
            try:
                if isinstance(record, DecodeError):
                    raise record
                batch, has_predictions = _as_batch(record)
            except DecodeError as exc:
                rejected.append(self._rejected(messages[i], exc.reason, exc.message, now))
                continue
            if batch.n == 0:
                continue
            problem = self._problem(batch, now, references)
            if problem is not None:
                rejected.append(self._rejected(messages[i], problem.reason, problem.detail, now, batch.model_id))
                continue
            groups.setdefault((batch.model_id, batch.model_version, has_predictions), _Group()).add(
                batch, np.full(batch.n, i)
            )
        # Single events come in one batch per model version: validated, written and monitored once.
        for g in part.groups:
            batch = g.batch
            key = (batch.model_id, batch.model_version, g.has_predictions)
            if self._problem(batch, now, references) is None:
                groups.setdefault(key, _Group()).add(batch, g.messages)
                continue
            # the unit of rejection is the message: find the events at fault, one by one (bad input only)
            for row in range(batch.n):
                one = take_rows(batch, np.array([row]))
                problem = self._problem(one, now, references)
                if problem is None:
                    groups.setdefault(key, _Group()).add(one, g.messages[row : row + 1])
                else:
                    rejected.append(
                        self._rejected(
                            messages[int(g.messages[row])], problem.reason, problem.detail, now, batch.model_id
                        )
                    )
        return _Prepared(rejected, groups, references)

    def _apply_inputs(self, topic: str, part: _Part, now: int, prepared: _Prepared) -> set[tuple[str, Any]]:
        messages = part.messages
        rejected, groups = prepared.rejected, prepared.groups
        # one batch per model version: the raw insert and the monitor both take it whole, its rows in the
        # order of their messages (batches were gathered before single events; in the log they interleave)
        ordered = {
            key: in_arrival_order(concat_batches(group.batches), np.concatenate(group.owners))
            for key, group in groups.items()
        }
        batches = {key: batch for key, (batch, _) in ordered.items()}

        token = batch_token(messages)
        self._reject(rejected, token)
        if self.options.write_raw and topic == "predictions":
            self._raw(list(batches.values()), token)

        read: set[tuple[str, Any]] = set()
        by_model: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
        for key in ordered:
            if self.model_policy(key[0]).monitoring.enabled:
                by_model[key[0]].append(key)
        results: dict[tuple[str, str, bool], Any] = {}
        reads = self._recovery_reads(
            [(model_id, version) for model_id, keys in by_model.items() for _, version, _ in keys]
        )
        for model_id, keys in by_model.items():
            for _, version, _ in keys:
                self._recover(model_id, version, reads)
            # each topic partition is a source of the model's event clock (see streams.core.windows)
            source = (topic, int(messages.partitions[int(ordered[keys[0]][1][0])]))
            # the versions of one model together: a row is late or not as its message stood in the poll
            arrivals = [Arrival(ordered[k][0], prepared.references[k[:2]], ordered[k][1], k[2]) for k in keys]
            results.update(zip(keys, self.monitor.ingest_all(model_id, arrivals, source=source, now_ms=now)))
            read.add((model_id, source))
        late_rows = np.zeros(len(messages), dtype=np.int64)
        # What each message waits for: the index of its window's holds (a message is one record, so it
        # is in one group and one window), or its own tuple when it waits for more (``alone``, rare).
        window = np.full(len(messages), -1, dtype=np.int64)
        window_holds: list[tuple[Hold, ...]] = []
        alone: dict[int, tuple[Hold, ...]] = {}
        for key, ingested in results.items():
            model_id, version, _ = key
            owners = ordered[key][1]
            self._count(topic, owners.size, ingested.late, ingested.replayed)
            in_window = ingested.window_ends != NOT_IN_WINDOW
            if in_window.any():
                latest = np.full(len(messages), NOT_IN_WINDOW, dtype=np.int64)
                np.maximum.at(latest, owners[in_window], ingested.window_ends[in_window])
                held = np.flatnonzero(latest != NOT_IN_WINDOW)
                # One Hold per window end, shared by the messages that wait for it, so that the
                # ledger sees runs of identical holds (thousands of single events, one entry).
                ends, codes = np.unique(latest[held], return_inverse=True)
                codes = codes.reshape(-1) + len(window_holds)
                window_holds.extend((Hold(PREDICTIONS, model_id, version, end),) for end in ends.tolist())
                taken = window[held] >= 0
                if alone:
                    taken |= np.isin(held, list(alone))
                window[held[~taken]] = codes[~taken]
                for i, code in zip(held[taken].tolist(), codes[taken].tolist()):
                    alone[i] = alone.get(i, window_holds[window[i]]) + window_holds[code]
            if ingested.holds:
                last = int(owners.max())
                so_far = alone.get(last, window_holds[window[last]] if window[last] >= 0 else ())
                alone[last] = so_far + tuple(ingested.holds)
            if ingested.joined_labels:
                self.metrics.events.labels(topic="labels", outcome="joined").inc(ingested.joined_labels)
            if ingested.late_rows is not None:
                np.add.at(late_rows, owners[ingested.late_rows], 1)
        if self.options.keep_late_events and late_rows.any():
            late = [
                self._rejected(
                    messages[i],
                    LATE_EVENT,
                    f"{int(late_rows[i])} row(s) came after their window closed; counted in drift_reports.late_events",
                    now,
                )
                for i in np.flatnonzero(late_rows).tolist()
            ]
            self.metrics.dlq.labels(reason=LATE_EVENT).inc(len(late))
            self.sinks.reject(late, f"{token}:late")
        for run in _hold_runs(messages, window, window_holds, alone):
            self.ledger.add_run(*run)
        return read

    def _problem(
        self, batch: PredictionBatch, now: int, references: dict[tuple[str, str], ReferenceProfile | None]
    ) -> Rejection | None:
        """Why the batch is refused, if it is; ``references`` remembers the part's lookups."""
        problem = check_batch(batch, now, self.max_future_ms, self.options.min_event_time_ms)
        if problem is not None:
            return problem
        key = (batch.model_id, batch.model_version)
        if key not in references:
            references[key] = self.references.get(*key)
        if references[key] is None:
            problem = Rejection(
                UNKNOWN_MODEL,
                f"no reference profile for model {batch.model_id!r} "
                f"version {batch.model_version!r} (register it first)",
            )
        return problem

    def _decode_label(
        self, messages: Messages, i: int, now: int, decoded: LabelEvent | LabelBatch | None = None
    ) -> LabelEvent | LabelBatch | Rejected:
        """The label (or label batch) of message ``i`` (``decoded`` by ``decode_labels``, else decoded here), or
        why it cannot be read as one."""
        if decoded is not None:
            return decoded
        try:
            record = self.codec.decode(messages.values[i], topic="labels")
        except DecodeError as exc:
            return self._rejected(messages[i], exc.reason, exc.message, now)
        if not isinstance(record, (LabelEvent, LabelBatch)):
            return self._rejected(
                messages[i], "unexpected_record", f"a {type(record).__name__} on the labels topic", now
            )
        return record

    def _unknown_model(self, model_id: str, known: dict[str, bool]) -> Rejection | None:
        is_known = known.get(model_id)
        if is_known is None:
            is_known = known[model_id] = self.references.knows_model(model_id)
        return None if is_known else Rejection(UNKNOWN_MODEL, f"no model {model_id!r} is registered")

    def _label_columns(
        self, messages: Messages, now: int
    ) -> tuple[LabelColumns, np.ndarray, list[tuple[int, Rejected]]]:
        """A poll's accepted labels as columns, each row's message, and the refused messages by position.

        A single label's problem refuses its message, a batch's row's problem the whole batch; a message
        whose decoding raises, or one known to be poison, is that message's alone (a check that raises fails
        the poll, which is then applied a message at a time, as any part that raises)."""
        rejected: list[tuple[int, Rejected]] = []
        # all of a poll's labels at once; a message decode_labels cannot vouch for is decoded alone
        decoded = decode_labels(self.codec, messages.values)
        records: list[LabelEvent | LabelBatch] = []
        positions: list[int] = []
        for i, record in enumerate(decoded):
            if record is None or self._known_poison:
                try:
                    poison = self._poison_of(messages, i)
                    if poison is not None:
                        raise poison
                    got = self._decode_label(messages, i, now, record)
                except infrastructure_errors():
                    raise
                except Exception as exc:
                    got = self._poisoned(messages[i], exc, now)
                if isinstance(got, Rejected):
                    rejected.append((i, got))
                    continue
                record = got
            records.append(record)
            positions.append(i)
        known: dict[str, bool] = {}
        columns = LabelColumns.of(records)
        problems: dict[int, Rejection | Exception] = dict(
            check_labels(records, columns, now, self.max_future_ms, self.options.min_event_time_ms)
        )
        fine = columns.take(np.flatnonzero(~np.isin(columns.message, list(problems)))) if problems else columns
        # the registry is asked once a model, not once a label; a model whose question raises is its messages'
        # alone, each dead-lettered with the exception as if it had been asked for that message
        unknown: dict[str, Rejection | Exception] = {}
        for model_id in set(fine.model_ids):
            try:
                problem = self._unknown_model(model_id, known)
            except infrastructure_errors():
                raise
            except Exception as exc:
                unknown[model_id] = exc
                continue
            if problem is not None:
                unknown[model_id] = problem
        if unknown:
            for k in np.unique(fine.message).tolist():
                if records[k].model_id in unknown:
                    problems[k] = unknown[records[k].model_id]
        for k, problem in problems.items():
            i = positions[k]
            if isinstance(problem, Exception):
                rejected.append((i, self._poisoned(messages[i], problem, now)))
            else:
                rejected.append(
                    (i, self._rejected(messages[i], problem.reason, problem.detail, now, records[k].model_id))
                )
        rejected.sort(key=lambda item: item[0])
        if problems:
            columns = columns.take(np.flatnonzero(~np.isin(columns.message, list(problems))))
        return columns, np.asarray(positions, dtype=np.int64)[columns.message], rejected

    def _handle_labels(self, messages: Messages) -> set[tuple[str, Any]]:
        now = self.now_ms()
        columns, message_of, rejected_at = self._label_columns(messages, now)
        rejected = [r for _, r in rejected_at]
        by_model = columns.by_model()

        monitored = [model_id for model_id in by_model if self.model_policy(model_id).monitoring.enabled]
        # before this batch's raw rows are written, so that its labels are not read back as waiting
        reads = self._recovery_reads([(model_id, None) for model_id in monitored])
        for model_id in monitored:
            self._recover(model_id, None, reads)
        token = batch_token(messages)
        self._reject(rejected, token)
        if self.options.write_raw:
            # gathered with the raw predictions, written on their thread: the messages' tokens wait for it
            self.outbox.add_labels([e for rows in by_model.values() for e in columns.events(rows)], token)

        holds: dict[int, list[Hold]] = defaultdict(list)
        results = {}
        for model_id in monitored:
            rows = by_model[model_id]
            result = results[model_id] = self.monitor.ingest_labels(
                model_id,
                [columns.event_ids[r] for r in rows.tolist()],
                columns.labels(rows),
                columns.event_times[rows].astype(np.int64),
                now_ms=now,
            )
            for i, label_holds in zip(message_of[rows].tolist(), result.holds):
                if label_holds:
                    holds[i].extend(label_holds)
        # predictions from before a restart (or not consumed yet) are no longer in memory, but may be in the
        # warehouse: one read for every model of the poll, not one per model
        unmatched = {m: r.unmatched for m, r in results.items() if r.unmatched}
        looked_up = self.queries.lookup_predictions_of(unmatched) if unmatched else {}
        reads = self._recovery_reads([(m, b.model_version) for m, batches in looked_up.items() for b in batches])
        for model_id in monitored:
            rows, result = by_model[model_id], results[model_id]
            if model_id in looked_up:
                position = dict(zip([columns.event_ids[r] for r in rows.tolist()], message_of[rows].tolist()))
                found = 0
                for batch in looked_up[model_id]:
                    self._recover(model_id, batch.model_version, reads)
                    # The warehouse returns rows in any order; the monitor takes row order as the labels'
                    # arrival order (a label later in time arriving first would make the others late).
                    arrival = np.fromiter((position[e] for e in batch.event_ids), dtype=np.int64, count=batch.n)
                    batch = take_rows(batch, np.argsort(arrival, kind="stable"))
                    for event_id, label_holds in self.monitor.remember(batch, now_ms=now).items():
                        holds[position[event_id]].extend(label_holds)
                        found += 1
                result.joined += found
                result.pending -= found
            self.metrics.events.labels(topic="labels", outcome="accepted").inc(
                rows.size - result.late - result.replayed
            )
            self.metrics.events.labels(topic="labels", outcome="joined").inc(result.joined)
            self.metrics.events.labels(topic="labels", outcome="pending").inc(result.pending)
            if result.late:
                self.metrics.events.labels(topic="labels", outcome="late").inc(result.late)
                log.warning(
                    "%d late label(s) of %s: their windows were already closed",
                    result.late,
                    model_id,
                    extra={"model_id": model_id, "late": result.late},
                )
            if result.replayed:
                self.metrics.events.labels(topic="labels", outcome="replayed").inc(result.replayed)
        # What each message waits for, as an index into the distinct tuples of holds: a run of labels
        # waiting for the same windows is one ledger entry, which keeps their partition and offsets only.
        window = np.full(len(messages), -1, dtype=np.int64)
        distinct: dict[tuple[Hold, ...], int] = {}
        for i, label_holds in holds.items():
            if label_holds:
                window[i] = distinct.setdefault(tuple(label_holds), len(distinct))
        for run in _hold_runs(messages, window, list(distinct), {}):
            self.ledger.add_run(*run)
        return {(model_id, None) for model_id in by_model}

    def _recovery_reads(self, keys: Sequence[tuple[str, str | None]]) -> _RecoveryReads:
        """What :meth:`_recover` reads for the models and versions of one poll that still need it, in one
        read per kind instead of one per model version (a fresh worker meets a thousand versions at once)."""
        models = [m for m in dict.fromkeys(m for m, _ in keys) if self.monitor.needs_label_restore(m)]
        versions = [(m, v) for m, v in dict.fromkeys(keys) if v is not None and self.monitor.needs_recovery(m, v)]
        reads = _RecoveryReads()
        if models:
            since = self.now_ms() - self.monitor.index_ttl_ms
            reads.waiting = self.queries.waiting_labels_of(models, since, self.monitor.index_max_entries)
        if versions:
            reads.through = self.queries.latest_windows(versions)
            reads.label_through = self.queries.latest_label_windows(versions)
        return reads

    def _recover(self, model_id: str, version: str | None = None, reads: _RecoveryReads | None = None) -> None:
        """Pick up what was written before a start or rebalance, before the first batch that needs it.

        Per model: the labels that were waiting for their predictions (their
        messages were acknowledged, so Kafka does not deliver them again). Per
        version (unless ``version`` is None): how far its windows were written,
        its change detectors as of those windows, and its trigger states.
        ``reads``: what :meth:`_recovery_reads` read for the poll (what it lacks is read here).
        """
        reads = reads or _RecoveryReads()
        if self.monitor.needs_label_restore(model_id):
            since = self.now_ms() - self.monitor.index_ttl_ms
            waiting = reads.waiting.get(model_id)
            if waiting is None:
                waiting = self.queries.waiting_labels(model_id, since, self.monitor.index_max_entries)
            n = self.monitor.restore_labels(
                model_id,
                [e.event_id for e in waiting],
                [e.label for e in waiting],
                np.fromiter((e.event_time for e in waiting), dtype=np.int64, count=len(waiting)),
                now_ms=self.now_ms(),
            )
            if n:
                log.info(
                    "%s: %d label(s) stored before wait for their predictions again",
                    model_id,
                    n,
                    extra={"model_id": model_id, "restored_labels": n},
                )
        if version is None or not self.monitor.needs_recovery(model_id, version):
            return
        key = (model_id, version)
        through = reads.through[key] if key in reads.through else self.queries.latest_window(model_id, version)
        label_through = (
            reads.label_through[key]
            if key in reads.label_through
            else self.queries.latest_label_window(model_id, version)
        )
        resumed_after_release = (model_id, version) in self._released
        self._released.discard((model_id, version))
        self.monitor.recover(model_id, version, through)
        if not resumed_after_release:  # released versions keep their labels' state
            self.monitor.recover_labels(model_id, version, label_through)
        if through is not None:
            log.info(
                "%s v%s: windows up to %d were written before; replayed events of them are skipped",
                model_id,
                version,
                through,
                extra={"model_id": model_id, "version": version, "through": through},
            )
        for stream, written in (("score", through), ("error", label_through)):
            state = None if written is None else self.queries.detector_state(model_id, version, stream, written)
            if state is None:
                continue
            try:
                resumed = self.monitor.restore_detectors(model_id, version, stream, state)
            except ValueError as exc:
                # detectors that start afresh are better than a worker that cannot start
                log.warning(
                    "%s v%s: the %s stream's change detectors start afresh: %s",
                    model_id,
                    version,
                    stream,
                    exc,
                    extra={"model_id": model_id, "version": version, "stream": stream},
                )
                continue
            if resumed is not None:
                log.info(
                    "%s v%s: change detectors of the %s stream resumed as of %d: %s",
                    model_id,
                    version,
                    stream,
                    written,
                    ", ".join(resumed) or "none",
                    extra={"model_id": model_id, "version": version, "stream": stream, "through": written},
                )
        if not resumed_after_release:  # the trigger states stayed in memory
            self._rebuild_triggers(model_id, version, through, label_through)

    def _rebuild_triggers(self, model_id: str, version: str, through: int | None, label_through: int | None) -> None:
        """Pick up the trigger states where they were: fold the evaluator over the windows already written.

        The state is a pure function of the written windows (the evaluator uses
        event time), so a restarted worker, or the one that takes a partition
        over, continues an episode instead of starting a new one.
        """
        # Nothing written for this version (no window marker, no label window marker): no window to
        # fold, and the reads below would find none that counts; a fresh worker skips them per version.
        nothing = through is None and label_through is None
        drift_windows, label_windows = ([], []) if nothing else self.queries.written_windows(model_id, version)
        policy = self.model_policy(model_id)
        reference = self.references.holdout_metrics(model_id, version) if label_windows else None
        folds = (
            ("drift", [w for w in drift_windows if through is not None and w.window_end <= through]),
            ("performance", label_windows),
        )
        profile = self.references.get(model_id, version) if any(w.estimated for w in drift_windows) else None
        estimated_reference = reference_estimates(profile) if profile is not None else None
        for stream, windows in folds:
            state = self._triggers.get((stream, model_id)) or TriggerState(model_id)
            for w in windows:
                window = TriggerInput(
                    model_id,
                    version,
                    w.window_start,
                    w.window_end,
                    drift=w.drift,
                    performance=w.performance,
                    n_labeled=w.n_labeled,
                    reference_performance=reference,
                    change_events=w.change_events,
                    estimated_performance=w.estimated,
                    reference_estimates=estimated_reference,
                )
                state, _, _ = evaluate(policy, state, window, w.window_end)
            self._triggers[(stream, model_id)] = state
        # either stream's last request starts the cooldown of both
        states = [self._triggers[(k, model_id)] for k in ("drift", "performance")]
        last = max(states, key=lambda st: st.last_request_ms if st.last_request_ms is not None else -1)
        if last.last_request_ms is not None:
            for k in ("drift", "performance"):
                self._triggers[(k, model_id)] = replace(
                    self._triggers[(k, model_id)],
                    last_request_ms=last.last_request_ms,
                    last_request_id=last.last_request_id,
                )

    def _count(self, topic: str, n: int, late: int, replayed: int) -> None:
        self.metrics.events.labels(topic=topic, outcome="accepted").inc(n - late - replayed)
        if late:
            self.metrics.events.labels(topic=topic, outcome="late").inc(late)
            log.warning(
                "%d late event(s) on %s: their windows were already closed",
                late,
                topic,
                extra={"topic": topic, "late": late},
            )
        if replayed:
            self.metrics.events.labels(topic=topic, outcome="replayed").inc(replayed)

    # -- closing windows -------------------------------------------------------------------

    def _close(self, now: int) -> None:
        closed: list[ClosedWindow | ClosedLabelWindow] = []
        for outcome in self.monitor.close_due(now):
            if isinstance(outcome, WindowOutcome):
                trigger_window = TriggerInput(
                    outcome.model_id,
                    outcome.model_version,
                    outcome.window_start,
                    outcome.window_end,
                    drift=outcome.drift,
                    change_events=[(c.detector, "score") for c in outcome.changes for _ in range(c.alarms)],
                    estimated_performance=outcome.estimated_performance() or None,
                    reference_estimates=outcome.reference_estimates or None,
                )
                requests, alerts = self._decide("drift", trigger_window)
                if outcome.root_cause is not None:
                    # where the drift comes from travels with a drift request (metrics effect, segment_share)
                    for request in (r for r in requests if r.reason == "drift"):
                        request.evidence += root_cause_evidence(
                            outcome.root_cause, outcome.window_start, outcome.window_end
                        )
                closed.append(ClosedWindow(outcome, requests, alerts, computed_at=now))
            else:
                closed.append(self._label_window(outcome, now))
        # label windows go with the prediction windows, on the window thread: an insert per table for all
        self.outbox.add_windows(closed)

    def _label_window(self, outcome: PerformanceOutcome, now: int) -> ClosedLabelWindow:
        overall = {r.metric: r.value for r in outcome.rows if r.segment == ""}
        trigger_window = TriggerInput(
            outcome.model_id,
            outcome.model_version,
            outcome.window_start,
            outcome.window_end,
            performance=overall or None,
            n_labeled=outcome.n_labeled,
            reference_performance=self.references.holdout_metrics(outcome.model_id, outcome.model_version),
            change_events=[(c.detector, "error") for c in outcome.changes for _ in range(c.alarms)],
        )
        requests, alerts = self._decide("performance", trigger_window)
        return ClosedLabelWindow(outcome, requests, alerts, computed_at=now)

    def _decide(self, stream: str, window: TriggerInput) -> tuple[list, list]:
        # Prediction and label windows close at different times, so each has its own
        # trigger state (the evaluator ignores a window older than the last one it saw);
        # a request from either starts the cooldown of both.
        policy = self.model_policy(window.model_id)
        key = (stream, window.model_id)
        state = self._triggers.get(key) or TriggerState(window.model_id)
        state, requests, alerts = evaluate(policy, state, window, window.window_end)
        self._triggers[key] = state
        self._record(stream, window.model_id, requests, alerts)
        return requests, alerts

    def _scheduled(self, now: int) -> None:
        # The schedule runs on the wall clock, from the drift stream's state (which knows the
        # version being served); the request id is derived from the due time, so a replay repeats it.
        for (stream, model_id), state in list(self._triggers.items()):
            if stream != "drift":
                continue
            state, requests, alerts = evaluate_schedule(self.model_policy(model_id), state, now)
            self._triggers[(stream, model_id)] = state
            if requests:
                self._record(stream, model_id, requests, alerts)
                self.sinks.write_decisions(requests, alerts, f"schedule:{requests[0].request_id}")
                log.info(
                    "scheduled retrain of %s v%s requested",
                    model_id,
                    requests[0].model_version,
                    extra={"model_id": model_id, "request_id": requests[0].request_id},
                )

    def _record(self, stream: str, model_id: str, requests: list, alerts: list) -> None:
        """Count decisions, and start the cooldown of the other stream too."""
        for request in requests:
            other = ("performance" if stream == "drift" else "drift", model_id)
            if other in self._triggers:
                self._triggers[other] = record_request(self._triggers[other], request)
            self.metrics.retrain_requests.labels(reason=request.reason).inc()
        for alert in alerts:
            self.metrics.alerts.labels(kind=alert.kind).inc()

    def _gauges(self) -> None:
        self.metrics.open_windows.set(len(self.monitor.open_windows()) + len(self.monitor.open_label_windows()))
        self._unacked = len(self.ledger) + len(self.outbox)
        self.metrics.unacked.set(self._unacked)
        self.metrics.pending_labels.set(self.monitor.pending_labels())


def monitor_settings(policy: Policy, options: WorkerOptions, model_id: str) -> MonitorSettings:
    """How the monitor treats ``model_id``: the policy's monitoring, with the worker's overrides.

    >>> from driftline.retrainer.policy import load_policy
    >>> s = monitor_settings(load_policy(None), WorkerOptions(window_seconds=5), "credit")
    >>> s.windowing.size_ms, s.windowing.lateness_ms, s.detectors
    (5000, 10000, ('adwin',))
    """
    m = policy.for_model(model_id).monitoring
    size = int(options.window_seconds * 1000) if options.window_seconds is not None else m.window_ms
    lateness = int(options.lateness_seconds * 1000) if options.lateness_seconds is not None else m.allowed_lateness_ms
    return MonitorSettings(
        Windowing(size, lateness),
        thresholds=m.thresholds,
        fdr_q=m.fdr_q,
        detectors=tuple(m.detectors),
        task=options.task,
        segments=tuple(m.segments),
        trend_guarantee=m.trend_guarantee,
        trend_level=m.trend_level,
    )


def _as_batch(record: Any) -> tuple[PredictionBatch, bool]:
    if isinstance(record, PredictionBatch):
        return record, True
    if isinstance(record, FeatureBatch):
        return record.as_batch(), False
    raise DecodeError("unexpected_record", f"a {type(record).__name__} is not a prediction or feature record")


def batch_token(messages: Messages | Sequence[Incoming]) -> str:
    """The ``insert_deduplication_token`` of the raw rows of one batch of messages.

    It names the data, not the consumer that read it: each partition's full
    topic name with the offsets the batch covers (deployments with different
    topic prefixes may write to one database) and a CRC-32 of the messages'
    keys and bytes (a recreated topic numbers its messages from 0 again).
    Messages delivered again after a crash make the same token, so ClickHouse
    counts a retried insert once; different data never shares one.

    >>> batch_token([Incoming("predictions", 0, o, None, b"x", full_topic="prod.predictions") for o in (7, 8)])
    'prod.predictions:0:7-8:f8e1180f'
    """
    if not isinstance(messages, Messages):
        topics = sorted({m.full_topic for m in messages})
        if "" in topics:
            m = next(m for m in messages if not m.full_topic)
            raise ValueError(f"message {m.topic}[{m.partition}]@{m.offset} has no full topic name")
        spans = ";".join(
            span for t in topics for span in _spans(Messages.of("", [m for m in messages if m.full_topic == t], t))
        )
        return f"{spans}:{_checksum([m.key for m in messages], [m.value for m in messages]):08x}"
    if not messages.full_topic and len(messages):
        raise ValueError(f"message {messages.topic}[{int(messages.partitions[0])}] has no full topic name")
    return f"{';'.join(_spans(messages))}:{_checksum(messages.keys, messages.values):08x}"


def _spans(messages: Messages) -> list[str]:
    """``topic:partition:first-last`` per partition of the messages, by partition."""
    partitions, codes = _partition_codes(messages)
    if len(partitions) == 1:
        offsets = messages.offsets
        return [f"{partitions[0][0]}:{partitions[0][1]}:{int(offsets.min())}-{int(offsets.max())}"]
    lows = np.full(len(partitions), np.iinfo(np.int64).max)
    highs = np.full(len(partitions), -1)
    np.minimum.at(lows, codes, messages.offsets)
    np.maximum.at(highs, codes, messages.offsets)
    return [f"{t}:{p}:{lo}-{hi}" for (t, p), lo, hi in zip(partitions, lows.tolist(), highs.tolist())]


def _checksum(keys: list[bytes | None], values: list[bytes]) -> int:
    """The CRC-32 of each message's key (if any) and bytes, in order: that of their concatenation,
    in one call."""
    chunks: list[bytes | None] = [b""] * (2 * len(values))
    chunks[0::2] = keys
    chunks[1::2] = values
    if None in keys:
        chunks = [c or b"" for c in chunks]
    return zlib.crc32(b"".join(chunks))  # type: ignore[arg-type]
