"""The HTML report of one model: drift, performance, latency, DLQ, retraining and lineage in one file.

The report is a single self-contained HTML file: styles, a few lines of
script and every chart (inline SVG drawn by ``driftline.report_svg``) are in
it, so it opens offline, attaches to an email and archives as is.

It reads the warehouse only through the analysts' cookbook
(``schemas/clickhouse/queries/``), so every chart names the query that an
analyst can run to get the same numbers, and the registry for lineage and
the audit log (falling back to the warehouse's ``model_versions`` mirror
when no registry is at hand). Sections without data explain what would fill
them instead of failing.

:func:`collect` does the I/O; :func:`render` is pure and turns the collected
data into HTML.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import driftline
from driftline.report_root_cause import collect_root_causes, root_cause_section
from driftline.report_svg import (
    PALETTE,
    Bars,
    Domain,
    Heatmap,
    Marker,
    Series,
    bar_chart,
    format_number,
    format_time,
    heatmap,
    line_chart,
)
from driftline.retrainer.registry import (
    AuditEntry,
    ModelNotFoundError,
    ModelVersion,
    Registry,
    RegistryError,
    validate_name,
)
from driftline.streams.cookbook import Query, load_queries
from driftline.streams.explain_queries import WindowRootCause
from driftline.streams.records import PREDICTION_FEATURE, Evidence

if TYPE_CHECKING:
    from driftline.settings import Settings
    from driftline.streams.warehouse import Warehouse

__all__ = ["ReportData", "TimelineEvent", "VersionInfo", "collect", "render", "render_report", "write_report"]

# the cookbook queries behind each part of the report
DRIFT, PREDICTION, PERFORMANCE, LATENCY, DLQ = (
    "drift_by_window",
    "prediction_drift",
    "performance_over_time",
    "latency_over_time",
    "dlq_per_minute",
)
RETRAINS, ALERTS, VERSIONS, MODELS = "retrain_timeline", "alerts_timeline", "model_versions", "models"
# metrics in a sensible reading order; others follow alphabetically
METRIC_ORDER = ("accuracy", "roc_auc", "f1", "precision", "recall", "log_loss", "brier", "mae", "rmse", "r2")
DRIFT_METRIC_ORDER = (
    "psi",
    "ks",
    "wasserstein",
    "jensenshannon",
    "hellinger",
    "chi2",
    "missing_rate",
    "new_category_rate",
)
PERCENTILES = (("p50", "p50"), ("p95", "p95"), ("p99", "p99"))
MAX_LINEAGE_VERSIONS = 8
DEFAULT_DAYS = 7.0  # how much history the report shows, counted back from the model's latest window
MAX_HEAT_COLUMNS = 240  # beyond this many windows, neighbouring windows share a heatmap column
MAX_DLQ_BUCKETS = 60
_DLQ_BUCKETS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)


@dataclass(frozen=True)
class VersionInfo:
    """One model version's lineage, from the registry or (without one) from the warehouse mirror.

    >>> v = VersionInfo.from_mirror({"version": "2", "status": "champion", "aliases": ["champion"],
    ...     "hyperparameters": '{"lr": 0.1}', "metrics": {"holdout.auc": 0.8, "train.auc": 0.9}, "dataset_rows": 10})
    >>> v.hyperparameters, v.holdout_metrics, v.dataset_rows
    ({'lr': 0.1}, {'auc': 0.8}, 10)
    """

    version: str
    status: str
    aliases: tuple[str, ...] = ()
    created_at_ms: int | None = None
    created_by: str = ""
    trainer: str = ""
    code_version: str = ""
    dataset_uri: str = ""
    dataset_sha256: str = ""
    dataset_rows: int | None = None
    dataset_start_ms: int | None = None
    dataset_end_ms: int | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    train_metrics: Mapping[str, Any] = field(default_factory=dict)
    holdout_metrics: Mapping[str, Any] = field(default_factory=dict)
    parent_version: str | None = None
    request_id: str | None = None
    evidence: Sequence[Evidence] = ()
    artifact_sha256: str = ""
    note: str = ""

    @classmethod
    def from_registry(cls, mv: ModelVersion) -> VersionInfo:
        lin = mv.lineage
        return cls(
            version=mv.version,
            status=mv.status,
            aliases=tuple(mv.aliases),
            created_at_ms=mv.created_at,
            created_by=mv.created_by,
            trainer=lin.trainer or "",
            code_version=lin.code_version or "",
            dataset_uri=lin.dataset_uri or "",
            dataset_sha256=lin.dataset_sha256 or "",
            dataset_rows=lin.dataset_rows,
            dataset_start_ms=lin.dataset_start_ms,
            dataset_end_ms=lin.dataset_end_ms,
            hyperparameters=dict(lin.hyperparameters),
            train_metrics=dict(lin.train_metrics),
            holdout_metrics=dict(lin.holdout_metrics),
            parent_version=lin.parent_version,
            request_id=lin.request_id,
            evidence=tuple(lin.evidence),
            artifact_sha256=mv.artifact_sha256 or "",
            note=mv.note or "",
        )

    @classmethod
    def from_mirror(cls, row: Mapping[str, Any]) -> VersionInfo:
        """From a row of the ``model_versions`` query: metrics come flattened as ``train.x`` and ``holdout.x``."""
        metrics = dict(row.get("metrics") or {})
        try:
            params = json.loads(row.get("hyperparameters") or "{}")
        except json.JSONDecodeError:
            params = {"(unparsed)": row.get("hyperparameters")}
        return cls(
            version=str(row["version"]),
            status=str(row.get("status") or ""),
            aliases=tuple(row.get("aliases") or ()),
            created_at_ms=_ms(row.get("created_at")),
            code_version=row.get("code_version") or "",
            dataset_uri=row.get("dataset_uri") or "",
            dataset_sha256=row.get("dataset_sha256") or "",
            dataset_rows=row.get("dataset_rows"),
            hyperparameters=params,
            train_metrics={k[len("train.") :]: v for k, v in metrics.items() if k.startswith("train.")},
            holdout_metrics={k[len("holdout.") :]: v for k, v in metrics.items() if k.startswith("holdout.")},
            parent_version=row.get("parent_version"),
            request_id=row.get("request_id"),
            artifact_sha256=row.get("artifact_sha256") or "",
        )


@dataclass(frozen=True)
class TimelineEvent:
    """Something that happened to the model, for the timeline table and the charts' markers.

    ``at_ms`` is when it happened; ``chart_ms`` where it belongs on the
    event-time axis (a retrain request sits at the end of the windows that
    triggered it), or None to keep it off the charts.

    >>> TimelineEvent(1_000, "promoted", "2", "v2 promoted", "by ana").marker_kind
    'promoted'
    """

    at_ms: int
    kind: str
    version: str
    summary: str
    detail: str = ""
    chart_ms: int | None = None
    label: str = ""

    @property
    def marker_kind(self) -> str:
        return self.kind.split(":", 1)[0]


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


def render_report(
    warehouse: Warehouse, registry: Registry | None, model_id: str, *, days: float | None = DEFAULT_DAYS
) -> str:
    """The report of ``model_id`` as one self-contained HTML document (the last ``days`` of windows)."""
    return render(collect(warehouse, registry, model_id, days=days))


def write_report(
    settings: Settings, model_id: str, out_path: str | os.PathLike[str], *, days: float | None = DEFAULT_DAYS
) -> Path:
    """Write the report of ``model_id`` to ``out_path`` (atomically) and return the path.

    The warehouse and the registry come from ``settings``. A SQLite registry
    file that does not exist is not created: the report then takes lineage
    from the warehouse mirror and says so.
    """
    from driftline.streams.warehouse import Warehouse

    validate_name(model_id)
    out = Path(out_path)
    registry = _open_registry(settings)
    with Warehouse.from_settings(settings) as warehouse:
        html = render_report(warehouse, registry, model_id, days=days)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(html, encoding="utf-8")
    partial.replace(out)
    return out


def _open_registry(settings: Settings) -> Registry | None:
    prefix = "sqlite:///"
    if settings.registry.startswith(prefix) and not Path(settings.registry[len(prefix) :]).exists():
        return None
    return Registry.from_settings(settings)


# ---- pure: shaping ---------------------------------------------------------------------------------------


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(round(value.timestamp() * 1000))
    return int(value)


def _epoch_ms(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Epoch milliseconds of a timestamp column."""
    return pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def _strings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _rows(table: pa.Table | None) -> int:
    return 0 if table is None else table.num_rows


