"""The report's root-cause section: where the drift of the latest drifted windows comes from.

Kept apart from ``driftline.report`` (which calls :func:`collect_root_causes`
and :func:`root_cause_section`): it reads ``root_causes`` and the per-segment
``drift_metrics`` rows through ``driftline.streams.warehouse.root_causes``, the
queries of ``driftline explain``, so the report and the command agree.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from html import escape
from typing import TYPE_CHECKING

from driftline.streams.warehouse.root_causes import WindowRootCause, root_causes

if TYPE_CHECKING:
    from driftline.streams.warehouse import Warehouse

TABLES = ("root_causes", "drift_metrics")
WINDOWS_SHOWN = 5


def collect_root_causes(
    warehouse: Warehouse, model_id: str, present: Collection[str], *, limit: int = WINDOWS_SHOWN
) -> list[WindowRootCause] | None:
    """The root causes of the model's latest ``limit`` drifted windows; None when the warehouse has no
    ``root_causes`` table (migrations before 0008)."""
    if not all(t in present for t in TABLES):
        return None
    return root_causes(warehouse, model_id, limit=limit)


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def root_cause_section(causes: Sequence[WindowRootCause] | None) -> str:
    """The section's HTML: per drifted window, its summary, the segments by concentration and the
    features by effect size.

    >>> from driftline.streams.core.explain import FeatureEffect, RootCause, SegmentDrift
    >>> cause = RootCause(2_000, [FeatureEffect("income", "numeric", 0.8, -0.8, 0.0)],
    ...                   [SegmentDrift("channel=mobile", 0.5, 1_000, 1.6, 0.0, [])], "drift is in channel=mobile")
    >>> html = root_cause_section([WindowRootCause("m", "2", 0, 60_000, 2_000, cause)])
    >>> "channel=mobile" in html and html.index("channel=mobile") < html.index("income")
    True
    >>> "no table <code>root_causes</code>" in root_cause_section(None)
    True
    """
    intro = (
        "Where the drift of the latest drifted windows comes from: the segments (policy "
        "<code>monitoring.segments</code>) it concentrates in, with their share of the window, and the "
        "features ranked by standardized effect size (reference standard deviations; Cohen's w for "
        "categories). <code>driftline explain --model M</code> prints the same."
    )
    if causes is None:
        body = (
            '<div class="empty"><strong>Root causes are unavailable.</strong> The warehouse has no table '
            "<code>root_causes</code>: apply the warehouse migrations.</div>"
        )
    elif not causes:
        body = (
            '<div class="empty"><strong>No drifted window has a root cause yet.</strong> The worker writes one '
            "for every window with a drifted metric.</div>"
        )
    else:
        body = "".join(_window(w) for w in causes)
    return (
        f'<section id="root-cause"><h2>Where the drift comes from</h2><p class="intro">{intro}</p>{body}'
        '<p class="source">Tables: <code>root_causes</code>, <code>drift_metrics</code> (segment rows); '
        "queries: <code>driftline.streams.warehouse.root_causes</code></p></section>"
    )


def _window(w: WindowRootCause) -> str:
    c = w.cause
    segments = "".join(
        f'<tr><td><code>{escape(s.segment)}</code></td><td class="num">{round(100 * s.share)}%</td>'
        f'<td class="num">{s.n}</td><td class="num">{s.effect:.2f}</td><td class="num">{s.rest_effect:.2f}</td>'
        f"<td>{escape(', '.join(e.describe() for e in s.features[:3]))}</td></tr>"
        for s in c.segments
    )
    features = "".join(
        f'<tr><td>{escape(e.feature)}</td><td class="num">{e.effect:.2f}</td><td>{escape(e.describe())}</td></tr>'
        for e in c.features[:8]
    )
    segment_table = (
        "<table><thead><tr><th>segment</th><th>share</th><th>events</th><th>effect</th><th>rest</th>"
        f"<th>what moved there</th></tr></thead><tbody>{segments}</tbody></table>"
        if segments
        else "<p>No segment stands out: the drift is spread across the window (or no segments are configured).</p>"
    )
    return (
        f"<h3>v{escape(w.model_version)}, window {_time(w.window_start)} UTC ({w.n_current} events)</h3>"
        f"<p><strong>{escape(c.summary)}</strong></p>{segment_table}"
        "<table><thead><tr><th>feature</th><th>effect</th><th>change</th></tr></thead>"
        f"<tbody>{features}</tbody></table>"
    )
