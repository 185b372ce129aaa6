"""``driftline stack up|down|status``: Kafka and the embedded ClickHouse, without Docker.

Each service starts only where nothing already answers on its address, so the
same commands work beside a real cluster (they then do nothing) and on a
fresh laptop (they start both). State lives under ``settings.state_dir``.
"""

from __future__ import annotations

import os
import secrets
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from driftline.redaction import redact_url
from driftline.settings import Settings, local_warehouse_password_file
from driftline.stack.kafka_local import KafkaBroker, admin_answers, first_broker
from driftline.stack.process import ManagedProcess, StackError, port_answers, wait_until
from driftline.streams.warehouse.errors import WarehouseError
from driftline.streams.warehouse.location import WarehouseLocation


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    alive: bool
    managed_pid: int | None
    detail: str = ""

    def line(self) -> str:
        state = "alive" if self.alive else "down"
        owner = f" (started by driftline, pid {self.managed_pid})" if self.managed_pid else ""
        extra = f" - {self.detail}" if self.detail else ""
        return f"{self.name:<11} {self.address:<28} {state}{owner}{extra}"


def warehouse_location(url: str) -> WarehouseLocation:
    """The warehouse the stack serves: ``url`` read by the one parser, which must be an HTTP server.

    >>> loc = warehouse_location("http://127.0.0.1:8123/?database=demo")
    >>> loc.host, loc.port, loc.database, loc.local
    ('127.0.0.1', 8123, 'demo', True)
    >>> warehouse_location("chdb://:memory:")
    Traceback (most recent call last):
    ...
    driftline.stack.process.StackError: the stack serves ClickHouse over HTTP; DRIFTLINE_WAREHOUSE=chdb://:memory: ...
    """
    try:
        location = WarehouseLocation.parse(url)
    except WarehouseError as exc:
        raise StackError(str(exc)) from None
    if location.kind not in ("http", "https"):
        raise StackError(
            f"the stack serves ClickHouse over HTTP; DRIFTLINE_WAREHOUSE={redact_url(url)} is not an http(s) URL"
        )
    return location


def _kafka(settings: Settings) -> KafkaBroker:
    host, port = first_broker(settings.kafka_bootstrap)
    return KafkaBroker(Path(settings.state_dir) / "kafka", host=host or "127.0.0.1", port=port)


def _chserver(settings: Settings) -> ManagedProcess:
    home = Path(settings.state_dir) / "warehouse"
    return ManagedProcess("clickhouse", home / "server.pid", home / "server.log")


def ensure_password(settings: Settings, given: str | None = None) -> Path:
    """The local server's password file (mode 600, in a 700 directory): ``given`` (from the warehouse
    URL) if there is one, else the one already there, else a new random one."""
    path = local_warehouse_password_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if given is None and path.exists():
        os.chmod(path, 0o600)
        if path.read_text().strip():
            return path
    password = given if given is not None else secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that was already there
    return path


def ping_warehouse(address: WarehouseLocation, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{address.kind}://{address.host}:{address.port}/ping", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def up(settings: Settings) -> list[ServiceStatus]:
    broker = _kafka(settings)
    if admin_answers(settings.kafka_bootstrap):
        _say(f"kafka: already answering on {settings.kafka_bootstrap}, not starting another")
    else:
        if port_answers(broker.host, broker.port):
            raise StackError(f"port {broker.bootstrap} is taken by something that is not a Kafka broker")
        _say(f"kafka: starting a KRaft broker on {broker.bootstrap} (home {broker.home})")
        broker.start()
    address = warehouse_location(settings.warehouse)
    if ping_warehouse(address):
        _say(f"clickhouse: already answering on {address.host}:{address.port}, not starting another")
    else:
        if not address.local:
            raise StackError(
                f"ClickHouse at {address.host}:{address.port} does not answer, and it is not local to start"
            )
        if port_answers(address.host, address.port):
            raise StackError(f"port {address.host}:{address.port} is taken by something that is not ClickHouse")
        proc = _chserver(settings)
        data = proc.pid_file.parent / "data"
        password_file = ensure_password(settings, address.password or None)
        _say(
            f"clickhouse: starting the embedded server (chdb) on {address.host}:{address.port} (data {data}; "
            f"user {address.username}, password in {password_file})"
        )
        proc.spawn(
            [
                sys.executable,
                "-m",
                "driftline.stack.chserver",
                "--path",
                str(data),
                "--host",
                address.host,
                "--port",
                str(address.port),
                "--user",
                address.username,
                "--password-file",
                str(password_file),
            ]
        )
        wait_until(
            lambda: ping_warehouse(address), 60, proc, f"the embedded ClickHouse on {address.host}:{address.port}"
        )
    _migrate(settings)
    return status(settings)


def _migrate(settings: Settings) -> None:
    from driftline.streams.warehouse import Warehouse

    Warehouse.from_settings(settings, migrate=True).close()


def down(settings: Settings) -> list[str]:
    stopped = []
    if _chserver(settings).stop():
        stopped.append("clickhouse")
    if _kafka(settings).stop():
        stopped.append("kafka")
    return stopped


def status(settings: Settings) -> list[ServiceStatus]:
    broker = _kafka(settings)
    address = warehouse_location(settings.warehouse)
    return [
        ServiceStatus("kafka", settings.kafka_bootstrap, admin_answers(settings.kafka_bootstrap), broker.process.pid()),
        ServiceStatus(
            "clickhouse",
            f"{address.host}:{address.port}/{address.database}",
            ping_warehouse(address),
            _chserver(settings).pid(),
        ),
    ]
