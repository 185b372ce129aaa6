"""Many model versions on one worker or a group: ``bench/throughput.py --models N --features F``.

Every model version has its own registered reference profile (built once
from synthetic rows with F features, then registered per model with its own
id, in one registry). Traffic is spread over the models with a Zipf-like
skew (weight 1/rank, seeded), in slices of ``--slice-seconds`` of event
time: each slice draws how many of its events each model gets
(``numpy.random.Generator.multinomial``) and sends them as
``PredictionBatch`` es of at most 1,000 rows or, for the models that log one
event at a time, as single ``PredictionEvent`` s; a share of the predictions
(``--label-share``) gets a label: a slice's labels of a batched model travel
as ``LabelBatch`` es of at most 1,000 labels (``--label-batches no``: one
``LabelEvent`` each), those of a single-event model as ``LabelEvent`` s. ``--mode mixed`` (the default)
makes the lower-traffic half of the models log single events (about 9% of
the events at 1,000 models); ``batched`` and ``single`` make every model do
the same.

Event times start two days back at a window boundary and advance by
``--event-rate`` events per second of event time (default: the producer's
``--rate``, else 1,000 per model); the run ends with one event per model in
the window after the last, so every window closes by the watermark (the
workers run with ``--idle-seconds never`` and lateness 0). The same seed and
start give the same events, so runs with 1, 2 and 4 workers can be compared
row for row.

- ``--rate 0`` with one worker: the backlog is produced first, then the
  worker starts; the run is timed from its first consumed message to the
  moment every expected window is in ``drift_reports``.
- ``--rate R`` (or several workers): the workers start first on the empty
  topics, the group settles, each model gets one primer event (a worker
  loads a version's reference and reads how far it was written at its first
  event: with 1,000 models that is minutes of start-up, kept out of the
  timed part), then the producer paces itself to R events/s (0: as fast as
  it can); the run is timed from the first message produced.

Figures: CPU seconds per million predictions of the worker processes
(``utime + stime`` from ``/proc/PID/stat``, summed over the group) and of the
ClickHouse server process, between the start and the end of the timed run;
peak RSS (``VmHWM``) of each worker; close-to-row latency of every window
(its ``drift_reports`` row first seen by a 250-ms poll minus its
``computed_at``); and the windows expected (every model version and window
with at least one prediction) against those with rows in both
``drift_reports`` and ``drift_metrics``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import window_compute

from driftline.retrainer.registry import Lineage, Registry
from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.codec import default_codec
from driftline.streams.core.calibration import with_calibration
from driftline.streams.records import LabelBatch, LabelEvent, PredictionBatch, PredictionEvent
from driftline.streams.warehouse import Warehouse

BATCH_EVENTS = 1_000
POOL_ROWS = 4_096
POOL_BLOCKS = 8
REFERENCE_ROWS = 5_000
DAY_MS = 86_400_000
POLL_S = 0.25
IDLE_SAMPLE_S = 5.0  # how long the primed workers' idle CPU is sampled before the traffic
MODES = ("mixed", "batched", "single")
PRODUCERS = 2  # processes sending the encoded traffic


# ----------------------------------------------------------------------------- data


def feature_columns(n: int, features: int, seed: int) -> window_compute.Columns:
    """``n`` stationary rows with ``features`` inputs, ``min(2, features // 3)`` of them categorical.

    At 22 features this is the layout of ``window_compute.synthetic`` (20 numeric, ``region`` and ``merchant``).

    >>> c = feature_columns(6, 5, seed=1)
    >>> c.n, sorted(c.numeric), sorted(c.categorical)
    (6, ['f00', 'f01', 'f02', 'f03'], ['region'])
    >>> c = feature_columns(3, 30, seed=1)
    >>> len(c.numeric), sorted(c.categorical)
    (28, ['merchant', 'region'])
    """
    if features < 1:
        raise ValueError(f"features must be at least 1, got {features}")
    n_categorical = min(2, features // 3)
    n_numeric = features - n_categorical
    rng = np.random.default_rng(seed)
    numeric = {f"f{i:02d}": window_compute.numeric_column(rng, i, n) for i in range(n_numeric)}
    if n_numeric >= 20:
        numeric[f"f{n_numeric - 1:02d}"][rng.random(n) < 0.05] = np.nan
    names = ("region", "merchant")[:n_categorical]
    categorical: dict[str, list[str]] = {}
    for name in names:
        values = window_compute.REGIONS if name == "region" else window_compute.MERCHANTS
        p = np.asarray(window_compute.REGION_P) if name == "region" else 1.0 / np.arange(1, len(values) + 1) ** 1.1
        categorical[name] = np.asarray(values, dtype=object)[rng.choice(len(values), n, p=p / p.sum())].tolist()
    x0 = numeric["f00"]
    logit = 0.8 * (x0 - x0.mean()) / (x0.std() + 1e-9)
    if "f02" in numeric:
        logit = logit - 0.5 * numeric["f02"]
    return window_compute.Columns(numeric, categorical, 1.0 / (1.0 + np.exp(-logit)))


def prediction_records(
    columns: window_compute.Columns,
    model_id: str,
    version: str,
    ids: list[str],
    times: np.ndarray,
    latency: np.ndarray | None,
    *,
    single: bool,
) -> list[PredictionBatch] | list[PredictionEvent]:
    """The rows as one ``PredictionBatch``, or as one ``PredictionEvent`` each (``single``).

    >>> c = feature_columns(3, 4, seed=1)
    >>> c.numeric["f00"][1] = float("nan")
    >>> events = prediction_records(c, "m", "1", ["a", "b", "c"], np.arange(3), None, single=True)
    >>> [sorted(e.numeric) for e in events][:2], events[0].categorical.keys() == {"region"}
    ([['f00', 'f01', 'f02'], ['f01', 'f02']], True)
    >>> prediction_records(c, "m", "1", ["a", "b", "c"], np.arange(3), None, single=False)[0].n
    3
    """
    if not single:
        return [
            PredictionBatch(
                model_id,
                version,
                ids,
                times,
                numeric=columns.numeric,
                categorical=columns.categorical,
                predictions=columns.predictions,
                latency_ms=latency,
            )
        ]
    names, cat_names = list(columns.numeric), list(columns.categorical)
    values = np.column_stack([columns.numeric[f] for f in names]).tolist()
    cats = list(zip(*columns.categorical.values())) if cat_names else [()] * len(ids)
    scores = columns.predictions.tolist()
    return [
        PredictionEvent(
            event_id,
            model_id,
            version,
            int(times[i]),
            {f: v for f, v in zip(names, values[i]) if v == v},  # the contract: an absent key means missing
            dict(zip(cat_names, cats[i])),
            scores[i],
            None,
            None if latency is None else float(latency[i]),
        )
        for i, event_id in enumerate(ids)
    ]


def zipf_weights(n: int, s: float = 1.0) -> np.ndarray:
    """Traffic shares of ``n`` models by rank: proportional to ``1 / rank**s``.

    >>> w = zipf_weights(4)
    >>> [round(x, 3) for x in w.tolist()], round(float(w.sum()), 12)
    ([0.48, 0.24, 0.16, 0.12], 1.0)
    """
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


@dataclass
class Fleet:
    """The registered model versions of one run, by rank (rank 0 gets the most traffic)."""

    model_ids: list[str]
    versions: list[str]
    single: np.ndarray  # bool per model: logs single events
    features: int

    @property
    def n(self) -> int:
        return len(self.model_ids)


def single_models(n: int, mode: str) -> np.ndarray:
    """Which models log single events: all (``single``), none (``batched``), or the lower-traffic half (``mixed``).

    >>> single_models(4, "mixed").tolist(), single_models(1, "mixed").tolist(), single_models(2, "single").tolist()
    ([False, False, True, True], [False], [True, True])
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "batched":
        return np.zeros(n, bool)
    if mode == "single":
        return np.ones(n, bool)
    return np.arange(n) >= (n + 1) // 2


def register_fleet(
    registry: Registry, prefix: str, n: int, features: int, mode: str, say: Callable[[str], None]
) -> Fleet:
    """Register ``n`` models, each with its own reference profile (one built profile, re-labelled per model)."""
    started = time.perf_counter()
    # one profile content for every model: its drift calibration (what registration stores, see
    # retrainer.reference.registered_form) is computed once and copied with it
    base = with_calibration(window_compute.build_reference(feature_columns(REFERENCE_ROWS, features, seed=0)))
    say(f"built one {features}-feature reference with its calibration in {time.perf_counter() - started:.1f} s")
    base_form = base.to_dict()
    model_ids = [f"{prefix}-m{i:04d}" for i in range(n)]
    versions = []
    lineage = Lineage(dataset_rows=REFERENCE_ROWS)
    for model_id in model_ids:

        def profile(version: str, model_id: str = model_id) -> dict[str, Any]:
            return {**base_form, "model_id": model_id, "model_version": version}

        versions.append(str(registry.register(model_id, lineage=lineage, reference_profile=profile).version))
    say(f"registered {n} model versions with {features}-feature references in {time.perf_counter() - started:.1f} s")
    return Fleet(model_ids, versions, single_models(n, mode), features)


# ----------------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """The seeded events of one run, slice by slice, and the windows they fill.

    >>> fleet = Fleet(["a", "b"], ["1", "1"], np.array([False, True]), 3)
    >>> t = Traffic(fleet, events=2_500, event_rate=1_000.0, window_ms=1_000, t0=0, slice_s=1.0, label_share=0.5)
    >>> sizes = [sum(m.events for m in s.messages) for s in t.slices()]
    >>> sizes, sorted({ws for _, ws in t.windows}), t.closer_time, len(t.closers())
    ([1000, 1000, 500], [0, 1000, 2000], 3000, 2)
    """

    fleet: Fleet
    events: int
    event_rate: float
    window_ms: int
    t0: int
    slice_s: float = 1.0
    label_share: float = 0.1
    seed: int = 7
    windows: set[tuple[int, int]] = field(default_factory=set)  # (model rank, window_start ms)
    labels: int = 0
    last_time: int = 0
    say: Callable[[str], None] | None = None
    label_batches: bool = True  # the labels of a batched model's slice as LabelBatch messages, else one a message

    @property
    def slice_events(self) -> int:
        return max(1, int(round(self.event_rate * self.slice_s)))

    def slices(self) -> Iterator[Slice]:
        codec = default_codec()
        rng = np.random.default_rng(self.seed)
        weights = zipf_weights(self.fleet.n)
        pool = [feature_columns(POOL_ROWS, self.fleet.features, seed=100 + b) for b in range(POOL_BLOCKS)]
        slice_ms = self.slice_s * 1000.0
        for number, start in enumerate(range(0, self.events, self.slice_events)):
            count = min(self.slice_events, self.events - start)
            counts = rng.multinomial(count, weights)
            t_slice = self.t0 + number * slice_ms
            messages: list[Message] = []
            labels: list[Message] = []
            offset = start
            for rank in np.flatnonzero(counts).tolist():
                c = int(counts[rank])
                times = (t_slice + np.arange(c) * (slice_ms * count / self.slice_events) / c).astype(np.int64)
                seq = np.arange(offset, offset + c)
                offset += c
                self.windows.update((rank, int(ws)) for ws in np.unique(times // self.window_ms * self.window_ms))
                self.last_time = max(self.last_time, int(times[-1]))
                for lo in range(0, c, BATCH_EVENTS):
                    hi = min(c, lo + BATCH_EVENTS)
                    messages += self._predictions(codec, rng, pool, rank, seq[lo:hi], times[lo:hi])
                labelled = np.flatnonzero(rng.random(c) < self.label_share)
                model_id = self.fleet.model_ids[rank]
                values = (rng.random(labelled.size) < 0.3).astype(np.float64)  # the draws of one label at a time
                if self.label_batches and not self.fleet.single[rank]:
                    for lo in range(0, labelled.size, BATCH_EVENTS):
                        rows = labelled[lo : lo + BATCH_EVENTS]
                        ids = [f"e{i}" for i in seq[rows].tolist()]
                        batch = LabelBatch(model_id, ids, times[rows] + 1, values[lo : lo + rows.size])
                        labels.append(Message("labels", model_id, codec.encode(batch), 0))
                else:
                    for i, value in zip(labelled.tolist(), values.tolist()):
                        label = LabelEvent(f"e{seq[i]}", model_id, int(times[i]) + 1, value)
                        labels.append(Message("labels", model_id, codec.encode(label), 0))
                self.labels += len(labelled)
            yield Slice(count, messages + labels)

    def _predictions(
        self,
        codec: Any,
        rng: np.random.Generator,
        pool: list[window_compute.Columns],
        rank: int,
        seq: np.ndarray,
        times: np.ndarray,
    ) -> list[Message]:
        c = seq.size
        block = pool[int(rng.integers(POOL_BLOCKS))]
        at = int(rng.integers(0, POOL_ROWS - c + 1))
        rows = block.rows(at, at + c)
        model_id, version = self.fleet.model_ids[rank], self.fleet.versions[rank]
        ids = [f"e{i}" for i in seq.tolist()]
        latency = rng.gamma(2.0, 4.0, c)
        records = prediction_records(rows, model_id, version, ids, times, latency, single=bool(self.fleet.single[rank]))
        per_record = c // len(records)
        return [Message("predictions", model_id, codec.encode(r), per_record) for r in records]

    def primers(self) -> list[Message]:
        """One full prediction per model at the first instant of the traffic, to load every reference first.

        A worker loads a model version's reference at its first event; with many models that is seconds
        of start-up, which the paced runs keep out of their timed part.
        """
        codec = default_codec()
        rows = feature_columns(self.fleet.n, self.fleet.features, seed=99)
        out = []
        for rank, (model_id, version) in enumerate(zip(self.fleet.model_ids, self.fleet.versions)):
            (event,) = prediction_records(
                rows.rows(rank, rank + 1), model_id, version, [f"prime-{rank}"], np.array([self.t0]), None, single=True
            )
            out.append(Message("predictions", model_id, codec.encode(event), 0))
            self.windows.add((rank, self.t0 // self.window_ms * self.window_ms))
        return out

    @property
    def closer_time(self) -> int:
        """The first instant of the window after the last event's: an event there closes every window."""
        return (self.last_time // self.window_ms + 1) * self.window_ms

    def closers(self) -> list[Message]:
        codec = default_codec()
        at = self.closer_time
        return [
            Message(
                "predictions",
                model_id,
                codec.encode(PredictionEvent(f"closer-{rank}", model_id, version, at, {"f00": 0.0}, {}, 0.5)),
                0,
            )
            for rank, (model_id, version) in enumerate(zip(self.fleet.model_ids, self.fleet.versions))
        ]


@dataclass
class Message:
    topic: str  # contract name
    key: str
    value: bytes
    events: int  # predictions in it (0: a label or a closer)


@dataclass
class Slice:
    events: int
    messages: list[Message]


def produce_traffic(
    settings: Settings,
    traffic: Traffic,
    rate: float,
    *,
    on_start: Callable[[], None] | None = None,
    processes: int = PRODUCERS,
) -> tuple[int, float]:
    """Produce every slice, paced to ``rate`` predictions/s (0: as fast as possible), then the closers.

    Every message is encoded before the first is sent: encoding the single events and labels one by
    one (fastavro, about 7 s of CPU per million predictions at 1,000 models) held the producer near
    30k/s on the shared cores. The bytes are then sent by ``processes`` forked producers, each with
    the models whose key hashes to it (so every model's messages, closer last, leave one producer in
    order), all on one schedule: slice ``i`` is due when the events before it are due at ``rate``.

    Returns (messages, seconds from the first message to the last producer's flush after the closers).
    """
    encode_started = time.process_time()
    slices = list(traffic.slices())
    closers = traffic.closers()
    say = traffic.say or (lambda _: None)
    messages = sum(len(s.messages) for s in slices) + len(closers)
    say(f"encoded {messages:,} messages in {time.process_time() - encode_started:.1f} s CPU")
    due = np.cumsum([0] + [s.events for s in slices[:-1]]) / rate if rate > 0 else np.zeros(len(slices))
    shares = max(1, processes)
    owner = lambda m: zlib.crc32(m.key.encode()) % shares  # noqa: E731
    parts = [
        ([[m for m in s.messages if owner(m) == k] for s in slices], [m for m in closers if owner(m) == k])
        for k in range(shares)
    ]
    if shares == 1:
        if on_start is not None:
            on_start()
        started = time.perf_counter()
        _send(settings, parts[0][0], parts[0][1], due, started)
        return messages, time.perf_counter() - started
    context = multiprocessing.get_context("fork")  # the children share the encoded bytes, copy-on-write
    start_at = time.time() + 0.5
    children = [
        context.Process(target=_send_from_child, args=(settings, part, closing, due, start_at), daemon=True)
        for part, closing in parts
    ]
    for child in children:
        child.start()
    time.sleep(max(0.0, start_at - time.time()))
    if on_start is not None:
        on_start()
    for child in children:
        child.join()
    seconds = time.time() - start_at
    failed = [c.exitcode for c in children if c.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} producer process(es) failed (exit codes {failed})")
    return messages, seconds


def _send(settings: Settings, slices: list[list[Message]], closers: list[Message], due: np.ndarray, t0: float) -> None:
    """Send the slices on their schedule (seconds after ``t0``, perf_counter), then the closers, and flush."""
    producer = kafka.producer(settings, **{"linger.ms": 20, "queue.buffering.max.messages": 1_000_000})
    topics = {name: settings.topic(name) for name in ("predictions", "labels")}
    produce = producer.produce
    for messages, at in zip(slices, due.tolist()):
        time.sleep(max(0.0, t0 + at - time.perf_counter()))
        for m in messages:
            try:
                produce(topics[m.topic], m.value, m.key.encode())
            except BufferError:
                kafka.produce(producer, topics[m.topic], m.value, m.key, wait_when_full=10.0)
        producer.poll(0)
    for m in closers:
        kafka.produce(producer, topics[m.topic], m.value, m.key, wait_when_full=10.0)
    if producer.flush(300):
        raise RuntimeError("the producer could not deliver the traffic within 300 s")


def _send_from_child(
    settings: Settings, slices: list[list[Message]], closers: list[Message], due: np.ndarray, start_at: float
) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    _send(settings, slices, closers, due, time.perf_counter())


# ----------------------------------------------------------------------------- processes


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``, fields 14 and 15).

    >>> cpu_seconds(os.getpid()) > 0
    True
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_rates(pids: Sequence[int], seconds: float) -> list[float]:
    """CPU milliseconds per second that each process spends over ``seconds`` (of wall time) from now.

    >>> [rate >= 0 for rate in idle_rates([os.getpid()], 0.05)]
    [True]
    """
    before = [cpu_seconds(pid) for pid in pids]
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return [(cpu_seconds(pid) - b) * 1000 / elapsed for pid, b in zip(pids, before)]


def listening_pid(port: int) -> int | None:
    """The process (of this user) listening on a local TCP port, found through ``/proc/net/tcp*`` inodes."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


# ----------------------------------------------------------------------------- measuring


@dataclass
class WindowRows:
    """When each window's ``drift_reports`` row was first seen, with its ``computed_at``.

    Every poll reads the run's rows computed since it started (the run has a database of its
    own, so they are only its windows): a window may be written long after it was computed
    when the warehouse falls behind, so no later bound on ``computed_at`` is safe.
    """

    warehouse: Warehouse
    seen: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)  # -> (seen ms, computed_at ms)
    since_ms: int = 0

    def poll(self) -> None:
        now_ms = int(time.time() * 1000)
        rows = self.warehouse.query_rows(
            "SELECT model_id AS m, toUnixTimestamp64Milli(window_start) AS ws, "
            "toUnixTimestamp64Milli(min(computed_at)) AS c FROM drift_reports "
            "WHERE computed_at >= fromUnixTimestamp64Milli(toInt64({since:Int64}), 'UTC') GROUP BY m, ws",
            {"since": self.since_ms},
        )
        for r in rows:
            self.seen.setdefault((str(r["m"]), int(r["ws"])), (now_ms, int(r["c"])))


def written_windows(warehouse: Warehouse, table: str) -> set[tuple[str, int]]:
    rows = warehouse.query_rows(
        f"SELECT DISTINCT model_id AS m, toUnixTimestamp64Milli(window_start) AS ws FROM {table}", {}
    )
    return {(str(r["m"]), int(r["ws"])) for r in rows}


ROW_COLUMNS = {
    "drift_metrics": "model_id, model_version, feature, metric, window_start, window_end, value, p_value, "
    "threshold, drifted, n_reference, n_current, kind",
    "drift_reports": "model_id, model_version, window_start, window_end, n_current, n_reference, "
    "drifted_features, n_metrics, n_drifted_metrics, late_events",
}


def row_fingerprint(warehouse: Warehouse, table: str) -> tuple[int, int, int]:
    """(rows, xor, sum) of a hash of every row of ``table`` (FINAL, without ``computed_at``).

    Equal sets of rows give equal prints, in any order.
    """
    rows = warehouse.query_rows(
        f"SELECT count() AS n, groupBitXor(h) AS x, sum(h) AS s FROM "
        f"(SELECT cityHash64(toString(tuple({ROW_COLUMNS[table]}))) AS h FROM {table} FINAL)",
        {},
    )
    return int(rows[0]["n"]), int(rows[0]["x"]), int(rows[0]["s"])


@dataclass
class ModelsResult:
    models: int
    features: int
    workers: int
    events: int
    labels: int
    messages: int
    seconds: float
    produce_s: float
    close_to_row_ms: list[float]
    windows_expected: int
    windows_reports: int
    windows_metrics: int
    windows_written: int
    peak_rss_kib: list[int]
    rss_samples_kib: list[tuple[float, int]]  # (seconds into the run, summed VmRSS of the workers)
    worker_cpu_s: float
    server_cpu_s: float | None
    fingerprints: dict[str, tuple[int, int, int]]
    worker_cpu_each_s: list[float] = field(default_factory=list)  # per worker, over the timed run
    idle_cpu_ms_per_s: list[float] = field(default_factory=list)  # per worker, primed and waiting (paced runs)

    @property
    def idle_cpu_s(self) -> float:
        """The CPU the workers would have spent idling for the timed run's length, at their idle rates."""
        return sum(self.idle_cpu_ms_per_s) / 1000 * self.seconds

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds

    def per_million(self, seconds: float | None) -> float | None:
        return None if seconds is None else seconds / (self.events / 1e6)


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def assignment(log_path: Path) -> tuple[int, list[str]]:
    """(lines about assignments so far, the ``predictions`` partitions a worker owns now), from its JSON log."""
    changes, owned = 0, []
    if not log_path.exists():
        return 0, []
    for line in log_path.read_text(errors="replace").splitlines():
        at = line.find("{")  # the first line of a worker's log may start with a terminal escape
        if at < 0 or "partition(s)" not in line:
            continue
        try:
            entry = json.loads(line[at:])
        except ValueError:
            continue
        message = str(entry.get("message", ""))
        if message.startswith("assigned"):
            changes += 1
            owned = [p for p in entry.get("partitions", []) if ".predictions:" in p]
        elif message.startswith("revoked"):
            changes += 1
            owned = []
    return changes, owned


