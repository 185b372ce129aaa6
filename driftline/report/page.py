"""The report's HTML: one self-contained page, sections in reading order, charts as inline SVG.

Pure: :func:`render` turns :class:`~driftline.report.queries.ReportData` into a document with no
external resources (styles and script from :mod:`driftline.report.style`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from html import escape
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import driftline
from driftline.report.columns import _epoch_ms, _floats, _ms, _rows, _strings, _version_key
from driftline.report.model import (
    DRIFT_METRIC_ORDER,
    METRIC_ORDER,
    TimelineEvent,
    _feature_label,
    _metric_rank,
    chart_markers,
    dlq_bars,
    drift_heatmap,
    estimate_series,
    event_domain,
    series_by_version,
    timeline,
    version_colors,
)
from driftline.report.queries import (
    ALERTS,
    DATA_QUALITY,
    DLQ,
    DRIFT,
    ESTIMATES,
    LATENCY,
    MULTIVARIATE,
    PERFORMANCE,
    PREDICTION,
    RETRAINS,
    TREND,
    VERSIONS,
    ReportData,
)
from driftline.report.root_cause import root_cause_section
from driftline.report.style import CSS, SCRIPT
from driftline.report_svg import PALETTE, Domain, Marker, bar_chart, format_number, format_time, heatmap, line_chart
from driftline.streams.core.sequential import METRIC as TREND_METRIC
from driftline.streams.records import PREDICTION_FEATURE, Evidence

PERCENTILES = (("p50", "p50"), ("p95", "p95"), ("p99", "p99"))
MAX_LINEAGE_VERSIONS = 8
MAX_QUALITY_ROWS = 50  # data-quality alarms listed, newest first

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
        _data_quality_section(data, colors),
        _multivariate_section(data, domain, markers, colors),
        _trend_section(data, domain, markers, colors),
        _prediction_section(data, domain, markers, colors),
        root_cause_section(data.root_causes),
        _performance_section(data, domain, markers, colors),
        _estimates_section(data, domain, markers, colors),
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
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main><header><h1>{escape(title)}</h1>"
        f'<p class="meta">Generated {format_time(data.generated_at_ms)} UTC from {escape(data.warehouse)}'
        + (f" and the {escape(data.lineage_source)}" if data.lineage_source else "")
        + ". Times are UTC; the charts' axis is event time (the windows), the DLQ's is arrival time.</p></header>"
        + _notes(data)
        + "".join(sections)
        + f"<footer>driftline {escape(driftline.__version__)} · each chart names the query of "
        "<code>schemas/clickhouse/queries/</code> that gives its numbers.</footer>"
        f"</main><script>{SCRIPT}</script></body></html>\n"
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
    if data.data_quality is not None:
        features = {str(f) for f in pc.unique(data.data_quality.column("feature")).to_pylist()}
        cards.append(("Data-quality alarms", str(data.data_quality.num_rows), ", ".join(sorted(features)) or "none"))
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
    by: str = "metric",
    columns: int = 2,
) -> str:
    """One chart per metric (or other ``by`` column) of ``table`` under the versions' legend, or why there is none yet.

    ``chart(table, domain, metric, where)`` draws one metric; ``where`` selects its rows of ``table``.
    """
    if table is None:
        return _empty(f"{what} is unavailable.", f"The warehouse has no <code>{source}</code> table.")
    if not table.num_rows or domain is None:
        return _empty(*nothing_yet)
    metric_col = _strings(table.column(by))
    metrics = sorted({str(m) for m in metric_col.tolist()}, key=lambda m: _metric_rank(m, order))
    charts = [(_feature_label(metric), chart(table, domain, metric, metric_col == metric)) for metric in metrics]
    return _legend(colors, _versions_in(table)) + _small_multiples(charts, columns)


def _prediction_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "The distribution of the model's output against its reference: the earliest warning when labels "
        "arrive late. One chart per metric, the dashed line is the metric's threshold."
    )

    table = data.prediction_drift
    if table is not None:  # the slow-drift evidence has its own section, on a log axis
        table = table.filter(pc.not_equal(table.column("metric"), TREND_METRIC))
    body = _charts_per_metric(
        table,
        domain,
        colors,
        what="Prediction drift",
        source="drift_metrics",
        order=DRIFT_METRIC_ORDER,
        chart=_metric_against_threshold("prediction", colors, markers),
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


def _data_quality_section(data: ReportData, colors: Mapping[str, str]) -> str:
    intro = (
        "Missing values, categories the reference never saw and values outside the reference's range: an alarm "
        "is a rate above the reference's own by more than its threshold. They are an alarm class of their own "
        "(no distance threshold hides them) and usually point at the pipeline rather than the world; the "
        "policy's <code>data_quality</code> trigger can ask for a retrain on them. Newest first."
    )
    table = data.data_quality
    if table is None:
        body = _empty("Data-quality alarms are unavailable.", "The warehouse has no <code>drift_metrics</code> table.")
    elif not table.num_rows:
        body = _empty(
            "No data-quality alarms.",
            "Every window's missing, new-category and out-of-range rates stayed within their thresholds "
            "(rows of kind <code>data_quality</code> in <code>drift_metrics</code>).",
        )
    else:
        rows = table.slice(0, MAX_QUALITY_ROWS).to_pylist()
        features = sorted({str(r["feature"]) for r in table.select(["feature"]).to_pylist()})
        cells = "".join(
            f'<tr><td><span class="swatch" style="background:{colors.get(str(r["model_version"]), PALETTE[-1])}">'
            f"</span>v{escape(str(r['model_version']))}</td><td>{escape(_feature_label(str(r['feature'])))}</td>"
            f"<td><code>{escape(str(r['metric']))}</code></td>"
            f"<td>{format_time(_ms(r['window_start']))[:16]}–{format_time(_ms(r['window_end']))[11:16]}</td>"
            f'<td class="num">{escape(format_number(r["value"]))}</td>'
            f'<td class="num">{escape(format_number(r["threshold"]))}</td>'
            f'<td class="num">{r["n_current"]}</td></tr>'
            for r in rows
        )
        more = (
            f'<p class="intro">{table.num_rows - MAX_QUALITY_ROWS} older alarm(s) not shown.</p>'
            if table.num_rows > MAX_QUALITY_ROWS
            else ""
        )
        body = (
            f'<p class="intro"><strong>{table.num_rows} alarm(s)</strong> on '
            f"{escape(', '.join(_feature_label(f) for f in features))}.</p>"
            '<table class="quality"><thead><tr><th>version</th><th>feature</th><th>metric</th><th>window (UTC)</th>'
            "<th>rate</th><th>threshold</th><th>events</th></tr></thead>"
            f"<tbody>{cells}</tbody></table>{more}"
        )
    return _section("data-quality", "Data quality", intro, body, DATA_QUALITY)


def _multivariate_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "All numeric features together (<code>__multivariate__</code>): the reconstruction error of the window's "
        "standardized rows through the reference's PCA, and the largest change of a pairwise correlation. They see "
        "a change in how features relate that leaves each feature's own distribution unchanged. The dashed line "
        "is the threshold for the window's size; a point above it is flagged."
    )

    body = _charts_per_metric(
        data.multivariate,
        domain,
        colors,
        what="Multivariate drift",
        source="drift_metrics",
        order=DRIFT_METRIC_ORDER,
        chart=_metric_against_threshold("multivariate", colors, markers),
        nothing_yet=(
            "No multivariate statistics.",
            "They need a reference profile with a multivariate model of its numeric features (built by "
            "<code>driftline registry register</code> and the retrainer from a dataset with two or more numeric "
            "columns); older profiles get none.",
        ),
    )
    return _section("multivariate", "Multivariate drift", intro, body, MULTIVARIATE)


def _trend_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "Evidence of a slow trend, accumulated across a version's windows per numeric feature and for the model "
        "output: an anytime-valid e-value that stays near 1 or below without a trend and grows by factors with "
        "one. On a logarithmic axis; the dashed line is the alarm level (k / alpha for k streams), whose "
        "false-alarm guarantee holds over any number of windows."
    )

    def chart(table: pa.Table, domain: Domain, feature: str, where: np.ndarray) -> str:
        return line_chart(
            series_by_version(table, "value", colors, where=where),
            domain,
            title=f"trend evidence of {_feature_label(feature)}",
            unit="e-value",
            thresholds=_threshold_line(table, where, "alarm level"),
            markers=markers,
            marker_labels=False,
            y_include=[1.0],
            log_y=True,
            width=320,
            height=180,
        )

    body = _charts_per_metric(
        data.trend,
        domain,
        colors,
        what="Trend evidence",
        source="drift_metrics",
        order=(PREDICTION_FEATURE,),
        chart=chart,
        by="feature",
        columns=3,
        nothing_yet=(
            "No trend evidence yet.",
            "The worker accumulates it per numeric feature and for <code>__prediction__</code> from each closed "
            "window (rows <code>trend_evidence</code> in <code>drift_metrics</code>).",
        ),
    )
    return _section("trend", "Slow drift (trend evidence)", intro, body, TREND)


def _estimates_section(
    data: ReportData, domain: Domain | None, markers: Sequence[Marker], colors: Mapping[str, str]
) -> str:
    intro = (
        "For a binary classifier with a calibrated reference: each prediction window's performance estimated from "
        "its scores alone when the window closed (dashed, with its 95% band shaded), next to the performance "
        "realized on the same window's predictions once their labels arrived (solid), however late the labels "
        "came: graded from the raw predictions joined to their labels. Where the solid line stops, no label has "
        "arrived yet. The estimate follows covariate shift; under concept drift only the labels can tell "
        "(docs/ESTIMATION.md)."
    )

    def chart(table: pa.Table, domain: Domain, metric: str, where: np.ndarray) -> str:
        lines, bands = estimate_series(table, colors, where=where)
        return line_chart(
            lines,
            domain,
            title=f"{metric}: realized and estimated",
            bands=bands,
            markers=markers,
            marker_labels=False,
            width=470,
            height=190,
        )

    body = _charts_per_metric(
        data.estimates,
        domain,
        colors,
        what="Estimated performance",
        source="performance_metrics",
        order=METRIC_ORDER,
        chart=chart,
        nothing_yet=(
            "No label-free estimates.",
            "They are written for binary classifiers whose reference profile carries a score calibrator "
            "(fitted on labelled reference data), when each prediction window closes.",
        ),
    )
    return _section("estimates", "Estimated and realized performance", intro, body, ESTIMATES)


def _metric_against_threshold(
    what: str, colors: Mapping[str, str], markers: Sequence[Marker]
) -> Callable[[pa.Table, Domain, str, np.ndarray], str]:
    """A chart of one drift metric per version from 0 up, with its threshold as a dashed line."""

    def chart(table: pa.Table, domain: Domain, metric: str, where: np.ndarray) -> str:
        return line_chart(
            series_by_version(table, "value", colors, where=where),
            domain,
            title=f"{what} {metric}",
            thresholds=_threshold_line(table, where, "threshold"),
            markers=markers,
            marker_labels=False,
            y_include=[0.0],
            width=470,
            height=190,
        )

    return chart


def _threshold_line(table: pa.Table, where: np.ndarray, label: str) -> list[tuple[float, str]]:
    """The median threshold of the selected rows as one line (thresholds vary a little with window size)."""
    thresholds = _floats(table.column("threshold"))[where]
    finite = thresholds[np.isfinite(thresholds)]
    return [(float(np.median(finite)), label)] if finite.size else []


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
