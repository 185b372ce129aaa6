"""docker-compose.yml cannot run here (no Docker engine), so check what it says."""

import re
from pathlib import Path

import pytest
import yaml

from driftline.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
CONTRACT_VARIABLES = {
    "DRIFTLINE_KAFKA_BOOTSTRAP",
    "DRIFTLINE_TOPIC_PREFIX",
    "DRIFTLINE_WAREHOUSE",
    "DRIFTLINE_REGISTRY",
    "DRIFTLINE_ARTIFACTS",
    "DRIFTLINE_POLICY",
}


ENV_EXAMPLE = REPO / "deploy" / "compose.env.example"
# ${NAME}, ${NAME:?message}, ${NAME:-default}: the forms of compose interpolation this file may use
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:\?|:-)(?P<arg>[^}]*))?\}")
# what an operator puts into .env from compose.env.example (URL-safe, as the example asks)
FILLED = {
    "CLICKHOUSE_PASSWORD": "ch-Secret_1",
    "POSTGRES_PASSWORD": "pg-Secret_2",
    "GRAFANA_ADMIN_PASSWORD": "gf-Secret_3",
}


def interpolate(text: str, env: dict[str, str]) -> str:
    """``text`` with ``${...}`` filled from ``env`` as compose does; an unset or empty ``:?`` variable fails."""

    def value(m: re.Match) -> str:
        found = env.get(m["name"], "")
        if m["op"] == ":?" and not found:
            raise ValueError(f"required variable {m['name']} is missing a value: {m['arg']}")
        return found or (m["arg"] if m["op"] == ":-" else "")

    return _VARIABLE.sub(value, text)


def compose(env: dict[str, str] | None = None) -> dict:
    """docker-compose.yml as ``docker compose config`` would see it with ``env`` as ``.env``."""
    return yaml.safe_load(interpolate((REPO / "docker-compose.yml").read_text(), FILLED if env is None else env))


def test_services_of_the_production_stack() -> None:
    services = compose()["services"]
    assert {"kafka", "clickhouse", "worker", "retrainer", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server")
    assert "grafana-clickhouse-datasource" in services["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    assert services["worker"]["command"] == ["driftline", "worker"]
    assert services["retrainer"]["command"] == ["driftline", "retrainer"]


def test_driftline_services_get_every_contract_variable_and_they_parse() -> None:
    services = compose()["services"]
    for name in ("worker", "retrainer"):
        env = services[name]["environment"]
        assert set(env) >= CONTRACT_VARIABLES, f"{name} lacks {CONTRACT_VARIABLES - set(env)}"
        settings = load_settings(env=env)
        assert settings.kafka_bootstrap == "kafka:9092"
        assert settings.warehouse.startswith("http://") and settings.warehouse.endswith("/driftline")
        assert settings.registry.startswith("postgresql://")
        # the addresses name services of the same file
        assert settings.kafka_bootstrap.split(":")[0] in services
        assert "@clickhouse:8123/" in settings.warehouse


def test_dockerfile_copies_what_exists() -> None:
    build = compose()["services"]["worker"]["build"]
    dockerfile = REPO / build["dockerfile"]
    assert dockerfile.is_file()
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"


def test_mounted_files_exist() -> None:
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"compose mounts missing {src}"


def test_grafana_gets_every_variable_its_datasource_file_uses() -> None:
    import re

    services = compose()["services"]
    env = services["grafana"]["environment"]
    lines = (REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "clickhouse.yaml").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$([A-Z_]+)", text))
    assert used and used <= set(env), f"grafana lacks {used - set(env)}"
    assert env["CLICKHOUSE_HOST"] in services and env["CLICKHOUSE_PORT"] == "8123"
    assert env["CLICKHOUSE_PASSWORD"] == services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"]


# --- safe defaults (issue 11, finding 8; docs/SECURITY.md) ------------------------------------------------


def test_the_env_example_names_every_required_variable_and_sets_none() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    required = {m["name"] for m in _VARIABLE.finditer((REPO / "docker-compose.yml").read_text()) if m["op"] == ":?"}
    assert required == set(FILLED) == set(example)
    assert all(value == "" for value in example.values()), "the example must not ship a usable password"
    with pytest.raises(ValueError, match="CLICKHOUSE_PASSWORD"):
        compose(env={k: v for k, v in FILLED.items() if k != "CLICKHOUSE_PASSWORD"})
    with pytest.raises(ValueError, match="required variable"):
        compose(env={k: "" for k in FILLED})  # the example copied as is


def test_no_password_is_written_in_the_compose_file() -> None:
    text = (REPO / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key:
                assert _VARIABLE.fullmatch(str(value)), f"{name}.{key} is not taken from .env"
    settings = load_settings(env=compose()["services"]["worker"]["environment"])
    assert FILLED["CLICKHOUSE_PASSWORD"] in settings.warehouse and FILLED["POSTGRES_PASSWORD"] in settings.registry
    assert "driftline@" not in text and ":driftline@" not in text  # the old fixed logins


def test_nothing_is_published_beyond_the_hosts_loopback_and_kafka_not_at_all() -> None:
    services = compose()["services"]
    kafka = services["kafka"]
    protocols = kafka["environment"]["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    plaintext = any(p.split(":")[1] == "PLAINTEXT" and p.split(":")[0] != "CONTROLLER" for p in protocols.split(","))
    assert not (plaintext and kafka.get("ports")), "plaintext Kafka must not be published"
    for name, service in services.items():
        for port in service.get("ports", []):
            port = str(port)
            assert port.startswith("127.0.0.1:") and port.count(":") == 2, f"{name} publishes {port} beyond loopback"


def test_grafana_has_no_anonymous_access_and_an_admin_password_from_env() -> None:
    env = compose()["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == FILLED["GRAFANA_ADMIN_PASSWORD"]
    raw = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]["environment"]
    assert raw["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
