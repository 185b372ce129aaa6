"""The HTML report of one model: drift, data quality, performance, latency, DLQ, retraining and lineage in one file.

The report is a single self-contained HTML file: styles, a few lines of
script and every chart (inline SVG drawn by ``driftline.report_svg``) are in
it, so it opens offline, attaches to an email and archives as is.

One concept per module:

- :mod:`~driftline.report.queries` collects (the I/O: cookbook queries, registry);
- :mod:`~driftline.report.versions` is the shell's record of a model version;
- :mod:`~driftline.report.model` shapes the data into what is drawn (pure);
- :mod:`~driftline.report.page` renders the HTML (pure), with :mod:`~driftline.report.style`;
- :mod:`~driftline.report.document` writes the file.
"""

from driftline.report.document import render_report, write_report
from driftline.report.model import TimelineEvent, chart_markers, dlq_bars, drift_heatmap, timeline
from driftline.report.page import render
from driftline.report.queries import ReportData, collect
from driftline.report.versions import VersionInfo

__all__ = [
    "ReportData",
    "TimelineEvent",
    "VersionInfo",
    "chart_markers",
    "collect",
    "dlq_bars",
    "drift_heatmap",
    "render",
    "render_report",
    "timeline",
    "write_report",
]
