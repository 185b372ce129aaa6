"""The report's view model: pure shaping of the collected data into what the charts and tables draw.

No I/O: every function takes :class:`~driftline.report.queries.ReportData` or an Arrow table and
returns numbers, series, heatmaps and timeline events for :mod:`driftline.report.page`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftline.report.columns import _epoch_ms, _floats, _ms, _rows, _strings, _version_key
from driftline.report.queries import ReportData
from driftline.report_svg import (
    DASHES,
    PALETTE,
    Band,
    Bars,
    Domain,
    Heatmap,
    Marker,
    Series,
    format_number,
    format_time,
)
from driftline.streams.core import drift
from driftline.streams.core.multivariate import CORRELATION_CHANGE, MULTIVARIATE_FEATURE, RECONSTRUCTION_ERROR
from driftline.streams.core.sequential import METRIC as TREND_METRIC
from driftline.streams.records import PREDICTION_FEATURE

# metrics in a sensible reading order; others follow alphabetically
METRIC_ORDER = ("accuracy", "roc_auc", "f1", "precision", "recall", "log_loss", "brier", "mae", "rmse", "r2")
# the engine's metrics in its own order, then the other alarm classes' rows
DRIFT_METRIC_ORDER = (*drift.METRICS, RECONSTRUCTION_ERROR, CORRELATION_CHANGE, TREND_METRIC)
MAX_HEAT_COLUMNS = 240  # beyond this many windows, neighbouring windows share a heatmap column
MAX_DLQ_BUCKETS = 60
_DLQ_BUCKETS_MIN = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)


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
        key=lambda p: (_version_key(p[0]), p[1] in (PREDICTION_FEATURE, MULTIVARIATE_FEATURE), p[1]),
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
    return {PREDICTION_FEATURE: "prediction (output)", MULTIVARIATE_FEATURE: "all numeric (multivariate)"}.get(
        feature, feature
    )


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


def estimate_series(
    table: pa.Table, colors: Mapping[str, str], *, where: np.ndarray | None = None
) -> tuple[list[Series], list[Band]]:
    """Per version: the realized metric (solid), the label-free estimate (dashed) and the estimate's 95% band.

    ``table`` holds rows of the ``estimated_vs_realized`` query; the realized
    line has gaps where labels have not arrived yet.

    >>> import pyarrow as pa
    >>> t = pa.table({"model_version": ["1", "1"], "window_start": pa.array([0, 60_000], pa.timestamp("ms")),
    ...     "estimated": [0.8, 0.7], "estimated_lower": [0.77, 0.67], "estimated_upper": [0.83, 0.73],
    ...     "realized": [0.81, None]})
    >>> lines, bands = estimate_series(t, {"1": "#000"})
    >>> [(s.label, s.dash, s.ys.tolist()) for s in lines], bands[0].hi.tolist()
    ([('v1 realized', '', [0.81, nan]), ('v1 estimated', '7 4', [0.8, 0.7])], [0.83, 0.73])
    """
    versions = _strings(table.column("model_version"))
    starts = _epoch_ms(table.column("window_start"))
    realized, estimated = _floats(table.column("realized")), _floats(table.column("estimated"))
    lower, upper = _floats(table.column("estimated_lower")), _floats(table.column("estimated_upper"))
    keep = np.ones(len(versions), dtype=bool) if where is None else where
    lines: list[Series] = []
    bands: list[Band] = []
    for v in sorted({str(x) for x in versions[keep]}, key=_version_key):
        mask = keep & (versions == v)
        color = colors.get(v, PALETTE[-1])
        lines.append(Series(f"v{v}", f"v{v} realized", starts[mask], realized[mask], color))
        lines.append(Series(f"v{v}", f"v{v} estimated", starts[mask], estimated[mask], color, DASHES[1]))
        bands.append(Band(f"v{v}", starts[mask], lower[mask], upper[mask], color))
    return lines, bands


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
