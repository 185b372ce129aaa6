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
    env = {"DRIFTLINE_CONFIG": str(cfg), "DRIFTLINE_TOPIC_PREFIX": "env.", "DRIFTLINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
           "DRIFTLINE_KAFKA_JARS": "/opt/jars"}
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
    s = Settings(kafka_bootstrap="k:1", kafka_extra={"sasl.mechanism": "PLAIN"}, topic_prefix="p.", warehouse="chdb:///x",
                 registry="postgresql://r", artifacts="/a", policy="/p.yaml", schema_registry="http://sr",
                 state_dir="/s", alert_webhook="http://hook")
    assert load_settings(env=s.to_env()) == s
