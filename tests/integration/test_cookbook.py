"""The analysts' cookbook (schemas/clickhouse/queries/) against a seeded warehouse.

Every query runs on the embedded ClickHouse server over HTTP, after a
demo-sized history was written through the Warehouse adapter
(tests/seed_warehouse.py), and must return rows whose numbers agree with
what the seed wrote. Some rows were written twice (a replayed window, a
second registry sync), so a query that forgets FINAL where it matters
counts them twice and fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from seed_warehouse import (
    DRIFT_AT,
    DRIFTING,
    ESTIMATE_HALF_BAND,
    EVENTS_PER_WINDOW,
    LABEL_LAG,
    MISSING_ALARM,
    MULTIVARIATE_AT,
    N_WINDOWS,
    NUMERIC,
    PARTLY_LABELLED,
    QUALITY_AT,
    RETRAIN_AT,
    TREND_LEVEL,
    V2_SERVES_FROM,
    Seeded,
    seeded_once,
)

from driftline.streams.cookbook import CookbookError, Query, load_queries
from driftline.streams.warehouse import Warehouse

pytestmark = pytest.mark.warehouse

Rows = list[dict[str, Any]]


@pytest.fixture(scope="module")
def seeded(warehouse_server, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seeded_once(warehouse_server, tmp_path_factory.getbasetemp() / "seeded-registry")


@pytest.fixture(scope="module")
def warehouse(seeded: Seeded):
    with Warehouse.connect(seeded.url) as wh:
        yield wh


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _params(seeded: Seeded) -> dict[str, Any]:
    run = seeded.run
    return {
        "model_id": run.model_id,
        "days": 7,
        "since": _utc(run.start_ms) - timedelta(hours=1),
        "until": _utc(run.end_ms) + timedelta(hours=1),
        "metric": "accuracy",
        "feature": "income",
    }


# ---- the loader ----------------------------------------------------------------------------------------


def test_every_file_is_a_documented_single_select() -> None:
    queries = load_queries()
    assert len(queries) >= 12
    for name, q in queries.items():
        assert q.title and q.description, name
        assert q.sql.lstrip().upper().startswith("SELECT"), name
        assert set(q.docs) == set(q.parameters), name
        assert q.tables, name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1", "no '-- title:' line"),
        ("-- title: T\nSELECT {x:UInt8}", "no '-- param NAME: ...' line for x"),
        ("-- title: T\n-- param y: why\nSELECT 1", "documented but not used: y"),
        ("-- title: T\n-- param x: x\nSELECT {x:UInt8} + {x:String}", "used as UInt8 and as String"),
        ("-- title: T\nSELECT 1; SELECT 2", "exactly one statement, found 2"),
        ("-- title: T\nSELECT 'oops", "unterminated ' quote"),
    ],
)
def test_malformed_files_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(CookbookError, match=message):
        Query.parse("q", text)


def test_binding_requires_exactly_the_query_parameters() -> None:
    q = Query.parse("q", "-- title: T\n-- param a: a\n-- param b: b\nSELECT {a:UInt8} + {b:UInt8}")
    assert q.bind(a=1, b=2) == {"a": 1, "b": 2}
    with pytest.raises(CookbookError, match=r"missing b; unknown c; it takes a \(UInt8\), b \(UInt8\)"):
        q.bind(a=1, c=3)


def test_parameters_with_compound_types_are_recognised() -> None:
    q = Query.parse(
        "q", "-- title: T\n-- param t: a time\n-- param xs: a list\nSELECT {t:DateTime64(3, 'UTC')}, {xs:Array(String)}"
    )
    assert q.parameters == {"t": "DateTime64(3, 'UTC')", "xs": "Array(String)"}


# ---- every query on the seeded warehouse ----------------------------------------------------------------


def _by(rows: Rows, key: str) -> dict[Any, dict[str, Any]]:
    return {r[key]: r for r in rows}


def check_top_drifting_features(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    truth = {f: n for f, n in seeded.run.drifted_windows.items() if f != "__prediction__"}
    assert {r["feature"] for r in rows[:2]} == {"income", "debt_ratio"}
    assert {r["feature"]: r["drifted_windows"] for r in rows} == truth  # the replayed windows count once
    income = _by(rows, "feature")["income"]
    assert income["worst_score"] > 1 and income["last_drifted"] is not None
    assert _by(rows, "feature")["age"]["last_drifted"] is None


def check_drifted_windows(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    run = seeded.run
    assert len(rows) == run.drifted_window_count
    assert {r["model_version"] for r in rows} == {"1"}
    assert all(r["drifted_features"] and r["drifted_metrics"] > 0 for r in rows)
    starts = sorted(int(r["window_start"].timestamp() * 1000) for r in rows)
    assert starts[0] >= run.window_start(DRIFT_AT) and starts[-1] <= run.window_start(V2_SERVES_FROM)
    assert set(rows[-1]["drifted_features"]) == {"__prediction__", "debt_ratio", "income"}


def check_drift_by_window(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    distinct = wh.query_rows(
        "SELECT count() AS n FROM (SELECT DISTINCT model_version, feature, window_start FROM drift_metrics "
        "WHERE model_id = {m:String})",
        {"m": seeded.run.model_id},
    )[0]["n"]
    assert len(rows) == distinct
    assert sum(r["any_drifted"] for r in rows) == sum(seeded.run.drifted_windows.values())
    for r in rows:
        ratios = [v / t for _, v, t, _ in r["metrics"] if t > 0]
        assert r["score"] == pytest.approx(max(ratios))
        assert r["any_drifted"] == max(d for *_, d in r["metrics"])
        assert len({m for m, *_ in r["metrics"]}) == len(
            r["metrics"]
        )  # each metric once: FINAL deduplicated the replay


def check_prediction_drift(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert {r["metric"] for r in rows} == {"psi", "ks", "wasserstein", "adwin", "trend_evidence"}
    for r in rows:
        assert bool(r["drifted"]) == (r["value"] > r["threshold"])
    drifted_windows = {(r["model_version"], r["window_start"]) for r in rows if r["drifted"]}
    assert len(drifted_windows) == seeded.run.drifted_windows["__prediction__"]


def check_performance_over_time(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert {r["metric"] for r in rows} == {"accuracy", "roc_auc", "f1", "log_loss", "brier"}
    accuracy = [r for r in rows if r["metric"] == "accuracy"]
    assert all(0 <= r["value"] <= 1 for r in accuracy)
    run = seeded.run
    v1 = [(r["window_start"].timestamp() * 1000, r["value"]) for r in accuracy if r["model_version"] == "1"]
    before = np.mean([v for t, v in v1 if t < run.window_start(DRIFT_AT)])
    after = np.mean([v for t, v in v1 if t >= run.window_start(RETRAIN_AT)])
    v2 = np.mean([r["value"] for r in accuracy if r["model_version"] == "2"])
    assert before - after > 0.1 and v2 - after > 0.1  # the drop, and the recovery after the retrain


def check_latency_over_time(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert len(rows) == (V2_SERVES_FROM + 1) + (N_WINDOWS - V2_SERVES_FROM)
    assert all(0 < r["p50"] <= r["p95"] <= r["p99"] for r in rows)
    assert max(r["p99"] for r in rows) > 100  # the spike


def check_performance_by_segment(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert {(r["model_version"], r["segment"]) for r in rows} == {
        (v, f"region={r}") for v in ("1", "2") for r in ("north", "south", "east", "west")
    }
    raw = wh.query_rows(
        "SELECT model_version, segment, value, n_labeled FROM performance_metrics FINAL "
        "WHERE model_id = {m:String} AND metric = 'accuracy' AND segment LIKE 'region=%' AND segment != 'region=*'",
        {"m": seeded.run.model_id},
    )
    for r in rows:
        mine = [
            (x["value"], x["n_labeled"])
            for x in raw
            if (x["model_version"], x["segment"]) == (r["model_version"], r["segment"])
        ]
        values, weights = np.array(mine).T
        assert r["weighted_value"] == pytest.approx(np.average(values, weights=weights), abs=1e-4)
        assert r["worst_window"] <= r["weighted_value"] <= r["best_window"]
        assert r["windows"] == len(mine)


def check_dlq_reasons(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["reason"]] = counts.get(r["reason"], 0) + r["messages"]
    assert counts == seeded.run.rejected_by_reason
    assert rows[0]["reason"] == "json_schema"
    assert _by(rows, "reason")["unknown_fingerprint"]["models"] == [""]
    assert _by(rows, "reason")["future_event_time"]["source_topic"] == "driftline.labels"


def check_dlq_per_minute(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert sum(r["messages"] for r in rows) == sum(seeded.run.rejected_by_reason.values())
    assert sum(r["unattributed"] for r in rows) == 7
    assert all(r["minute"].second == 0 for r in rows)


def check_champion_lineage(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert len(rows) == 1  # FINAL: the first sync still had v1 as champion
    r = rows[0]
    assert (r["version"], r["status"], r["parent_version"]) == ("2", "champion", "1")
    assert r["request_id"] == seeded.run.retrain_request_id and r["request_reason"] == "drift"
    assert r["dataset_rows"] == 4_620 and len(r["dataset_sha256"]) == 64
    assert r["metrics"]["holdout.roc_auc"] == pytest.approx(0.871)
    assert r["parent_metrics"]["train.accuracy"] == pytest.approx(0.874)
    assert {e["feature"] for e in json.loads(r["evidence"])} == {"income", "debt_ratio"}
    assert json.loads(r["hyperparameters"]) == {"epochs": 3, "l2": 0.001, "learning_rate": 0.05}


def check_model_versions(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert [(r["version"], r["status"], r["aliases"]) for r in rows] == [
        ("1", "archived", []),
        ("2", "champion", ["champion"]),
    ]
    assert rows[1]["request_id"] == seeded.run.retrain_request_id and rows[0]["request_id"] is None


def check_retrain_timeline(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert [r["reason"] for r in rows] == ["manual", "drift"]
    manual, drift = rows
    assert manual["status"] == "failed" and "labelled rows" in manual["error"] and manual["registered_version"] is None
    assert manual["evidence_end"] is None and manual["version_status"] is None
    assert (drift["status"], drift["registered_version"], drift["version_status"]) == ("registered", "2", "champion")
    assert drift["evidence_features"] == ["debt_ratio", "income"]
    assert int(drift["evidence_end"].timestamp() * 1000) == seeded.run.window_start(RETRAIN_AT + 1)


def check_alerts_timeline(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert [r["kind"] for r in rows] == ["drift", "performance_drop", "performance_recovered", "latency"]
    assert [r["severity"] for r in rows] == ["warning", "critical", "info", "warning"]


def check_feature_profile(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    run = seeded.run
    assert len(rows) == (V2_SERVES_FROM + 1) + (N_WINDOWS - V2_SERVES_FROM)
    assert all(r["kind"] == "numeric" and r["p05"] < r["p50"] < r["p95"] for r in rows)
    v1 = [(r["window_start"].timestamp() * 1000, r["mean"]) for r in rows if r["model_version"] == "1"]
    before = np.mean([m for t, m in v1 if t < run.window_start(DRIFT_AT)])
    after = np.mean([m for t, m in v1 if t >= run.window_start(RETRAIN_AT)])
    assert before - after > 9_000  # incomes fell


def check_label_coverage(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert sum(r["predictions"] for r in rows) == seeded.run.rows["predictions"]
    assert sum(r["labelled"] for r in rows) == seeded.run.rows["labels"]
    assert rows[-1]["label_rate"] < 1  # the latest windows have no labels yet
    assert all(0.5 < r["accuracy_at_half"] <= 1 for r in rows if r["labelled"])


def check_models(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    r = _by(rows, "model_id")[seeded.run.model_id]
    assert r["versions"] == ["1", "2"]
    assert r["windows"] == (V2_SERVES_FROM + 1) + (N_WINDOWS - V2_SERVES_FROM)
    assert r["drifted_windows"] == seeded.run.drifted_window_count


def _window(seeded: Seeded, r: dict[str, Any]) -> int:
    return (int(r["window_start"].timestamp() * 1000) - seeded.run.start_ms) // seeded.run.window_ms


def check_data_quality_alarms(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    # income's missing values in two v1 windows; the replayed windows count once
    assert [(r["model_version"], r["feature"], r["metric"], _window(seeded, r)) for r in rows] == [
        ("1", "income", "missing_rate", w) for w in sorted(QUALITY_AT, reverse=True)
    ]
    assert all(r["value"] == MISSING_ALARM and r["threshold"] == 0.05 and r["n_current"] == 300 for r in rows)


def check_multivariate_drift(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert {r["metric"] for r in rows} == {"reconstruction_error", "correlation_change"}
    assert len(rows) == 2 * ((V2_SERVES_FROM + 1) + (N_WINDOWS - V2_SERVES_FROM))  # both versions, no duplicates
    flagged = {(r["model_version"], _window(seeded, r)) for r in rows if r["drifted"]}
    assert flagged == {("1", w) for w in MULTIVARIATE_AT}
    assert all(bool(r["drifted"]) == (r["value"] > r["threshold"]) for r in rows)


def check_trend_evidence(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    assert {r["feature"] for r in rows} == {*NUMERIC, "__prediction__"}
    assert {r["threshold"] for r in rows} == {TREND_LEVEL}
    for r in rows:
        assert r["log10_evidence"] == pytest.approx(np.log10(r["value"]))
    crossed = {(r["model_version"], r["feature"]) for r in rows if r["drifted"]}
    assert crossed == {("1", f) for f in (*DRIFTING, "__prediction__")}  # v2 starts afresh; age never trends
    income = [r["value"] for r in rows if r["feature"] == "income" and r["model_version"] == "1"]
    assert len(income) == V2_SERVES_FROM + 1 and income[-1] > 1e6
    assert np.all(np.diff(income[DRIFT_AT:]) > 0)  # the evidence grows while the trend lasts


def check_estimated_vs_realized(rows: Rows, seeded: Seeded, wh: Warehouse) -> None:
    run = seeded.run
    assert {r["metric"] for r in rows} == {"accuracy", "roc_auc"}
    windows = (V2_SERVES_FROM + 1) + (N_WINDOWS - V2_SERVES_FROM)
    assert len(rows) == 2 * windows  # every prediction window has an estimate, labelled or not
    for r in rows:
        assert r["estimated_lower"] == pytest.approx(r["estimated"] - ESTIMATE_HALF_BAND)
        assert r["estimated_upper"] == pytest.approx(r["estimated"] + ESTIMATE_HALF_BAND)
        assert r["n_predictions"] in (150, 300)  # the estimate's, not the raw rows kept
    waiting = [r for r in rows if r["realized"] is None]
    assert {_window(seeded, r) for r in waiting} == set(range(N_WINDOWS - LABEL_LAG, N_WINDOWS))
    assert all(r["error"] is None and r["covered"] is None and r["n_labeled"] == 0 for r in waiting)
    # realized on the estimate window's own predictions, though every label's event time is an hour later
    # (12 windows on): graded by hand from the raw arrays the seed wrote
    for r in rows:
        truth = run.raw[(r["model_version"], _window(seeded, r))]
        assert r["n_labeled"] == truth.n_labeled
        expected = truth.realized(r["metric"])
        if expected is None:
            assert r["realized"] is None
            continue
        assert r["realized"] == pytest.approx(expected, abs=1e-12)
        assert r["error"] == pytest.approx(r["realized"] - r["estimated"])
        assert bool(r["covered"]) == (r["estimated_lower"] <= r["realized"] <= r["estimated_upper"])
    half = [r for r in rows if _window(seeded, r) == PARTLY_LABELLED]
    assert half and all(r["n_labeled"] == EVENTS_PER_WINDOW // 2 for r in half)


CHECKS: dict[str, Callable[[Rows, Seeded, Warehouse], None]] = {
    name[len("check_") :]: fn for name, fn in globals().items() if name.startswith("check_")
}


def test_every_query_has_a_check() -> None:
    assert sorted(load_queries()) == sorted(CHECKS)


@pytest.mark.parametrize("name", sorted(load_queries()))
def test_query_on_seeded_warehouse(name: str, seeded: Seeded, warehouse: Warehouse) -> None:
    query = load_queries()[name]
    params = _params(seeded)
    rows = query.run(warehouse, **{p: params[p] for p in query.parameters})
    assert rows, f"{name} returned no rows"
    CHECKS[name](rows, seeded, warehouse)
