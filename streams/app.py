"""The Faust app of the streams worker: agents that hand batches to the service.

One agent per input topic (``predictions``, ``features``, ``labels``) takes
up to ``batch_size`` raw messages at a time (``noack_take``: nothing is
acknowledged by Faust) and passes them to :class:`~streams.worker.WorkerService`
on a single dedicated thread, so that ClickHouse writes never block the event
loop and the service is never entered twice at once. The service returns the
messages whose windows are written; only those are acknowledged, so Faust only
commits offsets whose results are safe in ClickHouse.

A timer closes the windows of models gone quiet. ``models`` events are read
by every worker (not shared through the consumer group: each worker must
re-baseline), by a plain consumer on its own thread. ``/metrics`` on the
Faust web port serves the Prometheus metrics.

Run it with ``driftline worker`` (or ``python -m streams.app``, the same with
settings from the environment only).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import faust

from driftline.settings import Settings
from streams.observability import CONTENT_TYPE_LATEST
from streams.records import ModelEvent
from streams.worker import INPUT_TOPICS, Incoming, WorkerOptions, WorkerService

log = logging.getLogger("driftline.worker")


class Runner:
    """Runs the service on its own thread and acknowledges what it releases.

    After a partition revocation every batch fetched before it is discarded
    (Faust redelivers from the committed offsets), and the service drops its
    state; only events of the current consumer generation are processed.
    """

    def __init__(self, app: faust.App, service: WorkerService) -> None:
        self.app = app
        self.service = service
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftline-service")
        self.generation: int | None = None
        self.failed: BaseException | None = None

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def handle(self, topic: str, stream: Any, events: Sequence[Any]) -> None:
        if self.failed is not None:
            return
        generation = self.generation
        current = [e for e in events if generation is not None and e.message.generation_id == generation]
        incoming = [
            Incoming(topic, e.message.partition, e.message.offset, e.message.key, e.message.value,
                     token=(stream, e), full_topic=e.message.topic)
            for e in current
        ]
        for e in current:
            # the service has the bytes now; the ledger keeps the event (for its ack) without them
            e.value = None
        try:
            released = await self._run(self._handle_current, topic, incoming, generation)
        except Exception as exc:
            await self._crash(exc)
            return
        for e in current:
            e.message.value = None
        await self._ack(released)

    def _handle_current(self, topic: str, incoming: list[Incoming], generation: int | None) -> list[Any]:
        # runs on the service thread: a revocation may have happened since the batch was taken
        if generation is None or generation != self.generation:
            return []
        return self.service.handle(topic, incoming)

    async def tick(self) -> None:
        if self.failed is not None or self.generation is None:
            return
        try:
            released = await self._run(self.service.tick)
        except Exception as exc:
            await self._crash(exc)
            return
        await self._ack(released)

    async def _ack(self, tokens: Sequence[Any]) -> None:
        for stream, event in tokens:
            await stream.ack(event)

    async def on_revoked(self, revoked: set) -> None:
        self.generation = None
        if revoked:
            await self._run(self.service.reset)

    async def on_assigned(self, assigned: set) -> None:
        self.generation = self.app.consumer_generation_id
        log.info("assigned %d partition(s), generation %s", len(assigned), self.generation,
                 extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)})

    def on_model_event(self, event: ModelEvent) -> None:
        # from the models thread: the service's caches belong to the service thread
        self.executor.submit(self.service.on_model_event, event)

    async def _crash(self, exc: BaseException) -> None:
        # Nothing of the failed batch was acknowledged, so a restart redelivers it.
        self.failed = exc
        log.critical("the worker stops: %s", exc, exc_info=exc)
        await self.app.crash(exc)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class ModelEvents:
    """Every ``models`` event published after :meth:`start`, read by this worker alone.

    Not through the worker's consumer group: each worker must re-baseline. The
    consumer is assigned every partition at its current end before ``start``
    returns, so no event published after that is missed.
    """

    def __init__(self, settings: Settings, on_event: Callable[[ModelEvent], None]) -> None:
        self.settings = settings
        self.on_event = on_event
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="driftline-models", daemon=True)
        self._consumer: Any = None

    def start(self, timeout: float = 30.0) -> None:
        from confluent_kafka import TopicPartition

        from streams import kafka

        topic = self.settings.topic("models")
        consumer = kafka.consumer(self.settings, f"driftline-models-{uuid.uuid4().hex[:12]}",
                                  **{"enable.auto.commit": False})
        partitions = consumer.list_topics(topic, timeout=timeout).topics[topic].partitions
        ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1])
                for p in sorted(partitions)]
        consumer.assign(ends)
        self._consumer = consumer
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        from streams import kafka

        def received(event: ModelEvent) -> None:
            log.info("models event: %s %s v%s", event.event, event.model_id, event.version,
                     extra={"model_id": event.model_id, "event": event.event, "version": event.version})
            self.on_event(event)

        try:
            kafka.follow_model_events(self._consumer, self._stop, received)
        finally:
            self._consumer.close()


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
    """The Faust app wired to ``service``; start it with ``faust.Worker`` (see :func:`run_worker`)."""
    datadir = str(worker_datadir(settings, options))
    session_s = options.session_timeout_seconds
    app = faust.App(
        options.app_id,
        broker=_broker_urls(settings.kafka_bootstrap),
        datadir=datadir,
        autodiscover=False,
        # a new consumer group reads from the beginning: events produced before the worker started count
        consumer_auto_offset_reset="earliest",
        # acks wait for windows to be written: a rebalance must not wait for them (state is rebuilt instead)
        stream_wait_empty=False,
        topic_disable_leader=True,
        topic_allow_declare=False,
        broker_commit_interval=1.0,
        # Faust's default (1 MiB per partition and fetch) starves the agents of small messages: single
        # PredictionEvents went 2.5k/s with it and 6k/s with 8 MiB (docs/PERFORMANCE.md)
        consumer_max_fetch_size=8 * 1024 * 1024,
        broker_session_timeout=session_s,
        broker_heartbeat_interval=max(session_s / 10, 0.5),
        web_enabled=True,
        web_bind=options.web_host,
        web_host=options.web_host,
        web_port=options.web_port,
        store="memory://",
    )
    runner = Runner(app, service)

    def agent_for(topic: str) -> Callable[[Any], Any]:
        async def consume(stream: Any) -> None:
            async for events in stream.noack_take(options.batch_size, within=options.batch_within_seconds):
                await runner.handle(topic, stream, events)

        consume.__name__ = f"consume_{topic}"
        return consume

    for topic in INPUT_TOPICS:
        channel = app.topic(settings.topic(topic), key_serializer="raw", value_serializer="raw")
        app.agent(channel, name=f"driftline.{topic}")(agent_for(topic))

    @app.timer(options.tick_seconds)
    async def close_idle_windows() -> None:
        await runner.tick()

    @app.timer(2.0)
    async def report_lag() -> None:
        consumer = app.consumer
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
                position = await consumer.position(tp)
            except Exception:  # lag is best effort; the consumer may be rebalancing
                continue
            if high is not None and position is not None:
                service.metrics.lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(high - position, 0))

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(service.metrics.exposition(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: set, **kwargs: Any) -> None:
        await runner.on_revoked(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: set, **kwargs: Any) -> None:
        await runner.on_assigned(assigned)

    return app, runner


def build_service(settings: Settings, options: WorkerOptions) -> WorkerService:
    """The service with its real adapters: warehouse, Kafka producer, registry references."""
    from retrainer.policy import load_policy
    from retrainer.registry import Registry
    from streams import kafka
    from streams.references import RegistryReferences
    from streams.sinks import Sinks
    from streams.warehouse import Warehouse
    from streams.webhook import AlertWebhook

    warehouse = Warehouse.from_settings(settings, migrate=True)
    webhook = AlertWebhook(settings.alert_webhook) if settings.alert_webhook else None
    producer = kafka.producer(settings, **{"linger.ms": 5, "enable.idempotence": True})
    references = RegistryReferences(Registry.from_settings(settings), baseline=options.baseline)
    return WorkerService(settings, options, references=references, sinks=Sinks(settings, warehouse, producer, webhook=webhook),
                         policy=load_policy(settings.policy))


def check_copartitioned(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """The input topics' partition counts, which must be equal.

    A model's predictions and logged features go into the same windows, so
    their partitions must reach the same worker: Faust assigns partition *n* of
    topics with equal partition counts to one worker (as a join needs).
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


def run_worker(settings: Settings, options: WorkerOptions, *, loglevel: str = "info") -> int:
    """Create the topics, start the worker and block until it stops; returns the exit code."""
    from streams import kafka

    kafka.ensure_topics(settings, partitions=options.partitions)
    check_copartitioned(settings)
    service = build_service(settings, options)
    app, runner = create_app(settings, options, service)
    models = ModelEvents(settings, runner.on_model_event)
    models.start()
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=False)
    log.info("driftline worker %s starting: topics %s*, warehouse %s, web port %d", options.app_id,
             settings.topic_prefix, service.sinks.warehouse, options.web_port)
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


if __name__ == "__main__":
    # ``python -m streams.app [worker flags]`` is ``driftline worker [worker flags]``; the
    # settings then come from DRIFTLINE_* variables and DRIFTLINE_CONFIG.
    from driftline.cli import main as cli_main

    sys.exit(cli_main(["worker", *sys.argv[1:]]))
