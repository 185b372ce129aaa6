"""docker-compose.yml cannot run here (no Docker engine), so check what it says."""

from pathlib import Path

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


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


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
        assert CONTRACT_VARIABLES <= set(env), f"{name} lacks {CONTRACT_VARIABLES - set(env)}"
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
