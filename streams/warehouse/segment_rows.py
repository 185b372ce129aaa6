"""The warehouse rows of where a window's drift comes from: per-segment ``drift_metrics`` and ``root_causes``.

The monitor measures them (``WindowOutcome.segment_drift`` and ``.root_cause``,
see ``driftline.streams.core.explain``); the sinks write these rows with the
window's other rows, before its marker (``window_profiles``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from driftline.streams.core.outcomes import WindowOutcome
from driftline.streams.warehouse.rows import Columns, DriftMetricRow

ROOT_CAUSES = "root_causes"


def segment_drift_rows(outcome: WindowOutcome, computed_at: int) -> list[DriftMetricRow]:
    """The ``drift_metrics`` rows of a window's segments (column ``segment`` = ``key=value``).

    >>> import numpy as np
    >>> from driftline.streams.core.explain import SegmentWindowDrift
    >>> from driftline.streams.core.reference import ReferenceProfile
    >>> from driftline.streams.core.window_profile import WindowProfile
    >>> from driftline.streams.records import FeatureDrift
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> o = WindowOutcome("m", "1", 0, 60_000, 900, ref.n, [], WindowProfile.empty(ref, seed=0), {}, 0, [],
    ...                   segment_drift=[SegmentWindowDrift("channel=web", 400, [FeatureDrift("x", "psi", 0.3, None,
    ...                                                                                      0.2, True)])])
    >>> [(r.segment, r.feature, r.metric, r.n_current, r.drifted) for r in segment_drift_rows(o, 61_000)]
    [('channel=web', 'x', 'psi', 400, True)]
    """
    return [
        DriftMetricRow(
            outcome.model_id,
            outcome.model_version,
            m.feature,
            m.metric,
            outcome.window_start,
            outcome.window_end,
            m.value,
            m.p_value,
            m.threshold,
            m.drifted,
            outcome.n_reference,
            seg.n,
            computed_at,
            m.kind,
            seg.segment,
        )
        for seg in outcome.segment_drift
        for m in seg.drift
    ]


def root_cause_columns(outcomes: Sequence[tuple[WindowOutcome, int]]) -> Columns:
    """Columns of ``root_causes``: one row per (outcome, computed_at) whose window has a root cause.

    >>> import numpy as np
    >>> from driftline.streams.core.explain import FeatureEffect, RootCause, SegmentDrift
    >>> from driftline.streams.core.reference import ReferenceProfile
    >>> from driftline.streams.core.window_profile import WindowProfile
    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> cause = RootCause(900, [FeatureEffect("x", "numeric", 0.8, 0.8, 0.0)],
    ...                   [SegmentDrift("channel=web", 0.4, 360, 1.1, 0.1, [])], "drift is in channel=web")
    >>> o = WindowOutcome("m", "1", 0, 60_000, 900, ref.n, [], WindowProfile.empty(ref, seed=0), {}, 0, [],
    ...                   root_cause=cause)
    >>> c = root_cause_columns([(o, 61_000)])
    >>> c["top_feature"], c["top_segment"], c["top_segment_share"], json.loads(c["root_cause"][0])["format"]
    (['x'], ['channel=web'], [0.4], 1)
    """
    rows = [(o, o.root_cause, at) for o, at in outcomes if o.root_cause is not None]
    return {
        "model_id": [o.model_id for o, _, _ in rows],
        "model_version": [o.model_version for o, _, _ in rows],
        "window_start": [o.window_start for o, _, _ in rows],
        "window_end": [o.window_end for o, _, _ in rows],
        "n_current": [o.n_current for o, _, _ in rows],
        "top_feature": [c.features[0].feature if c.features else "" for _, c, _ in rows],
        "top_effect": [float(c.features[0].effect) if c.features else 0.0 for _, c, _ in rows],
        "top_segment": [c.segments[0].segment if c.segments else "" for _, c, _ in rows],
        "top_segment_share": [float(c.segments[0].share) if c.segments else 0.0 for _, c, _ in rows],
        "summary": [c.summary for _, c, _ in rows],
        "root_cause": [json.dumps(c.to_dict(), separators=(",", ":")) for _, c, _ in rows],
        "computed_at": [at for _, _, at in rows],
    }