def wait_group(workers: Sequence[Any], partitions: int, deadline: float, settle_s: float = 3.0) -> None:
    """Wait until the workers own every ``predictions`` partition once between them, with no change for ``settle_s``."""
    last: tuple[int, ...] | None = None
    stable_since = time.monotonic()
    while True:
        for w in workers:
            w.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError("the workers did not form a group in time\n" + workers[0].log_tail())
        states = [assignment(w.log_path) for w in workers]
        changes = tuple(c for c, _ in states)
        if changes != last:
            last, stable_since = changes, time.monotonic()
        owned = [p for _, ps in states for p in ps]
        complete = all(ps for _, ps in states) and len(owned) == len(set(owned)) == partitions
        if complete and time.monotonic() - stable_since >= settle_s:
            return
        time.sleep(0.5)


def prime(settings: Settings, traffic: Traffic, workers: Sequence[Any], deadline: float) -> None:
    """Send the primers and wait until the workers have taken one event per model (every reference loaded)."""
    producer = kafka.producer(settings, **{"linger.ms": 5})
    topic = settings.topic("predictions")
    for m in traffic.primers():
        kafka.produce(producer, topic, m.value, m.key, wait_when_full=10.0)
    if producer.flush(60):
        raise RuntimeError("the primers could not be delivered within 60 s")
    while True:
        taken = sum(
            v
            for w in workers
            for n, lab, v in w.metrics()
            if n == "driftline_worker_events_total" and lab.get("topic") == "predictions"
        )
        if taken >= traffic.fleet.n:
            return
        for w in workers:
            w.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers took {taken:.0f} of {traffic.fleet.n} primers in time")
        time.sleep(0.5)


