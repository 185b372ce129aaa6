"""The warehouse adapter against real ClickHouse engines.

Every test that takes ``warehouse`` runs twice: on chdb inside this process
(``chdb://``), and on the embedded ClickHouse HTTP server through
clickhouse-connect's HTTP client. Each test gets its own database; the
in-process engine uses one path for the whole session, because chdb allows
one path per process, and that path differs from the server's.
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from driftline.schemas import CLICKHOUSE_DIR
from driftline.settings import Settings
from driftline.streams.records import (
    Alert,
    DriftReport,
    Evidence,
    FeatureDrift,
    LabelEvent,
    PredictionBatch,
    PredictionEvent,
    RetrainRequest,
)
from driftline.streams.warehouse import Warehouse, WarehouseError, WarehouseLocation
from driftline.streams.warehouse.migrations import MigrationError, load_migrations, split_statements
from driftline.streams.warehouse.rows import (
    MAX_RAW_BYTES,
    DriftMetricRow,
    PerformanceRow,
    RejectedEventRow,
    WindowProfileRow,
)

pytestmark = pytest.mark.warehouse

REPO = Path(__file__).resolve().parents[2]
NOW = 1_764_000_000_123  # 2025-11-24, with milliseconds that must survive
MINUTE = 60_000
CONTRACT_TABLES = (
    "drift_metrics",
    "drift_reports",
    "window_profiles",
    "performance_metrics",
    "predictions",
    "labels",
    "rejected_events",
    "alerts",
    "retrain_requests",
    "model_versions",
)


@pytest.fixture(scope="session")
def chdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one chdb path of this test process (the embedded server has its own)."""
    return tmp_path_factory.mktemp("chdb") / "engine"


def _url(request: pytest.FixtureRequest, backend: str, database: str) -> str:
    if backend == "chdb":
        return f"chdb://{request.getfixturevalue('chdb_root')}?database={database}"
    return request.getfixturevalue("warehouse_server").url(database)


