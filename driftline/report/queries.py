"""Collecting what the report shows: the cookbook's queries against the warehouse, lineage from the registry.

It reads the warehouse only through the analysts' cookbook (``schemas/clickhouse/queries/``), so
every chart names the query that an analyst can run to get the same numbers, and the registry for
lineage and the audit log (falling back to the warehouse's ``model_versions`` mirror when no
registry is at hand). Missing tables and registry problems become notes, never failures.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from driftline.report.columns import _ms
from driftline.report.root_cause import collect_root_causes
from driftline.report.versions import VersionInfo
from driftline.retrainer.registry import AuditEntry, ModelNotFoundError, Registry, RegistryError, validate_name
from driftline.streams.cookbook import Query, load_queries
from driftline.streams.warehouse.root_causes import WindowRootCause

if TYPE_CHECKING:
    from driftline.streams.warehouse import Warehouse

# the cookbook queries behind each part of the report
DRIFT, PREDICTION, PERFORMANCE, LATENCY, DLQ = (
    "drift_by_window",
    "prediction_drift",
    "performance_over_time",
    "latency_over_time",
    "dlq_per_minute",
)
RETRAINS, ALERTS, VERSIONS, MODELS = "retrain_timeline", "alerts_timeline", "model_versions", "models"
DATA_QUALITY, MULTIVARIATE, TREND, ESTIMATES = (
    "data_quality_alarms",
    "multivariate_drift",
    "trend_evidence",
    "estimated_vs_realized",
)
DEFAULT_DAYS = 7.0  # how much history the report shows, counted back from the model's latest window


@dataclass
class ReportData:
    """Everything the report shows, as read from the warehouse and the registry.

    Tables are the cookbook queries' results; None means the query could
    not run (its table is missing), which ``notes`` explains.
    """

    model_id: str
    generated_at_ms: int
    since_ms: int | None = None  # windows before this were left out (None: none were)
    drift: pa.Table | None = None
    prediction_drift: pa.Table | None = None
    data_quality: pa.Table | None = None
    multivariate: pa.Table | None = None
    trend: pa.Table | None = None
    estimates: pa.Table | None = None
    performance: pa.Table | None = None
    latency: pa.Table | None = None
    dlq: pa.Table | None = None
    retrains: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    versions: list[VersionInfo] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    champion_history: list[str] = field(default_factory=list)
    known_models: list[str] = field(default_factory=list)
    lineage_source: str = ""
    warehouse: str = ""
    registry: str = ""
    notes: list[str] = field(default_factory=list)
    queries: dict[str, Query] = field(default_factory=dict)
    root_causes: list[WindowRootCause] | None = field(default_factory=list)  # None: no root_causes table


# ---- I/O: collecting -------------------------------------------------------------------------------------


def collect(
    warehouse: Warehouse,
    registry: Registry | None,
    model_id: str,
    *,
    days: float | None = DEFAULT_DAYS,
    queries: Mapping[str, Query] | None = None,
    now_ms: int | None = None,
) -> ReportData:
    """Read what the report needs about ``model_id``; missing tables and registry problems become notes.

    Windows older than ``days`` before the model's latest window are left
    out (None: keep everything). The DLQ, retrain requests, alerts and
    lineage are always read whole: they are small.
    """
    validate_name(model_id)
    queries = dict(queries or load_queries())
    data = ReportData(
        model_id=model_id,
        generated_at_ms=time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        warehouse=warehouse.location.redacted(),
        registry="" if registry is None else repr(registry),
        queries=queries,
    )
    present = {
        r["name"] for r in warehouse.query_rows("SELECT name FROM system.tables WHERE database = currentDatabase()")
    }

    def runnable(name: str) -> bool:
        missing = [t for t in queries[name].tables if t not in present]
        if missing:
            note = (
                f"The warehouse ({data.warehouse}) has no table {', '.join(missing)}: apply the warehouse "
                "migrations (schemas/clickhouse/; the worker and `driftline stack up` do)."
            )
            if note not in data.notes:
                data.notes.append(note)
        return not missing

    known = {r["model_id"]: r for r in queries[MODELS].run(warehouse)} if runnable(MODELS) else {}
    data.known_models = list(known)
    since = datetime.fromtimestamp(0, tz=UTC)
    if days is not None and model_id in known:
        cutoff = known[model_id]["last_window"] - timedelta(days=days)
        if cutoff > known[model_id]["first_window"]:
            since = cutoff
            data.since_ms = _ms(cutoff)
    for attr, name in (
        ("drift", DRIFT),
        ("prediction_drift", PREDICTION),
        ("performance", PERFORMANCE),
        ("latency", LATENCY),
        ("data_quality", DATA_QUALITY),
        ("multivariate", MULTIVARIATE),
        ("trend", TREND),
        ("estimates", ESTIMATES),
    ):
        if runnable(name):
            setattr(data, attr, queries[name].run_arrow(warehouse, model_id=model_id, since=since))
    if runnable(DLQ):
        data.dlq = queries[DLQ].run_arrow(warehouse, model_id=model_id)
    if runnable(RETRAINS):
        data.retrains = queries[RETRAINS].run(warehouse, model_id=model_id)
    if runnable(ALERTS):
        data.alerts = queries[ALERTS].run(warehouse, model_id=model_id)
    data.root_causes = collect_root_causes(warehouse, model_id, present)
    mirror = queries[VERSIONS].run(warehouse, model_id=model_id) if runnable(VERSIONS) else []

    if registry is not None:
        try:
            data.versions = [VersionInfo.from_registry(mv) for mv in registry.list_versions(model_id)]
            data.audit = registry.audit_log(model_id)
            data.champion_history = registry.champion_history(model_id)
            data.lineage_source = "registry"
        except ModelNotFoundError:
            data.notes.append(
                f"The registry has no model {model_id}; lineage comes from the warehouse's model_versions mirror."
            )
        except RegistryError as exc:
            data.notes.append(
                f"The registry could not be read ({exc}); lineage comes from the warehouse's model_versions mirror."
            )
    else:
        data.notes.append(
            "No registry was given; lineage comes from the warehouse's model_versions mirror, without the audit log."
        )
    if not data.lineage_source:
        data.versions = [VersionInfo.from_mirror(r) for r in mirror]
        data.lineage_source = "warehouse mirror" if mirror else ""
    return data
