"""Running the streams worker like production, for the worker's integration tests.

The worker runs as a subprocess (``driftline worker``) against the
session's Kafka broker, the embedded ClickHouse server and a SQLite registry
in the test's temporary directory. Every test has its own topics, consumer
group (Faust app id), Faust data directory and web port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import yaml

from driftline.retrainer.registry import Lineage, Registry
from driftline.settings import Settings
from driftline.stack.postgres import PostgresServer, start_postgres
from driftline.stack.process import free_port, port_answers
from driftline.streams import kafka
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.records import PredictionBatch
from driftline.streams.warehouse import Warehouse

REPO = Path(__file__).resolve().parents[2]
T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z: backfilled events, aligned to every window size used here
WINDOW_MS = 2_000  # the workers' window size unless a test gives another
FEATURES = ("a", "b", "c", "d", "e")
REGIONS = ("north", "south", "east", "west")

# The input monitors that speak on any input change; tests of one other signal turn them off so
# that nothing else requests a retrain.
INPUT_MONITORS_OFF: dict[str, Any] = {
    "drift": {"enabled": False},
    "multivariate": {"enabled": False},
    "trend": {"enabled": False},
}

T = TypeVar("T")


def training_data(n: int = 20_000, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, list[str]], np.ndarray]:
    rng = np.random.default_rng(seed)
    numeric = {f: rng.normal(size=n) for f in FEATURES}
    categorical = {"region": rng.choice(REGIONS, n).tolist()}
    return numeric, categorical, _score(numeric)


def _score(numeric: dict[str, np.ndarray]) -> np.ndarray:
    z = 0.8 * numeric["a"] - 0.5 * numeric["c"] + 0.3 * numeric["e"]  # b and d are free to drift
    return 1.0 / (1.0 + np.exp(-z))


def make_batch(
    model_id: str,
    version: str,
    start: int,
    n: int,
    step_ms: int,
    *,
    drift: Sequence[str] = (),
    seed: int = 1,
    prefix: str = "e",
) -> PredictionBatch:
    """``n`` predictions from ``start`` every ``step_ms``; features in ``drift`` shift by two standard deviations."""
    rng = np.random.default_rng(seed)
    numeric = {f: rng.normal(loc=2.0 if f in drift else 0.0, size=n) for f in FEATURES}
    return PredictionBatch(
        model_id,
        version,
        [f"{prefix}{seed}-{i}" for i in range(n)],
        start + np.arange(n, dtype=np.int64) * step_ms,
        numeric=numeric,
        categorical={"region": rng.choice(REGIONS, n).tolist()},
        predictions=_score(numeric),
        latency_ms=rng.gamma(2.0, 4.0, n),
        attributes={"channel": rng.choice(["web", "app"], n).tolist()},
    )


def wait_until(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.25,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = on_timeout() if on_timeout else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{extra}")
        time.sleep(interval)


def cli_argv(settings: Settings, *args: str, verbose: bool = False) -> list[str]:
    """``python -m driftline.cli`` (that is, ``driftline``) on ``settings``' services, then ``args``.

    The policy is passed only when ``settings`` names one; ``verbose`` adds ``-v`` (debug logging).

    >>> cli_argv(Settings(kafka_bootstrap="k:9092", policy="p.yaml"), "registry", "list", verbose=True)[2:6]
    ['driftline.cli', '-v', '--kafka', 'k:9092']
    >>> cli_argv(Settings(policy="p.yaml"), "registry", "list")[-4:]
    ['--policy', 'p.yaml', 'registry', 'list']
    """
    s = settings
    argv = [sys.executable, "-m", "driftline.cli", *(["-v"] if verbose else [])]
    argv += ["--kafka", s.kafka_bootstrap, "--topic-prefix", s.topic_prefix, "--warehouse", s.warehouse]
    argv += ["--registry", s.registry, "--artifacts", s.artifacts]
    if s.policy is not None:
        argv += ["--policy", str(s.policy)]
    return [*argv, *args]


def import_root() -> Path:
    """A folder that holds only this checkout's ``driftline`` package (a link), for a subprocess's path.

    With the repository itself on PYTHONPATH, a subprocess could also import its folders as
    top-level ``streams``, ``retrainer`` and ``schemas``: one module under two names.
    """
    root = REPO / ".driftline" / "import-root"
    link = root / "driftline"
    if not link.is_symlink():
        root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made by a test process running at the same time
            link.symlink_to(REPO / "driftline", target_is_directory=True)
    return root


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a driftline subprocess: this one, running this checkout's code, plus ``extra``."""
    # DRIFTLINE_KAFKA_JARS (the test broker's jar cache) is not a Kafka client setting
    env = {k: v for k, v in os.environ.items() if k != "DRIFTLINE_KAFKA_JARS"}
    env["PYTHONPATH"] = str(import_root())
    env.update(extra or {})
    return env