def run_models(
    *,
    settings: Settings,
    make_worker: Callable[[str], Any],
    traffic: Traffic,
    workers: int,
    partitions: int,
    rate: float,
    server_pid: int | None,
    timeout: float,
    say: Callable[[str], None],
    wait_consuming: Callable[[Any, float], float],
    wait_for_merges: Callable[[Warehouse], float],
) -> ModelsResult:
    """One timed run: produce (before or while the workers run), follow every window into the warehouse."""
    deadline = time.monotonic() + timeout
    fleet = traffic.fleet
    backlog = rate <= 0 and workers == 1
    with Warehouse.from_settings(settings, migrate=True) as warehouse:
        wait_for_merges(warehouse)
        procs = [make_worker(f"w{i}") for i in range(workers)]
        marks: dict[str, float] = {}

        def mark_start() -> None:
            marks["wall"] = time.time()
            marks.update({f"w{i}": cpu_seconds(p.pid) for i, p in enumerate(procs)})
            marks["server"] = cpu_seconds(server_pid) if server_pid else 0.0

        messages, produce_s = 0, 0.0
        idle: list[float] = []
        try:
            if backlog:
                messages, produce_s = produce_traffic(settings, traffic, 0.0)
                say(f"produced {messages:,} messages ({traffic.events:,} predictions) in {produce_s:.1f} s")
                procs[0].start()
                wait_consuming(procs[0], deadline)
                mark_start()
            else:
                for p in procs:
                    p.start()
                wait_group(procs, partitions, min(deadline, time.monotonic() + 120))
                prime(settings, traffic, procs, deadline)
                idle = idle_rates([p.pid for p in procs], IDLE_SAMPLE_S)
                say(f"{workers} worker(s) in the group; producing at {rate:,.0f}/s" if rate else "producing")
                messages, produce_s = produce_traffic(settings, traffic, rate, on_start=mark_start)
                say(f"produced {messages:,} messages ({traffic.events:,} predictions) in {produce_s:.1f} s")
            expected = {(fleet.model_ids[rank], ws) for rank, ws in traffic.windows}
            # a minute of slack for the worker's clock against this one (both are this machine's)
            rows = WindowRows(warehouse, since_ms=int(marks["wall"] * 1000) - 60_000)
            rss: list[tuple[float, int]] = []
            while True:
                for p in procs:
                    p.check_alive()
                rss.append((time.time() - marks["wall"], sum(_status_kib(p.pid, "VmRSS") for p in procs)))
                rows.poll()
                if expected <= rows.seen.keys():
                    finished = time.time()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"not every window reached ClickHouse within {timeout:.0f} s: "
                        f"{len(expected & rows.seen.keys())} of {len(expected)}\n{procs[0].log_tail()}"
                    )
                time.sleep(POLL_S)
            each = [cpu_seconds(p.pid) - marks[f"w{i}"] for i, p in enumerate(procs)]
            worker_cpu = sum(each)
            server_cpu = cpu_seconds(server_pid) - marks["server"] if server_pid else None
            peaks = [_status_kib(p.pid, "VmHWM") for p in procs]
        finally:
            for p in procs:
                p.stop()
        reports = written_windows(warehouse, "drift_reports") & expected
        metrics = written_windows(warehouse, "drift_metrics") & expected
        prints = {table: row_fingerprint(warehouse, table) for table in ROW_COLUMNS}
    return ModelsResult(
        models=fleet.n,
        features=fleet.features,
        workers=workers,
        events=traffic.events,
        labels=traffic.labels,
        messages=messages,
        seconds=finished - marks["wall"],
        produce_s=produce_s,
        close_to_row_ms=[float(seen - c) for key, (seen, c) in rows.seen.items() if key in expected],
        windows_expected=len(expected),
        windows_reports=len(reports),
        windows_metrics=len(metrics),
        windows_written=len(reports & metrics),
        peak_rss_kib=peaks,
        rss_samples_kib=rss,
        worker_cpu_s=worker_cpu,
        server_cpu_s=server_cpu,
        fingerprints=prints,
        worker_cpu_each_s=each,
        idle_cpu_ms_per_s=idle,
    )


