"""The warehouse's answers to "where does this drift come from?": the SELECTs of ``driftline explain``
and of the report's root-cause section.

They read ``root_causes`` (one row per drifted window, written by the worker)
and the per-segment rows of ``drift_metrics`` (``segment != ''``). Reading
only: the rows are written by ``driftline.streams.warehouse.segment_rows`` through the sinks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from driftline.streams.core.explain import RootCause

if TYPE_CHECKING:
    from driftline.streams.warehouse.client import Warehouse

ANY_WINDOW = -1

_ROOT_CAUSES = """
SELECT
    model_version,
    toUnixTimestamp64Milli(window_start) AS start_ms,
    toUnixTimestamp64Milli(window_end) AS end_ms,
    n_current,
    root_cause
FROM root_causes FINAL
WHERE model_id = {model_id:String}
  AND ({version:String} = '' OR model_version = {version:String})
  AND ({window_start:Int64} = -1 OR toUnixTimestamp64Milli(window_start) = {window_start:Int64})
ORDER BY window_start DESC, toUInt64OrZero(model_version) DESC
LIMIT {limit:UInt32}
"""

_SEGMENTS = """
SELECT
    segment,
    max(n_current) AS n_events,
    arraySort(groupUniqArrayIf(feature, drifted = 1 AND kind = 'drift')) AS drifted_features,
    countIf(drifted = 1) AS drifted_metrics
FROM drift_metrics FINAL
WHERE model_id = {model_id:String}
  AND model_version = {version:String}
  AND toUnixTimestamp64Milli(window_start) = {window_start:Int64}
  AND segment != ''
GROUP BY segment
ORDER BY length(drifted_features) DESC, n_events DESC, segment
"""


@dataclass(frozen=True)
class SegmentDriftSummary:
    """One segment's ``drift_metrics`` rows in one window: its events and the features that drifted there.

    >>> SegmentDriftSummary("channel=mobile", 1_000, ["income"], 3).segment
    'channel=mobile'
    """

    segment: str
    n_current: int
    drifted_features: list[str]
    drifted_metrics: int


@dataclass(frozen=True)
class WindowRootCause:
    """The stored root cause of one drifted window, with the drift of each of its segments.

    >>> w = WindowRootCause("m", "2", 0, 60_000, 2_000, RootCause(2_000, [], [], "no feature moved"))
    >>> w.cause.summary, w.segments
    ('no feature moved', [])
    """

    model_id: str
    model_version: str
    window_start: int
    window_end: int
    n_current: int
    cause: RootCause
    segments: list[SegmentDriftSummary] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_version": self.model_version,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "n_current": self.n_current,
            "root_cause": self.cause.to_dict(),
            "segment_drift": [vars(s) for s in self.segments],
        }


def root_causes(
    warehouse: Warehouse,
    model_id: str,
    *,
    version: str | None = None,
    window_start: int | None = None,
    limit: int = 1,
    with_segments: bool = True,
) -> list[WindowRootCause]:
    """The root causes of a model's drifted windows, latest first (of ``version``, else of any version;
    only the window starting at ``window_start``, epoch ms, when given), each with its segments' drift."""
    rows = warehouse.query_rows(
        _ROOT_CAUSES,
        {
            "model_id": model_id,
            "version": version or "",
            "window_start": ANY_WINDOW if window_start is None else int(window_start),
            "limit": limit,
        },
    )
    out = []
    for r in rows:
        start = int(r["start_ms"])
        segments = segment_drift(warehouse, model_id, r["model_version"], start) if with_segments else []
        out.append(
            WindowRootCause(
                model_id,
                r["model_version"],
                start,
                int(r["end_ms"]),
                int(r["n_current"]),
                RootCause.from_dict(json.loads(r["root_cause"])),
                segments,
            )
        )
    return out


def segment_drift(warehouse: Warehouse, model_id: str, version: str, window_start: int) -> list[SegmentDriftSummary]:
    """Each segment's drift in one window: the segments with the most drifted features first."""
    rows = warehouse.query_rows(_SEGMENTS, {"model_id": model_id, "version": version, "window_start": window_start})
    return [
        SegmentDriftSummary(r["segment"], int(r["n_events"]), list(r["drifted_features"]), int(r["drifted_metrics"]))
        for r in rows
    ]