def stop_process(pid: int, sig: int, grace: float) -> tuple[float, bool]:
    """Send ``sig`` and wait up to ``grace`` seconds; then SIGKILL. Returns the seconds it took and whether
    the process stopped on ``sig`` alone."""
    started = time.monotonic()
    os.kill(pid, sig)
    deadline = started + grace
    while time.monotonic() < deadline:
        if not _running(pid):
            return time.monotonic() - started, True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    while _running(pid):
        time.sleep(0.05)
    return time.monotonic() - started, False


def _running(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


class PrivateWarehouse:
    """An embedded ClickHouse server of one test, which it may stop and start again on the same port and data.

    ``server_args`` go to ``driftline.stack.chserver`` as they are (e.g. ``--user``/``--password``).
    (The session's server in tests/conftest.py is shared by every test, so it must never stop.)
    """

    def __init__(self, root: Path, *server_args: str) -> None:
        self.root = root
        self.port = free_port()
        self.server_args = server_args
        self.proc: subprocess.Popen | None = None
        self.start()

    def url(self, database: str) -> str:
        return f"http://127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60) -> None:
        log = open(self.root / "chserver.log", "ab")  # noqa: SIM115 - the server writes to it until stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "driftline.stack.chserver",
                "--path",
                str(self.root / "data"),
                "--port",
                str(self.port),
                *self.server_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_answers("127.0.0.1", self.port):
            assert self.proc.poll() is None and time.monotonic() < deadline, (
                f"the embedded ClickHouse server did not start: {(self.root / 'chserver.log').read_text()[-2000:]}"
            )
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, grace: float = 5.0) -> tuple[float, bool]:
        """Stop the server with ``sig`` (SIGKILL after ``grace`` seconds); see :func:`stop_process`."""
        assert self.proc is not None
        took = stop_process(self.proc.pid, sig, grace)
        self.proc.wait()
        return took

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGTERM, 20)


