"""One settings object for every driftline process.

Precedence, lowest first: defaults, a YAML file (``--config FILE`` or
``DRIFTLINE_CONFIG``), ``DRIFTLINE_*`` environment variables, then explicit
overrides from the command line. The variable names are a public contract
(docs/CONTRACTS.md), so they are spelled out here rather than derived.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from driftline.redaction import redacted_repr

TOPIC_NAMES = (
    "predictions",
    "features",
    "labels",
    "drift",
    "alerts",
    "retrain-requests",
    "models",
    "dlq",
)

_ENV = {
    "DRIFTLINE_KAFKA_BOOTSTRAP": "kafka_bootstrap",
    "DRIFTLINE_TOPIC_PREFIX": "topic_prefix",
    "DRIFTLINE_WAREHOUSE": "warehouse",
    "DRIFTLINE_REGISTRY": "registry",
    "DRIFTLINE_ARTIFACTS": "artifacts",
    "DRIFTLINE_POLICY": "policy",
    "DRIFTLINE_SCHEMA_REGISTRY": "schema_registry",
    "DRIFTLINE_STATE_DIR": "state_dir",
    "DRIFTLINE_ALERT_WEBHOOK": "alert_webhook",
}


class SettingsError(ValueError):
    """A configuration value or file that driftline cannot use."""


@dataclass(frozen=True)
class Settings:
    """Where driftline finds Kafka, the warehouse, the registry and the policy.

    >>> s = Settings(topic_prefix="t.")
    >>> s.topic("predictions")
    't.predictions'
    >>> s.kafka_config()["bootstrap.servers"]
    '127.0.0.1:9092'
    """

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_extra: Mapping[str, str] = field(default_factory=dict)
    topic_prefix: str = "driftline."
    warehouse: str = "http://127.0.0.1:8123/driftline"
    registry: str = "sqlite:///.driftline/registry.db"
    artifacts: str = ".driftline/artifacts"
    policy: str | None = None
    schema_registry: str | None = None
    state_dir: str = ".driftline"
    alert_webhook: str | None = None  # Slack-compatible incoming webhook for alerts

    def __repr__(self) -> str:
        """Every field, with passwords, tokens and the webhook URL masked (``driftline.redaction``).

        >>> Settings(warehouse="http://u:pw@ch:8123/d", kafka_extra={"sasl.password": "pw"})  # doctest: +ELLIPSIS
        Settings(..., kafka_extra={'sasl.password': '***'}, ..., warehouse='http://u:***@ch:8123/d', ...)
        """
        return redacted_repr(self)

    def topic(self, name: str) -> str:
        if name not in TOPIC_NAMES:
            raise SettingsError(f"unknown topic {name!r}; expected one of {', '.join(TOPIC_NAMES)}")
        return f"{self.topic_prefix}{name}"

    def kafka_config(self) -> dict[str, str]:
        """librdkafka-style client configuration (dots, lower case)."""
        conf = {"bootstrap.servers": self.kafka_bootstrap}
        conf.update(self.kafka_extra)
        return conf

    def to_env(self) -> dict[str, str]:
        """The ``DRIFTLINE_*`` variables that give a child process these settings.

        >>> env = Settings(topic_prefix="t.", kafka_extra={"security.protocol": "SSL"}).to_env()
        >>> env["DRIFTLINE_TOPIC_PREFIX"], env["DRIFTLINE_KAFKA_SECURITY_PROTOCOL"]
        ('t.', 'SSL')
        >>> load_settings(env=env) == Settings(topic_prefix="t.", kafka_extra={"security.protocol": "SSL"})
        True
        """
        env = {var: str(getattr(self, name)) for var, name in _ENV.items() if getattr(self, name) is not None}
        for key, value in self.kafka_extra.items():
            env["DRIFTLINE_KAFKA_" + key.upper().replace(".", "_")] = value
        return env

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


# DRIFTLINE_KAFKA_* variables that configure driftline itself, not the Kafka clients
_NOT_CLIENT_SETTINGS = {"DRIFTLINE_KAFKA_BOOTSTRAP", "DRIFTLINE_KAFKA_JARS"}


def _kafka_extra_from_env(env: Mapping[str, str]) -> dict[str, str]:
    # DRIFTLINE_KAFKA_SECURITY_PROTOCOL=SASL_SSL -> security.protocol=SASL_SSL
    extra = {}
    for key, value in env.items():
        if key.startswith("DRIFTLINE_KAFKA_") and key not in _NOT_CLIENT_SETTINGS:
            extra[key[len("DRIFTLINE_KAFKA_") :].lower().replace("_", ".")] = value
    return extra


def _from_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SettingsError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path} must hold a mapping of settings")
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(
            f"config file {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if "kafka_extra" in data and not isinstance(data["kafka_extra"], dict):
        raise SettingsError(f"config file {path}: kafka_extra must be a mapping")
    return data


def load_settings(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings from defaults, file, environment and overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    config_file = config_file or env.get("DRIFTLINE_CONFIG")
    if config_file:
        values.update(_from_file(config_file))
    for var, name in _ENV.items():
        if env.get(var):
            values[name] = env[var]
    extra = dict(values.get("kafka_extra") or {})
    extra.update(_kafka_extra_from_env(env))
    values["kafka_extra"] = extra
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**values)


# -- the local stack's warehouse password ---------------------------------------------------------------
# `driftline stack up` writes it (mode 600) where the embedded server's pid and log live; every
# driftline process that shares the state directory reads it, so nobody configures it by hand.
LOCAL_WAREHOUSE_PASSWORD = Path("warehouse") / "clickhouse.password"


def local_warehouse_password_file(settings: Settings) -> Path:
    """Where the local stack keeps its ClickHouse password: ``<state_dir>/warehouse/clickhouse.password``.

    >>> local_warehouse_password_file(Settings(state_dir="/srv/dl")).as_posix()
    '/srv/dl/warehouse/clickhouse.password'
    """
    return Path(settings.state_dir) / LOCAL_WAREHOUSE_PASSWORD


def warehouse_url(settings: Settings) -> str:
    """The warehouse URL to connect with: ``settings.warehouse``, plus the local stack's password
    when the URL names a loopback HTTP server, carries no password, and the password file exists.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     s = Settings(state_dir=tmp, warehouse="http://127.0.0.1:8123/driftline")
    ...     before = warehouse_url(s)
    ...     file = local_warehouse_password_file(s); file.parent.mkdir(); _ = file.write_text("p/w\\n")
    ...     before, warehouse_url(s), warehouse_url(s.replace(warehouse="http://ch.example:8123/d"))
    ('http://127.0.0.1:8123/driftline', 'http://default:p%2Fw@127.0.0.1:8123/driftline', 'http://ch.example:8123/d')
    """
    from urllib.parse import quote, urlsplit, urlunsplit

    url = settings.warehouse
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.password is not None or not _loopback_host(parts.hostname or ""):
        return url
    try:
        lines = local_warehouse_password_file(settings).read_text().splitlines()
    except OSError:
        return url  # no local stack here, or not ours to read: the server will say what it wants
    password = lines[0].strip() if lines else ""
    if not password:
        return url
    user = parts.username or "default"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"))


def _loopback_host(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
