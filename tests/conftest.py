"""Session-wide real services: one Kafka broker per test session.

When ``make test`` (or ``driftline stack up``) already runs a broker, set
``DRIFTLINE_TEST_KAFKA=host:port`` and the suite uses it; otherwise the
session starts its own broker in a temporary directory and stops it at the
end. Each test gets unique topic names and consumer groups, so tests never
see one another's messages.
"""

from __future__ import annotations

import gc
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftline.settings import Settings
from driftline.stack.kafka_local import KafkaBroker, admin_answers
from driftline.stack.process import free_port

REPO = Path(__file__).resolve().parents[1]
KAFKA_JARS = REPO / ".driftline" / "kafka-jars"
os.environ.setdefault("DRIFTLINE_KAFKA_JARS", str(KAFKA_JARS))  # subprocesses (stack tests) share the cache


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    given = os.environ.get("DRIFTLINE_TEST_KAFKA")
    if given:
        if not admin_answers(given, timeout=5):
            pytest.fail(f"DRIFTLINE_TEST_KAFKA={given} does not answer")
        yield given
        return
    # jars are cached in the repo's state dir so that each session does not fetch them again
    broker_home = REPO / ".driftline" / f"test-broker-{uuid.uuid4().hex[:8]}"
    broker = KafkaBroker(broker_home, port=free_port(), controller_port=free_port(), jars=KAFKA_JARS)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        # producers that tests dropped are destroyed now, while the broker still answers,
        # not at interpreter exit where librdkafka would log reconnect failures after pytest's summary
        gc.collect()
        broker.stop()
        shutil.rmtree(broker_home, ignore_errors=True)


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic names, groups and model ids."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, unique: str) -> Settings:
    """Settings whose topics are private to this test."""
    return Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{unique}.")


class WarehouseServer:
    """The embedded ClickHouse HTTP server (chdb), run as its own process like production: locked with
    a random password, as `driftline stack up` runs it; ``url`` carries the password."""

    def __init__(self, root: Path) -> None:
        import secrets
        import subprocess
        import sys
        import time

        from driftline.stack.process import port_answers

        self.port = free_port()
        self.root = root
        self.user = "default"
        self.password = secrets.token_urlsafe(18)
        self.password_file = root / "clickhouse.password"
        self.password_file.write_text(self.password + "\n")
        self.password_file.chmod(0o600)
        self._log = open(root / "chserver.log", "ab")  # noqa: SIM115 - the server writes it until stop() closes it
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.stack.chserver", "--path", str(root / "data"), "--port", str(self.port),
             "--password-file", str(self.password_file)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_answers("127.0.0.1", self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded ClickHouse server did not start: {(root / 'chserver.log').read_text()[-2000:]}"
                )
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def url(self, database: str = "driftline") -> str:
        return f"http://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(20)
        except Exception:
            self._proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def warehouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WarehouseServer]:
    """One embedded ClickHouse server for the session; tests use their own databases."""
    server = WarehouseServer(tmp_path_factory.mktemp("warehouse"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def warehouse_url(warehouse_server: WarehouseServer, unique: str) -> str:
    """An HTTP warehouse URL whose database is private to this test (created by migrations)."""
    return warehouse_server.url(f"dl_{unique}")