def result_line(r: ModelsResult) -> str:
    """The ``RESULT mode=models`` line of one run."""
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    p99 = float(np.percentile(r.close_to_row_ms, 99)) if r.close_to_row_ms else float("nan")
    return (
        f"RESULT mode=models models={r.models} features={r.features} events_per_s={r.events_per_s:,.0f} "
        f"close_to_row_ms_p99={p99:.0f} peak_rss_mib={max(r.peak_rss_kib) / 1024:.0f} "
        f"worker_cpu_s_per_million={fmt(r.per_million(r.worker_cpu_s))} "
        f"server_cpu_s_per_million={fmt(r.per_million(r.server_cpu_s))}"
    )


def detail_lines(r: ModelsResult) -> list[str]:
    p50 = float(np.percentile(r.close_to_row_ms, 50)) if r.close_to_row_ms else float("nan")
    server = "n/a" if r.server_cpu_s is None else f"{r.server_cpu_s:.2f}"
    return [
        f"RESULT mode=models models={r.models} features={r.features} workers={r.workers} events={r.events} "
        f"labels={r.labels} messages={r.messages} seconds={r.seconds:.2f} produce_s={r.produce_s:.2f} "
        f"close_to_row_ms_p50={p50:.0f} peak_rss_mib_per_worker={','.join(str(k // 1024) for k in r.peak_rss_kib)} "
        f"worker_cpu_s={r.worker_cpu_s:.2f} server_cpu_s={server}",
        f"RESULT mode=models workers={r.workers} worker_cpu_s_each={','.join(f'{c:.1f}' for c in r.worker_cpu_each_s)} "
        + (
            f"idle_cpu_ms_per_s_each={','.join(f'{c:.0f}' for c in r.idle_cpu_ms_per_s)} "
            f"idle_share_s_per_million={r.per_million(r.idle_cpu_s):.2f}"
            if r.idle_cpu_ms_per_s
            else "idle_cpu_ms_per_s_each=n/a (backlog run)"
        ),
        f"RESULT mode=models windows_expected={r.windows_expected} windows_written={r.windows_written} "
        f"(drift_reports {r.windows_reports}, drift_metrics {r.windows_metrics})",
    ]


