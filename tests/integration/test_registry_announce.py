"""`driftline registry` verbs announce their changes: ModelEvents on Kafka, the mirror in ClickHouse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.records import ModelEvent
from driftline.streams.warehouse import Warehouse


def driftline(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_register_promote_and_rollback_are_published_and_mirrored(
    kafka_settings: Settings, warehouse_url: str, tmp_path: Path, unique: str
) -> None:
    rng = np.random.default_rng(3)
    data = tmp_path / "train.csv"
    pd.DataFrame(
        {"income": rng.lognormal(10, 0.5, 500), "region": rng.choice(["n", "s"], 500), "label": rng.integers(0, 2, 500)}
    ).to_csv(data, index=False)
    env = dict(
        os.environ,
        DRIFTLINE_KAFKA_BOOTSTRAP=kafka_settings.kafka_bootstrap,
        DRIFTLINE_TOPIC_PREFIX=kafka_settings.topic_prefix,
        DRIFTLINE_WAREHOUSE=warehouse_url,
        DRIFTLINE_REGISTRY=f"sqlite:///{tmp_path / 'registry.db'}",
        DRIFTLINE_ARTIFACTS=str(tmp_path / "artifacts"),
    )
    Warehouse.connect(warehouse_url, migrate=True).close()
    model = f"credit-{unique}"
    for args in (
        ["registry", "register", "--model", model, "--dataset", str(data), "--promote"],
        ["registry", "register", "--model", model, "--dataset", str(data), "--promote"],
        ["registry", "rollback", model],
    ):
        result = driftline(args, env)
        assert result.returncode == 0, result.stderr

    received = kafka.consume_records(kafka_settings, [kafka_settings.topic("models")], 5, timeout=30)
    events = [r.record for r in received]
    assert all(isinstance(e, ModelEvent) for e in events)
    assert [(e.event, e.version) for e in events] == [
        ("registered", "1"),
        ("promoted", "1"),
        ("registered", "2"),
        ("promoted", "2"),
        ("rolled_back", "1"),
    ]

    with Warehouse.connect(warehouse_url) as warehouse:
        rows = warehouse.query_rows(
            "SELECT version, status, aliases FROM model_versions FINAL WHERE model_id = {m:String} ORDER BY version",
            {"m": model},
        )
    assert [(r["version"], "champion" in r["aliases"]) for r in rows] == [("1", True), ("2", False)]