def version_colors(data: ReportData) -> dict[str, str]:
    """One colour per version, the same in every chart, in version order."""
    seen: set[str] = {v.version for v in data.versions}
    for table in (data.drift, data.prediction_drift, data.performance, data.latency):
        if _rows(table):
            seen.update(str(v) for v in pc.unique(table.column("model_version")).to_pylist())
    ordered = sorted(seen, key=_version_key)
    return {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(ordered)}


def event_domain(data: ReportData) -> Domain | None:
    """The event-time range of the windows shown, or None when there are none."""
    bounds = []
    for table in (data.drift, data.prediction_drift, data.performance, data.latency):
        if _rows(table):
            bounds.append(_epoch_ms(table.column("window_start")).min())
            bounds.append(_epoch_ms(table.column("window_end")).max())
    return Domain.around(bounds) if bounds else None


def timeline(data: ReportData) -> list[TimelineEvent]:
    """Retrain requests, registrations, promotions, rollbacks, first traffic of versions and alerts, oldest first."""
    events: list[TimelineEvent] = []
    for r in data.retrains:
        requested = _ms(r["requested_at"])
        evidence_end = _ms(r.get("evidence_end"))
        features = ", ".join(r.get("evidence_features") or []) or "no evidence attached"
        outcome = f"{r['status']}" + (f" as v{r['registered_version']}" if r.get("registered_version") else "")
        detail = f"request {r['request_id']} from v{r['from_version']}; evidence: {features}; now {outcome}"
        if r.get("error"):
            detail += f" ({r['error']})"
        events.append(
            TimelineEvent(
                requested,
                "retrain",
                str(r["from_version"]),
                f"retrain requested ({r['reason']})",
                detail,
                chart_ms=evidence_end if evidence_end is not None else requested,
                label=f"retrain ({r['reason']})",
            )
        )
    for v in data.versions:
        if v.created_at_ms is not None:
            origin = f"for request {v.request_id}" if v.request_id else "registered by hand"
            by = f" by {v.created_by}" if v.created_by else ""
            events.append(
                TimelineEvent(
                    v.created_at_ms,
                    "registered",
                    v.version,
                    f"v{v.version} registered",
                    f"{origin}{by}; trainer {v.trainer or 'unknown'}",
                    chart_ms=v.created_at_ms,
                    label=f"v{v.version} registered",
                )
            )
    for entry in data.audit:
        if entry.action == "promote":
            previous = entry.details.get("from")
            detail = (
                (f"replacing v{previous}" if previous else "first champion")
                + f"; by {entry.actor}"
                + (f": {entry.reason}" if entry.reason else "")
            )
            events.append(
                TimelineEvent(
                    entry.occurred_at,
                    "promoted",
                    entry.version or "",
                    f"v{entry.version} promoted to champion",
                    detail,
                    chart_ms=entry.occurred_at,
                    label=f"v{entry.version} promoted",
                )
            )
        elif entry.action == "rollback":
            detail = f"from v{entry.details.get('from')}; by {entry.actor}" + (
                f": {entry.reason}" if entry.reason else ""
            )
            events.append(
                TimelineEvent(
                    entry.occurred_at,
                    "rollback",
                    entry.version or "",
                    f"rolled back to v{entry.version}",
                    detail,
                    chart_ms=entry.occurred_at,
                    label=f"rollback to v{entry.version}",
                )
            )
        elif entry.action == "reject":
            events.append(
                TimelineEvent(
                    entry.occurred_at,
                    "rejected",
                    entry.version or "",
                    f"v{entry.version} rejected",
                    f"by {entry.actor}" + (f": {entry.reason}" if entry.reason else ""),
                )
            )
    first = _first_traffic(data)
    earliest = min(first.values()) if first else None
    for version, at in first.items():
        if at != earliest:  # the first version's first window is where the charts begin anyway
            events.append(
                TimelineEvent(
                    at,
                    "traffic",
                    version,
                    f"v{version} serves its first window",
                    "first window with monitoring results",
                    chart_ms=at,
                    label=f"v{version} serves",
                )
            )
    for a in data.alerts:
        window = ""
        if a.get("window_start") is not None:
            window = f" (window {format_time(_ms(a['window_start']))}–{format_time(_ms(a['window_end']))[11:]})"
        events.append(
            TimelineEvent(
                _ms(a["occurred_at"]),
                f"alert:{a['severity']}",
                str(a["model_version"]),
                f"{a['severity']} alert: {a['kind']}",
                f"{a['message']}{window}",
            )
        )
    return sorted(events, key=lambda e: (e.at_ms, e.kind))