@dataclass
class WorkerProcess:
    """One ``driftline worker`` process."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    web_port: int
    _log: Any = field(repr=False, default=None)
    expected_exit: bool = False

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        # a line may quote a hostile message's megabyte-long field: keep its start and end
        tail = [
            line if len(line) <= 4_000 else f"{line[:2_000]} [...] {line[-2_000:]}"
            for line in text.splitlines()[-lines:]
        ]
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(tail)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def kill(self) -> None:
        """kill -9: no shutdown, no commit."""
        self.expected_exit = True
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)
        self._close_log()

    def stop(self, timeout: float = 30) -> int:
        self.expected_exit = True
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._close_log()
        return self.popen.returncode

    def _close_log(self) -> None:
        if self._log is not None and not self._log.closed:
            self._log.close()


@dataclass
class WorkerEnv:
    """A private corner of the shared services for one test."""

    settings: Settings
    tmp: Path
    registry: Registry
    warehouse: Warehouse
    producer: Any
    workers: list[WorkerProcess] = field(default_factory=list)

    @classmethod
    def create(cls, kafka_settings: Settings, warehouse_url: str, tmp: Path, *, partitions: int = 1) -> WorkerEnv:
        settings = kafka_settings.replace(
            warehouse=warehouse_url,
            registry=f"sqlite:///{tmp / 'registry.db'}",
            artifacts=str(tmp / "artifacts"),
            state_dir=str(tmp / "state"),
        )
        kafka.ensure_topics(settings, partitions=partitions)
        registry = Registry.from_settings(settings)
        warehouse = Warehouse.connect(warehouse_url, migrate=True)
        producer = kafka.producer(settings, **{"linger.ms": 5})
        return cls(settings, tmp, registry, warehouse, producer)

    def register(
        self, model_id: str, *, seed: int = 0, promote: bool = True, data: tuple[dict, dict, np.ndarray] | None = None
    ) -> str:
        numeric, categorical, predictions = data or training_data(seed=seed)

        def profile(version: str) -> dict:
            return ReferenceProfile.build(model_id, version, numeric, categorical, predictions).to_dict()

        version = self.registry.register(
            model_id, lineage=Lineage(dataset_rows=len(predictions)), reference_profile=profile
        ).version
        if promote:
            self.registry.promote(model_id, version)
        return version

    def publish(self, topic: str, key: str, record: Any) -> None:
        kafka.publish(self.producer, self.settings.topic(topic), key, record)

    def publish_raw(self, topic: str, key: str | None, value: bytes) -> None:
        kafka.produce(self.producer, self.settings.topic(topic), value, key)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def start_worker(
        self,
        name: str,
        app_id: str,
        *args: str,
        window_seconds: float = WINDOW_MS / 1000,
        idle_seconds: float | str = 2.0,
        extra_env: dict[str, str] | None = None,
        verbose: bool = False,
        policy: Mapping[str, Any] | None = None,
    ) -> WorkerProcess:
        """``driftline worker`` on this environment's settings (``-v`` if ``verbose``), logging to ``<name>.log``.

        ``policy``: the ``defaults`` of a version-1 policy file written for this worker.
        """
        if policy is not None:
            path = self.tmp / f"{name}-policy.yaml"
            path.write_text(yaml.safe_dump({"version": 1, "defaults": dict(policy)}))
            extra_env = {**(extra_env or {}), "DRIFTLINE_POLICY": str(path)}
        port = free_port()
        log_path = self.tmp / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the worker writes to it until WorkerProcess closes it
        argv = cli_argv(
            self.settings,
            "worker",
            "--app-id",
            app_id,
            "--window-seconds",
            str(window_seconds),
            "--lateness-seconds",
            "0",
            "--idle-seconds",
            str(idle_seconds),
            "--tick-seconds",
            "0.25",
            "--batch-within-seconds",
            "0.2",
            "--web-port",
            str(port),
            "--datadir",
            str(self.tmp / f"faust-{name}"),
            "--session-timeout-seconds",
            "10",
            *args,
            verbose=verbose,
        )
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, env=child_env(extra_env))
        worker = WorkerProcess(name, popen, log_path, port, log)
        self.workers.append(worker)
        return worker

    def wait(self, check: Callable[[], T], timeout: float, what: str) -> T:
        """``wait_until``, failing at once with the logs if an expected worker died."""

        def checked() -> T:
            dead = [w for w in self.workers if not w.alive() and not w.expected_exit]
            if dead:
                raise AssertionError(f"worker {dead[0].name} exited with {dead[0].popen.returncode}\n{self.logs()}")
            return check()

        return wait_until(checked, timeout, what, on_timeout=self.logs)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The consumer group's committed offset per partition of ``topic`` (-1001: none)."""
        from confluent_kafka import TopicPartition

        consumer = kafka.consumer(self.settings, group, **{"enable.auto.commit": False})
        try:
            partitions = (
                consumer.list_topics(self.settings.topic(topic), timeout=10)
                .topics[self.settings.topic(topic)]
                .partitions
            )
            offsets = consumer.committed(
                [TopicPartition(self.settings.topic(topic), p) for p in partitions], timeout=10
            )
            return {tp.partition: tp.offset for tp in offsets}
        finally:
            consumer.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        consumer = kafka.consumer(self.settings, "driftline-test-offsets")
        try:
            name = self.settings.topic(topic)
            partitions = consumer.list_topics(name, timeout=10).topics[name].partitions
            return {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in partitions}
        finally:
            consumer.close()

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return self.warehouse.query_rows(sql, params or None)

    def count(self, table: str, where: str = "1", **params: Any) -> int:
        return int(self.query(f"SELECT count() AS n FROM {table} FINAL WHERE {where}", **params)[0]["n"])

    def windows_written(self, model_id: str | None = None) -> int:
        """Prediction windows completely written (window_profiles is the last table a window writes)."""
        where = "1" if model_id is None else "model_id = {m:String}"
        return int(
            self.query(
                f"SELECT uniqExact(model_id, model_version, window_start) AS n FROM window_profiles WHERE {where}",
                **({} if model_id is None else {"m": model_id}),
            )[0]["n"]
        )

    def snapshot(self, model_id: str) -> dict[str, Any]:
        """What a run wrote for a model, without write times: to compare runs."""
        drift = self.query(
            "SELECT feature, metric, toUnixTimestamp64Milli(window_start) AS ws, "
            "toUnixTimestamp64Milli(window_end) AS we, "
            "value, p_value, threshold, drifted, n_reference, n_current FROM drift_metrics FINAL "
            "WHERE model_id = {m:String} ORDER BY ws, feature, metric",
            m=model_id,
        )
        profiles = self.query(
            "SELECT feature, toUnixTimestamp64Milli(window_start) AS ws, count, missing, min, max, quantiles, "
            "histogram, categories, mean, std FROM window_profiles FINAL WHERE model_id = {m:String} "
            "ORDER BY ws, feature",
            m=model_id,
        )
        reports = self.query(
            "SELECT toUnixTimestamp64Milli(window_start) AS ws, n_current, drifted_features FROM drift_reports FINAL "
            "WHERE model_id = {m:String} ORDER BY ws",
            m=model_id,
        )
        requests = self.query(
            "SELECT request_id, model_version, reason, toUnixTimestamp64Milli(requested_at) AS at, evidence "
            "FROM retrain_requests FINAL WHERE model_id = {m:String} ORDER BY at, request_id",
            m=model_id,
        )
        alerts = self.query(
            "SELECT alert_id, kind, severity, toUnixTimestamp64Milli(occurred_at) AS at FROM alerts FINAL "
            "WHERE model_id = {m:String} ORDER BY at, alert_id",
            m=model_id,
        )
        return {
            "drift": drift,
            "profiles": profiles,
            "reports": reports,
            "requests": requests,
            "alerts": alerts,
            "predictions": self.settled_predictions(model_id),
        }

    def settled_predictions(self, model_id: str, timeout: float = 30) -> int:
        """The model's raw predictions once no more arrive. The worker writes the raw rows of messages
        still waiting for a window at least once a tick (0.25 s here), so two equal counts a second
        apart mean every row it read is in."""
        deadline = time.monotonic() + timeout
        last = self.count("predictions", "model_id = {m:String}", m=model_id)
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self.count("predictions", "model_id = {m:String}", m=model_id)
            if now == last:
                return now
            last = now
        return last

    def logs(self) -> str:
        return "\n".join(w.log_tail() for w in self.workers)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.producer.flush(10)
        self.warehouse.close()


