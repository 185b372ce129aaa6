"""The Faust app of the streams worker: agents that hand batches to the service.

A :class:`~streams.batch_consumer.BatchConsumer` polls the input topics
(``predictions``, ``features``, ``labels``) on a fetch thread, up to
``batch_size`` messages (and about ``max_poll_bytes``) a call. One agent per
topic receives each poll's messages of its topic and passes them to
:class:`~streams.worker.WorkerService` on a single service thread, so that
ClickHouse writes never block the event loop and the service is never
entered twice at once. The service returns the messages whose windows are
written; only those are acknowledged, so only offsets whose results are
safe in ClickHouse are committed.

Why not Faust's own topic streams: Faust delivers one message at a time, at
about 65 µs of Python per message, which held single ``PredictionEvent`` s
near 7k/s (docs/PERFORMANCE.md).

A timer closes the windows of models gone quiet. ``models`` events are read
by every worker (not shared through the consumer group: each worker must
re-baseline), by a plain consumer on its own supervised thread
(``driftline.streams.supervision``: restarted with backoff if it fails). ``/metrics`` on
the Faust web port serves the Prometheus metrics, ``/health`` a JSON report of
the warehouse, the background threads and the fetch (``driftline worker --health``).

Run it with ``driftline worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import KafkaException
from faust.app.base import BootStrategy

from driftline.redaction import redact
from driftline.settings import Settings
from driftline.streams.batch_consumer import BatchConsumer, contract_topics
from driftline.streams.messages import Incoming, Messages, Offset
from driftline.streams.observability import CONTENT_TYPE_LATEST
from driftline.streams.records import ModelEvent
from driftline.streams.supervision import Supervisor
from driftline.streams.worker import INPUT_TOPICS, Replay, WorkerOptions, WorkerService

log = logging.getLogger("driftline.worker")

# Batches handed to the service and not handled yet, at most; past it the fetch waits. If the
# service makes no progress for STALLED_SECONDS, the consumer is paused (it keeps polling, to stay
# in its group); it is paused at once when the warehouse is known to be down.
MAX_INFLIGHT = 4
STALLED_SECONDS = 30.0
FETCH_BACKOFF_SECONDS = 0.5


class Runner:
    """Fetches batches on one thread, runs the service on another, and acknowledges what it releases.

    A revocation drops the service's state (Kafka redelivers from the
    committed offsets) and starts a new generation: every batch fetched in an
    older one is discarded, so only events of the current assignment are
    processed. So does a :class:`~streams.worker.Replay` (a message raised
    while the service's state was changing: the service isolates it, see
    ``WorkerService._apply``). While the warehouse is down the consumer is
    paused but keeps polling, so the worker stays in its group however long
    the outage. Any other exception from the service (a write refused for
    good) crashes the app before anything of the failed batch is acknowledged.
    """

    def __init__(self, app: faust.App, service: WorkerService) -> None:
        self.app = app
        self.service = service
        # set by create_app: the consumer's rebalance callbacks call back into this runner
        self.consumer: BatchConsumer | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-service")
        self.fetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-fetch")
        self.failed: BaseException | None = None
        self._stopping = threading.Event()
        self._inflight = 0  # batches sent to the agents and not handled yet
        self._freed = asyncio.Event()  # set when the service finishes a batch (made again on the fetch's loop)
        self._progress = time.monotonic()  # when the service last finished a batch
        self.paused = False
        # a write that waits out an outage gives up only when the worker stops (a restart replays it)
        service.sinks.should_stop = self._stopping.is_set
        service.on_replay = self._replay

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _current(self, generation: int) -> bool:
        return self.consumer is not None and generation == self.consumer.generation

    def _must_pause(self) -> bool:
        """Whether to stop fetching: the warehouse is down, or the service has been stuck for long.

        A paused consumer still polls (and gets nothing), so it stays in its group however long
        the wait: a member that does not poll for ``max.poll.interval.ms`` is put out of it.
        """
        if not self.service.sinks.outage.up:
            return True
        return self._inflight >= MAX_INFLIGHT and time.monotonic() - self._progress >= STALLED_SECONDS

    def _pause(self, paused: bool) -> None:
        if paused != self.paused:
            assert self.consumer is not None
            self.paused = paused
            self.consumer.pause(paused)
            self.service.metrics.fetch_paused.set(1 if paused else 0)
            log.log(
                logging.WARNING if paused else logging.INFO,
                "consumption %s",
                "paused while the service waits" if paused else "resumed",
            )

    async def fetch(self, channels: dict[str, Any], within: float) -> None:
        """Poll until the app stops, sending each poll's messages of a topic to that topic's agent.

        At most MAX_INFLIGHT batches wait for the service; while it waits for the warehouse the
        consumer is paused (see :meth:`_must_pause`) and anything it still returns is held here.
        """
        assert self.consumer is not None
        loop = asyncio.get_running_loop()
        self.executor.submit(self.service.connect)  # while the group forms; the first batch queues behind it
        held: list[Any] = []
        backoff = FETCH_BACKOFF_SECONDS
        self._freed = asyncio.Event()
        while not self._stopping.is_set() and self.failed is None:
            try:
                if self._must_pause():
                    self._pause(True)
                    poll = await loop.run_in_executor(self.fetcher, self.consumer.poll, within)
                    if poll.count:
                        held.append(poll)
                    continue
                self._pause(False)
                if self._inflight >= MAX_INFLIGHT:
                    # until the service finishes a batch (or a second passes: it may be stuck, see _must_pause)
                    self._freed.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._freed.wait(), timeout=1.0)
                    continue
                poll = held.pop(0) if held else await loop.run_in_executor(self.fetcher, self.consumer.poll, within)
            except KafkaException as exc:
                # the broker is away (a rewind or a pause needs it): nothing was taken, so try again
                log.warning("polling failed, trying again in %.1f s: %s", backoff, redact(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = FETCH_BACKOFF_SECONDS
            for topic, messages in poll.by_topic.items():
                self._inflight += 1
                await channels[topic].send(value=Batch(poll.generation, messages, poll.backlog))

    async def handle(self, topic: str, batch: Batch) -> None:
        try:
            if self.failed is not None or not self._current(batch.generation):
                return
            try:
                released = await self._run(self._handle_current, topic, batch)
            except Replay:
                return  # the service dropped its state, and the consumer delivers again from the last ack
            except Exception as exc:
                if self._stopping.is_set():
                    return  # interrupted by the stop: nothing of it is acknowledged, a restart replays it
                await self._crash(exc)
                return
            self._ack(released)
        finally:
            self._inflight -= 1
            self._progress = time.monotonic()
            self._freed.set()

    def _handle_current(self, topic: str, batch: Batch) -> list[Offset]:
        # runs on the service thread: a revocation may have happened since the batch was polled
        if not self._current(batch.generation):
            return []
        return self.service.handle(topic, batch.messages, backlog=batch.backlog)

    def _replay(self) -> None:
        # on the service thread, before it handles anything else: batches polled so far become stale
        if self.consumer is not None:
            self.consumer.replay()

    async def tick(self) -> None:
        if self.failed is not None or self.consumer is None:
            return
        try:
            released = await self._run(self.service.tick, not self.paused and self.consumer.reachable)
        except Exception as exc:
            await self._crash(exc)
            return
        self._ack(released)

    def _ack(self, offsets: Sequence[Offset]) -> None:
        if offsets and self.consumer is not None:
            self.consumer.ack(offsets)

    def on_revoked(self, partitions: list) -> None:
        # from the fetch thread, inside a poll: the service thread owns the state, so it drops it
        if partitions:
            self.executor.submit(self.service.reset).result()

    def on_model_event(self, event: ModelEvent) -> None:
        # from the models thread: the service's caches belong to the service thread
        self.executor.submit(self.service.on_model_event, event)

    def on_model_poison(self, msg: Any, exc: Exception) -> None:
        # from the models thread: dead-lettered by the service thread, which owns the producer's flushes
        incoming = Incoming("models", msg.partition(), msg.offset(), msg.key(), msg.value() or b"", None, msg.topic())
        self.executor.submit(self.service.poisoned, incoming, exc)

    async def _crash(self, exc: BaseException) -> None:
        # Nothing of the failed batch was acknowledged, so a restart redelivers it.
        self.failed = exc
        log.critical("the worker stops: %s", exc, exc_info=exc)
        await self.app.crash(exc)

    def close(self) -> None:
        """Leave the group (committing the stored offsets), then stop the service thread."""
        self._stopping.set()
        if self.consumer is not None and self.failed is None:
            # messages whose raw rows are still being written are acknowledged once they are in
            try:
                self._ack(self.executor.submit(self.service.drain).result(timeout=60))
            except Exception:
                log.warning(
                    "could not write the last raw rows before stopping; their messages will be redelivered",
                    exc_info=True,
                )
        if self.consumer is not None:
            self.fetcher.submit(self.consumer.close).result()
        self.fetcher.shutdown(wait=True)
        self.executor.shutdown(wait=True, cancel_futures=True)


@dataclass
class Batch:
    """One poll's messages of one topic (as columns), and the generation they were polled in."""

    generation: int
    messages: Messages
    backlog: bool = False  # polled while more messages were waiting