def _first_traffic(data: ReportData) -> dict[str, int]:
    first: dict[str, int] = {}
    for table in (data.drift, data.performance, data.latency):
        if not _rows(table):
            continue
        versions = _strings(table.column("model_version"))
        starts = _epoch_ms(table.column("window_start"))
        for v in np.unique(versions):
            at = int(starts[versions == v].min())
            first[str(v)] = min(first.get(str(v), at), at)
    return first


def chart_markers(events: Sequence[TimelineEvent], domain: Domain | None) -> list[Marker]:
    """The events that belong on the event-time axis and fall inside it.

    >>> chart_markers([TimelineEvent(5, "promoted", "2", "s", chart_ms=5, label="v2 promoted"),
    ...                TimelineEvent(9, "alert:info", "2", "s")], Domain(0, 10))
    [Marker(at_ms=5, label='v2 promoted', kind='promoted')]
    """
    if domain is None:
        return []
    return [
        Marker(e.chart_ms, e.label or e.summary, e.marker_kind)
        for e in events
        if e.chart_ms is not None and domain.contains(e.chart_ms)
    ]


def drift_heatmap(table: pa.Table, colors: Mapping[str, str]) -> Heatmap:
    """Rows = version × feature (the prediction last), columns = windows, cells = worst value / threshold."""
    versions = _strings(table.column("model_version"))
    features = _strings(table.column("feature"))
    starts = _epoch_ms(table.column("window_start"))
    ends = _epoch_ms(table.column("window_end"))
    scores = _floats(table.column("score"))
    flags = pc.cast(table.column("any_drifted"), pa.bool_()).to_numpy(zero_copy_only=False)
    window_starts, col = np.unique(starts, return_inverse=True)
    window_ends = np.full(len(window_starts), np.iinfo(np.int64).min)
    np.maximum.at(window_ends, col, ends)
    pairs = sorted(
        {(str(v), str(f)) for v, f in zip(versions, features)},
        key=lambda p: (_version_key(p[0]), p[1] == PREDICTION_FEATURE, p[1]),
    )
    index = {p: i for i, p in enumerate(pairs)}
    row = np.fromiter(
        (index[(str(v), str(f))] for v, f in zip(versions, features)), dtype=np.int64, count=len(versions)
    )
    grid = np.full((len(pairs), len(window_starts)), np.nan)
    grid[row, col] = scores
    flagged = np.zeros(grid.shape, dtype=bool)
    flagged[row, col] = flags
    if len(window_starts) > MAX_HEAT_COLUMNS:
        # more windows than pixels to show them: neighbouring windows share a column, worst score and any flag
        k = -(-len(window_starts) // MAX_HEAT_COLUMNS)
        grid, flagged, window_starts, window_ends, merged = _merge_columns(grid, flagged, window_starts, window_ends, k)
        tips = [["" for _ in window_starts] for _ in pairs]
        for r, c in zip(*np.nonzero(np.isfinite(grid))):
            tips[r][c] = (
                f"{_feature_label(pairs[r][1])} · v{pairs[r][0]} · "
                f"{merged[c]} windows {format_time(int(window_starts[c]))}–"
                f"{format_time(int(window_ends[c]))[11:]} UTC\n"
                f"worst value / threshold: {format_number(float(grid[r, c]))}"
                + ("  ⚠ drifted" if flagged[r, c] else "")
            )
    else:
        tips = [["" for _ in window_starts] for _ in pairs]
        for r, c, metrics, v, f, s, e in zip(
            row, col, table.column("metrics").to_pylist(), versions, features, starts, ends
        ):
            lines = [f"{_feature_label(f)} · v{v} · {format_time(int(s))}–{format_time(int(e))[11:]} UTC"]
            for m in sorted(metrics, key=lambda m: _metric_rank(m["1"], DRIFT_METRIC_ORDER)):
                mark = "  ⚠ drifted" if m["4"] else ""
                lines.append(f"{m['1']}: {format_number(m['2'])} (threshold {format_number(m['3'])}){mark}")
            tips[r][c] = "\n".join(lines)
    groups: list[tuple[str, int, str]] = []
    for v, _ in pairs:
        if groups and groups[-1][0] == f"v{v}":
            groups[-1] = (groups[-1][0], groups[-1][1] + 1, groups[-1][2])
        else:
            groups.append((f"v{v}", 1, colors.get(v, PALETTE[-1])))
    return Heatmap([_feature_label(f) for _, f in pairs], groups, window_starts, window_ends, grid, flagged, tips)


def _merge_columns(
    grid: np.ndarray, flagged: np.ndarray, starts: np.ndarray, ends: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ``k`` neighbouring columns as one: the worst score, any flag, the first start, the last end.

    >>> g = np.array([[0.1, 2.0, np.nan, np.nan, 0.3]])
    >>> f = np.array([[False, True, False, False, False]])
    >>> g2, f2, s2, e2, n = _merge_columns(g, f, np.arange(5) * 10, np.arange(5) * 10 + 10, 2)
    >>> g2.tolist(), f2.tolist(), s2.tolist(), e2.tolist(), n.tolist()
    ([[2.0, nan, 0.3]], [[True, False, False]], [0, 20, 40], [20, 40, 50], [2, 2, 1])
    """
    n_rows, n_cols = grid.shape
    width = -(-n_cols // k)
    pad = width * k - n_cols
    g = np.pad(grid, ((0, 0), (0, pad)), constant_values=np.nan).reshape(n_rows, width, k)
    f = np.pad(flagged, ((0, 0), (0, pad)), constant_values=False).reshape(n_rows, width, k)
    present = np.isfinite(g)
    merged = np.where(present.any(axis=2), np.max(np.where(present, g, -np.inf), axis=2), np.nan)
    counts = np.minimum(k, n_cols - np.arange(width) * k)
    last = np.minimum(np.arange(width) * k + k, n_cols) - 1
    return merged, f.any(axis=2), starts[::k], ends[last], counts


def _feature_label(feature: str) -> str:
    return "prediction (output)" if feature == PREDICTION_FEATURE else feature


def _metric_rank(metric: str, order: Sequence[str]) -> tuple[int, str]:
    return (order.index(metric) if metric in order else len(order), metric)


def series_by_version(
    table: pa.Table, value_column: str, colors: Mapping[str, str], *, where: np.ndarray | None = None
) -> list[Series]:
    """One series per model version of ``value_column`` against ``window_start``."""
    versions = _strings(table.column("model_version"))
    starts = _epoch_ms(table.column("window_start"))
    values = _floats(table.column(value_column))
    keep = np.ones(len(versions), dtype=bool) if where is None else where
    out = []
    for v in sorted({str(x) for x in versions[keep]}, key=_version_key):
        mask = keep & (versions == v)
        out.append(Series(f"v{v}", f"v{v}", starts[mask], values[mask], colors.get(v, PALETTE[-1])))
    return out


def dlq_bars(table: pa.Table) -> tuple[Bars, Domain]:
    """DLQ messages per reason in at most MAX_DLQ_BUCKETS buckets of a round number of minutes."""
    minutes = _epoch_ms(table.column("minute"))
    reasons = _strings(table.column("reason"))
    counts = pc.cast(table.column("messages"), pa.int64()).to_numpy(zero_copy_only=False)
    start = int(minutes.min())
    span_min = (int(minutes.max()) - start) // 60_000 + 1
    bucket_min = next((b for b in _DLQ_BUCKETS_MIN if span_min / b <= MAX_DLQ_BUCKETS), _DLQ_BUCKETS_MIN[-1])
    bucket_ms = bucket_min * 60_000
    start = start // bucket_ms * bucket_ms
    bucket = (minutes - start) // bucket_ms
    n_buckets = int(bucket.max()) + 1
    names, which = np.unique(reasons, return_inverse=True)
    grid = np.zeros((len(names), n_buckets), dtype=np.int64)
    np.add.at(grid, (which, bucket), counts)
    order = np.argsort(-grid.sum(axis=1), kind="stable")
    bars = Bars(
        start + np.arange(n_buckets, dtype=np.int64) * bucket_ms,
        bucket_ms,
        [str(names[i]) for i in order],
        grid[order],
        [PALETTE[i % len(PALETTE)] for i in range(len(order))],
    )
    return bars, Domain(start, start + n_buckets * bucket_ms)


# ---- pure: HTML ------------------------------------------------------------------------------------------


def render(data: ReportData) -> str:
    """The report as one HTML document: no external resources, charts as inline SVG."""
    colors = version_colors(data)
    domain = event_domain(data)
    events = timeline(data)
    markers = chart_markers(events, domain)
    sections = [
        _summary(data, domain, colors),
        _drift_section(data, domain, markers, colors),
        _prediction_section(data, domain, markers, colors),
        root_cause_section(data.root_causes),
        _performance_section(data, domain, markers, colors),
        _latency_section(data, domain, markers, colors),
        _dlq_section(data),
        _timeline_section(data, events, domain),
        _lineage_section(data, colors),
    ]
    title = f"driftline report: {data.model_id}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="driftline {escape(driftline.__version__)}">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main><header><h1>{escape(title)}</h1>"
        f'<p class="meta">Generated {format_time(data.generated_at_ms)} UTC from {escape(data.warehouse)}'
        + (f" and the {escape(data.lineage_source)}" if data.lineage_source else "")
        + ". Times are UTC; the charts' axis is event time (the windows), the DLQ's is arrival time.</p></header>"
        + _notes(data)
        + "".join(sections)
        + f"<footer>driftline {escape(driftline.__version__)} · each chart names the query of "
        "<code>schemas/clickhouse/queries/</code> that gives its numbers.</footer>"
        f"</main><script>{_JS}</script></body></html>\n"
    )


def _notes(data: ReportData) -> str:
    notes = list(data.notes)
    if data.since_ms is not None:
        notes.append(
            f"Windows before {format_time(data.since_ms)} UTC are left out; `driftline report --days N` "
            "shows more (0 for all)."
        )
    # the DLQ does not count: it holds messages without a readable model id, which belong to no model in particular
    nothing = not any(_rows(t) for t in (data.drift, data.prediction_drift, data.performance, data.latency))
    if nothing and not data.versions and not data.retrains and not data.alerts:
        others = [m for m in data.known_models if m != data.model_id]
        known = (
            f" Models with data in this warehouse: {', '.join(others[:20])}."
            if others
            else " This warehouse holds no monitoring data yet."
        )
        notes.insert(
            0, f"Nothing is known about model {data.model_id}: no monitoring data and no registered versions.{known}"
        )
    if not notes:
        return ""
    return '<section class="notes">' + "".join(f"<p>{escape(n)}</p>" for n in notes) + "</section>"


def _section(anchor: str, title: str, intro: str, body: str, query: str | Sequence[str] = ()) -> str:
    names = [query] if isinstance(query, str) else list(query)
    source = (
        '<p class="source">Query: ' + ", ".join(f"<code>{escape(n)}.sql</code>" for n in names) + "</p>"
        if names
        else ""
    )
    return f'<section id="{anchor}"><h2>{escape(title)}</h2><p class="intro">{intro}</p>{body}{source}</section>'


def _empty(headline: str, explanation: str) -> str:
    return f'<div class="empty"><strong>{escape(headline)}</strong> {explanation}</div>'


def _legend(colors: Mapping[str, str], versions: Sequence[str]) -> str:
    items = "".join(
        f'<button type="button" class="key" data-toggle="v{escape(v)}">'
        f'<span class="swatch" style="background:{colors.get(v, PALETTE[-1])}"></span>v{escape(v)}</button>'
        for v in versions
    )
    return f'<div class="legend" aria-label="versions (click to hide or show)">{items}</div>' if items else ""


def _versions_in(table: pa.Table | None) -> list[str]:
    if not _rows(table):
        return []
    return sorted({str(v) for v in pc.unique(table.column("model_version")).to_pylist()}, key=_version_key)


def _summary(data: ReportData, domain: Domain | None, colors: Mapping[str, str]) -> str:
    champion = next((v.version for v in data.versions if "champion" in v.aliases), None)
    cards = [
        ("Champion", f"v{champion}" if champion else "none", "" if champion else "no version holds the champion alias")
    ]
    cards.append(("Versions", str(len(colors)), ", ".join(f"v{v}" for v in colors)))
    if _rows(data.drift):
        keys = pc.binary_join_element_wise(
            data.drift.column("model_version"), pc.cast(data.drift.column("window_start"), pa.string()), "|"
        )
        windows = len(pc.unique(keys))
        drifted = len(pc.unique(pc.filter(keys, pc.equal(data.drift.column("any_drifted"), 1))))
        cards.append(("Windows", str(windows), f"{drifted} with drift"))
    if _rows(data.performance):
        metric = _headline_metric(data.performance)
        table = data.performance.filter(pc.equal(data.performance.column("metric"), metric))
        starts = _epoch_ms(table.column("window_start"))
        latest = int(np.argmax(starts))
        value = float(table.column("value")[latest].as_py())
        version = table.column("model_version")[latest].as_py()
        cards.append(
            (f"Latest {metric}", format_number(value), f"v{version}, window of {format_time(int(starts[latest]))[:16]}")
        )
    statuses: dict[str, int] = {}
    for r in data.retrains:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    cards.append(("Retrain requests", str(len(data.retrains)), ", ".join(f"{n} {s}" for s, n in statuses.items())))
    critical = sum(1 for a in data.alerts if a["severity"] == "critical")
    cards.append(("Alerts", str(len(data.alerts)), f"{critical} critical"))
    if data.dlq is not None:
        total = int(pc.sum(data.dlq.column("messages")).as_py() or 0)
        unattributed = int(pc.sum(data.dlq.column("unattributed")).as_py() or 0)
        cards.append(("DLQ messages", str(total), f"{unattributed} without a readable model id"))
    span = (
        f"Windows from {format_time(domain.start_ms)} to {format_time(domain.end_ms)} UTC."
        if domain
        else "No windows yet."
    )
    body = (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
            f'<div class="sub">{escape(sub)}</div></div>'
            for label, value, sub in cards
        )
        + "</div>"
    )
    return _section("summary", "Summary", escape(span), body)


def _headline_metric(table: pa.Table) -> str:
    metrics = {str(m) for m in pc.unique(table.column("metric")).to_pylist()}
    return min(metrics, key=lambda m: _metric_rank(m, METRIC_ORDER))


def _drift_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "Each cell is one closed window of one feature: its colour is the worst drift metric divided by that "
        "metric's threshold (1 = at the threshold), an outline means a metric crossed its threshold. "
        "Hover a cell for every metric. Rows are grouped by model version; dashed lines mark retraining events."
    )
    if data.drift is None:
        body = _empty(
            "Drift metrics are unavailable.",
            "The warehouse has no <code>drift_metrics</code> table (see the note above).",
        )
    elif not data.drift.num_rows or domain is None:
        body = _empty(
            f"No drift metrics for {data.model_id} yet.",
            "The streams worker (<code>driftline worker</code>) writes one row per feature and metric to "
            "<code>drift_metrics</code> when a window closes; check that it runs and that predictions of this "
            "model arrive on the <code>predictions</code> topic, and that the model has a reference profile "
            "(a registered version).",
        )
    else:
        grid = drift_heatmap(data.drift, colors)
        figure = heatmap(grid, domain, title="drift per feature and window", markers=markers)
        body = f'<figure class="wide">{figure}</figure>'
    return _section("drift", "Drift per feature", intro, body, DRIFT)


def _small_multiples(charts: Sequence[tuple[str, str]], columns: int = 2) -> str:
    return (
        f'<div class="grid cols-{columns}">'
        + "".join(f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>" for caption, svg in charts)
        + "</div>"
    )


def _charts_per_metric(
    table: pa.Table | None,
    domain: Domain | None,
    colors: Mapping[str, str],
    *,
    what: str,
    source: str,
    nothing_yet: tuple[str, str],
    order: Sequence[str],
    chart: Callable[[pa.Table, Domain, str, np.ndarray], str],
) -> str:
    """One chart per metric of ``table`` under the versions' legend, or why there is none yet.

    ``chart(table, domain, metric, where)`` draws one metric; ``where`` selects its rows of ``table``.
    """
    if table is None:
        return _empty(f"{what} is unavailable.", f"The warehouse has no <code>{source}</code> table.")
    if not table.num_rows or domain is None:
        return _empty(*nothing_yet)
    metric_col = _strings(table.column("metric"))
    metrics = sorted({str(m) for m in metric_col.tolist()}, key=lambda m: _metric_rank(m, order))
    charts = [(metric, chart(table, domain, metric, metric_col == metric)) for metric in metrics]
    return _legend(colors, _versions_in(table)) + _small_multiples(charts)


def _prediction_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "The distribution of the model's output against its reference: the earliest warning when labels "
        "arrive late. One chart per metric, the dashed line is the metric's threshold."
    )

    def chart(table: pa.Table, domain: Domain, metric: str, where: np.ndarray) -> str:
        threshold = float(np.median(_floats(table.column("threshold"))[where]))
        return line_chart(
            series_by_version(table, "value", colors, where=where),
            domain,
            title=f"prediction {metric}",
            thresholds=[(threshold, "threshold")],
            markers=markers,
            marker_labels=False,
            y_include=[0.0],
            width=470,
            height=190,
        )

    body = _charts_per_metric(
        data.prediction_drift,
        domain,
        colors,
        what="Prediction drift",
        source="drift_metrics",
        order=DRIFT_METRIC_ORDER,
        chart=chart,
        nothing_yet=(
            "No prediction drift yet.",
            "It is measured on the feature <code>__prediction__</code>, so the predictions need a "
            "<code>prediction</code> value (a score or probability) and the reference profile one too.",
        ),
    )
    return _section("prediction-drift", "Prediction drift", intro, body, PREDICTION)


def _performance_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "Quality of the predictions once their labels arrived, for the whole population, per window and "
        "version. Labels often come hours late, so the latest windows may be missing."
    )

    def chart(table: pa.Table, domain: Domain, metric: str, where: np.ndarray) -> str:
        return line_chart(
            series_by_version(table, "value", colors, where=where),
            domain,
            title=metric,
            markers=markers,
            marker_labels=False,
            width=470,
            height=190,
        )

    body = _charts_per_metric(
        data.performance,
        domain,
        colors,
        what="Performance",
        source="performance_metrics",
        order=METRIC_ORDER,
        chart=chart,
        nothing_yet=(
            "No performance metrics yet.",
            "They need ground truth: <code>LabelEvent</code>s on the <code>labels</code> topic, joined to "
            "predictions by <code>event_id</code>. Labels often arrive hours after the predictions.",
        ),
    )
    return _section("performance", "Performance", intro, body, PERFORMANCE)


def _latency_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = "Serving latency percentiles per window and version, in milliseconds, as the producers reported them."
    table = data.latency
    if table is None:
        body = _empty("Latency is unavailable.", "The warehouse has no <code>performance_metrics</code> table.")
    elif not table.num_rows or domain is None:
        body = _empty(
            "No latency reported.",
            "Producers send <code>latency_ms</code> with each prediction (the SDK does when it is given one); "
            "the worker then writes the p50, p95 and p99 of each window.",
        )
    else:
        charts = [
            (
                label,
                line_chart(
                    series_by_version(table, column, colors),
                    domain,
                    title=f"latency {label}",
                    unit="ms",
                    markers=markers,
                    marker_labels=False,
                    y_include=[0.0],
                    width=320,
                    height=180,
                ),
            )
            for column, label in PERCENTILES
        ]
        body = _legend(colors, _versions_in(table)) + _small_multiples(charts, columns=3)
    return _section("latency", "Latency", intro, body, LATENCY)


def _dlq_section(data: ReportData) -> str:
    intro = (
        "Input messages the worker refused (sent unchanged to the <code>dlq</code> topic), by reason code and "
        "time of arrival. Messages that could not be read far enough to name a model are counted too."
    )
    table = data.dlq
    if table is None:
        body = _empty("DLQ counts are unavailable.", "The warehouse has no <code>rejected_events</code> table.")
    elif not table.num_rows:
        body = _empty("No rejected messages.", "Every input message of this model decoded and validated.")
    else:
        bars, domain = dlq_bars(table)
        legend = (
            '<div class="legend static">'
            + "".join(
                f'<span class="key"><span class="swatch" style="background:{c}"></span>{escape(name)}</span>'
                for name, c in zip(bars.categories, bars.colors)
            )
            + "</div>"
        )
        per_bucket = f"{bars.width_ms // 60_000} min"
        chart = bar_chart(bars, domain, title="DLQ messages by reason", unit=f"per {per_bucket}")
        body = legend + f'<figure class="wide">{chart}</figure>' + _dlq_table(table)
    return _section("dlq", "Rejected input (DLQ)", intro, body, DLQ)


def _dlq_table(table: pa.Table) -> str:
    grouped = (
        table.group_by(["reason", "source_topic"])
        .aggregate([("messages", "sum"), ("unattributed", "sum"), ("minute", "min"), ("minute", "max")])
        .sort_by([("messages_sum", "descending"), ("reason", "ascending")])
    )
    rows = "".join(
        f"<tr><td><code>{escape(r['reason'])}</code></td><td>{escape(r['source_topic'])}</td>"
        f'<td class="num">{r["messages_sum"]}</td><td class="num">{r["unattributed_sum"]}</td>'
        f"<td>{format_time(_ms(r['minute_min']))[:16]}</td><td>{format_time(_ms(r['minute_max']))[:16]}</td></tr>"
        for r in grouped.to_pylist()
    )
    return (
        "<table><thead><tr><th>reason</th><th>source topic</th><th>messages</th><th>without model id</th>"
        f"<th>first (minute)</th><th>last (minute)</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _timeline_section(data: ReportData, events: Sequence[TimelineEvent], domain: Domain | None) -> str:
    intro = (
        "Retrain requests, registrations, promotions, rollbacks and alerts, oldest first. Retrain requests are "
        "drawn on the charts at the end of the windows that triggered them; registry changes at the time they "
        "were made, so those outside the charts' event-time range are listed here only."
    )
    if not events:
        body = _empty(
            "Nothing happened yet.", "No retrain requests, registrations, promotions or alerts for this model."
        )
    else:
        rows = []
        for e in events:
            on_chart = "✓" if e.chart_ms is not None and domain is not None and domain.contains(e.chart_ms) else ""
            rows.append(
                f'<tr class="ev-{escape(e.marker_kind)}"><td>{format_time(e.at_ms)}</td>'
                f'<td><span class="pill {escape(e.kind.replace(":", "-"))}">'
                f"{escape(e.summary)}</span></td><td>{('v' + escape(e.version)) if e.version else ''}</td>"
                f'<td>{escape(e.detail)}</td><td class="num">{on_chart}</td></tr>'
            )
        body = (
            "<table><thead><tr><th>time (UTC)</th><th>event</th><th>version</th><th>details</th><th>on charts</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )
    return _section("timeline", "Retraining and promotion timeline", intro, body, (RETRAINS, ALERTS))


def _lineage_section(data: ReportData, colors: Mapping[str, str]) -> str:
    source = {
        "registry": "the model registry",
        "warehouse mirror": "the warehouse's <code>model_versions</code> mirror",
    }
    intro = (
        f"Where each version came from, as recorded by {source.get(data.lineage_source, 'the registry')}: "
        "training data, code, trainer, parameters, metrics, parent and the retrain request with its evidence."
    )
    versions = sorted(data.versions, key=lambda v: _version_key(v.version))
    if not versions:
        body = _empty(
            "No registered versions.",
            f"<code>driftline registry register --model {escape(data.model_id)} --dataset FILE</code> registers "
            "one; the retrainer registers the versions it trains.",
        )
        return _section("lineage", "Lineage", intro, body)
    hidden = len(versions) - MAX_LINEAGE_VERSIONS
    versions = versions[-MAX_LINEAGE_VERSIONS:]
    requests = {str(r["request_id"]): r for r in data.retrains}
    fields: list[tuple[str, list[str]]] = [
        ("status", [escape(v.status) for v in versions]),
        (
            "aliases",
            [", ".join(f'<span class="pill alias">{escape(a)}</span>' for a in v.aliases) or "–" for v in versions],
        ),
        (
            "registered",
            [
                (format_time(v.created_at_ms) if v.created_at_ms else "–")
                + (f" by {escape(v.created_by)}" if v.created_by else "")
                for v in versions
            ],
        ),
        ("trainer", [escape(v.trainer) or "–" for v in versions]),
        ("code version", [f"<code>{escape(v.code_version)}</code>" if v.code_version else "–" for v in versions]),
        ("dataset", [f'<span class="uri">{escape(v.dataset_uri)}</span>' if v.dataset_uri else "–" for v in versions]),
        ("dataset sha256", [_hash(v.dataset_sha256) for v in versions]),
        ("dataset rows", [f"{v.dataset_rows:,}" if v.dataset_rows else "–" for v in versions]),
        ("data from … to", [_range(v.dataset_start_ms, v.dataset_end_ms) for v in versions]),
        ("hyperparameters", [_mapping(v.hyperparameters) for v in versions]),
        ("train metrics", [_mapping(v.train_metrics) for v in versions]),
        ("holdout metrics", [_mapping(v.holdout_metrics) for v in versions]),
        ("parent", [f"v{escape(v.parent_version)}" if v.parent_version else "–" for v in versions]),
        ("retrain request", [_request(v.request_id, requests) for v in versions]),
        ("evidence", [_evidence(v.evidence) for v in versions]),
        ("artifact sha256", [_hash(v.artifact_sha256) for v in versions]),
    ]
    head = "".join(
        f'<th><span class="swatch" style="background:{colors.get(v.version, PALETTE[-1])}"></span>'
        f"v{escape(v.version)}</th>"
        for v in versions
    )
    rows = "".join(
        f'<tr><th scope="row">{escape(name)}</th>{"".join(f"<td>{c}</td>" for c in cells)}</tr>'
        for name, cells in fields
    )
    history = ""
    if data.champion_history:
        history = (
            '<p class="intro">Champions, oldest first (rollbacks walk back along this list): '
            + " → ".join(f"v{escape(v)}" for v in data.champion_history)
            + "</p>"
        )
    more = f'<p class="intro">{hidden} older version(s) not shown.</p>' if hidden > 0 else ""
    body = (
        f'{history}<div class="scroll"><table class="lineage"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>{more}"
    )
    return _section("lineage", "Lineage", intro, body, VERSIONS if data.lineage_source == "warehouse mirror" else ())


def _hash(value: str) -> str:
    return f'<code title="{escape(value)}">{escape(value[:12])}…</code>' if value else "–"


def _range(start: int | None, end: int | None) -> str:
    if start is None and end is None:
        return "–"
    return (
        f"{format_time(start)[:16] if start is not None else '…'} – {format_time(end)[:16] if end is not None else '…'}"
    )


def _mapping(values: Mapping[str, Any]) -> str:
    if not values:
        return "–"
    return "<br>".join(f"{escape(str(k))} = {escape(_mapping_value(v))}" for k, v in sorted(values.items()))


def _mapping_value(value: Any) -> str:
    if isinstance(value, float):
        return format_number(value)
    return value if isinstance(value, str) else json.dumps(value)


def _request(request_id: str | None, requests: Mapping[str, Mapping[str, Any]]) -> str:
    if not request_id:
        return "–"
    r = requests.get(request_id)
    if r is None:
        return f"<code>{escape(request_id)}</code>"
    return f"<code>{escape(request_id)}</code><br>{escape(str(r['reason']))}, {escape(str(r['status']))}"


def _evidence(evidence: Sequence[Evidence]) -> str:
    if not evidence:
        return "–"
    items = "".join(
        f"<li>{escape(e.metric)}({escape(_feature_label(e.feature))}) = {escape(format_number(e.value))} &gt; "
        f"{escape(format_number(e.threshold))} in "
        f"{format_time(e.window_start)[11:16]}–{format_time(e.window_end)[11:16]}</li>"
        for e in evidence
    )
    return f'<ul class="evidence">{items}</ul>'


_CSS = """
:root{--ink:#0f172a;--muted:#64748b;--line:#e2e8f0;--bg:#f8fafc;--card:#fff;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1040px;margin:0 auto;padding:24px 20px 40px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 6px}
header .meta,.intro,.source,footer{color:var(--muted)}
.source{font-size:12px;margin:6px 0 0}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:16px 18px;margin:16px 0}
section.notes{background:#fffbeb;border-color:#fcd34d}
section.notes p{margin:4px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px}
.card .label{color:var(--muted);font-size:12px}
.card .value{font-size:22px;font-weight:650}
.card .sub{color:var(--muted);font-size:12px}
figure{margin:8px 0 0}
figcaption{font-weight:600;font-size:13px;margin-bottom:2px}
.grid{display:grid;gap:12px}
.grid.cols-2{grid-template-columns:repeat(2,minmax(0,1fr))}
.grid.cols-3{grid-template-columns:repeat(3,minmax(0,1fr))}
svg.chart{display:block;height:auto;font-family:inherit}
svg .grid{stroke:#eef2f7}
svg .axis{stroke:#94a3b8}
svg .tick{stroke:#94a3b8}
svg .tick-label,svg .row-label,svg .unit,svg .legend text{fill:#475569}
svg .group-rule{stroke:#cbd5e1}
svg .threshold line{stroke:#dc2626;stroke-dasharray:5 4;stroke-width:1.1}
svg .threshold text{fill:#dc2626;font-size:10px}
svg .cell.flagged,svg .flag-sample{stroke:#111827;stroke-width:1.3}
svg .mark.point{stroke:#fff;stroke-width:.6}
.legend{display:flex;flex-wrap:wrap;gap:6px;margin:6px 0}
.legend .key{font:inherit;font-size:12px;border:1px solid var(--line);border-radius:999px;background:#fff;
  padding:2px 10px;display:inline-flex;align-items:center;gap:6px}
.legend button.key{cursor:pointer}
.legend .key.off{opacity:.4;text-decoration:line-through}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;vertical-align:middle;margin-right:4px}
.empty{border:1px dashed #cbd5e1;border-radius:8px;padding:14px 16px;color:#334155;background:#f8fafc}
table{border-collapse:collapse;width:100%;font-size:13px;margin-top:10px}
th,td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
thead th{color:var(--muted);font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
#timeline td:first-child{white-space:nowrap}
table.lineage th[scope=row]{color:var(--muted);font-weight:600;white-space:nowrap}
.scroll{overflow-x:auto}
.uri{word-break:break-all}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
ul.evidence{margin:0;padding-left:16px}
.pill{display:inline-block;border-radius:999px;padding:0 8px;font-size:12px;background:#e2e8f0}
.pill.retrain{background:#fef3c7}.pill.registered{background:#ede9fe}.pill.promoted{background:#dcfce7}
.pill.rollback,.pill.rejected,.pill.alert-critical{background:#fee2e2}.pill.alert-warning{background:#ffedd5}
.pill.traffic{background:#e0f2fe}.pill.alias{background:#dbeafe}
footer{font-size:12px;margin-top:18px}
@media (max-width:760px){.grid.cols-2,.grid.cols-3{grid-template-columns:1fr}}
"""

# Legend buttons hide and show a version's series in their section; data-ready tells scripts the page is done.
_JS = """
(function () {
  document.querySelectorAll('button[data-toggle]').forEach(function (button) {
    button.addEventListener('click', function () {
      var off = button.classList.toggle('off');
      var section = button.closest('section');
      var key = CSS.escape(button.getAttribute('data-toggle'));
      section.querySelectorAll('[data-series="' + key + '"]').forEach(function (g) {
        g.style.display = off ? 'none' : '';
      });
    });
  });
  document.body.setAttribute('data-marks', String(document.querySelectorAll('svg .mark').length));
  document.body.setAttribute('data-ready', 'true');
})();
"""
