import pytest

from driftline.settings import Settings, SettingsError, load_settings


def test_defaults_match_contracts() -> None:
    s = load_settings(env={})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.topic_prefix == "driftline."
    assert s.warehouse == "http://127.0.0.1:8123/driftline"
    assert s.registry == "sqlite:///.driftline/registry.db"
    assert s.artifacts == ".driftline/artifacts"
    assert s.policy is None
    assert s.topic("retrain-requests") == "driftline.retrain-requests"


def test_precedence_file_env_overrides(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("topic_prefix: file.\nwarehouse: chdb:///tmp/x\nkafka_extra: {acks: all}\n")
    env = {
        "DRIFTLINE_CONFIG": str(cfg),
        "DRIFTLINE_TOPIC_PREFIX": "env.",
        "DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "DRIFTLINE_KAFKA_JARS": "/opt/jars",
    }
    s = load_settings(env=env, registry="postgresql://x")
    assert s.topic_prefix == "env."
    assert s.warehouse == "chdb:///tmp/x"
    assert s.registry == "postgresql://x"
    assert s.kafka_config() == {"bootstrap.servers": "127.0.0.1:9092", "acks": "all", "security.protocol": "SASL_SSL"}


def test_bad_file_names_the_key(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("warehous: x\n")
    with pytest.raises(SettingsError, match="warehous"):
        load_settings(str(cfg), env={})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(str(tmp_path / "missing.yaml"), env={})


def test_unknown_topic() -> None:
    with pytest.raises(SettingsError, match="unknown topic"):
        Settings().topic("prediction")


def test_to_env_round_trips_every_setting() -> None:
    s = Settings(
        kafka_bootstrap="k:1",
        kafka_extra={"sasl.mechanism": "PLAIN"},
        topic_prefix="p.",
        warehouse="chdb:///x",
        registry="postgresql://r",
        artifacts="/a",
        policy="/p.yaml",
        schema_registry="http://sr",
        state_dir="/s",
        alert_webhook="http://hook",
    )
    assert load_settings(env=s.to_env()) == s


# --- secrets never shown (issue 11, finding 5) ---------------------------------------------------------

SECRET = "Pa55-w0rd_X"


def test_the_repr_of_settings_shows_no_secret() -> None:
    from driftline.settings import Settings

    settings = Settings(
        warehouse=f"http://bob:{SECRET}@ch.local:8123/driftline",
        registry=f"postgresql://reg:{SECRET}@db:5432/registry",
        schema_registry=f"https://sr:{SECRET}@sr.local",
        kafka_extra={"sasl.username": "svc", "sasl.password": SECRET, "security.protocol": "SASL_SSL"},
        alert_webhook=f"https://hooks.slack.com/services/T0/B0/{SECRET}",
    )
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        assert SECRET not in text
    assert "ch.local:8123" in repr(settings) and "'security.protocol': 'SASL_SSL'" in repr(settings)
    assert settings.warehouse.count(SECRET) == 1  # the value itself is intact: only its display is masked


def test_warehouse_locations_and_their_errors_show_no_password() -> None:
    from driftline.streams.warehouse import WarehouseError, WarehouseLocation

    location = WarehouseLocation.parse(f"http://bob:{SECRET}@ch.local:8123/driftline")
    assert location.password == SECRET and SECRET not in repr(location)
    for bad in (
        f"ftp://bob:{SECRET}@ch.local/db",
        f"http://bob:{SECRET}@ch.local:99999/db",
        f"http://bob:{SECRET}@ch.local/a/b",
        f"http://bob:{SECRET}@ch.local/db?compress=brotli",
        f"http://bob:{SECRET}@ch.local/1bad",
    ):
        with pytest.raises(WarehouseError) as raised:
            WarehouseLocation.parse(bad)
        assert SECRET not in str(raised.value) and "bob:***@ch.local" in str(raised.value)
        assert raised.value.__cause__ is None or SECRET not in str(raised.value.__cause__)


def test_registry_dialects_and_their_errors_show_no_password() -> None:
    from driftline.retrainer.registry import RegistryError
    from driftline.retrainer.registry.dialects import PostgresDialect, dialect_for

    dialect = dialect_for(f"postgresql://reg:{SECRET}@127.0.0.1:9/registry?connect_timeout=1")
    assert SECRET not in repr(dialect) and SECRET not in dialect.describe()
    with pytest.raises(RegistryError) as raised:
        dialect_for(f"mysql://reg:{SECRET}@db/registry")
    assert SECRET not in str(raised.value)
    with pytest.raises(RegistryError) as raised:
        PostgresDialect(f"postgresql://reg:{SECRET}@127.0.0.1:9/registry", connect_timeout_s=1).connect()
    assert SECRET not in str(raised.value) and "cannot connect" in str(raised.value)