class ModelEvents:
    """Every ``models`` event published after :meth:`start`, read by this worker alone.

    Not through the worker's consumer group: each worker must re-baseline. The
    consumer is assigned every partition at its current end before ``start``
    returns, so no event published after that is missed. Its thread is
    supervised: if reading raises, it is logged, counted and started again
    (on the same consumer, so nothing is skipped); a message whose handling
    raises goes to ``on_poison`` and the next one is read.
    """

    THREAD = "driftline-models"

    def __init__(
        self,
        settings: Settings,
        on_event: Callable[[ModelEvent], None],
        *,
        supervisor: Supervisor | None = None,
        on_poison: Callable[[Any, Exception], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_event = on_event
        self.on_poison = on_poison
        self.supervisor = supervisor or Supervisor()
        self._consumer: Any = None

    def start(self, timeout: float = 30.0) -> None:
        from confluent_kafka import TopicPartition

        from driftline.streams import kafka

        topic = self.settings.topic("models")
        consumer = kafka.consumer(
            self.settings, f"driftline-models-{uuid.uuid4().hex[:12]}", **{"enable.auto.commit": False}
        )
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = [
            TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1])
            for p in sorted(partitions)
        ]
        consumer.assign(ends)
        self._consumer = consumer
        self.supervisor.start(self.THREAD, self._run)

    def stop(self) -> None:
        self.supervisor.stop()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _run(self, stop: threading.Event) -> None:
        from driftline.streams import kafka

        def received(event: ModelEvent) -> None:
            log.info(
                "models event: %s %s v%s",
                event.event,
                event.model_id,
                event.version,
                extra={"model_id": event.model_id, "event": event.event, "version": event.version},
            )
            self.on_event(event)

        kafka.follow_model_events(self._consumer, stop, received, on_poison=self.on_poison)


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()]


