"""Secrets never appear in what driftline writes (issue 11, finding 5; docs/SECURITY.md).

The worker, the retrainer and the CLI run as production runs them (subprocesses, debug logging)
with a password in every URL: the warehouse (an embedded ClickHouse server that checks it), the
registry (PostgreSQL), the schema registry and the alert webhook (whose path is its token). Then
everything they wrote is searched for the passwords: stdout/stderr, every file under their working
directory, DLQ headers read back from Kafka, /metrics, the HTML report, the warehouse's
rejected_events, alerts, retrain_requests and model_versions rows, and what the webhook received.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import textwrap
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from http_receiver import Receiver
from worker_harness import (  # noqa: F401 (postgres: the fixture)
    T0,
    WINDOW_MS,
    PrivateWarehouse,
    WorkerEnv,
    child_env,
    cli_argv,
    make_batch,
    postgres,
)

from driftline.retrainer.registry import Registry
from driftline.settings import Settings
from driftline.stack.postgres import PostgresServer
from driftline.stack.process import free_port
from driftline.streams import kafka
from driftline.streams.records import LabelEvent
from driftline.streams.warehouse import Warehouse, WarehouseError

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse, pytest.mark.postgres]

CH_SECRET = "chPw-" + uuid.uuid4().hex[:12]
PG_SECRET = "pgPw-" + uuid.uuid4().hex[:12]
SR_SECRET = "srPw-" + uuid.uuid4().hex[:12]
HOOK_SECRET = "hookTok-" + uuid.uuid4().hex[:12]
WRONG_SECRET = "wrongPw-" + uuid.uuid4().hex[:12]
SECRETS = (CH_SECRET, PG_SECRET, SR_SECRET, HOOK_SECRET, WRONG_SECRET)
WINDOWS = 3


@pytest.fixture(scope="module")
def guarded_warehouse() -> Iterator[int]:
    """An embedded ClickHouse server that accepts only user ``driftline`` with ``CH_SECRET``: its port."""
    root = Path(tempfile.mkdtemp(prefix="driftline-secrets-ch-"))
    server = PrivateWarehouse(root, "--user", "driftline", "--password", CH_SECRET)
    try:
        yield server.port
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)


def _warehouse_url(port: int, database: str, password: str = CH_SECRET) -> str:
    return f"http://driftline:{password}@127.0.0.1:{port}/{database}"


def _registry_url(server: PostgresServer, unique: str) -> str:
    # the test server trusts local connections, so any password works; what matters is that it is in the URL
    schema = server.create_schema(f"reg_{unique}")
    return schema.replace("postgresql://postgres@", f"postgresql://postgres:{PG_SECRET}@", 1)


@pytest.fixture
def secret_env(
    kafka_settings: Settings,
    guarded_warehouse: int,
    postgres: PostgresServer,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[WorkerEnv]:
    monkeypatch.delenv("DRIFTLINE_KAFKA_JARS", raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent("""
        defaults:
          retraining:
            min_rows: 100
    """)
    )
    settings = kafka_settings.replace(
        warehouse=_warehouse_url(guarded_warehouse, f"dl_{unique}"),
        registry=_registry_url(postgres, unique),
        artifacts=str(tmp_path / "artifacts"),
        state_dir=str(tmp_path / "state"),
        policy=str(policy),
    )
    kafka.ensure_topics(settings, partitions=1)
    env = WorkerEnv(
        settings,
        tmp_path,
        Registry.from_settings(settings),
        Warehouse.connect(settings.warehouse, migrate=True),
        kafka.producer(settings, **{"linger.ms": 5}),
    )
    try:
        yield env
    finally:
        env.close()


class Outputs:
    """Everything the processes of one test wrote, to be searched for secrets."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def add(self, where: str, text: object) -> None:
        self.texts[where] = self.texts.get(where, "") + "\n" + (text if isinstance(text, str) else repr(text))

    def add_dead_letters(self, dead: Iterable[Any]) -> None:
        """The headers of DLQ records read back from Kafka (they quote errors)."""
        for d in dead:
            self.add("dlq headers", {k: v.decode("utf-8", "replace") for k, v in d.headers.items()})

    def add_files(self, root: Path) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(str(path), path.read_bytes().decode("utf-8", "replace"))

    def add_what_stays(self, env: WorkerEnv) -> None:
        """What outlives the processes: the warehouse rows that may quote an error, and every file
        under the test's directory (logs, report HTML, state and Faust data directories, artifacts)."""
        for table in ("rejected_events", "alerts", "retrain_requests", "model_versions", "drift_reports"):
            self.add(f"warehouse {table}", env.query(f"SELECT * FROM {table}"))
        self.add_files(env.tmp)

    def leaks(self) -> list[str]:
        return [f"{secret} in {where}" for where, text in self.texts.items() for secret in SECRETS if secret in text]


