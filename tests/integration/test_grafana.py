"""The Grafana provisioning in deploy/grafana/ and every SQL of its dashboard, on a seeded warehouse.

Grafana itself is not run (no Docker here); instead each panel's, each
annotation's and each variable's SQL is expanded the way the ClickHouse
plugin (grafana-clickhouse-datasource) would expand it, and run on the
embedded ClickHouse server over HTTP after a demo-sized history was seeded.
Every query must run and return rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from seed_warehouse import (
    CATEGORICAL,
    DRIFTING,
    ESTIMATED,
    MISSING_ALARM,
    MULTIVARIATE_AT,
    NUMERIC,
    QUALITY_AT,
    Seeded,
    seeded_once,
)

from driftline.streams.warehouse import Warehouse

pytestmark = pytest.mark.warehouse

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "driftline.json"
PLUGIN = "grafana-clickhouse-datasource"
PANEL_TYPES = {"stat", "timeseries", "table", "status-history", "bargauge"}
INTERVAL_MS = 60_000


# ---- the plugin's macro expansion (pkg/macros of grafana/clickhouse-datasource) ------------------------------


class UnknownMacro(ValueError):
    pass


def expand(sql: str, *, start_ms: int, end_ms: int, interval_ms: int, variables: Mapping[str, str]) -> str:
    """``sql`` with Grafana's template variables and the plugin's macros replaced, as Grafana would send it.

    Grafana interpolates template variables first (a single value, unquoted);
    the plugin then expands its ``$__`` macros against the panel's time range.
    """

    def variable(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in variables:
            raise UnknownMacro(f"template variable {name!r} is not defined")
        return variables[name]

    sql = re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(?!__)(\w+)", variable, sql)
    from_s, to_s = start_ms // 1000, end_ms // 1000
    seconds = max(interval_ms // 1000, 1)

    def macro(match: re.Match[str]) -> str:
        name, args = match.group(1), match.group(2)
        column = (args or "").strip()
        table = {
            "fromTime": f"toDateTime({from_s})",
            "toTime": f"toDateTime({to_s})",
            "fromTime_ms": f"fromUnixTimestamp64Milli({start_ms})",
            "toTime_ms": f"fromUnixTimestamp64Milli({end_ms})",
            "timeFilter": f"{column} >= toDateTime({from_s}) AND {column} <= toDateTime({to_s})",
            "timeFilter_ms": (
                f"{column} >= fromUnixTimestamp64Milli({start_ms}) AND {column} <= fromUnixTimestamp64Milli({end_ms})"
            ),
            "dateFilter": f"{column} >= toDate('{_day(start_ms)}') AND {column} <= toDate('{_day(end_ms)}')",
            "timeInterval": f"toStartOfInterval(toDateTime({column}), INTERVAL {seconds} second)",
            "timeInterval_ms": (
                f"toStartOfInterval(toDateTime64({column}, 3), INTERVAL {max(interval_ms, 1)} millisecond)"
            ),
            "interval_s": f"{seconds}",
        }
        if name not in table:
            raise UnknownMacro(f"macro $__{name} is not one the ClickHouse plugin expands")
        needs_column = name in ("timeFilter", "timeFilter_ms", "dateFilter", "timeInterval", "timeInterval_ms")
        if needs_column != bool(column):
            raise UnknownMacro(f"macro $__{name} takes {'one column' if needs_column else 'no argument'}, got {args!r}")
        return table[name]

    expanded = re.sub(r"\$__(\w+?)(?:\(([^()]*)\))?(?=\W|$)", macro, sql)
    if "$" in expanded:
        raise UnknownMacro(f"unexpanded $ left in: {expanded}")
    return expanded


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def test_expansion_matches_the_plugin_documentation() -> None:
    # the plugin's README examples: from 1415792726 s, to 1447328726 s
    vars_ = {"model": "credit"}
    start, end = 1_415_792_726_371, 1_447_328_726_371
    assert expand("WHERE $__timeFilter(time)", start_ms=start, end_ms=end, interval_ms=20_000, variables=vars_) == (
        "WHERE time >= toDateTime(1415792726) AND time <= toDateTime(1447328726)"
    )
    assert expand("$__timeFilter_ms(t)", start_ms=start, end_ms=end, interval_ms=1, variables=vars_) == (
        "t >= fromUnixTimestamp64Milli(1415792726371) AND t <= fromUnixTimestamp64Milli(1447328726371)"
    )
    assert expand("$__timeInterval(ts) AS time", start_ms=start, end_ms=end, interval_ms=20_000, variables=vars_) == (
        "toStartOfInterval(toDateTime(ts), INTERVAL 20 second) AS time"
    )
    assert expand("$__fromTime, $__toTime", start_ms=start, end_ms=end, interval_ms=1, variables=vars_) == (
        "toDateTime(1415792726), toDateTime(1447328726)"
    )
    assert (
        expand(
            "m = '${model}' OR m = '$model' OR m = '[[model]]'", start_ms=0, end_ms=1000, interval_ms=1, variables=vars_
        )
        == "m = 'credit' OR m = 'credit' OR m = 'credit'"
    )
    with pytest.raises(UnknownMacro, match="not defined"):
        expand("'${nope}'", start_ms=0, end_ms=1000, interval_ms=1, variables=vars_)
    with pytest.raises(UnknownMacro, match="not one the ClickHouse plugin expands"):
        expand("$__timeGroup(x, 1m)", start_ms=0, end_ms=1000, interval_ms=1, variables=vars_)


# ---- provisioning ---------------------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_datasource_provisioning_uses_the_http_interface() -> None:
    config = _yaml(GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml")
    (ds,) = config["datasources"]
    assert ds["type"] == PLUGIN
    data = ds["jsonData"]
    assert (data["protocol"], data["defaultDatabase"]) == ("http", "driftline")
    # host and port come from Grafana's environment (docker-compose.yml sets them)
    assert (data["host"], data["port"]) == ("$CLICKHOUSE_HOST", "$CLICKHOUSE_PORT")
    assert data["secure"] is False
    assert ds["secureJsonData"]["password"].startswith("$")  # from the environment, not in the file


def test_dashboard_provider_reads_the_directory_that_compose_mounts() -> None:
    provider = _yaml(GRAFANA / "provisioning" / "dashboards" / "driftline.yaml")["providers"][0]
    compose = _yaml(REPO / "docker-compose.yml")["services"]["grafana"]
    mounts = dict(v.split(":")[:2] for v in compose["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert PLUGIN in compose["environment"]["GF_INSTALL_PLUGINS"]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def queries() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, kind, target) of every SQL in the dashboard: panels, annotations and query variables."""
    board = dashboard()
    for panel in board["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r}", panel["type"], target
    for annotation in board["annotations"]["list"]:
        if "target" in annotation:
            yield f"annotation {annotation['name']!r}", "annotation", annotation["target"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']!r}", "variable", variable["query"]


def test_dashboard_shape() -> None:
    board = dashboard()
    uid = _yaml(GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml")["datasources"][0]["uid"]
    titles = [p["title"].lower() for p in board["panels"]]
    for topic in (
        "heatmap",
        "drift metric per feature",
        "performance",
        "latency",
        "dlq",
        "timeline",
        "data-quality",
        "multivariate",
        "trend evidence",
        "estimated vs realized",
    ):
        assert any(topic in t for t in titles), topic
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["datasource"]["uid"] == uid
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
    for where, _, target in queries():
        assert target["editorType"] == "sql", where
        assert target["rawSql"].strip(), where
        assert target["format"] == (0 if target["queryType"] == "timeseries" else 1), where
        if "datasource" in target:
            assert target["datasource"]["uid"] == uid, where


# ---- every SQL on the seeded warehouse ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(warehouse_server, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seeded_once(warehouse_server, tmp_path_factory.getbasetemp() / "seeded-registry")


@pytest.fixture(scope="module")
def warehouse(seeded: Seeded) -> Iterator[Warehouse]:
    with Warehouse.connect(seeded.url) as wh:
        yield wh


def _variables(seeded: Seeded) -> dict[str, str]:
    """The model variable points at the seeded model; custom variables take their default value."""
    values = {"model": seeded.run.model_id}
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "custom":
            options = variable["query"].split(",")
            assert variable["current"]["value"] in options
            values[variable["name"]] = variable["current"]["value"]
    return values


def _run(
    warehouse: Warehouse, seeded: Seeded, target: dict[str, Any], variables: Mapping[str, str]
) -> list[dict[str, Any]]:
    run = seeded.run
    sql = expand(
        target["rawSql"],
        start_ms=run.start_ms - 600_000,
        end_ms=run.end_ms + 600_000,
        interval_ms=INTERVAL_MS,
        variables=variables,
    )
    return warehouse.query_rows(sql)


@pytest.mark.parametrize("where", [w for w, _, _ in queries()])
def test_every_dashboard_query_returns_rows(where: str, seeded: Seeded, warehouse: Warehouse) -> None:
    kind, target = next((k, t) for w, k, t in queries() if w == where)
    rows = _run(warehouse, seeded, target, _variables(seeded))
    assert rows, f"{where} returned no rows"
    columns = list(rows[0])
    if target["queryType"] == "timeseries":
        # the plugin turns a long result (time, series, value) into one series per string value
        assert columns[0] == "time" and all(isinstance(r["time"], (datetime, date)) for r in rows), where
        assert any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rows[0].values()), where
    if kind == "stat":
        assert len(rows) == 1, where
    if kind == "annotation":
        assert {"time", "text"} <= set(columns), where
    if kind == "variable":
        assert seeded.run.model_id in {r[columns[0]] for r in rows}


def test_heatmap_has_a_series_per_feature_and_version(seeded: Seeded, warehouse: Warehouse) -> None:
    panel = next(p for p in dashboard()["panels"] if "heatmap" in p["title"].lower())
    rows = _run(warehouse, seeded, panel["targets"][0], _variables(seeded))
    series = {r["series"] for r in rows}
    assert series == {f"{f} · v{v}" for f in (*NUMERIC, *CATEGORICAL, "prediction", "multivariate") for v in ("1", "2")}
    drifted = {r["series"] for r in rows if r["score"] > 1}
    assert {"income · v1", "debt_ratio · v1", "prediction · v1"} <= drifted
    assert not any(s.endswith("v2") for s in drifted)


def test_every_drift_metric_option_has_data_for_some_panel(seeded: Seeded, warehouse: Warehouse) -> None:
    """The metric variable lists metrics; those the seeded worker computes must all draw something."""
    panel = next(p for p in dashboard()["panels"] if p["title"].startswith("Drift metric per feature"))
    computed = {r["metric"] for r in warehouse.query_rows("SELECT DISTINCT metric FROM drift_metrics")}
    options = next(v for v in dashboard()["templating"]["list"] if v["name"] == "metric")["query"].split(",")
    for metric in sorted(computed & set(options) - {"adwin"}):
        rows = _run(warehouse, seeded, panel["targets"][0], {**_variables(seeded), "metric": metric})
        assert rows, metric


def _panel(title_start: str) -> dict[str, Any]:
    return next(p for p in dashboard()["panels"] if p["title"].startswith(title_start))


def test_data_quality_panel_lists_the_alarms(seeded: Seeded, warehouse: Warehouse) -> None:
    rows = _run(warehouse, seeded, _panel("Data-quality alarms")["targets"][0], _variables(seeded))
    assert [(r["version"], r["feature"], r["metric"], r["rate"]) for r in rows] == [
        ("1", "income", "missing_rate", MISSING_ALARM)
    ] * len(QUALITY_AT)


def test_multivariate_panel_crosses_one_in_the_flagged_windows(seeded: Seeded, warehouse: Warehouse) -> None:
    rows = _run(warehouse, seeded, _panel("Multivariate drift")["targets"][0], _variables(seeded))
    assert {r["series"] for r in rows} == {
        f"{m} · v{v}" for m in ("reconstruction_error", "correlation_change") for v in "12"
    }
    above = {(r["series"], r["time"]) for r in rows if r["ratio"] > 1}
    assert len(above) == 2 * len(MULTIVARIATE_AT) and all(s.endswith("v1") for s, _ in above)


def test_trend_panel_is_on_a_log_axis_with_the_alarm_at_one(seeded: Seeded, warehouse: Warehouse) -> None:
    panel = _panel("Slow drift")
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["custom"]["scaleDistribution"] == {"type": "log", "log": 10}
    assert defaults["thresholds"]["steps"][-1]["value"] == 1
    rows = _run(warehouse, seeded, panel["targets"][0], _variables(seeded))
    assert all(r["evidence_over_alarm"] > 0 for r in rows)  # a log axis has no place for 0
    alarmed = {r["series"] for r in rows if r["evidence_over_alarm"] > 1}
    assert alarmed == {f"{f} · v1" for f in (*DRIFTING, "prediction")}


@pytest.mark.parametrize("metric", ESTIMATED)
def test_estimated_vs_realized_panel_has_both_and_the_band(metric: str, seeded: Seeded, warehouse: Warehouse) -> None:
    panel = _panel("Estimated vs realized")
    rows = _run(warehouse, seeded, panel["targets"][0], {**_variables(seeded), "perf_metric": metric})
    parts = ("realized", "estimated", "estimate lower", "estimate upper")
    assert {r["series"] for r in rows} == {f"v{v} {p}" for v in "12" for p in parts}
    by_time: dict[tuple[Any, str], dict[str, float]] = {}
    for r in rows:
        version, part = r["series"].split(" ", 1)
        by_time.setdefault((r["time"], version), {})[part] = r["value"]
    for values in by_time.values():
        assert values["estimate lower"] < values["estimated"] < values["estimate upper"]
    assert sum("realized" not in v for v in by_time.values()) > 0  # the latest windows have no labels yet
    # realized on the window's own predictions (their labels' event time is an hour later), graded by hand
    run = seeded.run
    for (time, version), values in by_time.items():
        window = (int(time.timestamp() * 1000) - run.start_ms) // run.window_ms
        truth = run.raw[(version[1:], window)]
        if truth.n_labeled:
            assert values["realized"] == pytest.approx(truth.realized(metric), abs=1e-12)
        else:
            assert "realized" not in values