@pytest.fixture
def env(kafka_settings: Settings, warehouse_url: str, tmp_path: Path) -> Iterator[WorkerEnv]:
    """A WorkerEnv on the session's broker and warehouse server, for one test; its workers stop at the end.

    A test module that uses it imports it from here, as pytest finds fixtures in a module's namespace.
    """
    e = WorkerEnv.create(kafka_settings, warehouse_url, tmp_path)
    try:
        yield e
    finally:
        e.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of one test module (tests make their own schemas in it)."""
    root = Path(tempfile.mkdtemp(prefix="driftline-pg-"))
    root.chmod(0o755)  # the postgres system user must reach the data directory inside
    server = start_postgres(root / "data", free_port(), fsync=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def assert_same_results(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal drift metrics (bit for bit), reports, raw counts and profiles.

    A profile's mean and std are merged batch by batch in floating point, so
    they may differ in the last bits when the batches were cut differently.
    """
    assert got["reports"] == expected["reports"]
    assert got["predictions"] == expected["predictions"]
    assert got["requests"] == expected["requests"]
    assert got["alerts"] == expected["alerts"]
    assert len(got["drift"]) == len(expected["drift"])
    for g, e in zip(got["drift"], expected["drift"]):
        assert _same_floats(g, e), (g, e)
    assert len(got["profiles"]) == len(expected["profiles"])
    for g, e in zip(got["profiles"], expected["profiles"]):
        exact = ("feature", "ws", "count", "missing", "min", "max", "quantiles", "histogram", "categories")
        assert _same_floats({k: g[k] for k in exact}, {k: e[k] for k in exact}), (g, e)
        for k in ("mean", "std"):
            assert np.isclose(g[k], e[k], rtol=1e-12, atol=1e-15, equal_nan=True), (k, g, e)


