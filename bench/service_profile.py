"""Throughput of ``WorkerService.handle`` alone, on batched backlogs, without Faust or a Kafka fetch.

``bench/throughput.py`` measures the whole worker end to end, and its
``--profile`` profiles the service only after its full runs. This script sets
up only what the service needs (a Kafka broker for the records the sinks
produce, a ClickHouse server for the rows, a registry with the model) and
times ``WorkerService.handle`` on a backlog of N events as ``PredictionBatch``
messages of 1,000 events (20 numeric + 2 categorical features + score, the
same columns and seeds as ``throughput.py``), or with ``--mode single`` as one
``PredictionEvent`` message per event, ``--repeats`` times in one process.

The messages are encoded here with the worker's codec and handed to the
service in takes of ``batch_size`` messages, as the Faust app hands them: the
Kafka fetch is not measured, the decoding is. Each repetition gets a new
model, topics and database, so that no repetition sees windows written by
another, and a new service, so that each pays what a fresh worker pays (its
recovery queries and the calibration of its reference included).

Each run prints the wall-clock seconds and events/s of ``handle``, and the CPU
seconds of the whole process over that time (every thread: the raw-row and
window writers too). On a shared machine the CPU seconds vary less than the
wall clock; the embedded ClickHouse server runs on the same cores, and the
service waits for it. ``--profile`` adds one more repetition under cProfile
and prints its top costs.

Kafka and ClickHouse: ``DRIFTLINE_KAFKA_BOOTSTRAP`` and ``DRIFTLINE_WAREHOUSE``
(an ``http://`` URL) are used when set, with private topics and databases
dropped at the end; otherwise the script starts a broker and the embedded
ClickHouse server itself, as ``throughput.py`` does. Lines starting with
``RESULT`` are the results::

    .venv/bin/python bench/service_profile.py --n 200000 --repeats 5 [--mode single] [--profile]

``--core`` times only the core's share of ``handle`` (batch checks, concatenation,
``Monitor.ingest_all`` and ``close_due``) on the same backlog decoded as the worker
decodes it, in polls of ``--take`` messages and parts of ``max_take_events``, with no
Kafka or ClickHouse, and prints a digest of what the closed windows measured, so that a
change to the core can show its rows unchanged::

    .venv/bin/python bench/service_profile.py --core --n 100000 --repeats 5 [--mode single]

``--core --models N --features F`` runs the same core calls on ``bench/scale.py``'s many-models traffic
(N model versions, each with its own reference, Zipf-skewed, ``--event-rate`` events per second of event
time, batches of at most 1,000 rows, ``--mode batched|mixed|single``, predictions only) followed by one
closer per model: each poll then holds many small batches, a few events per version, as a worker of a
thousand models sees them::

    .venv/bin/python bench/service_profile.py --core --models 1000 --features 30 --n 300000 --window-seconds 1

``--models N --features F`` without ``--core`` runs the same traffic, with ``--label-share`` of it labelled
(single ``LabelEvent`` messages), through the whole ``WorkerService.handle`` in polls of ``--take`` messages:
the shell included (per-version lookups, references loaded from a real registry, recovery reads, the window
writes). It prints the CPU seconds of the first poll (every version's first events) apart from the rest,
how long each window waited from its close to the end of its write (``close_to_written_ms``), and the CPU
the window thread spent per window written (the profile covers the service thread only)::

    .venv/bin/python bench/service_profile.py --models 1000 --features 30 --n 300000 --window-seconds 1 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import scale  # noqa: E402
import throughput  # noqa: E402
import window_compute  # noqa: E402
from throughput import BATCH_EVENTS, Bench, Stack, make_workload  # noqa: E402

from driftline.streams import kafka  # noqa: E402
from driftline.streams.codec import default_codec  # noqa: E402
from driftline.streams.records import LabelEvent, PredictionEvent  # noqa: E402


def backlog_columns(n: int) -> list[window_compute.Columns]:
    """The columns of each 1,000-event message of ``throughput.produce``'s batched backlog (same seeds)."""
    return [
        window_compute.synthetic(min(BATCH_EVENTS, n - start), seed=1_000 + start)
        for start in range(0, n, BATCH_EVENTS)
    ]


