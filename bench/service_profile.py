"""Throughput of ``WorkerService.handle`` alone, on batched backlogs, without Faust or a Kafka fetch.

``bench/throughput.py`` measures the whole worker end to end, and its
``--profile`` profiles the service only after its full runs. This script sets
up only what the service needs (a Kafka broker for the records the sinks
produce, a ClickHouse server for the rows, a registry with the model) and
times ``WorkerService.handle`` on a backlog of N events as ``PredictionBatch``
messages of 1,000 events (20 numeric + 2 categorical features + score, the
same columns and seeds as ``throughput.py``), ``--repeats`` times in one process.

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

    .venv/bin/python bench/service_profile.py --n 200000 --repeats 5 [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
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

from driftline.streams.codec import default_codec  # noqa: E402
from driftline.streams.records import LabelEvent, PredictionBatch, PredictionEvent  # noqa: E402


def backlog_columns(n: int) -> list[window_compute.Columns]:
    """The columns of each 1,000-event message of ``throughput.produce``'s batched backlog (same seeds)."""
    return [
        window_compute.synthetic(min(BATCH_EVENTS, n - start), seed=1_000 + start)
        for start in range(0, n, BATCH_EVENTS)
    ]


def encode_backlog(
    columns: Sequence[window_compute.Columns], model_id: str, version: str, n: int, per_window: int, window_ms: int
) -> list[bytes]:
    """The encoded messages of a batched backlog of ``model_id``, and the one event that closes its last window."""
    w = make_workload(model_id, "batched", n, per_window, window_ms)
    codec = default_codec()
    rng = np.random.default_rng(7)
    out = []
    for k, c in enumerate(columns):
        start = k * BATCH_EVENTS
        ids = [f"{w.name}-{i}" for i in range(start, start + c.n)]
        latency = rng.gamma(2.0, 4.0, c.n)
        out.append(
            codec.encode(
                PredictionBatch(
                    model_id,
                    version,
                    ids,
                    w.times(start, c.n),
                    numeric=c.numeric,
                    categorical=c.categorical,
                    predictions=c.predictions,
                    latency_ms=latency,
                )
            )
        )
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


def build_service(settings: Any, options: Any) -> Any:
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
    return WorkerService(
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
    from driftline.streams.worker import Incoming, WorkerOptions

    settings, model_id, version = bench.prepare(tag)
    window_ms = int(bench.window_seconds * 1000)
    values = encode_backlog(columns, model_id, version, n, per_window, window_ms)
    topic = settings.topic("predictions")
    key = model_id.encode()
    incoming = [
        Incoming("predictions", 0, offset, key, value, token=offset, full_topic=topic)
        for offset, value in enumerate(values)
    ]
    label_values = encode_labels(columns, model_id, n, per_window, window_ms, label_share) if label_share else []
    label_topic = settings.topic("labels")
    options = WorkerOptions(
        app_id=model_id, window_seconds=bench.window_seconds, lateness_seconds=0.0, write_raw=write_raw
    )
    service = build_service(settings, options)
    take = options.batch_size
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
                Incoming(
                    "labels", 0, label_offset + j, key, value, token=("l", label_offset + j), full_topic=label_topic
                )
                for j, value in enumerate(labels)
            ]
            label_offset += len(labels)
            if label_take and labels_ahead:
                service.handle("labels", label_take, backlog=True)
            service.handle("predictions", incoming[i : i + take], backlog=i + take < len(incoming))
            if label_take and not labels_ahead:
                service.handle("labels", label_take, backlog=i + take < len(incoming))
        service.drain()  # every write landed, as in the worker before it acknowledges
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        server_cpu = scale.cpu_seconds(server_pid) - server_started if server_pid else 0.0
        if profiler is not None:
            profiler.disable()
        windows = int(
            service.metrics.registry.get_sample_value("driftline_worker_windows_closed_total", {"kind": "drift"}) or 0
        )
    finally:
        service.outbox.close()
        service.sinks.producer.flush(30)
        service.sinks.warehouse.close()
    return seconds, cpu, server_cpu, windows


def print_profile(profiler: cProfile.Profile, top: int, out: Callable[[str], None]) -> None:
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        out(f"PROFILE top {top} by {order}:")
        for line in buf.getvalue().splitlines():
            if line.strip() and not line.startswith(("   Ordered by", "   List reduced")):
                out(f"PROFILE   {line}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="events of the backlog (a multiple of --per-window)")
    parser.add_argument("--per-window", type=int, default=10_000, help="events per event-time window")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="event-time window size")
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
    args = parser.parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = lambda line: print(line, flush=True)  # noqa: E731
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
                f"RESULT WorkerService.handle n={args.n} per_window={args.per_window} "
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
