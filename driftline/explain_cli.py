"""``driftline explain``: where a drifted window's drift comes from.

Reads the warehouse (``root_causes`` and the per-segment ``drift_metrics``
rows, ``driftline.streams.warehouse.root_causes``) and prints the features ranked by
effect size, the segments the drift concentrates in with their share of the
window, and each segment's drifted features.

Exit codes: 0 printed, 1 no drifted window with a root cause (or the warehouse
could not be read), 2 bad input; the reason is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from driftline.redaction import redact

if TYPE_CHECKING:
    from driftline.settings import Settings
    from driftline.streams.warehouse.root_causes import WindowRootCause


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    explain = subparsers.add_parser(
        "explain",
        help="where a drifted window's drift comes from: features by effect, the segments it is in",
        description="The root cause of one drifted window of a model (the latest without --window): its "
        "features ranked by standardized effect size, the segments (policy monitoring.segments) the drift "
        "concentrates in with their share of the window, and each segment's drifted features.",
    )
    explain.add_argument("--model", required=True, help="model id")
    explain.add_argument("--version", help="model version (default: any)")
    explain.add_argument(
        "--window", help="the window's start: epoch milliseconds or ISO 8601, UTC (default: the latest drifted)"
    )
    explain.add_argument("--json", action="store_true", help="print the root cause as JSON")
    explain.set_defaults(handler=_explain)


def parse_window(text: str) -> int:
    """A window start as epoch milliseconds, from epoch milliseconds or ISO 8601 (UTC unless it says).

    >>> parse_window("1700000000000"), parse_window("2023-11-14T22:13:20"), parse_window("2023-11-14T23:13:20+01:00")
    (1700000000000, 1700000000000, 1700000000000)
    """
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--window {text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_text(w: WindowRootCause) -> str:
    """The root cause of one window for people, most telling first.

    >>> from driftline.streams.core.explain import FeatureEffect, RootCause, SegmentDrift
    >>> from driftline.streams.warehouse.root_causes import SegmentDriftSummary, WindowRootCause
    >>> cause = RootCause(2_000, [FeatureEffect("income", "numeric", 0.8, -0.8, 0.0)],
    ...                   [SegmentDrift("channel=mobile", 0.5, 1_000, 1.6, 0.0,
    ...                                 [FeatureEffect("income", "numeric", 1.6, -1.6, 0.0)])],
    ...                   "drift is in channel=mobile (50% of the window): income −1.6σ")
    >>> print(render_text(WindowRootCause("credit", "2", 0, 60_000, 2_000, cause,
    ...                                   [SegmentDriftSummary("channel=mobile", 1_000, ["income"], 4)])))
    credit v2, window 1970-01-01 00:00:00 UTC to 1970-01-01 00:01:00 UTC (window_start 0), 2000 events
    drift is in channel=mobile (50% of the window): income −1.6σ
    <BLANKLINE>
    segments where the drift concentrates (effect in the segment vs the rest of the window):
      1. channel=mobile        50% of the window (1000 events)  1.60 vs 0.00  income −1.6σ
    <BLANKLINE>
    features by effect size (reference standard deviations; Cohen's w for categories):
      1. income               0.80  income −0.8σ
    <BLANKLINE>
    per-segment drift (drift_metrics rows of each segment):
      channel=mobile        1000 events  drifted: income
    """
    c = w.cause
    lines = [
        f"{w.model_id} v{w.model_version}, window {_iso(w.window_start)} to {_iso(w.window_end)} "
        f"(window_start {w.window_start}), {w.n_current} events",
        c.summary,
        "",
    ]
    if c.segments:
        lines.append("segments where the drift concentrates (effect in the segment vs the rest of the window):")
        for i, s in enumerate(c.segments, 1):
            moved = ", ".join(e.describe() for e in s.features[:3])
            lines.append(
                f"  {i}. {s.segment:<20} {round(100 * s.share):>3}% of the window ({s.n} events)  "
                f"{s.effect:.2f} vs {s.rest_effect:.2f}  {moved}".rstrip()
            )
    else:
        lines.append("segments where the drift concentrates: none stands out (or no segments are configured)")
    lines += ["", "features by effect size (reference standard deviations; Cohen's w for categories):"]
    for i, e in enumerate(c.features[:10], 1):
        lines.append(f"  {i}. {e.feature:<20} {e.effect:.2f}  {e.describe()}")
    if w.segments:
        lines += ["", "per-segment drift (drift_metrics rows of each segment):"]
        for d in w.segments:
            drifted = ", ".join(d.drifted_features) or "-"
            lines.append(f"  {d.segment:<20} {d.n_current:>5} events  drifted: {drifted}")
    return "\n".join(lines)


def _explain(args: argparse.Namespace, settings: Settings) -> int:
    from driftline.streams.warehouse import Warehouse, WarehouseError
    from driftline.streams.warehouse.root_causes import root_causes

    try:
        window = None if args.window is None else parse_window(args.window)
    except ValueError as exc:
        print(f"driftline explain: {exc}", file=sys.stderr)
        return 2
    try:
        with Warehouse.from_settings(settings) as warehouse:
            found = root_causes(warehouse, args.model, version=args.version, window_start=window)
    except (WarehouseError, ValueError, KeyError) as exc:
        print(f"driftline explain: {redact(exc)}", file=sys.stderr)
        return 1
    if not found:
        which = f" starting at {window}" if window is not None else ""
        version = f" v{args.version}" if args.version else ""
        print(f"driftline explain: no drifted window{which} of {args.model}{version} has a root cause", file=sys.stderr)
        return 1
    print(json.dumps(found[0].to_dict(), indent=2, ensure_ascii=False) if args.json else render_text(found[0]))
    return 0