def worker_datadir(settings: Settings, options: WorkerOptions) -> Path:
    """The worker's Faust data directory, created with its parents.

    Faust creates the directory itself but not its parents, so on a fresh state
    directory the worker would stop with FileNotFoundError.

    >>> import tempfile
    >>> state = Path(tempfile.mkdtemp()) / "fresh" / "state"
    >>> path = worker_datadir(Settings(state_dir=str(state)), WorkerOptions(app_id="w"))
    >>> path.relative_to(state).as_posix(), path.is_dir()
    ('worker/w', True)
    """
    datadir = Path(options.datadir) if options.datadir else Path(settings.state_dir) / "worker" / options.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return datadir


def create_app(settings: Settings, options: WorkerOptions, service: WorkerService) -> tuple[faust.App, Runner]:
    """The Faust app wired to ``service``; start it with ``faust.Worker`` (see :func:`run_worker`).

    The input topics are consumed by a :class:`~streams.batch_consumer.BatchConsumer`
    in the group ``options.app_id``; each poll's messages of a topic go, as
    one :class:`Batch`, through an in-memory channel to that topic's agent.
    Faust starts no Kafka client of its own (its group would be a second
    member with another assignor) and keeps the agents, the timers and the
    web server.
    """
    datadir = str(worker_datadir(settings, options))
    app = faust.App(
        f"{options.app_id}.faust",
        broker=_broker_urls(settings.kafka_bootstrap),
        datadir=datadir,
        autodiscover=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=True,
        web_bind=options.web_host,
        web_host=options.web_host,
        web_port=options.web_port,
        store="memory://",
    )
    # no Kafka client of Faust's own: its consumer would subscribe to nothing, and the app sends nothing
    app.boot_strategy = BootStrategy(app, enable_kafka=False, enable_web=True)
    runner = Runner(app, service)
    runner.consumer = BatchConsumer(
        settings,
        options.app_id,
        contract_topics(settings, INPUT_TOPICS),
        max_messages=options.batch_size,
        max_bytes=options.max_poll_bytes,
        on_revoked=runner.on_revoked,
        session_timeout_seconds=options.session_timeout_seconds,
    )
    # the fetch sends at most MAX_INFLIGHT batches ahead (and a poll's topics at once), so a send never
    # waits: the fetch loop keeps polling, and memory stays bounded by those batches
    channels = {topic: app.channel(maxsize=MAX_INFLIGHT + len(INPUT_TOPICS)) for topic in INPUT_TOPICS}

    def agent_for(topic: str) -> Callable[[Any], Any]:
        async def consume(batches: Any) -> None:
            async for batch in batches.noack():
                await runner.handle(topic, batch)

        consume.__name__ = f"consume_{topic}"
        return consume

    for topic in INPUT_TOPICS:
        app.agent(channels[topic], name=f"driftline.{topic}")(agent_for(topic))

    @app.task
    async def fetch() -> None:
        # Faust opens its queues' flow control when its own consumer gets partitions; it has none here
        app.flow_control.resume()
        await runner.fetch(channels, options.batch_within_seconds)

    @app.timer(options.tick_seconds)
    async def close_idle_windows() -> None:
        await runner.tick()

    @app.timer(2.0)
    async def report_lag() -> None:
        for (topic, partition), lag in runner.consumer.lag().items():
            service.metrics.lag.labels(topic=topic, partition=str(partition)).set(lag)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        service.health()  # the gauges of outages and threads, as of now (the service thread may be waiting)
        return web.bytes(service.metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        report = {**service.health(), "fetch_paused": runner.paused, "failed": runner.failed is not None}
        return web.json(report)

    return app, runner


def build_service(settings: Settings, options: WorkerOptions) -> WorkerService:
    """The service with its real adapters: warehouse, Kafka producer, registry references."""
    from driftline.retrainer.policy import load_policy
    from driftline.retrainer.registry import Registry
    from driftline.streams import kafka
    from driftline.streams.references import RegistryReferences
    from driftline.streams.sinks import Sinks
    from driftline.streams.warehouse import Warehouse
    from driftline.streams.webhook import AlertWebhook

    warehouse = Warehouse.from_settings(settings, migrate=True)
    webhook = AlertWebhook(settings.alert_webhook) if settings.alert_webhook else None
    # no delivery deadline: a record waits for a broker that is away however long (the worker blocks meanwhile)
    producer = kafka.producer(settings, **{"linger.ms": 5, "enable.idempotence": True, "message.timeout.ms": 0})
    references = RegistryReferences(Registry.from_settings(settings), baseline=options.baseline)
    return WorkerService(
        settings,
        options,
        references=references,
        sinks=Sinks(settings, warehouse, producer, webhook=webhook),
        policy=load_policy(settings.policy),
    )


def check_copartitioned(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """The input topics' partition counts, which must be equal.

    A model's predictions and logged features go into the same windows, so
    their partitions must reach the same worker: the ``range`` assignor gives
    partition *n* of topics with equal partition counts to one worker (as a join needs).
    """
    from confluent_kafka.admin import AdminClient

    from driftline.settings import SettingsError

    names = {t: settings.topic(t) for t in INPUT_TOPICS}
    metadata = AdminClient(settings.kafka_config()).list_topics(timeout=timeout)
    counts = {t: len(metadata.topics[name].partitions) for t, name in names.items() if name in metadata.topics}
    if len(set(counts.values())) > 1:
        raise SettingsError(
            "the input topics must have the same number of partitions (co-partitioned), but "
            + ", ".join(f"{names[t]} has {n}" for t, n in counts.items())
        )
    return counts


def pyarrow_without_pandas() -> bool:
    """Have pyarrow's probe for pandas objects find no pandas, if none is imported; True if so.

    pyarrow imports pandas (29 MiB, 500 modules) at its first ``pa.array``, only to ask
    whether the values are a pandas Series or Categorical. The worker builds its Arrow
    tables from typed lists and numpy arrays, never from pandas objects, so in its process
    that probe is made to fail once (as on an install without pandas). Nothing is
    blocked afterwards: a call that needs pandas (``Table.to_pandas``) imports it as
    before, and so does a list converted without a type (pyarrow's inference looks for
    pandas' NA).

    >>> import subprocess, sys
    >>> code = "import sys, pyarrow as pa; from driftline.streams.app import pyarrow_without_pandas as w; "
    >>> code += "print(w(), pa.array(['a'], type=pa.string()).type, 'pandas' in sys.modules)"
    >>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    ['True', 'string', 'False']
    """
    if "pandas" in sys.modules:
        return False
    import pyarrow as pa

    class NoPandas(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            if name == "pandas":
                raise ImportError("pandas is not used by the worker's Arrow tables")

    finder = NoPandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([], type=pa.int8())  # pyarrow probes for pandas once, at its first array
    finally:
        sys.meta_path.remove(finder)
    return "pandas" not in sys.modules


def run_worker(settings: Settings, options: WorkerOptions, *, loglevel: str = "info") -> int:
    """Create the topics, start the worker and block until it stops; returns the exit code."""
    from driftline.streams import kafka

    pyarrow_without_pandas()
    kafka.ensure_topics(settings, partitions=options.partitions)
    check_copartitioned(settings)
    service = build_service(settings, options)
    app, runner = create_app(settings, options, service)
    models = ModelEvents(
        settings, runner.on_model_event, supervisor=service.supervisor, on_poison=runner.on_model_poison
    )
    models.start()
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    log.info(
        "driftline worker %s starting: topics %s*, warehouse %s, web port %d",
        options.app_id,
        settings.topic_prefix,
        service.sinks.warehouse,
        options.web_port,
    )
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        models.stop()
        runner.close()
    if runner.failed is not None:
        return 1
    return code