@pytest.fixture(params=["chdb", "http"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def warehouse(request: pytest.FixtureRequest, backend: str, unique: str) -> Iterator[Warehouse]:
    wh = Warehouse.connect(_url(request, backend, f"dl_{unique}"), migrate=True)
    try:
        yield wh
    finally:
        wh.command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": wh.database})
        wh.close()


def _batch(model: str, prefix: str, n: int, start: int = NOW, seed: int = 0, n_numeric: int = 20) -> PredictionBatch:
    rng = np.random.default_rng(seed)
    numeric = {f"f{k:02d}": rng.normal(size=n) for k in range(n_numeric)}
    numeric["f00"][::10] = np.nan
    return PredictionBatch(
        model_id=model,
        model_version="1",
        event_ids=[f"{prefix}{i}" for i in range(n)],
        event_times=start + np.arange(n, dtype=np.int64),
        numeric=numeric,
        categorical={
            "region": list(rng.choice(["eu", "us", "apac"], n)),
            "plan": [None if i % 3 == 0 else "pro" for i in range(n)],
        },
        predictions=rng.random(n),
        latency_ms=rng.gamma(2.0, 3.0, n),
    )


# ---- every table: insert, read back, compare -----------------------------


def test_contract_columns_and_engines(warehouse: Warehouse) -> None:
    tables = {
        r["name"] for r in warehouse.query_rows("SELECT name FROM system.tables WHERE database = currentDatabase()")
    }
    assert set(CONTRACT_TABLES) | {"schema_migrations"} <= tables
    types = {
        r["name"]: r["type"]
        for r in warehouse.query_rows(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'drift_metrics'"
        )
    }
    ts = "DateTime64(3, 'UTC')"
    assert types == {
        "model_id": "String",
        "model_version": "String",
        "feature": "String",
        "metric": "LowCardinality(String)",
        "window_start": ts,
        "window_end": ts,
        "value": "Float64",
        "p_value": "Nullable(Float64)",
        "threshold": "Float64",
        "drifted": "UInt8",
        "n_reference": "UInt64",
        "n_current": "UInt64",
        "computed_at": ts,
        "kind": "LowCardinality(String)",  # migration 0006: drift or data_quality
        "segment": "String",  # migration 0007: '' the whole population, else key=value
    }
    engine = warehouse.query_rows(
        "SELECT engine_full, sorting_key FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'drift_metrics'"
    )[0]
    assert engine["engine_full"].startswith("ReplacingMergeTree(computed_at)")
    assert engine["sorting_key"] == "model_id, model_version, feature, metric, window_start, segment"
    # every timestamp of every table is DateTime64(3, 'UTC'): the epoch-millisecond contract
    temporal = warehouse.query_rows(
        "SELECT table, name, type FROM system.columns WHERE database = currentDatabase() AND type LIKE '%Date%'"
    )
    assert temporal and all("DateTime64(3, 'UTC')" in r["type"] for r in temporal), temporal


def test_drift_metrics_and_reports_round_trip(warehouse: Warehouse) -> None:
    report = DriftReport(
        "credit",
        "3",
        NOW,
        NOW + MINUTE,
        n_current=812,
        n_reference=5000,
        drifted_features=["age"],
        metrics=[
            FeatureDrift("age", "psi", 0.31, None, 0.2, True),
            FeatureDrift("age", "ks", 0.08, 0.0123, 0.1, False),
        ],
        computed_at=NOW + MINUTE + 5,
    )
    warehouse.insert_drift_reports([report])
    warehouse.insert_drift_metrics(
        [
            {
                "model_id": "credit",
                "model_version": "3",
                "feature": "__prediction__",
                "metric": "wasserstein",
                "window_start": NOW,
                "window_end": NOW + MINUTE,
                "value": 0.5,
                "p_value": None,
                "threshold": 0.1,
                "drifted": True,
                "n_reference": 5000,
                "n_current": 812,
                "computed_at": NOW + MINUTE + 7,
            },
        ]
    )
    rows = warehouse.query_rows(
        "SELECT feature, metric, toUnixTimestamp64Milli(window_start) AS ws, "
        "toUnixTimestamp64Milli(window_end) AS we, value, "
        "p_value, threshold, drifted, n_reference, n_current, toUnixTimestamp64Milli(computed_at) AS ca "
        "FROM drift_metrics FINAL WHERE model_id = {m:String} ORDER BY feature, metric",
        {"m": "credit"},
    )
    assert rows == [
        {
            "feature": "__prediction__",
            "metric": "wasserstein",
            "ws": NOW,
            "we": NOW + MINUTE,
            "value": 0.5,
            "p_value": None,
            "threshold": 0.1,
            "drifted": 1,
            "n_reference": 5000,
            "n_current": 812,
            "ca": NOW + MINUTE + 7,
        },
        {
            "feature": "age",
            "metric": "ks",
            "ws": NOW,
            "we": NOW + MINUTE,
            "value": 0.08,
            "p_value": 0.0123,
            "threshold": 0.1,
            "drifted": 0,
            "n_reference": 5000,
            "n_current": 812,
            "ca": NOW + MINUTE + 5,
        },
        {
            "feature": "age",
            "metric": "psi",
            "ws": NOW,
            "we": NOW + MINUTE,
            "value": 0.31,
            "p_value": None,
            "threshold": 0.2,
            "drifted": 1,
            "n_reference": 5000,
            "n_current": 812,
            "ca": NOW + MINUTE + 5,
        },
    ]
    summary = warehouse.query_rows(
        "SELECT drifted_features, n_metrics, n_drifted_metrics, n_current FROM drift_reports FINAL"
    )
    assert summary == [{"drifted_features": ["age"], "n_metrics": 2, "n_drifted_metrics": 1, "n_current": 812}]


def test_window_profiles_round_trip_and_latest_closed_window(warehouse: Warehouse) -> None:
    assert warehouse.latest_closed_window("credit", "3") is None
    numeric = WindowProfileRow(
        "credit",
        "3",
        "age",
        NOW,
        NOW + MINUTE,
        count=10,
        missing=2,
        computed_at=NOW + MINUTE,
        mean=41.5,
        std=3.25,
        min=30.0,
        max=60.0,
        quantile_levels=[0.5, 0.9],
        quantiles=np.array([40.0, 55.0]),
        bin_edges=[0.0, 40.0, 80.0],
        histogram=np.array([3, 5], dtype=np.uint64),
    )
    categorical = {
        "model_id": "credit",
        "model_version": "3",
        "feature": "region",
        "kind": "categorical",
        "window_start": NOW + MINUTE,
        "window_end": NOW + 2 * MINUTE,
        "count": 7,
        "missing": 0,
        "computed_at": NOW + 2 * MINUTE,
        "categories": {"eu": 4, "us": 3},
    }
    assert warehouse.insert_window_profiles([numeric, categorical]) == 2
    rows = warehouse.query_rows(
        "SELECT feature, kind, count, missing, mean, std, min, max, "
        "quantile_levels, quantiles, bin_edges, histogram, categories "
        "FROM window_profiles FINAL ORDER BY feature"
    )
    assert rows[0] == {
        "feature": "age",
        "kind": "numeric",
        "count": 10,
        "missing": 2,
        "mean": 41.5,
        "std": 3.25,
        "min": 30.0,
        "max": 60.0,
        "quantile_levels": [0.5, 0.9],
        "quantiles": [40.0, 55.0],
        "bin_edges": [0.0, 40.0, 80.0],
        "histogram": [3, 5],
        "categories": {},
    }
    assert rows[1]["categories"] == {"eu": 4, "us": 3} and math.isnan(rows[1]["mean"])
    assert warehouse.latest_closed_window("credit", "3") == NOW + 2 * MINUTE
    assert warehouse.latest_closed_window("credit", "4") is None


def test_performance_metrics_round_trip(warehouse: Warehouse) -> None:
    rows = [
        PerformanceRow("credit", "3", "auc", NOW, NOW + MINUTE, 0.81, 400, NOW + MINUTE, n_predictions=1000),
        PerformanceRow("credit", "3", "auc", NOW, NOW + MINUTE, 0.77, 120, NOW + MINUTE, segment="region=eu"),
        PerformanceRow("credit", "3", "latency_p95", NOW, NOW + MINUTE, 12.5, 990, NOW + MINUTE),
    ]
    warehouse.insert_performance_metrics(rows)
    got = warehouse.query_rows(
        "SELECT segment, metric, value, n_labeled, n_predictions "
        "FROM performance_metrics FINAL ORDER BY metric, segment"
    )
    assert got == [
        {"segment": "", "metric": "auc", "value": 0.81, "n_labeled": 400, "n_predictions": 1000},
        {"segment": "region=eu", "metric": "auc", "value": 0.77, "n_labeled": 120, "n_predictions": 0},
        {"segment": "", "metric": "latency_p95", "value": 12.5, "n_labeled": 990, "n_predictions": 0},
    ]
    df = warehouse.query_df(
        "SELECT metric, avg(value) AS mean, max(window_end) AS last FROM performance_metrics FINAL "
        "WHERE model_id = {m:String} AND segment = {s:String} GROUP BY metric ORDER BY metric",
        {"m": "credit", "s": ""},
    )
    assert df["metric"].tolist() == ["auc", "latency_p95"] and df["mean"].tolist() == [0.81, 12.5]
    assert [t.value // 1_000_000 for t in df["last"]] == [NOW + MINUTE] * 2 and str(df["last"].dt.tz) == "UTC"
    assert warehouse.command("SELECT count() FROM performance_metrics WHERE value > {v:Float64}", {"v": 1.0}) == 1


def test_predictions_round_trip(warehouse: Warehouse) -> None:
    events = [
        PredictionEvent(
            "a",
            "credit",
            "3",
            NOW,
            numeric={"age": 41.0, "income": 1.5},
            categorical={"region": "eu"},
            prediction=0.25,
            predicted_label="good",
            latency_ms=3.5,
            attributes={"channel": "web"},
        ),
        PredictionEvent("b", "credit", "3", NOW + 1, numeric={"age": 52.0}),
    ]
    assert warehouse.insert_predictions(PredictionBatch.from_events(events)) == 2
    rows = warehouse.query_rows(
        "SELECT event_id, model_version, toUnixTimestamp64Milli(event_time) AS t, numeric, categorical, prediction, "
        "predicted_label, latency_ms, attributes, ingested_at > now64(3) - INTERVAL 1 HOUR AS fresh "
        "FROM predictions FINAL WHERE model_id = {m:String} ORDER BY event_id",
        {"m": "credit"},
    )
    assert rows[0] == {
        "event_id": "a",
        "model_version": "3",
        "t": NOW,
        "numeric": {"age": 41.0, "income": 1.5},
        "categorical": {"region": "eu"},
        "prediction": 0.25,
        "predicted_label": "good",
        "latency_ms": 3.5,
        "attributes": {"channel": "web"},
        "fresh": 1,
    }
    b = rows[1]
    assert (b["t"], b["numeric"]["age"], b["categorical"], b["prediction"], b["predicted_label"], b["latency_ms"]) == (
        NOW + 1,
        52.0,
        {},
        None,
        None,
        None,
    )
    assert math.isnan(b["numeric"]["income"])  # NaN, not 0: missing stays missing


def test_one_native_block_of_mixed_batches_round_trips(warehouse: Warehouse) -> None:
    # Batches of two models and two layouts in one insert: the block's columns hold every batch's
    # rows in order, map offsets run on across batches, and strings of 128 bytes and more need
    # two-byte length prefixes.
    long_id = "x" * 130
    first = PredictionBatch(
        "mixed-a",
        "1",
        ["a0", long_id, "a2"],
        np.array([NOW, NOW + 1, NOW + 2]),
        numeric={"z": np.array([1.0, np.nan, -0.0]), "ä": np.array([2.0, 3.0, 4e300])},
        categorical={"c": ["é", None, "y" * 200], "b": [None, None, "q"]},
        predictions=np.array([0.5, np.nan, 1.0]),
        predicted_labels=["yes", None, "no"],
        latency_ms=np.array([1.0, 2.0, np.nan]),
        attributes={"seg": ["s1", "", "s3"]},
    )
    second = PredictionBatch("mixed-b", "7", ["b0", "b1"], np.array([NOW + 5, NOW + 6]))
    third = PredictionBatch(
        "mixed-a", "2", ["a9"], np.array([NOW + 9]), numeric={"w": np.array([9.5])}, categorical={"c": ["k"]}
    )
    assert warehouse.insert_predictions([first, second, third]) == 6
    rows = warehouse.query_rows(
        "SELECT event_id, model_id, model_version, toUnixTimestamp64Milli(event_time) AS t, numeric, categorical, "
        "prediction, predicted_label, latency_ms, attributes FROM predictions FINAL "
        "WHERE model_id LIKE 'mixed-%' ORDER BY model_id, event_id"
    )
    by_id = {r["event_id"]: r for r in rows}
    assert sorted(by_id) == sorted(["a0", long_id, "a2", "a9", "b0", "b1"])
    assert by_id["a0"] == {
        "event_id": "a0",
        "model_id": "mixed-a",
        "model_version": "1",
        "t": NOW,
        "numeric": {"z": 1.0, "ä": 2.0},
        "categorical": {"c": "é"},
        "prediction": 0.5,
        "predicted_label": "yes",
        "latency_ms": 1.0,
        "attributes": {"seg": "s1"},
    }
    missing = by_id[long_id]
    assert math.isnan(missing["numeric"]["z"]) and missing["numeric"]["ä"] == 3.0
    assert (missing["categorical"], missing["prediction"], missing["predicted_label"], missing["attributes"]) == (
        {},
        None,
        None,
        {"seg": ""},
    )
    last = by_id["a2"]
    assert last["numeric"] == {"z": -0.0, "ä": 4e300} and last["categorical"] == {"b": "q", "c": "y" * 200}
    assert (last["latency_ms"], last["predicted_label"]) == (None, "no")
    assert [
        (by_id[i]["model_version"], by_id[i]["numeric"], by_id[i]["categorical"], by_id[i]["prediction"])
        for i in ("b0", "b1", "a9")
    ] == [("7", {}, {}, None), ("7", {}, {}, None), ("2", {"w": 9.5}, {"c": "k"}, None)]
    with pytest.raises(TypeError, match="categorical values must be strings or None"):
        warehouse.insert_predictions(PredictionBatch("mixed-c", "1", ["c0"], np.array([NOW]), categorical={"c": [3]}))


def test_labels_alerts_rejected_events_round_trip(warehouse: Warehouse) -> None:
    warehouse.insert_labels(
        [
            LabelEvent("a", "credit", NOW, 1.0),
            {"event_id": "b", "model_id": "credit", "event_time": NOW + 1, "label": "fraud"},
        ]
    )
    labels = warehouse.query_rows(
        "SELECT event_id, label_value, label_class, toUnixTimestamp64Milli(event_time) AS t "
        "FROM labels FINAL ORDER BY event_id"
    )
    assert labels == [
        {"event_id": "a", "label_value": 1.0, "label_class": None, "t": NOW},
        {"event_id": "b", "label_value": None, "label_class": "fraud", "t": NOW + 1},
    ]
    warehouse.insert_alerts(
        [
            Alert(
                "al1",
                "credit",
                "3",
                "critical",
                "drift",
                "psi of age is 0.31",
                NOW,
                window_start=NOW - MINUTE,
                window_end=NOW,
            ),
            Alert("al2", "credit", "3", "info", "promoted", "version 4 is champion", NOW + 1),
        ]
    )
    alerts = warehouse.query_rows(
        "SELECT alert_id, severity, kind, message, toUnixTimestamp64Milli(window_end) AS we "
        "FROM alerts FINAL ORDER BY alert_id"
    )
    assert alerts == [
        {"alert_id": "al1", "severity": "critical", "kind": "drift", "message": "psi of age is 0.31", "we": NOW},
        {"alert_id": "al2", "severity": "info", "kind": "promoted", "message": "version 4 is champion", "we": None},
    ]
    huge = bytes(range(256)) * 1000  # 256 kB, over the bound
    # received_at carries the table's 30-day TTL: a fixed date would expire as the calendar moves on
    received = time.time_ns() // 1_000_000
    warehouse.insert_rejected_events(
        [
            RejectedEventRow(
                "driftline.predictions",
                2,
                41,
                "bad_magic",
                b"\x07\x00oops",
                received,
                detail="first byte 0x07",
                model_id="",
            ),
            RejectedEventRow("driftline.labels", 0, 9, "too_large", huge, received + 1, model_id="credit"),
        ]
    )
    # merge now (TTL included) rather than race ClickHouse's background merge: what survives it is what is kept
    warehouse.command("OPTIMIZE TABLE rejected_events FINAL")
    rejected = warehouse.query_rows(
        "SELECT source_topic, partition, offset, reason, detail, model_id, raw_base64, raw_size "
        "FROM rejected_events FINAL ORDER BY offset"
    )
    assert rejected[0]["source_topic"] == "driftline.labels" and rejected[0]["raw_size"] == len(huge)
    assert base64.b64decode(rejected[0]["raw_base64"]) == huge[:MAX_RAW_BYTES]
    assert rejected[1] == {
        "source_topic": "driftline.predictions",
        "partition": 2,
        "offset": 41,
        "reason": "bad_magic",
        "detail": "first byte 0x07",
        "model_id": "",
        "raw_base64": base64.b64encode(b"\x07\x00oops").decode(),
        "raw_size": 6,
    }


def test_rows_past_the_ttl_are_refused_not_acknowledged_and_lost(warehouse: Warehouse) -> None:
    # ClickHouse accepts rows whose TTL has passed and deletes them at the merge it schedules right after
    # the insert: a query moments later saw them or not depending on machine load. They must be refused.
    day = 86_400_000
    now = time.time_ns() // 1_000_000
    stale = RejectedEventRow("driftline.predictions", 0, 1, "bad_magic", b"\x07", now - 31 * day)
    recent = RejectedEventRow("driftline.predictions", 0, 2, "bad_magic", b"\x07", now - 29 * day)
    with pytest.raises(
        WarehouseError,
        match=r"1 of 2 rows have received_at past the table's TTL \(toDateTime\(received_at\) \+ toIntervalDay\(30\)\)",
    ):
        warehouse.insert_rejected_events([stale, recent])
    assert warehouse.insert_rejected_events([recent]) == 1
    warehouse.command("OPTIMIZE TABLE rejected_events FINAL")
    assert [r["offset"] for r in warehouse.query_rows("SELECT offset FROM rejected_events FINAL")] == [2]
    # the hazard itself, through the raw client: an insert that bypasses the check is acknowledged, then merged away
    summary = warehouse.client.insert(
        "rejected_events",
        [["driftline.labels", 0, 3, "bad_magic", "", "", "", 1, now - 31 * day]],
        column_names=[
            "source_topic",
            "partition",
            "offset",
            "reason",
            "detail",
            "model_id",
            "raw_base64",
            "raw_size",
            "received_at",
        ],
        column_type_names=[
            "String",
            "Int32",
            "Int64",
            "String",
            "String",
            "String",
            "String",
            "UInt64",
            "DateTime64(3, 'UTC')",
        ],
    )
    assert summary.written_rows == 1
    warehouse.command("OPTIMIZE TABLE rejected_events FINAL")
    assert [r["offset"] for r in warehouse.query_rows("SELECT offset FROM rejected_events FINAL")] == [2]


def test_retrain_requests_and_model_versions(warehouse: Warehouse) -> None:
    request = RetrainRequest(
        "r1",
        "credit",
        "3",
        "drift",
        NOW,
        evidence=[
            Evidence("psi", "age", 0.31, 0.2, NOW - MINUTE, NOW),
            Evidence("ks", "income", 0.2, 0.1, NOW - MINUTE, NOW),
        ],
    )
    warehouse.upsert_retrain_request(request, "requested", updated_at=NOW + 1)
    warehouse.upsert_retrain_request(request, "training", updated_at=NOW + 2)
    warehouse.upsert_retrain_request(request, "failed", error="trainer crashed", updated_at=NOW + 3)
    with pytest.raises(ValueError, match="status must be one of"):
        warehouse.upsert_retrain_request(request, "done")
    rows = warehouse.query_rows(
        "SELECT request_id, reason, status, error, evidence, evidence_feature, "
        "arrayMap(t -> toUnixTimestamp64Milli(t), evidence_window_end) AS ends FROM retrain_requests FINAL"
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row["request_id"], row["reason"], row["status"], row["error"]) == (
        "r1",
        "drift",
        "failed",
        "trainer crashed",
    )
    assert row["evidence_feature"] == ["age", "income"] and row["ends"] == [NOW, NOW]
    assert json.loads(row["evidence"])[0] == {
        "metric": "psi",
        "feature": "age",
        "value": 0.31,
        "threshold": 0.2,
        "window_start": NOW - MINUTE,
        "window_end": NOW,
    }
    history = warehouse.query_rows("SELECT status FROM retrain_requests ORDER BY updated_at")
    assert [r["status"] for r in history] == ["requested", "training", "failed"]  # without FINAL: the audit trail
    assert warehouse.retrain_request_status("r1") == {
        "status": "failed",
        "error": "trainer crashed",
        "registered_version": None,
    }
    assert warehouse.retrain_request_status("r2") is None

    warehouse.upsert_model_versions(
        [
            {
                "model_id": "credit",
                "version": "4",
                "status": "registered",
                "created_at": NOW,
                "artifact_sha256": "ab" * 32,
                "dataset_uri": "artifacts/ds.parquet",
                "dataset_sha256": "cd" * 32,
                "dataset_rows": 5000,
                "code_version": "0.1.0",
                "hyperparameters": {"l2": 0.01},
                "metrics": {"auc": 0.83},
                "parent_version": "3",
                "request_id": "r1",
            },
        ]
    )
    warehouse.upsert_model_versions(
        [
            {
                "model_id": "credit",
                "version": "4",
                "status": "champion",
                "aliases": ["champion"],
                "created_at": NOW,
                "updated_at": NOW + 5,
                "metrics": {"auc": 0.83},
                "parent_version": "3",
                "request_id": "r1",
            },
        ]
    )
    versions = warehouse.query_rows(
        "SELECT version, status, aliases, metrics, parent_version FROM model_versions FINAL"
    )
    assert versions == [
        {"version": "4", "status": "champion", "aliases": ["champion"], "metrics": {"auc": 0.83}, "parent_version": "3"}
    ]
    first = warehouse.query_rows("SELECT hyperparameters, dataset_rows FROM model_versions WHERE status = 'registered'")
    assert first == [{"hyperparameters": '{"l2": 0.01}', "dataset_rows": 5000}]


# ---- retrainer queries -------------------------------------------------------


def test_training_snapshot_joins_labels_over_a_time_range(warehouse: Warehouse) -> None:
    events = [
        PredictionEvent("e0", "credit", "3", NOW - 1, numeric={"age": 20.0}, prediction=0.1),  # before the range
        PredictionEvent(
            "e1", "credit", "3", NOW, numeric={"age": 30.0, "income": 2.0}, categorical={"region": "eu"}, prediction=0.2
        ),
        PredictionEvent(
            "e2", "credit", "3", NOW + 10, numeric={"age": 40.0}, categorical={"plan": "pro"}, prediction=0.3
        ),
        PredictionEvent("e3", "credit", "3", NOW + 20, numeric={"age": 50.0}, prediction=0.4),  # never labelled
        PredictionEvent("e4", "credit", "3", NOW + 30, numeric={"age": 60.0}, prediction=0.5),  # at the end: excluded
    ]
    warehouse.insert_predictions(PredictionBatch.from_events(events))
    warehouse.insert_predictions(PredictionBatch.from_events(events[1:2]))  # a redelivered event counts once
    warehouse.insert_predictions(
        PredictionBatch.from_events([PredictionEvent("o1", "other", "1", NOW, numeric={"z": 1.0})])
    )
    warehouse.insert_labels(
        [LabelEvent(e, "credit", NOW + 100, float(i % 2)) for i, e in enumerate(["e0", "e1", "e2", "e4"])]
    )
    warehouse.insert_labels([LabelEvent("o1", "other", NOW, 1.0)])

    snap = warehouse.training_snapshot("credit", NOW, NOW + 30)
    assert snap.column_names == [
        "event_id",
        "model_version",
        "event_time",
        "age",
        "income",
        "plan",
        "region",
        "prediction",
        "label",
    ]
    assert snap.column("event_id").to_pylist() == ["e1", "e2"]
    assert snap.schema.field("event_time").type == pa.timestamp("ms", tz="UTC")
    assert snap.column("event_time").cast(pa.int64()).to_pylist() == [NOW, NOW + 10]
    assert snap.column("age").to_pylist() == [30.0, 40.0]
    income = snap.column("income").to_numpy()
    assert income[0] == 2.0 and math.isnan(income[1])
    assert snap.column("region").to_pylist() == ["eu", None]
    assert snap.column("plan").to_pylist() == [None, "pro"]
    assert snap.column("prediction").to_pylist() == [0.2, 0.3]
    assert snap.column("label").to_pylist() == [1.0, 0.0]
    assert warehouse.training_snapshot("credit", NOW + 1000, NOW + 2000).num_rows == 0


# ---- idempotency ---------------------------------------------------------------


def test_window_written_twice_counts_once_with_final(warehouse: Warehouse) -> None:
    def row(value: float, computed_at: int) -> DriftMetricRow:
        return DriftMetricRow(
            "credit", "3", "age", "psi", NOW, NOW + MINUTE, value, None, 0.2, value > 0.2, 5000, 800, computed_at
        )

    warehouse.insert_drift_metrics([row(0.10, NOW + MINUTE)])
    warehouse.insert_drift_metrics([row(0.30, NOW + MINUTE + 1)])  # the window recomputed after a replay
    assert warehouse.query_rows("SELECT count() AS n FROM drift_metrics")[0]["n"] == 2  # both parts, not merged yet
    final = warehouse.query_rows("SELECT value, drifted FROM drift_metrics FINAL")
    assert final == [{"value": 0.30, "drifted": 1}]  # the later computed_at wins
    warehouse.command("OPTIMIZE TABLE drift_metrics FINAL")
    assert warehouse.query_rows("SELECT value FROM drift_metrics") == [{"value": 0.30}]


def test_retried_insert_with_dedup_token_counts_once(warehouse: Warehouse) -> None:
    batch = _batch("credit", "p", 500)
    warehouse.insert_predictions(batch, dedup_token="predictions:0:1200")
    warehouse.insert_predictions(batch, dedup_token="predictions:0:1200")  # the retry after a lost acknowledgement
    # no FINAL: the retry was dropped at insert time, not merged away later
    assert warehouse.query_rows("SELECT count() AS n FROM predictions")[0]["n"] == 500
    warehouse.insert_predictions(
        batch, dedup_token="predictions:0:1700"
    )  # a replay of the same events under a new token
    assert warehouse.query_rows("SELECT count() AS n FROM predictions")[0]["n"] == 1000
    assert warehouse.query_rows("SELECT count() AS n FROM predictions FINAL")[0]["n"] == 500
    rows = [PerformanceRow("credit", "3", "auc", NOW, NOW + MINUTE, 0.8, 100, NOW + MINUTE)]
    warehouse.insert_performance_metrics(rows, dedup_token="perf-1")
    warehouse.insert_performance_metrics(rows, dedup_token="perf-1")
    assert warehouse.query_rows("SELECT count() AS n FROM performance_metrics")[0]["n"] == 1


def test_raw_events_repeated_in_one_insert_count_once_with_final(warehouse: Warehouse) -> None:
    # Raw inserts skip the insert-time collapse of repeated keys (optimize_on_insert=0), which costs
    # the server a pass over every column: a re-sent event is two rows until a merge, one with FINAL.
    batch = _batch("credit", "p", 300)
    resent = _batch("credit", "p", 2, seed=5)  # p0 and p1 again, with other values
    warehouse.insert_predictions([batch, resent])
    assert warehouse.query_rows("SELECT count() AS n FROM predictions")[0]["n"] == 302
    assert warehouse.query_rows("SELECT count() AS n FROM predictions FINAL")[0]["n"] == 300
    label = {"model_id": "credit", "event_time": NOW, "event_id": "p0"}
    warehouse.insert_labels([{**label, "label": "1"}, {**label, "label": "0"}])
    assert warehouse.query_rows("SELECT count() AS n FROM labels")[0]["n"] == 2
    assert warehouse.query_rows("SELECT count() AS n FROM labels FINAL")[0]["n"] == 1
    warehouse.command("OPTIMIZE TABLE predictions FINAL")
    assert warehouse.query_rows("SELECT count() AS n FROM predictions")[0]["n"] == 300
    # the training snapshot reads one row per event, whatever was merged
    snapshot = warehouse.query_rows("SELECT uniqExact(event_id) AS ids, count() AS n FROM predictions FINAL")
    assert snapshot == [{"ids": 300, "n": 300}]


def test_raw_rows_of_two_deployments_in_one_database_both_count(warehouse: Warehouse) -> None:
    # two deployments (topic prefixes a. and b.) read different events at the same partition and offsets
    from driftline.streams.codec import encode
    from driftline.streams.worker import Incoming, batch_token

    def token(prefix: str, batch: PredictionBatch) -> str:
        message = Incoming("predictions", 0, 41, b"credit", encode(batch), full_topic=f"{prefix}predictions")
        return f"predictions:{batch_token([message])}"

    first, second = _batch("credit", "a", 300, seed=1), _batch("credit", "b", 200, seed=2)
    warehouse.insert_predictions(first, dedup_token=token("a.", first))
    warehouse.insert_predictions(second, dedup_token=token("b.", second))
    warehouse.insert_predictions(second, dedup_token=token("b.", second))  # b's retry still counts once
    assert warehouse.query_rows("SELECT count() AS n FROM predictions")[0]["n"] == 500
    # the topic b.predictions deleted and created again: its offsets start over, with other events
    again = _batch("credit", "c", 100, seed=3)
    warehouse.insert_predictions(again, dedup_token=token("b.", again))
    assert warehouse.query_rows("SELECT count() AS n FROM predictions")[0]["n"] == 600


# ---- timestamps ----------------------------------------------------------------


def test_datetime64_millisecond_round_trip(warehouse: Warehouse) -> None:
    times = [0, 1, 999, 1_700_000_000_001, NOW, 4_102_444_799_999]  # 1970 to the last ms of 2099
    warehouse.command("CREATE TABLE ts (i UInt8, t DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY i")
    warehouse.insert("ts", {"i": list(range(len(times))), "t": np.array(times, dtype=np.int64)})
    got = warehouse.query_rows("SELECT toUnixTimestamp64Milli(t) AS ms, t FROM ts ORDER BY i")
    assert [r["ms"] for r in got] == times
    assert [round(r["t"].timestamp() * 1000) for r in got] == times  # tz-aware UTC datetimes
    assert all(r["t"].utcoffset().total_seconds() == 0 for r in got)
    arrow = warehouse.query_arrow("SELECT t FROM ts ORDER BY i").column("t")
    assert arrow.type == pa.timestamp("ms", tz="UTC") and arrow.cast(pa.int64()).to_pylist() == times
    # numpy datetime64 in any unit is converted, not read as milliseconds
    warehouse.insert("ts", {"i": [100], "t": np.array([NOW * 1_000_000], dtype="datetime64[ns]")})
    assert warehouse.query_rows("SELECT toUnixTimestamp64Milli(t) AS ms FROM ts WHERE i = 100") == [{"ms": NOW}]
    # parameters carry milliseconds exactly too
    match = warehouse.query_rows("SELECT i FROM ts WHERE t = fromUnixTimestamp64Milli({ms:Int64}, 'UTC')", {"ms": NOW})
    assert match == [{"i": 4}, {"i": 100}] or match == [{"i": 100}, {"i": 4}]


def test_json_each_row_epoch_millis_is_the_year_9999_trap(warehouse: Warehouse) -> None:
    """Why every insert is typed: JSONEachRow reads an integer as seconds, without an error."""
    warehouse.command("CREATE TABLE ts_json (t DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY t")
    warehouse.command("INSERT INTO ts_json FORMAT JSONEachRow " + json.dumps({"t": NOW}))
    wrong = warehouse.query_rows("SELECT toUnixTimestamp64Milli(t) AS ms, toString(t) AS s FROM ts_json")[0]
    assert wrong["ms"] != NOW
    assert wrong["s"].startswith("9999-12-31")


# ---- volume, errors, sessions, concurrency ---------------------------------------


def test_200k_rows_compressed_insert_arrives_whole(
    request: pytest.FixtureRequest, warehouse: Warehouse, backend: str
) -> None:
    n = 200_000
    clients = [warehouse]
    if backend == "http":
        # a loopback URL is not compressed by default: ask for it, for bodies of many compressed frames
        clients = [
            Warehouse.connect(_url(request, backend, warehouse.database) + f"?compress={c}") for c in ("lz4", "zstd")
        ]
        assert [c.client.write_compression for c in clients] == ["lz4", "zstd"]
    for k, client in enumerate(clients):
        ids = np.arange(k * n, (k + 1) * n)
        written = client.insert(
            "drift_metrics",
            {
                "model_id": ["big"] * n,
                "model_version": ["1"] * n,
                "feature": [f"f{i % 97}" for i in range(n)],
                "metric": ["psi"] * n,
                "window_start": NOW + ids * MINUTE,
                "window_end": NOW + (ids + 1) * MINUTE,
                "value": ids / n,
                "p_value": [None] * n,
                "threshold": np.full(n, 0.2),
                "drifted": (ids % 2).astype(np.uint8),
                "n_reference": np.full(n, 100),
                "n_current": ids,
                "computed_at": np.full(n, NOW),
            },
        )
        assert written == n
    total = n * len(clients)
    stats = warehouse.query_rows(
        "SELECT count() AS n, sum(n_current) AS s, "
        "max(window_end) = fromUnixTimestamp64Milli({e:Int64}, 'UTC') AS last FROM drift_metrics",
        {"e": NOW + total * MINUTE},
    )
    assert stats == [{"n": total, "s": total * (total - 1) // 2, "last": 1}]
    if backend == "http":
        for client in clients:
            client.close()


def test_bad_sql_raises_with_the_clickhouse_message(warehouse: Warehouse) -> None:
    with pytest.raises(WarehouseError, match="Syntax error") as syntax:
        warehouse.query_rows("SELEC 1")
    assert syntax.value.code == 62
    with pytest.raises(WarehouseError, match="UNKNOWN_TABLE") as unknown:
        warehouse.query_rows("SELECT * FROM no_such_table")
    assert unknown.value.code == 60
    with pytest.raises(
        WarehouseError, match="insert into drift_metrics: no column.s. no_such_column; the table has model_id, "
    ):
        warehouse.insert("drift_metrics", {"no_such_column": [1]})
    with pytest.raises(WarehouseError, match="insert of 1 rows into drift_metrics: values do not fit .*'not a number'"):
        warehouse.insert("drift_metrics", {"value": ["not a number"]})
    # bad rows are refused before they reach ClickHouse, naming what is wrong
    with pytest.raises(ValueError, match="DriftMetricRow #0: .*missing"):
        warehouse.insert_drift_metrics([{"model_id": "m"}])
    with pytest.raises(TypeError, match="window_start must be an int of epoch milliseconds"):
        warehouse.insert_performance_metrics([PerformanceRow("m", "1", "auc", "2025-01-01", NOW, 0.5, 1, NOW)])  # type: ignore[arg-type]
    bad = _batch("m", "x", 10)
    bad.numeric["f03"] = bad.numeric["f03"][:9]
    with pytest.raises(ValueError, match=r"numeric\['f03'\] has 9 values"):
        warehouse.insert_predictions(bad)
    with pytest.raises(ValueError, match="columns differ in length"):
        warehouse.insert("labels", {"event_id": ["a", "b"], "model_id": ["m"]})
    # the warehouse still works after errors
    assert warehouse.query_rows("SELECT count() AS n FROM drift_metrics") == [{"n": 0}]


def test_each_thread_has_its_own_session(warehouse: Warehouse) -> None:
    warehouse.command("CREATE TEMPORARY TABLE scratch (x UInt8)")
    warehouse.command("INSERT INTO scratch VALUES (7)")
    assert warehouse.query_rows("SELECT x FROM scratch") == [{"x": 7}]  # the session outlives one call
    seen: list[object] = []

    def other_thread() -> None:
        try:
            seen.append(warehouse.query_rows("SELECT x FROM scratch"))
        except WarehouseError as exc:
            seen.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert isinstance(seen[0], WarehouseError) and seen[0].code == 60


def test_threads_insert_concurrently_without_mixing_data(warehouse: Warehouse) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(5):
                warehouse.insert_predictions(_batch(f"model{k}", f"t{k}-{j}-", 200, seed=k, n_numeric=3))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = warehouse.query_rows(
        "SELECT model_id, count() AS n, countIf(startsWith(event_id, concat('t', substring(model_id, 6), '-'))) AS own "
        "FROM predictions GROUP BY model_id ORDER BY model_id"
    )
    assert rows == [{"model_id": f"model{k}", "n": 1000, "own": 1000} for k in range(4)]


def test_two_processes_share_the_warehouse(
    request: pytest.FixtureRequest, warehouse: Warehouse, backend: str, tmp_path: Path
) -> None:
    child = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        import numpy as np
        from driftline.streams.records import PredictionBatch
        from driftline.streams.warehouse import Warehouse
        url, tag, rendezvous = sys.argv[1], sys.argv[2], Path(sys.argv[3])
        with Warehouse.connect(url) as wh:
            (rendezvous / tag).touch()
            while not (rendezvous / "go").exists():  # both insert at the same time
                time.sleep(0.01)
            for j in range(10):
                n = 500
                ids = [f"{tag}-{j}-{i}" for i in range(n)]
                times = np.full(n, 1764000000123, dtype=np.int64)
                wh.insert_predictions(PredictionBatch("shared", "1", ids, times, numeric={"x": np.ones(n)}))
        """
    )
    url = _url(request, backend, warehouse.database)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, url, tag, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 60
    while backend == "http" and not all((tmp_path / tag).exists() for tag in ("a", "b")):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
    if backend == "chdb":
        # one process per chdb path: the others are refused with a clear error, nothing is written
        assert all(code != 0 for _, _, code in results)
        assert all("WarehouseError" in err and "one process per path" in err for _, err, _ in results), results
        assert warehouse.query_rows("SELECT count() AS n FROM predictions") == [{"n": 0}]
        return
    assert all(code == 0 for _, _, code in results), results
    rows = warehouse.query_rows(
        "SELECT substring(event_id, 1, 1) AS tag, uniqExact(event_id) AS n FROM predictions GROUP BY tag ORDER BY tag"
    )
    assert rows == [{"tag": "a", "n": 5000}, {"tag": "b", "n": 5000}]


def test_prediction_batches_insert_fast(warehouse: Warehouse, backend: str) -> None:
    """1k-event batches of 20 numeric and 2 categorical features."""
    batches = [_batch("speed", f"s{j}-", 1000, seed=j) for j in range(20)]
    start = time.perf_counter()
    for b in batches:
        warehouse.insert_predictions(b)
    single = 20_000 / (time.perf_counter() - start)
    more = [_batch("speed", f"m{j}-", 1000, seed=j) for j in range(20)]
    start = time.perf_counter()
    warehouse.insert_predictions(more)
    grouped = 20_000 / (time.perf_counter() - start)
    print(
        f"\n{backend}: predictions insert {single:,.0f} rows/s in 1k batches, {grouped:,.0f} rows/s as one 20k insert"
    )
    assert warehouse.query_rows("SELECT count() AS n, uniqExact(event_id) AS u FROM predictions") == [
        {"n": 40_000, "u": 40_000}
    ]
    assert single > 5_000 and grouped > 5_000  # row-by-row SQL manages about 1k rows/s


# ---- migrations ------------------------------------------------------------------


def _schema(warehouse: Warehouse) -> dict[str, str]:
    names = [
        r["name"]
        for r in warehouse.query_rows("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name")
    ]
    return {name: warehouse.command("SHOW CREATE TABLE {t:Identifier}", {"t": name}) for name in names}


def test_migrations_applied_twice_change_nothing(warehouse: Warehouse) -> None:
    schema = _schema(warehouse)
    applied = warehouse.applied_migrations()
    assert [(m["version"], m["name"]) for m in applied] == [(m.version, m.name) for m in load_migrations()]
    assert warehouse.migrate() == []
    assert _schema(warehouse) == schema
    assert warehouse.applied_migrations() == applied
    assert set(CONTRACT_TABLES) <= set(schema)


def test_pending_migrations_apply_in_order_and_edits_are_refused(warehouse: Warehouse, tmp_path: Path) -> None:
    for path in CLICKHOUSE_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    extra = tmp_path / "0999_extra.sql"
    extra.write_text(
        "CREATE TABLE IF NOT EXISTS extra (x UInt8) ENGINE = MergeTree ORDER BY x; -- a; trailing comment\n"
        "ALTER TABLE extra ADD COLUMN IF NOT EXISTS note String DEFAULT ';';\n"
    )
    applied = warehouse.migrate(tmp_path)
    assert [m.version for m in applied] == [999]
    assert [
        r["name"]
        for r in warehouse.query_rows(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'extra'"
        )
    ] == ["x", "note"]
    extra.write_text(extra.read_text() + "SELECT 1;\n")
    with pytest.raises(MigrationError, match="0999_extra was applied .* add a new migration"):
        warehouse.migrate(tmp_path)


# ---- configuration (no engine needed) -----------------------------------------------


def test_warehouse_urls() -> None:
    loc = WarehouseLocation.parse("https://bob:s%40cret@ch.example.com/metrics")
    assert (loc.kind, loc.host, loc.port, loc.username, loc.password, loc.database) == (
        "https",
        "ch.example.com",
        8443,
        "bob",
        "s@cret",
        "metrics",
    )
    assert "s@cret" not in loc.redacted()
    assert WarehouseLocation.parse(Settings().warehouse).database == "driftline"
    assert WarehouseLocation.parse("http://127.0.0.1:9000").database == "driftline"
    assert WarehouseLocation.parse("chdb:///var/lib/driftline").path == "/var/lib/driftline"
    assert WarehouseLocation.parse("chdb://:memory:").path is None
    assert WarehouseLocation.parse("http://[::1]:8123/m").compress == "none"
    assert WarehouseLocation.parse("http://ch.example.com/m?compress=NONE").compress == "none"
    for bad in (
        "postgresql://x/y",
        "http://h:1/a/b",
        "http://h:1/bad-name",
        "chdb:///x?database=1x",
        "http://h/m?compress=gzip",
    ):
        with pytest.raises(WarehouseError):
            WarehouseLocation.parse(bad)
    assert split_statements("CREATE TABLE a (s String DEFAULT 'x;y'); /* ; */\n-- only a comment;\n") == [
        "CREATE TABLE a (s String DEFAULT 'x;y')"
    ]
