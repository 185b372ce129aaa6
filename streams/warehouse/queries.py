"""The worker's reads of the warehouse: what it wrote before a restart, and what labels join to.

Every SELECT the streams worker runs against the tables it writes (``Sinks`` only writes).
Each read goes through ``retry``, so that the worker waits out a warehouse outage on a read
as it does on a write (it passes ``Sinks.retry``); by default a read is tried once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from driftline.streams.core.detectors import DETECTORS
from driftline.streams.core.outcomes import ERROR_FEATURE
from driftline.streams.records import FeatureDrift, LabelEvent, PredictionBatch
from driftline.streams.warehouse.client import Warehouse
from driftline.streams.warehouse.rows import N_LABELED

T = TypeVar("T")


class Retry(Protocol):
    """How a read is tried: ``retry(what, fn)`` returns ``fn()``, trying again as it sees fit."""

    def __call__(self, what: str, fn: Callable[[], T]) -> T: ...


def once(what: str, fn: Callable[[], T]) -> T:
    """Try a read once: its error, if any, is the caller's.

    >>> once("reading nothing", lambda: 42)
    42
    """
    return fn()


@dataclass
class WrittenWindow:
    """A window as the warehouse has it: what the trigger evaluator needs to pick up where it was.

    ``drift`` holds a prediction window's drift rows; ``performance`` the
    whole-population metrics of a label window; ``change_events`` one
    ``(detector, stream)`` pair per alarm.

    >>> WrittenWindow(0, 60_000, change_events=[("adwin", "score")]).change_events
    [('adwin', 'score')]
    """

    window_start: int
    window_end: int
    drift: list[FeatureDrift] = field(default_factory=list)
    performance: dict[str, float] | None = None
    n_labeled: int = 0
    change_events: list[tuple[str, str]] = field(default_factory=list)
    # a prediction window's label-free estimates, {'accuracy': .., 'accuracy_lower': ..} (None: none)
    estimated: dict[str, float] | None = None


class WarehouseQueries:
    """The worker's SELECTs, on one warehouse, each tried through ``retry``.

    Needs a warehouse, so its examples are tests/integration/test_warehouse_recovery.py and the
    worker's integration tests.
    """

    def __init__(self, warehouse: Warehouse, retry: Retry = once) -> None:
        self.warehouse = warehouse
        self.retry = retry

    def written_windows(
        self, model_id: str, model_version: str, limit: int = 200
    ) -> tuple[list[WrittenWindow], list[WrittenWindow]]:
        """The last ``limit`` prediction windows and label windows written for a version, oldest first.

        Prediction windows may include one whose write a crash interrupted: keep
        only those up to :meth:`latest_window`, whose marker is written last.
        """

        def query() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
            params = {"model_id": model_id, "model_version": model_version, "limit": limit}
            drift_rows = self.warehouse.query_rows(
                "SELECT toUnixTimestamp64Milli(window_start) AS ws, toUnixTimestamp64Milli(window_end) AS we, "
                "feature, metric, value, p_value, threshold, drifted FROM drift_metrics FINAL "
                "WHERE model_id = {model_id:String} AND model_version = {model_version:String} AND segment = '' "
                "AND window_start >= (SELECT min(window_start) FROM (SELECT window_start FROM drift_reports FINAL "
                " WHERE model_id = {model_id:String} AND model_version = {model_version:String} "
                " ORDER BY window_start DESC LIMIT {limit:UInt32})) ORDER BY ws, feature, metric",
                params,
            )
            label_rows = self.warehouse.query_rows(
                "SELECT toUnixTimestamp64Milli(window_start) AS ws, toUnixTimestamp64Milli(window_end) AS we, "
                "metric, value, n_labeled FROM performance_metrics FINAL "
                "WHERE model_id = {model_id:String} AND model_version = {model_version:String} AND segment = '' "
                "AND NOT startsWith(metric, 'latency_') AND NOT startsWith(metric, 'estimated_') AND window_start >= "
                "(SELECT min(window_start) FROM (SELECT window_start FROM performance_metrics FINAL "
                " WHERE model_id = {model_id:String} AND model_version = {model_version:String} "
                " AND metric = {marker:String} ORDER BY window_start DESC LIMIT {limit:UInt32})) ORDER BY ws",
                {**params, "marker": N_LABELED},
            )
            estimate_rows = self.warehouse.query_rows(
                "SELECT toUnixTimestamp64Milli(window_start) AS ws, toUnixTimestamp64Milli(window_end) AS we, "
                "metric, value FROM performance_metrics FINAL "
                "WHERE model_id = {model_id:String} AND model_version = {model_version:String} AND segment = '' "
                "AND startsWith(metric, 'estimated_') AND window_start >= "
                "(SELECT min(window_start) FROM (SELECT window_start FROM drift_reports FINAL "
                " WHERE model_id = {model_id:String} AND model_version = {model_version:String} "
                " ORDER BY window_start DESC LIMIT {limit:UInt32})) ORDER BY ws",
                params,
            )
            return drift_rows, label_rows, estimate_rows

        drift_rows, label_rows, estimate_rows = self.retry("reading the windows written before", query)
        drift: dict[int, WrittenWindow] = {}
        labelled: dict[int, WrittenWindow] = {}
        for r in drift_rows:
            stream = "error" if r["feature"] == ERROR_FEATURE else "score"
            target = labelled if stream == "error" else drift
            w = target.setdefault(r["ws"], WrittenWindow(r["ws"], r["we"]))
            if r["metric"] in DETECTORS:
                w.change_events += [(r["metric"], stream)] * int(r["value"])
            else:
                w.drift.append(
                    FeatureDrift(
                        r["feature"], r["metric"], r["value"], r["p_value"], r["threshold"], bool(r["drifted"])
                    )
                )
        for r in estimate_rows:
            w = drift.setdefault(r["ws"], WrittenWindow(r["ws"], r["we"]))
            w.estimated = {**(w.estimated or {}), r["metric"][len("estimated_") :]: r["value"]}
        for r in label_rows:
            w = labelled.setdefault(r["ws"], WrittenWindow(r["ws"], r["we"]))
            if r["metric"] == N_LABELED:
                w.n_labeled = int(r["n_labeled"])
            else:
                w.performance = {**(w.performance or {}), r["metric"]: r["value"]}
        # a label window without its marker row was not completely written (its error-stream rows come first)
        marked = {r["ws"] for r in label_rows if r["metric"] == N_LABELED}
        return [drift[k] for k in sorted(drift)], [labelled[k] for k in sorted(labelled) if k in marked]

    def lookup_predictions(self, model_id: str, event_ids: Sequence[str], chunk: int = 10_000) -> list[PredictionBatch]:
        """Raw predictions of ``model_id`` with these ids, one batch per version (what labels join to).

        Only the columns a label join needs: ids, times, scores, predicted labels, attributes.
        """
        return self.lookup_predictions_of({model_id: event_ids}, chunk)[model_id]

    def lookup_predictions_of(
        self, event_ids: Mapping[str, Sequence[str]], chunk: int = 10_000
    ) -> dict[str, list[PredictionBatch]]:
        """:meth:`lookup_predictions` of many models in one read per ``chunk`` ids (every model has an entry):
        a poll of labels whose predictions are not in memory touches hundreds of models at once."""
        pairs = [(m, e) for m, ids in event_ids.items() for e in dict.fromkeys(ids)]
        found: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for lo in range(0, len(pairs), chunk):
            part = pairs[lo : lo + chunk]
            wanted = set(part)

            def query(part: list[tuple[str, str]] = part) -> list[dict[str, Any]]:
                return self.warehouse.query_rows(
                    "SELECT model_id, event_id, model_version, toUnixTimestamp64Milli(event_time) AS event_time, "
                    "prediction, predicted_label, attributes FROM predictions FINAL "
                    "WHERE model_id IN {models:Array(String)} AND event_id IN {ids:Array(String)}",
                    {"models": sorted({m for m, _ in part}), "ids": [e for _, e in part]},
                )

            for row in self.retry("looking up predictions for labels", query):
                # ids and models are filtered apart: keep only the pairs asked for
                if (row["model_id"], row["event_id"]) in wanted:
                    found.setdefault((row["model_id"], row["model_version"]), []).append(row)
        out: dict[str, list[PredictionBatch]] = {m: [] for m in event_ids}
        for (model_id, version), rows in sorted(found.items()):
            keys = sorted({k for r in rows for k in r["attributes"]})
            labels = [r["predicted_label"] for r in rows]
            out[model_id].append(
                PredictionBatch(
                    model_id,
                    version,
                    [r["event_id"] for r in rows],
                    np.array([r["event_time"] for r in rows], dtype=np.int64),
                    predictions=np.array(
                        [np.nan if r["prediction"] is None else r["prediction"] for r in rows], dtype=np.float64
                    ),
                    predicted_labels=labels if any(v is not None for v in labels) else [],
                    attributes={k: [r["attributes"].get(k, "") for r in rows] for k in keys},
                )
            )
        return out

    def detector_state(self, model_id: str, model_version: str, stream: str, through: int) -> bytes | None:
        """The change-detector state of a version's ``stream`` after the last window written up to ``through``."""
        return self.retry(
            "reading the change-detector state",
            lambda: self.warehouse.latest_detector_state(model_id, model_version, stream, through),
        )

    def waiting_labels(self, model_id: str, since_ms: int, limit: int) -> list[LabelEvent]:
        """Labels of ``model_id`` that may have been waiting for their prediction when the worker stopped.

        Their messages were acknowledged as soon as they waited, so Kafka will
        not deliver them again. These are the labels stored since ``since_ms``
        (the index's time to live) that no written label window counts: no
        prediction has their ``event_id``, or its version's label windows were
        written only up to before the label's event time. At most ``limit``,
        the latest stored, returned oldest first.
        """
        return self.waiting_labels_of([model_id], since_ms, limit)[model_id]

    def waiting_labels_of(self, model_ids: Sequence[str], since_ms: int, limit: int) -> dict[str, list[LabelEvent]]:
        """:meth:`waiting_labels` of many models in one read (``limit`` per model); every model has an entry."""
        ids = list(dict.fromkeys(model_ids))

        def query() -> list[dict[str, Any]]:
            if not ids:
                return []
            return self.warehouse.query_rows(
                "SELECT l.model_id AS model_id, l.event_id AS event_id, "
                "toUnixTimestamp64Milli(l.event_time) AS event_time, "
                "l.label_value AS label_value, l.label_class AS label_class, l.ingested_at AS ingested_at "
                "FROM (SELECT model_id, event_id, event_time, label_value, label_class, ingested_at FROM labels FINAL "
                "      WHERE model_id IN {ids:Array(String)} "
                "      AND ingested_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')) AS l "
                # only the predictions of these labels: the key (model_id, event_id) finds them
                "LEFT JOIN (SELECT model_id, event_id, argMax(model_version, ingested_at) AS model_version "
                "           FROM predictions WHERE model_id IN {ids:Array(String)} AND (model_id, event_id) IN "
                "           (SELECT model_id, event_id FROM labels WHERE model_id IN {ids:Array(String)} "
                "            AND ingested_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')) "
                "           GROUP BY model_id, event_id) AS p ON l.model_id = p.model_id AND l.event_id = p.event_id "
                "LEFT JOIN (SELECT model_id, model_version, max(window_end) AS through FROM performance_metrics "
                "           WHERE model_id IN {ids:Array(String)} AND metric = {marker:String} AND segment = '' "
                "           GROUP BY model_id, model_version) AS w "
                "ON p.model_id = w.model_id AND p.model_version = w.model_version "
                # a missing row of a LEFT JOIN reads as the column's default: '' and 1970
                "WHERE p.event_id = '' OR l.event_time >= w.through "
                "ORDER BY l.model_id, l.ingested_at DESC, l.event_id DESC LIMIT {limit:UInt64} BY l.model_id",
                {"ids": ids, "since": int(since_ms), "marker": N_LABELED, "limit": int(limit)},
            )

        rows = self.retry("reading the labels that waited for their predictions", query)
        out: dict[str, list[LabelEvent]] = {m: [] for m in ids}
        for r in reversed(rows):  # oldest first
            out[r["model_id"]].append(
                LabelEvent(
                    r["event_id"],
                    r["model_id"],
                    int(r["event_time"]),
                    r["label_class"] if r["label_class"] is not None else r["label_value"],
                )
            )
        return out

    def latest_window(self, model_id: str, model_version: str) -> int | None:
        return self.retry(
            "reading the latest written window", lambda: self.warehouse.latest_closed_window(model_id, model_version)
        )

    def latest_windows(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
        """:meth:`latest_window` of many ``(model_id, model_version)`` in one read; every key has an entry."""
        return self._latest_of(
            "reading the latest written windows",
            "SELECT model_id AS m, model_version AS v, toUnixTimestamp64Milli(max(window_end)) AS end_ms "
            "FROM window_profiles WHERE model_id IN {ids:Array(String)} GROUP BY m, v",
            keys,
            {},
        )

    def latest_label_window(self, model_id: str, model_version: str) -> int | None:
        """The end of the last performance window written for this version (the ``n_labeled`` marker)."""
        return self.latest_label_windows([(model_id, model_version)])[(model_id, model_version)]

    def latest_label_windows(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int | None]:
        """:meth:`latest_label_window` of many ``(model_id, model_version)`` in one read; every key has an entry."""
        return self._latest_of(
            "reading the latest written label windows",
            "SELECT model_id AS m, model_version AS v, toUnixTimestamp64Milli(max(window_end)) AS end_ms "
            "FROM performance_metrics WHERE model_id IN {ids:Array(String)} "
            "AND metric = {metric:String} AND segment = '' GROUP BY m, v",
            keys,
            {"metric": N_LABELED},
        )

    def _latest_of(
        self, what: str, sql: str, keys: Sequence[tuple[str, str]], params: dict[str, Any]
    ) -> dict[tuple[str, str], int | None]:
        """One grouped read of the latest window end per version, over the models of ``keys`` (by the
        primary key's first column); the versions of those models not asked for are dropped."""
        wanted = list(dict.fromkeys(keys))
        ids = list(dict.fromkeys(m for m, _ in wanted))
        rows = self.retry(what, lambda: self.warehouse.query_rows(sql, {**params, "ids": ids}) if ids else [])
        found = {(str(r["m"]), str(r["v"])): int(r["end_ms"]) for r in rows}
        return {k: found.get(k) for k in wanted}