# ----------------------------------------------------------------------------- plans and targets

CPU_BATCHED_TARGET = 2.0  # worker CPU seconds per million events, one model x 22 features, batched
CPU_SINGLE_TARGET = 10.0  # the same, single events
RSS_ONE_MODEL_MIB = 300.0
RSS_FLAT = 1.10  # peak RSS of the run's second half / its first half
RSS_MANY_MIB = 1024.0
CLOSE_TO_ROW_P99_MS = 2_000.0
GROUP_CPU_SPREAD = 0.10
PACE = 0.95  # a paced run that sends below this share of its rate did not test the rate


@dataclass(frozen=True)
class Plan:
    """One configuration: its runs (one per worker count) share a fleet, a seed and a start.

    >>> Plan("x", 1_000, 30, 10**6, 100_000.0, (1, 2), 8, "mixed").describe()
    'models=1000 features=30 events=1000000 rate=100,000/s workers=1,2 partitions=8 mode=mixed'
    """

    name: str
    models: int
    features: int
    events: int
    rate: float
    workers: tuple[int, ...]
    partitions: int
    mode: str
    event_rate: float = 0.0

    def describe(self) -> str:
        rate = f"{self.rate:,.0f}/s" if self.rate > 0 else "backlog"
        return (
            f"models={self.models} features={self.features} events={self.events} rate={rate} "
            f"workers={','.join(map(str, self.workers))} partitions={self.partitions} mode={self.mode}"
        )