def _same_floats(a: Any, b: Any) -> bool:
    # NaN == NaN here: a metric that is NaN in both runs is the same result
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (np.isnan(a) and np.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_floats(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_floats(x, y) for x, y in zip(a, b))
    return a == b


# -- every row a run wrote, compared exactly ------------------------------------------------------------------

# The result tables with the columns that identify a row (their ORDER BY keys): a row is compared whole,
# every column but the write time, so that a column added later is compared without a change here.
RESULT_TABLES: dict[str, tuple[str, ...]] = {
    "drift_metrics": ("model_id", "model_version", "feature", "metric", "window_start"),
    "performance_metrics": ("model_id", "model_version", "segment", "metric", "window_start"),
    "window_profiles": ("model_id", "model_version", "feature", "window_start", "window_end"),
    "drift_reports": ("model_id", "model_version", "window_start"),
}


def exact(value: Any) -> Any:
    """A value in a form that compares bit for bit: floats by their hex form (every NaN alike), maps by
    their sorted items, arrays as tuples.

    >>> exact(0.3) == exact(0.1 + 0.2), exact(0.5) == exact(0.25 + 0.25)
    (False, True)
    >>> exact({"b": [1.0, float("nan")], "a": 2})
    (('a', 2), ('b', ('0x1.0000000000000p+0', 'nan')))
    """
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, dict):
        return tuple(sorted((k, exact(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(exact(v) for v in value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


@dataclass(frozen=True)
class RunResults:
    """What a run wrote for some models: every row of the result tables (FINAL, without write times) and the
    raw prediction and label counts per model version."""

    tables: dict[str, list[dict[str, Any]]]
    counts: dict[str, list[tuple]]

    @classmethod
    def read(cls, env: WorkerEnv, models: Sequence[str]) -> RunResults:
        tables = {}
        for table in RESULT_TABLES:
            rows = env.query(
                f"SELECT * EXCEPT (computed_at) FROM {table} FINAL WHERE has({{models:Array(String)}}, model_id)",
                models=list(models),
            )
            tables[table] = sorted(({k: exact(v) for k, v in r.items()} for r in rows), key=_row_key)
        counts = {
            "predictions": [
                tuple(r.values())
                for r in env.query(
                    "SELECT model_id, model_version, count() AS n FROM predictions FINAL "
                    "WHERE has({models:Array(String)}, model_id) GROUP BY model_id, model_version ORDER BY ALL",
                    models=list(models),
                )
            ],
            "labels": [
                tuple(r.values())
                for r in env.query(
                    "SELECT l.model_id AS model_id, p.model_version AS model_version, count() AS n "
                    "FROM (SELECT model_id, event_id FROM labels FINAL "
                    "WHERE has({models:Array(String)}, model_id)) AS l "
                    "LEFT JOIN (SELECT model_id, event_id, model_version FROM predictions FINAL "
                    "WHERE has({models:Array(String)}, model_id)) AS p "
                    "ON l.model_id = p.model_id AND l.event_id = p.event_id "
                    "GROUP BY model_id, model_version ORDER BY ALL",
                    models=list(models),
                )
            ],
        }
        return cls(tables, counts)

    @property
    def rows(self) -> int:
        return sum(len(rows) for rows in self.tables.values()) + sum(len(c) for c in self.counts.values())

    def differences(self, expected: RunResults) -> list[str]:
        """What differs from ``expected``: rows missing or extra per table, and for rows present in both
        runs, the columns whose values differ (with the first example)."""
        found = []
        for table, key in RESULT_TABLES.items():
            got = {tuple(r[k] for k in key): r for r in self.tables[table]}
            want = {tuple(r[k] for k in key): r for r in expected.tables[table]}
            missing, extra = want.keys() - got.keys(), got.keys() - want.keys()
            if missing:
                found.append(f"{table}: {len(missing)} of {len(want)} rows missing, e.g. {min(missing)}")
            if extra:
                found.append(f"{table}: {len(extra)} rows more than the clean run, e.g. {min(extra)}")
            columns: dict[str, list] = {}
            for k in sorted(want.keys() & got.keys()):
                for column, value in want[k].items():
                    if got[k].get(column) != value:
                        columns.setdefault(column, []).append((k, value, got[k].get(column)))
            for column, diffs in columns.items():
                k, want_value, got_value = diffs[0]
                found.append(
                    f"{table}.{column}: {len(diffs)} rows differ, e.g. {k}: clean {str(want_value)[:200]} "
                    f"got {str(got_value)[:200]}"
                )
        for name, want_counts in expected.counts.items():
            if self.counts[name] != want_counts:
                found.append(f"{name} per model version: clean {want_counts} got {self.counts[name]}")
        return found


def _row_key(row: dict[str, Any]) -> str:
    return repr(tuple(row.items()))


def assert_identical(got: RunResults, expected: RunResults) -> None:
    """Every row the same, bit for bit; the message names the tables and columns that differ."""
    differences = got.differences(expected)
    assert not differences, "results differ from the clean run:\n" + "\n".join(differences)
    assert got.tables == expected.tables and got.counts == expected.counts