def _cli(
    env: WorkerEnv,
    *args: str,
    settings: Settings | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    argv = cli_argv(settings or env.settings, *args, verbose=True)
    return subprocess.run(argv, capture_output=True, text=True, cwd=env.tmp, timeout=300, env=child_env(extra_env))


def test_no_password_in_anything_the_worker_retrainer_and_cli_write(
    secret_env: WorkerEnv, unique: str, guarded_warehouse: int
) -> None:
    env = secret_env
    outputs = Outputs()
    # the warehouse really checks the password: a wrong one fails, and its error does not quote it either
    with pytest.raises(WarehouseError) as refused:
        Warehouse.connect(_warehouse_url(guarded_warehouse, f"dl_{unique}", WRONG_SECRET)).query_rows("SELECT 1")
    outputs.add("wrong-password error", str(refused.value))
    outputs.add("settings repr", repr(env.settings))

    model = f"credit-{unique}"
    version = env.register(model)
    for w in range(WINDOWS):
        for part in range(2):
            batch = make_batch(
                model, version, T0 + w * WINDOW_MS + part * 1_000, 200, 5, drift=("b", "d"), seed=10 * w + part
            )
            env.publish("predictions", model, batch)
            for event_id, t, p in zip(batch.event_ids, batch.event_times, batch.predictions):
                env.publish("labels", model, LabelEvent(event_id, model, int(t) + 100, float(p > 0.5)))
        if w == 1:
            env.publish_raw("predictions", model, b"\x07 not a driftline message")
            env.publish_raw("predictions", model, b'{"type": "PredictionEvent", "event_id": "x", "model_id": 5}')
            env.publish("predictions", "nobody", make_batch("nobody", "1", T0 + 2_600, 10, 4, seed=7))
    env.flush()

    chat = Receiver()
    try:
        hook = f"{chat.url.rsplit('/', 1)[0]}/services/T000/B000/{HOOK_SECRET}"
        worker = env.start_worker("w1", f"app-{unique}", extra_env={"DRIFTLINE_ALERT_WEBHOOK": hook}, verbose=True)
        env.wait(lambda: env.windows_written(model) >= WINDOWS - 1, 120, "windows written")
        env.wait(lambda: len(chat.bodies) >= 1, 60, "an alert posted to the webhook")
        dead = kafka.consume_records(env.settings, env.settings.topic("dlq"), 3, timeout=30, decode=False)
        assert len(dead) == 3, env.logs()
        outputs.add_dead_letters(dead)
        outputs.add("/metrics", env.wait(lambda: worker.metrics(), 30, "the metrics"))
        outputs.add("webhook bodies", chat.bodies)
        worker.stop()
    finally:
        chat.shutdown()

    # the retrainer and the CLI, each with debug logging
    runs = {
        "retrain": _cli(env, "retrain", "--model", model, "--requested-by", "ana"),
        "retrainer": _cli(env, "retrainer", "--group-id", f"retrainer-{unique}", "--once"),
        "registry list": _cli(env, "registry", "list"),
        "registry list --model": _cli(env, "registry", "list", "--model", model, "--json"),
        "registry show": _cli(env, "registry", "show", model, "--json"),
        "report": _cli(env, "report", "--model", model, "--out", str(env.tmp / "report.html")),
    }
    assert all(r.returncode == 0 for r in runs.values()), {k: r.stderr[-3000:] for k, r in runs.items() if r.returncode}
    assert "registered" in runs["retrainer"].stdout + runs["retrainer"].stderr
    # and where they fail: a wrong warehouse password, an unreachable registry, a URL that does not parse
    wrong = env.settings.replace(warehouse=_warehouse_url(guarded_warehouse, f"dl_{unique}", WRONG_SECRET))
    gone = env.settings.replace(registry=f"postgresql://postgres:{PG_SECRET}@127.0.0.1:{free_port()}/x")
    unparsable = env.settings.replace(warehouse=f"http://driftline:{CH_SECRET}@127.0.0.1:99999/dl")
    failing = {
        "report, wrong password": _cli(
            env, "report", "--model", model, "--out", str(env.tmp / "r2.html"), settings=wrong
        ),
        "registry list, no server": _cli(env, "registry", "list", settings=gone),
        "report, bad URL": _cli(
            env, "report", "--model", model, "--out", str(env.tmp / "r3.html"), settings=unparsable
        ),
    }
    assert all(r.returncode != 0 and r.stderr for r in failing.values())
    for name, r in {**runs, **failing}.items():
        outputs.add(f"{name} stdout", r.stdout)
        outputs.add(f"{name} stderr", r.stderr)

    assert (env.tmp / "report.html").stat().st_size > 1000
    outputs.add_what_stays(env)
    assert any("not_a_driftline" in t or "unknown_encoding" in t for t in outputs.texts.values())  # we did search
    assert not outputs.leaks(), "\n".join(outputs.leaks())


def test_schema_registry_credentials_stay_out_of_the_dlq_and_the_log(secret_env: WorkerEnv, unique: str) -> None:
    """A Confluent-framed message (magic byte 0, schema id 7) makes a consumer ask the schema registry,
    which is not there: the error names the registry, never its password."""
    env = secret_env
    outputs = Outputs()
    model = f"credit-{unique}"
    version = env.register(model)
    framed = b"\x00" + struct.pack(">I", 7) + b"\x02\x04ab"
    env.publish("predictions", model, make_batch(model, version, T0, 100, 5, seed=1))
    env.publish_raw("predictions", model, framed)
    env.publish_raw("retrain-requests", model, framed)
    env.flush()
    registry = {"DRIFTLINE_SCHEMA_REGISTRY": f"http://sr-user:{SR_SECRET}@127.0.0.1:{free_port()}"}
    outputs.add("settings repr", repr(env.settings.replace(schema_registry=registry["DRIFTLINE_SCHEMA_REGISTRY"])))
    worker = env.start_worker("w2", f"app-{unique}", extra_env=registry, verbose=True)
    env.wait(lambda: env.count("rejected_events") >= 1, 90, "the worker's rejected event")
    outputs.add("/metrics", env.wait(lambda: worker.metrics(), 30, "the metrics"))
    worker.stop()
    retrainer = _cli(env, "retrainer", "--group-id", f"retrainer-{unique}", "--once", extra_env=registry)
    outputs.add("retrainer stdout", retrainer.stdout)
    outputs.add("retrainer stderr", retrainer.stderr)
    dead = kafka.consume_records(env.settings, env.settings.topic("dlq"), 2, timeout=30, decode=False)
    assert len(dead) == 2, (retrainer.stderr[-3000:], env.logs())
    by_topic = {d.headers["driftline-source-topic"].decode(): d.headers for d in dead}
    assert set(by_topic) == {env.settings.topic("predictions"), env.settings.topic("retrain-requests")}
    # the retrainer reads the framing: its entry comes from asking the (absent) registry
    assert "schema registry" in by_topic[env.settings.topic("retrain-requests")]["driftline-error-detail"].decode()
    outputs.add_dead_letters(dead)
    outputs.add_what_stays(env)
    assert not outputs.leaks(), "\n".join(outputs.leaks())