def target_plans(events: int) -> list[Plan]:
    """The runs behind the targets of issue 15, each ``events`` long (single events: a quarter).

    >>> [(p.name, p.models, p.events, p.workers) for p in target_plans(400_000)]  # doctest: +NORMALIZE_WHITESPACE
    [('one-batched', 1, 400000, (1,)), ('one-single', 1, 100000, (1,)), ('many', 1000, 400000, (1,)),
     ('group', 1000, 400000, (1, 2, 4))]
    """
    return [
        Plan("one-batched", 1, 22, events, 0.0, (1,), 1, "batched"),
        Plan("one-single", 1, 22, max(events // 4, 1), 0.0, (1,), 1, "single"),
        Plan("many", 1_000, 30, events, 100_000.0, (1,), 1, "mixed"),
        Plan("group", 1_000, 30, events, 100_000.0, (1, 2, 4), 8, "mixed"),
    ]


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def rss_halves(samples: Sequence[tuple[float, int]]) -> tuple[int, int] | None:
    """Peak RSS (KiB) of the first and of the second half of a run's samples, or None with too few.

    >>> rss_halves([(0.0, 100), (1.0, 120), (2.0, 118), (3.0, 125)])
    (120, 125)
    """
    if len(samples) < 4:
        return None
    end = samples[-1][0]
    first = [kib for t, kib in samples if t <= end / 2]
    second = [kib for t, kib in samples if t > end / 2]
    return (max(first), max(second)) if first and second else None


def ratio_lines(plan: Plan, results: Sequence[ModelsResult]) -> list[str]:
    """The RATIO lines of the targets that apply to a plan's runs."""
    out: list[str] = []
    head = f"RATIO models={plan.models} features={plan.features} mode={plan.mode}"
    for r in results:
        where = f"{head} workers={r.workers}"
        cpu = r.per_million(r.worker_cpu_s)
        if plan.models == 1 and plan.mode in ("batched", "single") and cpu is not None:
            target = CPU_BATCHED_TARGET if plan.mode == "batched" else CPU_SINGLE_TARGET
            out.append(f"{where} worker_cpu_s_per_million={cpu:.2f} target<={target:g} {verdict(cpu <= target)}")
        peak = max(r.peak_rss_kib) / 1024
        limit = RSS_ONE_MODEL_MIB if plan.models == 1 else RSS_MANY_MIB
        out.append(f"{where} peak_rss_mib={peak:.0f} target<={limit:g} {verdict(peak <= limit)}")
        halves = rss_halves(r.rss_samples_kib)
        if plan.models == 1 and halves is not None:
            ratio = halves[1] / max(halves[0], 1)
            out.append(
                f"{where} rss_flat second/first half = {halves[1] / 1024:.0f}/{halves[0] / 1024:.0f} MiB "
                f"= {ratio:.2f} target<={RSS_FLAT} {verdict(ratio <= RSS_FLAT)} (events={r.events})"
            )
        if plan.models > 1:
            p99 = float(np.percentile(r.close_to_row_ms, 99)) if r.close_to_row_ms else float("inf")
            out.append(
                f"{where} close_to_row_ms_p99={p99:.0f} target<={CLOSE_TO_ROW_P99_MS:.0f} "
                f"{verdict(p99 <= CLOSE_TO_ROW_P99_MS)}"
            )
        out.append(
            f"{where} windows_written/expected = {r.windows_written}/{r.windows_expected} target=all "
            f"{verdict(r.windows_written == r.windows_expected)}"
        )
        if plan.rate > 0:
            sent = r.events / max(r.produce_s, 1e-9)
            out.append(
                f"{where} producer_rate={sent:,.0f}/{plan.rate:,.0f} events/s = {sent / plan.rate:.2f}x "
                f"target>={PACE} {verdict(sent >= PACE * plan.rate)}"
            )
    if len(results) > 1:
        base = results[0]
        base_cpu = base.per_million(base.worker_cpu_s) or float("nan")
        for r in results[1:]:
            same = r.fingerprints == base.fingerprints
            counts = ", ".join(f"{t} {r.fingerprints[t][0]}/{base.fingerprints[t][0]}" for t in sorted(r.fingerprints))
            out.append(
                f"{head} rows workers={r.workers} vs {base.workers}: identical={'yes' if same else 'no'} "
                f"(rows {counts}) {verdict(same)}"
            )
            cpu = r.per_million(r.worker_cpu_s) or float("nan")
            ratio = cpu / base_cpu
            out.append(
                f"{head} group_cpu workers={r.workers} vs {base.workers}: {cpu:.2f}/{base_cpu:.2f} s per million "
                f"= {ratio:.2f} target<={1 + GROUP_CPU_SPREAD:.2f} {verdict(ratio <= 1 + GROUP_CPU_SPREAD)}"
            )
    return out