def encode_backlog(
    columns: Sequence[window_compute.Columns],
    model_id: str,
    version: str,
    n: int,
    per_window: int,
    window_ms: int,
    mode: str = "batched",
    now_s: float | None = None,
) -> list[bytes]:
    """The encoded messages of a backlog of ``model_id`` (one ``PredictionBatch`` per 1,000 events, or one
    ``PredictionEvent`` per event: ``mode='single'``), and the one event that closes its last window.
    ``now_s``: the wall clock the backlog's times are placed before (default: now)."""
    w = make_workload(model_id, mode, n, per_window, window_ms)
    if now_s is not None:
        w = replace(w, t0=(int(now_s * 1000) - 2 * throughput.DAY_MS) // window_ms * window_ms)
    codec = default_codec()
    rng = np.random.default_rng(7)
    out = []
    for k, c in enumerate(columns):
        start = k * BATCH_EVENTS
        ids = [f"{w.name}-{i}" for i in range(start, start + c.n)]
        latency = rng.gamma(2.0, 4.0, c.n)
        records = scale.prediction_records(
            c, model_id, version, ids, w.times(start, c.n), latency, single=mode == "single"
        )
        out.extend(codec.encode(record) for record in records)
    out.append(
        codec.encode(PredictionEvent(f"{w.name}-closer", model_id, version, w.closer_time, {"f00": 0.0}, {}, 0.5))
    )
    return out


def encode_labels(
    columns: Sequence[window_compute.Columns], model_id: str, n: int, per_window: int, window_ms: int, share: float
) -> list[list[bytes]]:
    """Single ``LabelEvent`` messages for ``share`` of each backlog message's events (as ``bench/scale.py`` sends
    them: one message a label, 1 ms after its prediction, 30% positive), one list per prediction message."""
    w = make_workload(model_id, "batched", n, per_window, window_ms)
    codec = default_codec()
    rng = np.random.default_rng(11)
    out = []
    for k, c in enumerate(columns):
        start = k * BATCH_EVENTS
        times = w.times(start, c.n)
        labelled = np.flatnonzero(rng.random(c.n) < share).tolist()
        out.append(
            [
                codec.encode(
                    LabelEvent(f"{w.name}-{start + i}", model_id, int(times[i]) + 1, float(rng.random() < 0.3))
                )
                for i in labelled
            ]
        )
    return out


def build_service(settings: Any, options: Any, service_class: Any = None) -> Any:
    """The service with its real adapters, as ``driftline.streams.app.build_service`` wires it (without Faust)."""
    from driftline.retrainer.policy import load_policy
    from driftline.retrainer.registry import Registry
    from driftline.streams import kafka
    from driftline.streams.references import RegistryReferences
    from driftline.streams.sinks import Sinks
    from driftline.streams.warehouse import Warehouse
    from driftline.streams.worker import WorkerService

    warehouse = Warehouse.from_settings(settings, migrate=True)
    producer = kafka.producer(settings, **{"linger.ms": 5, "enable.idempotence": True})
    references = RegistryReferences(Registry.from_settings(settings), baseline=options.baseline)
    return (service_class or WorkerService)(
        settings,
        options,
        references=references,
        sinks=Sinks(settings, warehouse, producer),
        policy=load_policy(settings.policy),
    )


def run_once(
    bench: Bench,
    tag: str,
    columns: Sequence[window_compute.Columns],
    n: int,
    per_window: int,
    profiler: cProfile.Profile | None = None,
    write_raw: bool = True,
    mode: str = "batched",
    label_share: float = 0.0,
    labels_ahead: bool = False,
    server_pid: int | None = None,
) -> tuple[float, float, float, int]:
    """Wall-clock and CPU seconds (this process, all threads) that ``WorkerService.handle`` takes over the
    whole backlog, the ClickHouse server's CPU seconds over that time (``server_pid``, else 0), and the windows
    it wrote.

    With ``label_share``, each take of prediction messages is followed by one take of the labels of its
    events on the labels topic (preceded, with ``labels_ahead``: the labels then wait for their predictions).
    """
    from driftline.streams.messages import Messages
    from driftline.streams.worker import Incoming, WorkerOptions

    settings, model_id, version = bench.prepare(tag)
    window_ms = int(bench.window_seconds * 1000)
    values = encode_backlog(columns, model_id, version, n, per_window, window_ms, mode)
    topic = settings.topic("predictions")
    key = model_id.encode()
    incoming = [Incoming("predictions", 0, offset, key, value, full_topic=topic) for offset, value in enumerate(values)]
    label_values = encode_labels(columns, model_id, n, per_window, window_ms, label_share) if label_share else []
    label_topic = settings.topic("labels")
    options = WorkerOptions(
        app_id=model_id, window_seconds=bench.window_seconds, lateness_seconds=0.0, write_raw=write_raw
    )
    service = build_service(settings, options)
    take = options.batch_size
    # each take in columns, as the fetch thread hands a poll over (made before the clock starts)
    takes = [Messages.of("predictions", incoming[i : i + take], topic) for i in range(0, len(incoming), take)]
    try:
        gc.collect()
        if profiler is not None:
            profiler.enable()
        server_started = scale.cpu_seconds(server_pid) if server_pid else 0.0
        started, cpu_started = time.perf_counter(), time.process_time()
        label_offset = 0
        for i in range(0, len(incoming), take):
            labels = [v for values in label_values[i : i + take] for v in values]
            label_take = [
                Incoming("labels", 0, label_offset + j, key, value, full_topic=label_topic)
                for j, value in enumerate(labels)
            ]
            label_offset += len(labels)
            if label_take and labels_ahead:
                service.handle("labels", label_take, backlog=True)
            service.handle("predictions", takes[i // take], backlog=i + take < len(incoming))
            if label_take and not labels_ahead:
                service.handle("labels", label_take, backlog=i + take < len(incoming))
        service.drain()  # every write landed, as in the worker before it acknowledges
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        server_cpu = scale.cpu_seconds(server_pid) - server_started if server_pid else 0.0
        if profiler is not None:
            profiler.disable()
        windows = _drift_windows_closed(service)
    finally:
        _close(service)
    return seconds, cpu, server_cpu, windows


def _drift_windows_closed(service: Any) -> int:
    """The drift windows the service closed, from its own metrics."""
    closed = service.metrics.registry.get_sample_value("driftline_worker_windows_closed_total", {"kind": "drift"})
    return int(closed or 0)


def _close(service: Any) -> None:
    """Stop the service's writer threads and its clients, as the worker does at exit."""
    service.outbox.close()
    service.sinks.producer.flush(30)
    service.sinks.warehouse.close()


def shell_polls(traffic: Any, take: int) -> list[tuple[str, list[Any]]]:
    """``bench/scale.py``'s traffic as the polls a one-partition worker takes: per slice of event time, its
    predictions in takes of ``take`` messages, then its labels; the closers last."""
    from driftline.streams.worker import Incoming

    offsets = {"predictions": 0, "labels": 0}
    polls: list[tuple[str, list[Any]]] = []

    def add(topic: str, messages: Sequence[Any]) -> None:
        for lo in range(0, len(messages), take):
            chunk = messages[lo : lo + take]
            first = offsets[topic]
            offsets[topic] += len(chunk)
            polls.append(
                (
                    topic,
                    [
                        Incoming(topic, 0, first + k, m.key.encode(), m.value, token=(topic, first + k))
                        for k, m in enumerate(chunk)
                    ],
                )
            )

    for s in traffic.slices():
        for topic in ("predictions", "labels"):
            add(topic, [m for m in s.messages if m.topic == topic])
    add("predictions", traffic.closers())
    return polls


def models_shell_once(
    bench: Bench,
    tag: str,
    polls: Sequence[tuple[str, list[Any]]],
    events: int,
    window_seconds: float,
    profiler: cProfile.Profile | None = None,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """CPU seconds of ``WorkerService.handle`` (this process, every thread) over the polls, a fresh service
    on a fresh database: the first poll (each version's first events: references, recovery reads) apart
    from the rest; the windows written and how long each waited from its close to the end of its write."""
    from driftline.streams.worker import WorkerOptions, WorkerService

    waits: list[float] = []
    writes: list[tuple[int, float]] = []  # (windows, CPU seconds of the window thread) per write

    class TimedService(WorkerService):
        def _write_windows(self, closed_windows: list[Any]) -> None:
            started = time.thread_time()
            super()._write_windows(closed_windows)
            writes.append((len(closed_windows), time.thread_time() - started))
            done = time.time() * 1000
            waits.extend(done - w.computed_at for w in closed_windows)

    settings = bench.settings(tag)
    kafka.ensure_topics(settings)
    options = WorkerOptions(app_id=tag, window_seconds=window_seconds, lateness_seconds=0.0, idle_seconds=None)
    service = build_service(settings, options, TimedService)
    # named as the consumer names them, outside the timed part (else handle names each message)
    polls = [(topic, [replace(m, full_topic=settings.topic(topic)) for m in messages]) for topic, messages in polls]
    try:
        gc.collect()
        server_started = scale.cpu_seconds(server_pid) if server_pid else 0.0
        cpu_started = time.process_time()
        first_cpu = 0.0
        if profiler is not None:
            profiler.enable()
        for i, (topic, messages) in enumerate(polls):
            service.handle(topic, messages, backlog=i + 1 < len(polls))
            service.tick()  # the app's timer, here once a poll: gathered writes wait at most about a tick
            if i == 0:
                first_cpu = time.process_time() - cpu_started
        service.drain()
        if profiler is not None:
            profiler.disable()
        cpu = time.process_time() - cpu_started
        server_cpu = scale.cpu_seconds(server_pid) - server_started if server_pid else 0.0
        windows = _drift_windows_closed(service)
    finally:
        _close(service)
    return {
        "cpu": cpu,
        "first_cpu": first_cpu,
        "server_cpu": server_cpu,
        "windows": windows,
        "wait_p50": float(np.percentile(waits, 50)) if waits else float("nan"),
        "wait_p99": float(np.percentile(waits, 99)) if waits else float("nan"),
        "events": events,
        "writes": len(writes),
        "write_cpu_ms_per_window": 1000 * sum(c for _, c in writes) / max(1, sum(n for n, _ in writes)),
    }


def models_shell_main(args: argparse.Namespace, out: Callable[[str], None], say: Callable[[str], None]) -> None:
    """``--models N --features F`` without ``--core``: the whole service at many versions, shell included."""
    from driftline.retrainer.registry import Registry

    out(window_compute.machine_line())
    home = Path(tempfile.mkdtemp(prefix="driftline-service-"))
    stack = Stack.start(home, say)
    bench = Bench(stack, home, uuid.uuid4().hex[:8], args.window_seconds, 600.0, say)
    try:
        port = int(stack.warehouse_base.rsplit(":", 1)[1])
        server_pid = stack.chserver.pid() if stack.chserver is not None else scale.listening_pid(port)
        registry = Registry.from_settings(bench.settings("reg"))
        fleet = scale.register_fleet(registry, f"s{bench.run_id}", args.models, args.features, args.mode, say)
        window_ms = int(args.window_seconds * 1000)
        t0 = (int(time.time() * 1000) - 2 * throughput.DAY_MS) // window_ms * window_ms
        traffic = scale.Traffic(fleet, args.n, args.event_rate, window_ms, t0, label_share=args.label_share)
        polls = shell_polls(traffic, args.take)
        say(f"{len(polls)} polls, {traffic.events:,} predictions, {traffic.labels:,} labels")
        runs = []
        for i in range(args.warmup + args.repeats):
            r = models_shell_once(bench, f"r{i}", polls, traffic.events, args.window_seconds, None, server_pid)
            timed = i >= args.warmup
            if timed:
                runs.append(r)
            out(
                f"{'RUN' if timed else 'WARMUP'} {i}: windows={r['windows']} cpu_s={r['cpu']:.2f} "
                f"first_poll_cpu_s={r['first_cpu']:.2f} server_cpu_s={r['server_cpu']:.2f} "
                f"close_to_written_ms p50={r['wait_p50']:.0f} p99={r['wait_p99']:.0f} window_writes={r['writes']} "
                f"write_cpu_ms_per_window={r['write_cpu_ms_per_window']:.1f}"
            )
        if runs:

            def med(key: str) -> float:
                return statistics.median(r[key] for r in runs)

            per_m = 1e6 / traffic.events
            out(
                f"RESULT shell models={args.models} features={args.features} mode={args.mode} n={traffic.events} "
                f"labels={traffic.labels} take={args.take} runs={len(runs)} windows={runs[0]['windows']} "
                f"cpu_s_per_million median={med('cpu') * per_m:.2f} "
                f"first_poll_cpu_s median={med('first_cpu'):.2f} "
                f"rest_cpu_s_per_million median={(med('cpu') - med('first_cpu')) * per_m:.2f} "
                f"server_cpu_s_per_million={med('server_cpu') * per_m:.2f} "
                f"close_to_written_ms_p99 median={med('wait_p99'):.0f} "
                f"write_cpu_ms_per_window median={med('write_cpu_ms_per_window'):.1f}"
            )
        if args.profile:
            profiler = cProfile.Profile(time.process_time)
            models_shell_once(bench, "prof", polls, traffic.events, args.window_seconds, profiler, server_pid)
            print_profile(profiler, args.top, out)
        out(window_compute.machine_line())
    finally:
        throughput.tear_down(bench, stack, home, keep=args.keep, say=say)


def print_profile(profiler: cProfile.Profile, top: int, out: Callable[[str], None]) -> None:
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        out(f"PROFILE top {top} by {order}:")
        for line in buf.getvalue().splitlines():
            if line.strip() and not line.startswith(("   Ordered by", "   List reduced")):
                out(f"PROFILE   {line}")


# A fixed wall clock for --core (2026-12-06): the same windows, seeds and digest in every run.
CORE_CLOCK_MS = 1_796_600_000_000


def core_polls(
    columns: Sequence[window_compute.Columns], n: int, per_window: int, window_ms: int, mode: str, take: int
) -> list[list[tuple[Any, np.ndarray]]]:
    """The backlog decoded as the worker decodes it, poll by poll (``take`` messages) and part by part
    (``WorkerOptions.max_take_events``): each part as its batches and, per row, the index of its message."""
    values = encode_backlog(columns, "bench", "1", n, per_window, window_ms, mode, now_s=CORE_CLOCK_MS / 1000)
    return decoded_parts(values, take)


def decoded_parts(values: Sequence[bytes], take: int) -> list[list[tuple[Any, np.ndarray]]]:
    """Encoded messages decoded as the worker decodes them, poll by poll (``take`` messages) and part by part
    (``WorkerOptions.max_take_events``): each part as its batches and, per row, the index of its message."""
    from driftline.streams.codec import decode_bulk
    from driftline.streams.core.batches import take_rows
    from driftline.streams.worker import WorkerOptions, part_bounds

    codec = default_codec()
    parts = []
    for start in range(0, len(values), take):
        decoded = decode_bulk(codec, values[start : start + take], topic="predictions")
        events = np.ones(min(take, len(values) - start), dtype=np.int64)
        for i, record in decoded.others:
            events[i] = record.n
        for lo, hi in part_bounds(events, WorkerOptions().max_take_events):
            part = [(record, np.full(record.n, i)) for i, record in decoded.others if lo <= i < hi]
            for g in decoded.groups:
                rows = np.flatnonzero((g.messages >= lo) & (g.messages < hi))
                if rows.size:
                    part.append((take_rows(g.batch, rows), g.messages[rows]))
            parts.append(sorted(part, key=lambda p: int(p[1][0])))
    return parts


def many_models_workload(
    models: int, features: int, n: int, event_rate: float, window_ms: int, mode: str, take: int
) -> tuple[dict[str, Any], list[list[tuple[Any, np.ndarray]]]]:
    """``bench/scale.py``'s traffic of ``models`` versions (predictions only, then one closer per model),
    decoded in polls of ``take`` messages, and each model's reference as the worker holds it (read back from
    its registered JSON form, re-labelled per model as ``scale.register_fleet`` registers it)."""
    from driftline.streams.core.calibration import with_calibration
    from driftline.streams.core.reference import ReferenceProfile

    # with the calibration registration stores (scale.register_fleet): no first window resamples
    base = with_calibration(
        window_compute.build_reference(scale.feature_columns(scale.REFERENCE_ROWS, features, seed=0))
    ).to_dict()
    model_ids = [f"m{i:04d}" for i in range(models)]
    fleet = scale.Fleet(model_ids, ["1"] * models, scale.single_models(models, mode), features)
    t0 = (CORE_CLOCK_MS - 2 * throughput.DAY_MS) // window_ms * window_ms
    traffic = scale.Traffic(fleet, n, event_rate, window_ms, t0, label_share=0.0)
    values = [m.value for s in traffic.slices() for m in s.messages if m.topic == "predictions"]
    values += [m.value for m in traffic.closers()]
    references = {
        model_id: ReferenceProfile.from_dict(
            json.loads(json.dumps({**base, "model_id": model_id, "model_version": "1"}))
        )
        for model_id in model_ids
    }
    return references, decoded_parts(values, take)


def core_once(
    reference: Any, parts: Sequence[list[tuple[Any, np.ndarray]]], window_seconds: float
) -> tuple[float, Any]:
    """CPU seconds of the worker's core calls on the decoded parts (batch checks, concatenation, ``Monitor``
    ingestion and closing; no decoding, no Kafka, no warehouse), and the windows closed.

    ``reference``: the one model's reference, or a dict of references by model id: the versions of each
    part are then grouped per model version and ingested model by model, as ``WorkerService`` does."""
    from driftline.retrainer.policy import load_policy
    from driftline.streams.core.batches import concat_batches, in_arrival_order
    from driftline.streams.core.monitor import Arrival, Monitor
    from driftline.streams.core.validation import check_batch
    from driftline.streams.worker import WorkerOptions, monitor_settings

    options = WorkerOptions(window_seconds=window_seconds, lateness_seconds=0.0)
    policy = load_policy(None)
    assert options.idle_seconds is not None
    monitor = Monitor(
        lambda model_id: monitor_settings(policy, options, model_id),
        idle_ms=int(options.idle_seconds * 1000),
        index_ttl_ms=int(options.index_ttl_hours * 3_600_000),
        index_max_entries=options.index_max_entries,
    )
    now = CORE_CLOCK_MS
    outcomes: list[Any] = []
    if isinstance(reference, dict):
        for model_id in reference:
            monitor.recover(model_id, "1", None)
        gc.collect()
        cpu_started = time.process_time()
        for part in parts:
            groups: dict[tuple[str, str], list[tuple[Any, np.ndarray]]] = {}
            for batch, owners in part:
                if check_batch(batch, now) is None:
                    groups.setdefault((batch.model_id, batch.model_version), []).append((batch, owners))
            by_model: dict[str, list[Any]] = {}
            for (model_id, _), group in groups.items():
                batch, owners = in_arrival_order(
                    concat_batches([b for b, _ in group]), np.concatenate([o for _, o in group])
                )
                by_model.setdefault(model_id, []).append(Arrival(batch, reference[model_id], owners, True))
            for model_id, arrivals in by_model.items():
                monitor.ingest_all(model_id, arrivals, source=("predictions", 0), now_ms=now)
            outcomes += monitor.close_due(now)
        return time.process_time() - cpu_started, outcomes
    monitor.recover("bench", "1", None)
    gc.collect()
    cpu_started = time.process_time()
    for part in parts:
        ok = [(batch, owners) for batch, owners in part if check_batch(batch, now) is None]
        batch, owners = in_arrival_order(concat_batches([b for b, _ in ok]), np.concatenate([o for _, o in ok]))
        monitor.ingest_all("bench", [Arrival(batch, reference, owners, True)], source=("predictions", 0), now_ms=now)
        outcomes += monitor.close_due(now)
    return time.process_time() - cpu_started, outcomes


def outcomes_digest(outcomes: Sequence[Any]) -> str:
    """A hash of what the closed windows measured (profiles, drift rows, latency, detectors): equal digests
    before and after a change show the rows it leads to are bit-identical."""
    h = hashlib.sha256()
    for o in outcomes:
        record = [
            o.window_start,
            o.n_current,
            [repr(sorted(vars(d).items())) for d in o.drift],
            o.profile.to_dict(),
            o.latency,
            [repr(c) for c in o.changes],
            repr(o.detector_state),
        ]
        h.update(json.dumps(record, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def core_main(args: argparse.Namespace, out: Callable[[str], None]) -> None:
    from driftline.streams.core.reference import ReferenceProfile

    window_ms = int(args.window_seconds * 1000)
    if args.models:
        started = time.perf_counter()
        references, parts = many_models_workload(
            args.models, args.features, args.n, args.event_rate, window_ms, args.mode, args.take
        )
        print(f"workload built in {time.perf_counter() - started:.1f} s: {len(parts)} parts", file=sys.stderr)
        core_runs(args, references, parts, out, f"models={args.models} features={args.features} ")
        return
    data = window_compute.synthetic(window_compute.REFERENCE_ROWS, seed=0)
    # the reference as the worker holds it: read back from its registered JSON form
    reference = ReferenceProfile.from_dict(
        json.loads(json.dumps(window_compute.build_reference(data, "bench", "1").to_dict()))
    )
    parts = core_polls(backlog_columns(args.n), args.n, args.per_window, window_ms, args.mode, args.take)
    core_runs(args, reference, parts, out, f"per_window={args.per_window} ")


def core_runs(
    args: argparse.Namespace,
    reference: Any,
    parts: Sequence[list[tuple[Any, np.ndarray]]],
    out: Callable[[str], None],
    what: str,
) -> None:
    cpus, digest, windows = [], "", 0
    for i in range(args.warmup + args.repeats):
        cpu, outcomes = core_once(reference, parts, args.window_seconds)
        digest, windows = outcomes_digest(outcomes), len(outcomes)
        if i >= args.warmup:
            cpus.append(cpu)
            out(f"RUN {i}: core cpu_s={cpu:.3f} cpu_s_per_million={cpu * 1e6 / args.n:.3f}")
    out(
        f"RESULT core mode={args.mode} n={args.n} {what}take={args.take} runs={len(cpus)} "
        f"windows={windows} cpu_s_per_million median={statistics.median(cpus) * 1e6 / args.n:.3f} "
        f"min={min(cpus) * 1e6 / args.n:.3f} digest={digest}"
    )
    if args.profile:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        core_once(reference, parts, args.window_seconds)
        profiler.disable()
        print_profile(profiler, args.top, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="events of the backlog (a multiple of --per-window)")
    parser.add_argument("--per-window", type=int, default=10_000, help="events per event-time window")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="event-time window size")
    parser.add_argument(
        "--mode",
        choices=("batched", "single", "mixed"),
        default="batched",
        help="messages of 1,000-event batches, or one single event per message (mixed: --models only, "
        "the lower-traffic half of the models log single events)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first (imports, caches)")
    parser.add_argument(
        "--no-raw",
        action="store_true",
        help="do not insert the raw predictions (the worker's --no-raw), to see the rest without them",
    )
    parser.add_argument(
        "--label-share", type=float, default=0.0, help="share of the predictions that get a label (single messages)"
    )
    parser.add_argument(
        "--labels-ahead", action="store_true", help="hand each take's labels to the service before its predictions"
    )
    parser.add_argument("--profile", action="store_true", help="one more repetition under cProfile")
    parser.add_argument("--top", type=int, default=30, help="profile lines to print per ordering")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--core",
        action="store_true",
        help="time only the core's calls (batch checks, Monitor ingestion and closing) on the decoded backlog, "
        "in this process, without Kafka or ClickHouse; prints a digest of the windows to compare rows",
    )
    parser.add_argument(
        "--take", type=int, default=1000, help="--core, --models: messages a poll (WorkerOptions.batch_size)"
    )
    parser.add_argument(
        "--models",
        type=int,
        default=0,
        help="bench/scale.py's traffic over this many model versions (with --core: the core alone; without: "
        "the whole service, shell included)",
    )
    parser.add_argument("--features", type=int, default=30, help="--models: features per model")
    parser.add_argument("--event-rate", type=float, default=100_000.0, help="--models: events per second of event time")
    args = parser.parse_args(argv)
    if args.core:
        core_main(args, lambda line: print(line, flush=True))
        return 0

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = lambda line: print(line, flush=True)  # noqa: E731
    if args.models:
        models_shell_main(args, out, say)
        return 0
    out(window_compute.machine_line())
    home = Path(tempfile.mkdtemp(prefix="driftline-service-"))
    stack = Stack.start(home, say)
    bench = Bench(stack, home, uuid.uuid4().hex[:8], args.window_seconds, 600.0, say)
    try:
        columns = backlog_columns(args.n)
        port = int(stack.warehouse_base.rsplit(":", 1)[1])
        server_pid = stack.chserver.pid() if stack.chserver is not None else scale.listening_pid(port)
        rates, cpus, server_cpus = [], [], []
        for i in range(args.warmup + args.repeats):
            seconds, cpu, server_cpu, windows = run_once(
                bench,
                f"r{i}",
                columns,
                args.n,
                args.per_window,
                write_raw=not args.no_raw,
                mode=args.mode,
                label_share=args.label_share,
                labels_ahead=args.labels_ahead,
                server_pid=server_pid,
            )
            timed = i >= args.warmup
            if timed:
                rates.append(args.n / seconds)
                cpus.append(cpu)
                server_cpus.append(server_cpu)
            out(
                f"{'RUN' if timed else 'WARMUP'} {i}: n={args.n} windows={windows} seconds={seconds:.3f} "
                f"cpu_s={cpu:.3f} server_cpu_s={server_cpu:.3f} events_per_s={args.n / seconds:,.0f}"
            )
        if rates:
            out(
                f"RESULT WorkerService.handle mode={args.mode} n={args.n} per_window={args.per_window} "
                f"raw={'no' if args.no_raw else 'yes'} label_share={args.label_share:g} "
                f"labels_ahead={'yes' if args.labels_ahead else 'no'} runs={len(rates)} "
                f"events_per_s median={statistics.median(rates):,.0f} min={min(rates):,.0f} max={max(rates):,.0f} "
                f"cpu_s median={statistics.median(cpus):.3f} (process CPU, every thread) "
                f"cpu_s_per_million={statistics.median(cpus) / args.n * 1e6:.2f} "
                f"server_cpu_s_per_million={statistics.median(server_cpus) / args.n * 1e6:.2f}"
            )
        if args.profile:
            profiler = cProfile.Profile()
            seconds, _, _, _ = run_once(
                bench,
                "prof",
                columns,
                args.n,
                args.per_window,
                profiler,
                write_raw=not args.no_raw,
                mode=args.mode,
                label_share=args.label_share,
                labels_ahead=args.labels_ahead,
            )
            out(f"PROFILE n={args.n} in {seconds:.2f} s under cProfile = {args.n / seconds:,.0f} events/s")
            print_profile(profiler, args.top, out)
        out(window_compute.machine_line())
    finally:
        throughput.tear_down(bench, stack, home, keep=args.keep, say=say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
