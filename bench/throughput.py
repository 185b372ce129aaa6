"""End-to-end throughput of the streams worker: real Kafka, the embedded ClickHouse, ``driftline worker``.

For each run the script registers a model (20 numeric + 2 categorical
features + score; reference of 5,000 rows) in a SQLite registry, produces a
backlog of predictions to a private ``predictions`` topic, then starts
``driftline worker`` as a subprocess (own consumer group, topics, ClickHouse
database and web port; a new group reads from the earliest offset) and
measures:

- **events/s**: N divided by the time from the first consumed message
  (``driftline_worker_messages_total`` on the worker's ``/metrics``, polled
  every 50 ms) to the moment every event's raw row is in ``predictions`` and
  every window is in ``window_profiles`` (polled every 100 ms). The backlog
  ends with one extra event in the next window, so that the last full window
  closes by the watermark rather than by the idle timer;
- **window close-to-row latency**: for every window, the moment its
  ``window_profiles`` rows were first seen by the poll minus their
  ``computed_at`` (the worker's wall clock when it closed the window, before
  computing it), so compute + every write of the window + up to one poll
  interval; and, from the worker's JSON log, the time of its "written" line
  minus ``computed_at`` (no poll interval). In a backlog, a window becomes
  closable while the worker is handling the batch of messages that passes
  it; that batch's handling time (``driftline_worker_batch_seconds``) is
  printed too;
- **peak RSS** of the worker process (``VmHWM`` in ``/proc/PID/status``) at N
  and at 4N batched events;
- **live latency**: a worker already running gets ``--live-rate`` events/s
  (batches of 1,000, event time = now) for ``--live-seconds``, with 2-second
  windows and no allowed lateness; a window may close at its ``window_end``,
  so its latency is the moment its rows show in ClickHouse (poll) or the
  worker logs them written, minus ``window_end``. That is what a user waits
  for: the wait for the next batch of messages, the handling of that batch,
  the compute and every write.

Runs: N events as ``PredictionBatch`` es of 1,000, 4N the same way, N/4 (or
``--n-single``) single ``PredictionEvent`` s, then the live run. Then the
per-window compute of driftline's core at the backlog's window size, in this
process (``bench/window_compute.py``). ``--profile`` adds an in-process
profile of the worker service's hot path (``WorkerService.handle`` on a
batched and a single-event backlog, without Faust) and prints the top costs.
``--worker-args`` passes flags to every worker (e.g. ``--no-raw`` or
``--index-max-entries 100000``) to see what they change.

Kafka and ClickHouse: ``DRIFTLINE_KAFKA_BOOTSTRAP`` and ``DRIFTLINE_WAREHOUSE``
(an ``http://`` URL, e.g. from ``driftline stack up``) are used when set, with
private topics and databases that are dropped at the end; otherwise the
script starts a Kafka broker and the embedded ClickHouse server on free ports
under a temporary directory and stops them at the end.

A first, unmeasured run (``--warm-up``, 100,000 batched events) warms the
services: a broker and a ClickHouse server that have just started are slower
for a while (the JVM's JIT, the server's first allocations), and in production
they have been up for long. Every measured run still starts a worker afresh.

Run ``python bench/throughput.py`` (a few minutes on 2 cores), or ``--quick``.
Lines starting with ``RESULT`` and ``RATIO`` are the results.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import scale  # noqa: E402
import window_compute  # noqa: E402

from driftline.retrainer.registry import Lineage, Registry  # noqa: E402
from driftline.settings import Settings  # noqa: E402
from driftline.stack.kafka_local import KafkaBroker, admin_answers  # noqa: E402
from driftline.stack.manage import ping_warehouse, warehouse_location  # noqa: E402
from driftline.stack.process import ManagedProcess, free_port, wait_until  # noqa: E402
from driftline.streams import kafka  # noqa: E402
from driftline.streams.codec import default_codec  # noqa: E402
from driftline.streams.records import PredictionEvent  # noqa: E402
from driftline.streams.warehouse import Warehouse, WarehouseLocation  # noqa: E402

BATCH_EVENTS = 1_000
BATCHED_TARGET = 250_000.0
SINGLE_TARGET = 50_000.0
RSS_FLAT = 1.25  # RSS(4N) / RSS(N) at most this counts as flat
METRICS_POLL_S = 0.05
WAREHOUSE_POLL_S = 0.1
DAY_MS = 86_400_000
RUNS = ("batched", "batched4", "single", "live")


# ----------------------------------------------------------------------------- services


@dataclass
class Stack:
    """Kafka and ClickHouse for the benchmark: given ones, or started here and stopped by :meth:`stop`."""

    kafka_bootstrap: str
    warehouse_base: str  # scheme://host:port, without a database
    broker: KafkaBroker | None = None
    chserver: ManagedProcess | None = None

    @classmethod
    def start(cls, home: Path, say: Callable[[str], None]) -> Stack:
        bootstrap = os.environ.get("DRIFTLINE_KAFKA_BOOTSTRAP")
        warehouse = os.environ.get("DRIFTLINE_WAREHOUSE")
        stack = cls("", "")
        try:
            if bootstrap:
                if not admin_answers(bootstrap, timeout=5):
                    raise RuntimeError(f"DRIFTLINE_KAFKA_BOOTSTRAP={bootstrap} does not answer")
                stack.kafka_bootstrap = bootstrap
                say(f"kafka: using {bootstrap}")
            else:
                jars = Path(os.environ.get("DRIFTLINE_KAFKA_JARS") or REPO / ".driftline" / "kafka-jars")
                stack.broker = KafkaBroker(home / "kafka", port=free_port(), controller_port=free_port(), jars=jars)
                say(f"kafka: starting a broker on {stack.broker.bootstrap}")
                stack.broker.start()
                stack.kafka_bootstrap = stack.broker.bootstrap
            if warehouse:
                address = warehouse_location(warehouse)
                if not ping_warehouse(address):
                    raise RuntimeError(f"DRIFTLINE_WAREHOUSE={warehouse} does not answer")
                say(f"clickhouse: using {address.host}:{address.port}")
            else:
                address = WarehouseLocation("http", "127.0.0.1", free_port(), "driftline")
                stack.chserver = ManagedProcess(
                    "clickhouse", home / "warehouse" / "server.pid", home / "warehouse" / "server.log"
                )
                say(f"clickhouse: starting the embedded server on port {address.port}")
                stack.chserver.spawn(
                    [
                        sys.executable,
                        "-m",
                        "driftline.stack.chserver",
                        "--path",
                        str(home / "warehouse" / "data"),
                        "--port",
                        str(address.port),
                    ]
                )
                wait_until(lambda: ping_warehouse(address), 60, stack.chserver, "the embedded ClickHouse server")
            # a given URL keeps its credentials (a locked server); our own server has none
            given = urlsplit(warehouse) if warehouse else None
            stack.warehouse_base = (
                f"{given.scheme}://{given.netloc}" if given else f"{address.kind}://{address.host}:{address.port}"
            )
        except BaseException:
            stack.stop()
            raise
        return stack

    def stop(self) -> None:
        if self.chserver is not None:
            self.chserver.stop()
        if self.broker is not None:
            self.broker.stop()


# ----------------------------------------------------------------------------- workload


@dataclass
class Workload:
    """A backlog of ``n`` predictions, ``per_window`` per event-time window, sent batched or one by one."""

    name: str
    mode: str  # "batched" or "single"
    n: int
    per_window: int
    window_ms: int
    t0: int

    @property
    def windows(self) -> int:
        return self.n // self.per_window

    @property
    def step_ms(self) -> float:
        return self.window_ms / self.per_window

    @property
    def closer_time(self) -> int:
        # the first instant of the window after the last full one: it closes that window by the watermark
        return self.t0 + self.windows * self.window_ms

    def times(self, start: int, count: int) -> np.ndarray:
        return self.t0 + (np.arange(start, start + count) * self.step_ms).astype(np.int64)


def make_workload(name: str, mode: str, n: int, per_window: int, window_ms: int) -> Workload:
    if n % per_window:
        raise ValueError(f"n={n} must be a multiple of the events per window ({per_window})")
    if mode == "batched" and per_window % BATCH_EVENTS:
        raise ValueError(f"events per window ({per_window}) must be a multiple of {BATCH_EVENTS}")
    t0 = (int(time.time() * 1000) - 2 * DAY_MS) // window_ms * window_ms  # a backfill of two days ago
    return Workload(name, mode, n, per_window, window_ms, t0)


def produce(settings: Settings, model_id: str, version: str, w: Workload) -> tuple[int, float]:
    """Produce the backlog and its closing event; returns (messages, seconds)."""
    codec = default_codec()
    producer = kafka.producer(settings, **{"linger.ms": 20, "queue.buffering.max.messages": 500_000})
    topic = settings.topic("predictions")
    started = time.perf_counter()
    messages = 0
    rng = np.random.default_rng(7)
    for start in range(0, w.n, BATCH_EVENTS):
        count = min(BATCH_EVENTS, w.n - start)
        columns = window_compute.synthetic(count, seed=1_000 + start)
        ids = [f"{w.name}-{i}" for i in range(start, start + count)]
        times = w.times(start, count)
        latency = rng.gamma(2.0, 4.0, count)
        records = scale.prediction_records(columns, model_id, version, ids, times, latency, single=w.mode != "batched")
        for record in records:
            kafka.produce(producer, topic, codec.encode(record), model_id, wait_when_full=5.0)
            messages += 1
    closer = PredictionEvent(f"{w.name}-closer", model_id, version, w.closer_time, {"f00": 0.0}, {}, 0.5)
    kafka.produce(producer, topic, codec.encode(closer), model_id)
    if producer.flush(120):
        raise RuntimeError("the producer could not deliver the backlog within 120 s")
    return messages + 1, time.perf_counter() - started


# ----------------------------------------------------------------------------- the worker


def _metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def histogram_quantile(
    samples: list[tuple[str, dict[str, str], float]], name: str, q: float, **labels: str
) -> float | None:
    """Quantile ``q`` of a Prometheus histogram, interpolated inside its bucket as PromQL does (seconds)."""
    buckets = sorted(
        (float(lab["le"]), value)
        for n, lab, value in samples
        if n == f"{name}_bucket" and all(lab.get(k) == v for k, v in labels.items())
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(count - lower_count, 1e-12)
        lower_bound, lower_count = bound, count
    return None


def _status_kib(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _epoch_ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


@dataclass
class RunResult:
    workload: Workload
    messages: int
    produce_s: float
    seconds: float
    close_to_row_ms: list[float]
    write_ms: list[float]
    peak_rss_kib: int
    batch_p50_s: float | None
    batch_p99_s: float | None
    flush_p50_s: float | None
    flush_p99_s: float | None
    log: Path

    @property
    def events_per_s(self) -> float:
        return self.workload.n / self.seconds


@dataclass
class WorkerRun:
    """One ``driftline worker`` subprocess on private topics, group, database and port."""

    settings: Settings
    home: Path
    app_id: str
    window_seconds: float
    extra: Sequence[str] = ()
    member: str = ""  # tells apart the logs and data directories of several workers in one group
    popen: subprocess.Popen | None = None
    web_port: int = 0
    log_path: Path = field(default_factory=Path)

    def start(self) -> None:
        self.web_port = free_port()
        self.log_path = self.home / f"{self.app_id}{self.member}.log"
        s = self.settings
        argv = [
            sys.executable,
            "-m",
            "driftline.cli",
            "--kafka",
            s.kafka_bootstrap,
            "--topic-prefix",
            s.topic_prefix,
            "--warehouse",
            s.warehouse,
            "--registry",
            s.registry,
            "--artifacts",
            s.artifacts,
            "worker",
            "--app-id",
            self.app_id,
            "--window-seconds",
            str(self.window_seconds),
            "--lateness-seconds",
            "0",
            "--idle-seconds",
            "5",
            "--tick-seconds",
            "0.25",
            "--web-port",
            str(self.web_port),
            "--datadir",
            str(self.home / f"faust-{self.app_id}{self.member}"),
            "--log-format",
            "json",
            *self.extra,
        ]
        # DRIFTLINE_KAFKA_* variables become Kafka client settings; the jar cache is not one
        env = {k: v for k, v in os.environ.items() if k != "DRIFTLINE_KAFKA_JARS"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.home, env=env
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            raise RuntimeError(
                f"the worker exited with {self.popen.returncode if self.popen else '?'}\n{self.log_tail()}"
            )

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
                return _metric_samples(r.read().decode())
        except OSError:
            return []

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- worker log {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    def written_log_times(self) -> dict[int, int]:
        """window_start -> epoch ms of the worker's "written" log line of that prediction window."""
        out: dict[int, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "window_start" in entry and "n_current" in entry and "ts" in entry:
                out.setdefault(int(entry["window_start"]), _epoch_ms(entry["ts"]))
        return out

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


def wait_consuming(worker: WorkerRun, deadline: float) -> float:
    """Wall-clock time at which the worker's /metrics first counts a consumed ``predictions`` message."""
    while True:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker consumed nothing in time\n{worker.log_tail()}")
        if any(
            n == "driftline_worker_messages_total" and lab.get("topic") == "predictions" and v > 0
            for n, lab, v in worker.metrics()
        ):
            return time.time()
        time.sleep(METRICS_POLL_S)


@dataclass
class WindowPoll:
    """When each prediction window of a model first shows in ``window_profiles``, with its ``computed_at``."""

    warehouse: Warehouse
    model_id: str
    seen: dict[int, tuple[int, int]] = field(default_factory=dict)  # window_start -> (first seen ms, computed_at ms)

    def poll(self, start_ms: int, end_ms: int) -> int:
        """Poll the windows starting in [start_ms, end_ms); returns how many have been seen."""
        now_ms = int(time.time() * 1000)
        rows = self.warehouse.query_rows(
            "SELECT toUnixTimestamp64Milli(window_start) AS ws, toUnixTimestamp64Milli(min(computed_at)) AS c "
            "FROM window_profiles WHERE model_id = {m:String} "
            "AND window_start >= fromUnixTimestamp64Milli(toInt64({lo:Int64}), 'UTC') "
            "AND window_start < fromUnixTimestamp64Milli(toInt64({hi:Int64}), 'UTC') GROUP BY ws",
            {"m": self.model_id, "lo": start_ms, "hi": end_ms},
        )
        for r in rows:
            self.seen.setdefault(int(r["ws"]), (now_ms, int(r["c"])))
        return sum(start_ms <= ws < end_ms for ws in self.seen)


def wait_for_merges(warehouse: Warehouse, timeout: float = 60.0) -> float:
    """Wait until the server runs no merge; returns the seconds waited.

    The runs share one server: the parts an earlier run wrote are merged in the
    background for seconds after it, on the same 2 cores, and would be charged
    to the next run.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if int(warehouse.command("SELECT count() FROM system.merges")) == 0:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def measure(worker: WorkerRun, warehouse: Warehouse, model_id: str, w: Workload, timeout: float) -> RunResult:
    """Start the worker on a produced backlog and follow it until every row is in ClickHouse.

    With ``--no-raw`` among the worker's flags, no raw ``predictions`` rows are awaited.
    """
    raw = "--no-raw" not in worker.extra
    deadline = time.monotonic() + timeout
    worker.start()
    try:
        first = wait_consuming(worker, deadline)
        windows = WindowPoll(warehouse, model_id)
        while True:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not every row reached ClickHouse within {timeout:.0f} s: {len(windows.seen)} of "
                    f"{w.windows} windows\n{worker.log_tail()}"
                )
            if windows.poll(w.t0, w.closer_time) >= w.windows:
                if not raw:
                    finished = time.time()
                    break
                count = warehouse.query_rows(
                    "SELECT count() AS n FROM predictions WHERE model_id = {m:String}", {"m": model_id}
                )[0]["n"]
                if int(count) >= w.n:
                    finished = time.time()
                    break
            time.sleep(WAREHOUSE_POLL_S)
        peak = _status_kib(worker.pid, "VmHWM") or 0
        samples = worker.metrics()
        logged = worker.written_log_times()
    finally:
        worker.stop()
    return RunResult(
        w,
        0,
        0.0,
        finished - first,
        close_to_row_ms=[float(seen_ms - c) for seen_ms, c in windows.seen.values()],
        write_ms=[float(logged[ws] - c) for ws, (_, c) in windows.seen.items() if ws in logged],
        peak_rss_kib=peak,
        batch_p50_s=histogram_quantile(samples, "driftline_worker_batch_seconds", 0.5, topic="predictions"),
        batch_p99_s=histogram_quantile(samples, "driftline_worker_batch_seconds", 0.99, topic="predictions"),
        flush_p50_s=histogram_quantile(samples, "driftline_worker_window_flush_seconds", 0.5),
        flush_p99_s=histogram_quantile(samples, "driftline_worker_window_flush_seconds", 0.99),
        log=worker.log_path,
    )


@dataclass
class LiveResult:
    rate: float
    seconds: float
    window_ms: int
    events: int
    end_to_row_ms: list[float]  # first seen by the poll - (window_end + lateness)
    end_to_log_ms: list[float]  # the worker's "written" log line - (window_end + lateness)
    peak_rss_kib: int


def measure_live(
    worker: WorkerRun,
    warehouse: Warehouse,
    settings: Settings,
    model_id: str,
    version: str,
    rate: float,
    seconds: float,
    timeout: float,
) -> LiveResult:
    """Produce ``rate`` events/s with event time = now for ``seconds``, in batches of 1,000, to a running worker.

    Lateness is 0, so a window may close at ``window_end``; its latency is
    when its rows are in ClickHouse minus ``window_end``.
    """
    window_ms = int(worker.window_seconds * 1000)
    codec = default_codec()
    producer = kafka.producer(settings, **{"linger.ms": 0})
    topic = settings.topic("predictions")
    deadline = time.monotonic() + timeout
    worker.start()
    try:
        # a warm-up event a minute back: production starts once the worker is consuming
        kafka.publish(
            producer,
            topic,
            model_id,
            PredictionEvent(
                f"{model_id}-warm-up", model_id, version, int(time.time() * 1000) - 60_000, {"f00": 0.0}, {}, 0.5
            ),
            codec=codec,
        )
        producer.flush(30)
        wait_consuming(worker, deadline)
        pool = [window_compute.synthetic(BATCH_EVENTS, seed=3_000 + i) for i in range(8)]
        interval = BATCH_EVENTS / rate
        windows = WindowPoll(warehouse, model_id)
        started = time.time()
        first_ms = int(started * 1000)
        next_send, next_poll, sent, last_ms = started, started, 0, first_ms
        while time.time() < started + seconds:
            now = time.time()
            if now >= next_send:
                now_ms = int(now * 1000)
                # the events of the last interval, all at or before now
                times = now_ms - ((BATCH_EVENTS - 1 - np.arange(BATCH_EVENTS)) * interval * 1000 / BATCH_EVENTS).astype(
                    np.int64
                )
                columns = pool[sent % len(pool)]
                ids = [f"{model_id}-{sent}-{i}" for i in range(BATCH_EVENTS)]
                kafka.produce(
                    producer,
                    topic,
                    codec.encode(
                        scale.prediction_records(columns, model_id, version, ids, times, None, single=False)[0]
                    ),
                    model_id,
                )
                sent += 1
                last_ms = now_ms
                next_send += interval
            if now >= next_poll:
                worker.check_alive()
                windows.poll(first_ms // window_ms * window_ms, last_ms)
                next_poll = now + WAREHOUSE_POLL_S
            time.sleep(max(0.0, min(next_send, next_poll) - time.time()))
        producer.flush(30)
        # windows closed by the watermark: every one that ends at or before the last event's window
        lo, hi = first_ms // window_ms * window_ms, last_ms // window_ms * window_ms
        expected = (hi - lo) // window_ms
        while windows.poll(lo, hi) < expected:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"live windows did not all reach ClickHouse in time\n{worker.log_tail()}")
            time.sleep(WAREHOUSE_POLL_S)
        peak = _status_kib(worker.pid, "VmHWM") or 0
        logged = worker.written_log_times()
    finally:
        worker.stop()
    closed = {ws: seen_ms for ws, (seen_ms, _) in windows.seen.items() if lo <= ws < hi}
    return LiveResult(
        rate,
        seconds,
        window_ms,
        sent * BATCH_EVENTS,
        [float(seen_ms - (ws + window_ms)) for ws, seen_ms in closed.items()],
        [float(logged[ws] - (ws + window_ms)) for ws in closed if ws in logged],
        peak,
    )


# ----------------------------------------------------------------------------- one run


@dataclass
class Bench:
    stack: Stack
    home: Path
    run_id: str
    window_seconds: float
    timeout: float
    say: Callable[[str], None]
    worker_args: Sequence[str] = ()
    databases: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    reference_data: window_compute.Columns = field(
        default_factory=lambda: window_compute.synthetic(window_compute.REFERENCE_ROWS, seed=0)
    )
    registry_home: Path | None = None  # the SQLite registry's folder (registry_scratch), made at first use

    def registry_dir(self) -> Path:
        if self.registry_home is None:
            self.registry_home = registry_scratch(self.home)
        return self.registry_home

    def settings(self, tag: str) -> Settings:
        database = f"dlbench_{self.run_id}_{tag}"
        prefix = f"bench{self.run_id}{tag}."
        self.databases.append(database)
        self.prefixes.append(prefix)
        return Settings(
            kafka_bootstrap=self.stack.kafka_bootstrap,
            topic_prefix=prefix,
            warehouse=f"{self.stack.warehouse_base}/{database}",
            registry=f"sqlite:///{self.registry_dir() / 'registry.db'}",
            artifacts=str(self.home / "artifacts"),
            state_dir=str(self.home / "state"),
        )

    def register(self, settings: Settings, model_id: str) -> str:
        registry = Registry.from_settings(settings)
        data = self.reference_data

        def profile(version: str) -> dict:
            return window_compute.build_reference(data, model_id, version).to_dict()

        version = registry.register(model_id, lineage=Lineage(dataset_rows=data.n), reference_profile=profile).version
        registry.promote(model_id, version)
        return str(version)

    def prepare(self, tag: str) -> tuple[Settings, str, str]:
        """Private topics, database and a registered model for one run: (settings, model_id, version)."""
        settings = self.settings(tag)
        model_id = f"bench-{self.run_id}-{tag}"
        kafka.ensure_topics(settings)
        return settings, model_id, self.register(settings, model_id)

    def run(self, tag: str, mode: str, n: int, per_window: int) -> RunResult:
        settings, model_id, version = self.prepare(tag)
        w = make_workload(model_id, mode, n, per_window, int(self.window_seconds * 1000))
        messages, produce_s = produce(settings, model_id, version, w)
        self.say(f"{tag}: produced {messages} messages ({n} events, {mode}) in {produce_s:.1f} s; starting the worker")
        with Warehouse.from_settings(settings, migrate=True) as warehouse:
            waited = wait_for_merges(warehouse)
            if waited >= 0.5:
                self.say(f"{tag}: waited {waited:.1f} s for the warehouse to finish merging earlier runs' parts")
            worker = WorkerRun(settings, self.home, model_id, self.window_seconds, self.worker_args)
            result = measure(worker, warehouse, model_id, w, self.timeout)
        result.messages, result.produce_s = messages, produce_s
        return result

    def live(self, tag: str, rate: float, seconds: float, window_seconds: float) -> LiveResult:
        settings, model_id, version = self.prepare(tag)
        self.say(f"{tag}: {rate:,.0f} events/s for {seconds:.0f} s, {window_seconds:g}-s windows, to a running worker")
        with Warehouse.from_settings(settings, migrate=True) as warehouse:
            worker = WorkerRun(settings, self.home, model_id, window_seconds, self.worker_args)
            return measure_live(worker, warehouse, settings, model_id, version, rate, seconds, self.timeout)

    def cleanup(self) -> None:
        """Drop what this run created on services it did not start itself."""
        if self.stack.chserver is None and self.databases:
            for database in self.databases:
                try:
                    with Warehouse.connect(f"{self.stack.warehouse_base}/{database}") as wh:
                        wh.command(f"DROP DATABASE IF EXISTS {database}")
                except Exception as exc:  # cleanup is best effort; say what is left behind
                    self.say(f"could not drop database {database}: {exc}")
        if self.stack.broker is None and self.prefixes:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": self.stack.kafka_bootstrap})
            topics = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tuple(self.prefixes))]
            if topics:
                for future in admin.delete_topics(topics, operation_timeout=30).values():
                    try:
                        future.result(30)
                    except Exception as exc:
                        self.say(f"could not delete a topic: {exc}")


def report(r: RunResult, out: Callable[[str], None]) -> None:
    w = r.workload
    ms = lambda s: "n/a" if s is None else f"{1000 * s:.0f}"  # noqa: E731
    out(
        f"RESULT mode={w.mode} n={w.n} messages={r.messages} events_per_s={r.events_per_s:,.0f} "
        f"seconds={r.seconds:.2f} windows={w.windows} per_window={w.per_window} "
        f"peak_rss_mib={r.peak_rss_kib / 1024:.0f}"
    )
    out(
        f"RESULT mode={w.mode} n={w.n} close_to_row_ms p50={percentile(r.close_to_row_ms, 50):.0f} "
        f"p99={percentile(r.close_to_row_ms, 99):.0f} "
        f"(computed_at to rows seen by a {WAREHOUSE_POLL_S * 1000:.0f} ms poll); "
        f"worker_log_ms p50={percentile(r.write_ms, 50):.0f} p99={percentile(r.write_ms, 99):.0f} "
        f"(computed_at to the worker's 'written' log line); handle batch p50={ms(r.batch_p50_s)} "
        f"p99={ms(r.batch_p99_s)} ms; window write p50={ms(r.flush_p50_s)} p99={ms(r.flush_p99_s)} ms"
    )


def report_live(r: LiveResult, out: Callable[[str], None]) -> None:
    out(
        f"RESULT mode=live rate={r.rate:,.0f} seconds={r.seconds:.0f} events={r.events} "
        f"window_ms={r.window_ms} windows={len(r.end_to_row_ms)} "
        f"window_end_to_row_ms p50={percentile(r.end_to_row_ms, 50):.0f} p99={percentile(r.end_to_row_ms, 99):.0f} "
        f"(lateness 0; rows seen by a {WAREHOUSE_POLL_S * 1000:.0f} ms poll) "
        f"worker_log_ms p50={percentile(r.end_to_log_ms, 50):.0f} p99={percentile(r.end_to_log_ms, 99):.0f} "
        f"peak_rss_mib={r.peak_rss_kib / 1024:.0f}"
    )


# ----------------------------------------------------------------------------- profile of the service


def profile_service(bench: Bench, mode: str, n: int, per_window: int, top: int, out: Callable[[str], None]) -> None:
    """``WorkerService.handle`` under cProfile on a backlog read here with confluent-kafka (no Faust)."""
    from confluent_kafka import TopicPartition

    from driftline.streams.app import build_service
    from driftline.streams.worker import Incoming, WorkerOptions

    settings, model_id, version = bench.prepare(f"p{mode[0]}")
    w = make_workload(model_id, mode, n, per_window, int(bench.window_seconds * 1000))
    messages, _ = produce(settings, model_id, version, w)
    consumer = kafka.consumer(settings, f"{model_id}-profile", **{"enable.auto.commit": False})
    topic = settings.topic("predictions")
    consumer.assign([TopicPartition(topic, 0, 0)])
    incoming: list[Any] = []
    while len(incoming) < messages:
        for m in consumer.consume(1_000, timeout=5):
            if m.error() is None:
                incoming.append(
                    Incoming(
                        "predictions", m.partition(), m.offset(), m.key(), m.value(), token=m.offset(), full_topic=topic
                    )
                )
    consumer.close()
    options = WorkerOptions(app_id=model_id, window_seconds=bench.window_seconds, lateness_seconds=0.0)
    service = build_service(settings, options)
    batch = options.batch_size
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for i in range(0, len(incoming), batch):
        service.handle("predictions", incoming[i : i + batch], backlog=i + batch < len(incoming))
    service.drain()
    profiler.disable()
    seconds = time.perf_counter() - started
    service.outbox.close()
    service.sinks.warehouse.close()
    out(
        f"PROFILE mode={mode} WorkerService.handle alone (no Faust, no Kafka fetch), {batch} messages a call: "
        f"{n} events in {seconds:.2f} s = {n / seconds:,.0f} events/s (under cProfile, which slows Python code)"
    )
    for order in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(order).print_stats(top)
        out(f"PROFILE mode={mode} top {top} by {order}:")
        for line in buf.getvalue().splitlines():
            if line.strip() and not line.startswith(("   Ordered by", "   List reduced")):
                out(f"PROFILE   {line}")


# ----------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        default=400_000,
        help="batched events of the first run (4N in the second); the default is twice the label "
        "index (200,000), so that both runs measure its steady state",
    )
    parser.add_argument("--n-single", type=int, default=None, help="single events (default N/4)")
    parser.add_argument("--per-window", type=int, default=10_000, help="events per event-time window of the backlogs")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="event-time window size of the backlogs")
    parser.add_argument("--live-rate", type=float, default=20_000.0, help="events/s of the live run (0: no live run)")
    parser.add_argument("--live-seconds", type=float, default=30.0, help="length of the live run")
    parser.add_argument("--live-window-seconds", type=float, default=2.0, help="window size of the live run")
    parser.add_argument(
        "--warm-up",
        type=int,
        default=100_000,
        help="batched events of an unmeasured first run (0: none). A freshly started broker and "
        "ClickHouse server are slower at first (JIT, first allocations): about 2x on the first "
        "raw insert",
    )
    parser.add_argument(
        "--runs", default=",".join(RUNS), help=f"which runs, comma-separated (default all: {','.join(RUNS)})"
    )
    parser.add_argument("--worker-args", default="", help="extra `driftline worker` flags, e.g. '--no-raw'")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for one run")
    parser.add_argument("--profile", action="store_true", help="also profile WorkerService.handle in-process")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: N=5,000, 1,000 events per window, 6 s live at 5,000/s (times not meaningful)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (worker logs)")
    many = parser.add_argument_group("many models (bench/scale.py): given --models, only this run is made")
    many.add_argument("--models", type=int, default=0, help="model versions, each with its own reference")
    many.add_argument("--features", type=int, default=22, help="features per model (numeric and categorical)")
    many.add_argument("--events", type=int, default=200_000, help="predictions of the run")
    many.add_argument("--rate", type=float, default=0.0, help="producer pace in predictions/s (0: a backlog first)")
    many.add_argument(
        "--event-rate",
        type=float,
        default=0.0,
        help="predictions per second of event time (default --rate, else 1,000 per model)",
    )
    many.add_argument("--workers", default="1", help="workers in one group, e.g. '1,2,4' for one run each")
    many.add_argument("--partitions", type=int, default=1, help="partitions of the input topics")
    many.add_argument("--mode", choices=scale.MODES, default="mixed", help="batches, single events or both")
    many.add_argument("--label-share", type=float, default=0.1, help="share of predictions that get a label")
    many.add_argument(
        "--label-batches",
        choices=("yes", "no"),
        default="yes",
        help="batched models send a slice's labels as LabelBatch messages (no: one LabelEvent each)",
    )
    many.add_argument("--slice-seconds", type=float, default=1.0, help="event time drawn and sent at a time")
    many.add_argument("--seed", type=int, default=7, help="seed of the traffic")
    many.add_argument(
        "--targets",
        action="store_true",
        help="the runs of every target of issue 15 in turn (1 model batched and single, 1,000 x 30 at "
        "100k/s, 1, 2 and 4 workers on 8 partitions), each --events long (single events: a quarter)",
    )
    args = parser.parse_args(argv)
    if args.models or args.targets:
        return models_main(args)
    if args.quick:
        args.n, args.per_window, args.timeout = 5_000, 1_000, min(args.timeout, 180.0)
        args.warm_up = min(args.warm_up, 1_000)
        args.live_rate, args.live_seconds, args.live_window_seconds = min(args.live_rate, 5_000.0), 6.0, 1.0
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; expected some of {', '.join(RUNS)}")
    n_single = (
        args.n_single
        if args.n_single is not None
        else max(args.per_window, args.n // 4 // args.per_window * args.per_window)
    )

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = lambda line: print(line, flush=True)  # noqa: E731
    out(window_compute.machine_line())
    if args.worker_args:
        out(f"worker flags: {args.worker_args}")
    home = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    stack = Stack.start(home, say)
    bench = Bench(
        stack, home, uuid.uuid4().hex[:8], args.window_seconds, args.timeout, say, shlex.split(args.worker_args)
    )
    try:
        results: dict[str, RunResult] = {}
        if args.warm_up > 0:
            first = bench.run("w0", "batched", args.warm_up, args.per_window)
            out(
                f"warm-up: {args.warm_up} batched events through a first worker, not measured: "
                f"{first.events_per_s:,.0f} events/s"
            )
        if "batched" in runs:
            results["b1"] = bench.run("b1", "batched", args.n, args.per_window)
            report(results["b1"], out)
        if "batched4" in runs:
            results["b4"] = bench.run("b4", "batched", 4 * args.n, args.per_window)
            report(results["b4"], out)
        if "single" in runs:
            results["s1"] = bench.run("s1", "single", n_single, args.per_window)
            report(results["s1"], out)
        if "live" in runs and args.live_rate > 0:
            report_live(bench.live("l1", args.live_rate, args.live_seconds, args.live_window_seconds), out)
        reference = window_compute.build_reference(bench.reference_data)
        cold, warm = window_compute.driftline_ms(reference, args.per_window, 3 if args.quick else 10)
        out(
            f"RESULT per-window compute (driftline core, {args.per_window} events, in this process): {warm:.2f} ms "
            f"(first window, calibration included: {cold:.0f} ms)"
        )
        for r in results.values():
            target = SINGLE_TARGET if r.workload.mode == "single" else BATCHED_TARGET
            ratio = r.events_per_s / target
            out(
                f"RATIO throughput mode={r.workload.mode} n={r.workload.n} "
                f"{r.events_per_s:,.0f}/{target:,.0f} events/s "
                f"= {ratio:.2f}x of target {'MET' if ratio >= 1 else 'NOT MET'}"
            )
        if "b1" in results and "b4" in results:
            small, large = results["b1"].peak_rss_kib, results["b4"].peak_rss_kib
            ratio = large / max(small, 1)
            out(
                f"RATIO rss batched 4N/N = {large / 1024:.0f}/{small / 1024:.0f} MiB = {ratio:.2f} "
                f"target<={RSS_FLAT} (flat) {'MET' if ratio <= RSS_FLAT else 'NOT MET'}"
            )
        if args.profile:
            profile_service(bench, "batched", args.n, args.per_window, 25, out)
            profile_service(bench, "single", n_single, args.per_window, 25, out)
        out(window_compute.machine_line())
    finally:
        tear_down(bench, stack, home, keep=args.keep, say=say)
    return 0


def models_main(args: argparse.Namespace) -> int:
    """``--models N`` or ``--targets``: the many-models runs of ``bench/scale.py`` and their RATIO lines."""

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    out = lambda line: print(line, flush=True)  # noqa: E731
    if args.targets:
        plans = scale.target_plans(args.events)
    else:
        counts = tuple(int(k) for k in args.workers.split(",") if k.strip())
        plans = [
            scale.Plan(
                "run",
                args.models,
                args.features,
                args.events,
                args.rate,
                counts,
                args.partitions,
                args.mode,
                args.event_rate,
            )
        ]
    out(window_compute.machine_line())
    if args.worker_args:
        out(f"worker flags: {args.worker_args}")
    home = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    stack = Stack.start(home, say)
    # the last window of each model closes by the watermark (a closer event), never by the wall clock
    worker_args = ["--idle-seconds", "never", *shlex.split(args.worker_args)]
    bench = Bench(stack, home, uuid.uuid4().hex[:8], args.window_seconds, args.timeout, say, worker_args)
    try:
        port = urlsplit(stack.warehouse_base).port or 0
        server_pid = stack.chserver.pid() if stack.chserver is not None else scale.listening_pid(port)
        if server_pid is None:
            say("the ClickHouse server's process was not found: no server CPU figure")
        if args.warm_up > 0:
            first = bench.run("w0", "batched", args.warm_up, args.per_window)
            out(
                f"warm-up: {args.warm_up} batched events through a first worker, not measured: "
                f"{first.events_per_s:,.0f} events/s"
            )
        registry = Registry.from_settings(bench.settings("reg"))
        window_ms = int(args.window_seconds * 1000)
        fleets: dict[tuple[int, int, str], scale.Fleet] = {}
        for number, plan in enumerate(plans):
            out(f"plan {plan.name}: {plan.describe()}")
            shape = (plan.models, plan.features, plan.mode)
            if shape not in fleets:  # plans of the same shape share their registered models
                fleets[shape] = scale.register_fleet(
                    registry, f"b{bench.run_id}p{number}", plan.models, plan.features, plan.mode, say
                )
            fleet = fleets[shape]
            event_rate = plan.event_rate or (plan.rate if plan.rate > 0 else 1_000.0 * plan.models)
            t0 = (int(time.time() * 1000) - 2 * DAY_MS) // window_ms * window_ms
            results = []
            for k in plan.workers:
                tag = f"p{number}k{k}"
                settings = bench.settings(tag)
                kafka.ensure_topics(settings, partitions=plan.partitions)
                traffic = scale.Traffic(
                    fleet,
                    plan.events,
                    event_rate,
                    window_ms,
                    t0,
                    args.slice_seconds,
                    args.label_share,
                    args.seed,
                    say=say,
                    label_batches=args.label_batches == "yes",
                )

                def make_worker(member: str, settings: Settings = settings, tag: str = tag) -> WorkerRun:
                    app_id = f"bench-{bench.run_id}-{tag}"
                    return WorkerRun(settings, home, app_id, args.window_seconds, worker_args, member=member)

                r = scale.run_models(
                    settings=settings,
                    make_worker=make_worker,
                    traffic=traffic,
                    workers=k,
                    partitions=plan.partitions,
                    rate=plan.rate,
                    server_pid=server_pid,
                    timeout=args.timeout,
                    say=say,
                    wait_consuming=wait_consuming,
                    wait_for_merges=wait_for_merges,
                )
                out(scale.result_line(r))
                for line in scale.detail_lines(r):
                    out(line)
                results.append(r)
            for line in scale.ratio_lines(plan, results):
                out(line)
        out(window_compute.machine_line())
    finally:
        tear_down(bench, stack, home, keep=args.keep, say=say)
    return 0


def registry_scratch(home: Path) -> Path:
    """Where the benchmark's SQLite registry goes: a new folder on tmpfs when the machine has one, else ``home``.

    Registering is set-up, not what is measured, and each version is one committed transaction:
    on a disk each commit waits for its fsync (100 versions at load 11: 4.6 s on disk, 1.2 s on tmpfs).

    >>> folder = registry_scratch(Path(tempfile.gettempdir()))
    >>> folder.is_dir()
    True
    >>> folder == Path(tempfile.gettempdir()) or not folder.rmdir()
    True
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="driftline-bench-registry-", dir=shm))
    return home


def tear_down(bench: Any, stack: Stack, home: Path, *, keep: bool, say: Callable[[str], None]) -> None:
    """Drop the benchmark's topics and databases, stop what it started, and remove (or keep) its directories."""
    bench.cleanup()
    stack.stop()
    folders = [home] + [f for f in [getattr(bench, "registry_home", None)] if f is not None and f != home]
    for folder in folders:
        if keep:
            say(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
