"""Writes what the worker measured: rows into ClickHouse, records onto Kafka.

Every write of a closed window is idempotent: its ClickHouse rows carry an
``insert_deduplication_token`` derived from the window's key (and the tables
are ReplacingMergeTrees keyed by window), and its Kafka records are
at-least-once with ids that a replay reproduces.

The order inside one window matters for crash safety. ``window_profiles`` is
written last, because it is what the worker reads at start
(``Warehouse.latest_closed_window``) to decide that a window was already
written: a crash before it means the window is computed and written again,
never that its DriftReport is skipped. Likewise the ``n_labeled`` row of a
performance window marks that window written. The change detectors' state
after a window (``detector_states``) is written before its marker, and read
back only up to the last marked window.

An unreachable warehouse (no answer, a refused connection, a server error
that says try again) is waited for as long as it takes, with backoff: the
write blocks, so the worker handles nothing more and acknowledges nothing
unwritten meanwhile; :attr:`Sinks.outage` tells for how long (``/metrics``,
the log). Any other failure is retried ``attempts`` times, then raises
:class:`SinkError`, and the worker stops (exit code 1) rather than acknowledge
messages whose results were not written: a restart reads them again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import river

from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.codec import Codec, DecodeError, default_codec
from driftline.streams.core.detectors import DETECTORS
from driftline.streams.core.monitor import ERROR_FEATURE, PerformanceOutcome, WindowOutcome
from driftline.streams.core.profile import SUMMARY_QUANTILES, WindowProfile
from driftline.streams.records import Alert, DriftReport, FeatureDrift, LabelEvent, PredictionBatch, RetrainRequest
from driftline.streams.segment_rows import ROOT_CAUSES, root_cause_columns, segment_drift_rows
from driftline.streams.supervision import DETAIL_LIMIT, Outage, clip
from driftline.streams.warehouse import Warehouse, WarehouseError
from driftline.streams.warehouse_rows import (
    DetectorStateRow,
    DriftMetricRow,
    PerformanceRow,
    RejectedEventRow,
    WindowProfileRow,
)
from driftline.streams.webhook import AlertWebhook

log = logging.getLogger(__name__)

# ClickHouse error codes that mean "not now" rather than "never": the server is busy, restarting
# or cut off (TIMEOUT_EXCEEDED, SOCKET_TIMEOUT, NETWORK_ERROR, TOO_MANY_SIMULTANEOUS_QUERIES,
# NO_FREE_CONNECTION, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, TOO_MANY_PARTS, ...).
TRANSIENT_CODES = frozenset({3, 159, 164, 198, 202, 203, 209, 210, 236, 241, 242, 252, 319, 394, 425, 999, 1000})
# A rejected message's bytes and model id kept in ``rejected_events`` at most (the DLQ keeps more).
REJECTED_RAW_LIMIT = 64 * 1024
REJECTED_MODEL_ID_LIMIT = 256

N_LABELED = "n_labeled"  # the performance row that every written label window has

T = TypeVar("T")


class SinkError(RuntimeError):
    """A write that kept failing: the worker must stop without acknowledging its messages.

    >>> str(SinkError("insert of window profiles failed 5 times"))
    'insert of window profiles failed 5 times'
    """


@dataclass
class Rejected:
    """One input message refused by the worker, on its way to the DLQ and ``rejected_events``.

    >>> Rejected("t.predictions", 0, 7, b"m", b"\x07", "unknown_encoding", "first byte 0x07", 0).reason
    'unknown_encoding'
    """

    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    reason: str
    detail: str
    received_at: int
    model_id: str = ""
    error_class: str = ""  # the exception's class, for reason ``internal_error``

    def row(self) -> RejectedEventRow:
        """Its ``rejected_events`` row, bounded: an oversized message keeps its first bytes, and
        the detail says how big it was and its sha256.

        >>> r = Rejected("t.p", 0, 7, None, b"x" * 100_000, "invalid_value", "too big", 0, model_id="m" * 1000)
        >>> row = r.row()
        >>> len(row.raw), len(row.model_id), row.detail.split(";")[1].strip()[:28]
        (65536, 256, 'message of 100000 bytes, cut')
        """
        raw, about = clip(self.raw, REJECTED_RAW_LIMIT)
        detail = self.detail[:DETAIL_LIMIT]
        if about:
            detail += f"; message of {about['size']} bytes, cut to {len(raw)}, sha256 {about['sha256']}"
        return RejectedEventRow(
            self.source_topic,
            self.partition,
            self.offset,
            self.reason,
            raw,
            self.received_at,
            detail=detail,
            model_id=self.model_id[:REJECTED_MODEL_ID_LIMIT],
        )


def transient(exc: WarehouseError) -> bool:
    """Whether a warehouse failure means "not now": no answer, or an error code that says so.

    Values that do not fit their columns, syntax or schema errors are not: trying again changes nothing.

    >>> refused = WarehouseError("connecting failed: Connection refused")
    >>> refused.__cause__ = ConnectionRefusedError()
    >>> transient(refused), transient(WarehouseError("insert into t: no column(s) x"))
    (True, False)
    >>> transient(WarehouseError("Syntax error", code=62)), transient(WarehouseError("busy", code=202))
    (False, True)
    """
    if exc.code is not None:
        return exc.code in TRANSIENT_CODES
    # clickhouse-connect's transport errors carry no code; the warehouse's own refusals (a missing
    # column, a closed client) have no cause, and a value that did not serialise is a TypeError & co
    cause = exc.__cause__
    return cause is not None and not isinstance(cause, (ValueError, TypeError, OverflowError))


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


@dataclass
class ClosedWindow:
    """A prediction window to write, with the retrain requests and alerts it led to, and when it closed.

    >>> closed = ClosedWindow(outcome=None)  # the worker passes the monitor's WindowOutcome
    >>> closed.requests, closed.alerts, closed.computed_at
    ([], [], 0)
    """

    outcome: WindowOutcome
    requests: list[RetrainRequest] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    computed_at: int = 0  # epoch ms: the rows' ``computed_at``


def combined_token(tokens: Sequence[str]) -> str:
    """One deduplication token for rows that several tokens name, written together.

    One token stays as it is; several are named by the first and a digest of
    all (a token of dozens of keys would be long). The same parts make the
    same token again after a crash; if the parts differ, ReplacingMergeTree's
    key still collapses the repeated rows.

    >>> combined_token(["p:0:1-9:ab"])
    'p:0:1-9:ab'
    >>> combined_token(["p:0:1-9:ab", "p:0:10-19:cd"])
    'p:0:1-9:ab+1:65bc8d15240ee011'
    """
    if len(tokens) == 1:
        return tokens[0]
    digest = hashlib.blake2b("\n".join(tokens).encode(), digest_size=8).hexdigest()
    return f"{tokens[0]}+{len(tokens) - 1}:{digest}"


def window_token(outcomes: Sequence[Any]) -> str:
    """The deduplication token of the rows of windows written together.

    One window keeps the token it always had; several are named by the first
    and a digest of all their keys (``combined_token``).

    >>> from types import SimpleNamespace as W
    >>> window_token([W(model_id="m", model_version="1", window_start=0, window_end=60_000)])
    'm:1:0:60000'
    >>> window_token([W(model_id="m", model_version="1", window_start=s, window_end=s + 10) for s in (0, 10)])
    'm:1:0:10+1:cdbe50c30417a9ed'
    """
    return combined_token([f"{o.model_id}:{o.model_version}:{o.window_start}:{o.window_end}" for o in outcomes])


@dataclass
class _Delivery:
    errors: list[str] = field(default_factory=list)

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic() if msg is not None else '?'}: {err}")


def profile_rows(
    outcome_profile: WindowProfile,
    model_id: str,
    model_version: str,
    window_start: int,
    window_end: int,
    computed_at: int,
) -> list[WindowProfileRow]:
    """The ``window_profiles`` rows of one window, bins with their edges (open bins at ±inf)."""
    ref = outcome_profile.reference
    rows = []
    for r in outcome_profile.summary_rows():
        f = r["feature"]
        common = dict(
            model_id=model_id,
            model_version=model_version,
            feature=f,
            window_start=window_start,
            window_end=window_end,
            count=int(r["count"]) + int(r["missing"]),
            missing=int(r["missing"]),
            computed_at=computed_at,
            kind=r["kind"],
        )
        if r["kind"] == "numeric":
            cuts = ref.numeric[f].cuts.tolist()
            rows.append(
                WindowProfileRow(
                    **common,
                    mean=_nan(r["mean"]),
                    std=_nan(r["std"]),
                    min=_nan(r["min"]),
                    max=_nan(r["max"]),
                    quantile_levels=list(SUMMARY_QUANTILES) if r["quantiles"] else [],
                    quantiles=list(r["quantiles"]),
                    bin_edges=[-math.inf, *cuts, math.inf],
                    histogram=[int(c) for c in r["histogram"]],
                )
            )
        else:
            names = [*ref.categorical[f].categories, "__other__"]
            rows.append(WindowProfileRow(**common, categories=dict(zip(names, (int(c) for c in r["histogram"])))))
    return rows


def _state_row(outcome: WindowOutcome | PerformanceOutcome, stream: str, computed_at: int) -> DetectorStateRow:
    return DetectorStateRow(
        outcome.model_id,
        outcome.model_version,
        stream,
        outcome.window_end,
        outcome.detector_state or b"",
        computed_at,
        detectors=[c.detector for c in outcome.changes],
        river_version=river.__version__,
    )


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class Sinks:
    """ClickHouse and Kafka writes of the streams worker.

    Needs a warehouse and a Kafka producer, so its examples are the worker's
    integration tests (tests/integration/test_worker*.py).
    """

    def __init__(
        self,
        settings: Settings,
        warehouse: Warehouse,
        producer: Any,
        *,
        codec: Codec | None = None,
        attempts: int = 8,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        delivery_timeout_s: float = 30.0,
        on_retry: Callable[[str], None] | None = None,
        webhook: AlertWebhook | None = None,
        outage: Outage | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.settings = settings
        self.webhook = webhook
        self.warehouse = warehouse
        self.producer = producer
        self.codec = codec or default_codec()
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.delivery_timeout_s = delivery_timeout_s
        self.on_retry = on_retry
        # ``attempts`` bounds the retries of errors that are not an outage; an outage is waited out,
        # unless ``should_stop`` (the worker is stopping: what is unwritten is replayed after a restart)
        self.outage = outage or Outage("warehouse")
        self.should_stop = should_stop
        self._delivery = _Delivery()

    # -- plumbing ----------------------------------------------------------------------

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        attempt, waits = 0, 0
        while True:
            try:
                result = fn()
            except WarehouseError as exc:
                if self.on_retry is not None:
                    self.on_retry("warehouse")
                if transient(exc):
                    # no time limit: the write blocks, so nothing more is read or acknowledged meanwhile
                    if self.should_stop():
                        raise SinkError(f"{what} interrupted: the worker is stopping during an outage: {exc}") from exc
                    self.outage.failed(exc, what)
                    time.sleep(min(self.backoff_s * 2 ** min(waits, 16), self.max_backoff_s))
                    waits += 1
                    continue
                attempt += 1
                if attempt >= self.attempts:
                    raise SinkError(f"{what} failed {self.attempts} times: {exc}") from exc
                log.warning("%s failed (attempt %d of %d), retrying: %s", what, attempt, self.attempts, exc)
                time.sleep(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s))
                continue
            self.outage.recovered()
            return result

    def _publish(self, name: str, key: str, record: Any) -> None:
        kafka.publish(
            self.producer, self.settings.topic(name), key, record, codec=self.codec, on_delivery=self._delivery
        )

    def flush_kafka(self) -> None:
        """Wait until every record produced so far is delivered; raise if one was refused.

        Records still queued after ``delivery_timeout_s`` mean the broker is away: they are waited
        for as long as it takes (the producer retries them), unless the worker is stopping.
        """
        waited = 0.0
        while True:
            remaining = self.producer.flush(self.delivery_timeout_s)
            errors, self._delivery.errors = self._delivery.errors, []
            if errors:
                raise SinkError(f"Kafka delivery failed: {remaining} record(s) undelivered; errors: {errors[:5]}")
            if not remaining:
                return
            waited += self.delivery_timeout_s
            if self.should_stop():
                raise SinkError(
                    f"Kafka delivery interrupted: {remaining} record(s) undelivered, the worker is stopping"
                )
            log.warning(
                "Kafka: %d record(s) still undelivered after %.0f s; waiting for the broker",
                remaining,
                waited,
                extra={"undelivered": remaining, "seconds": waited},
            )

    # -- raw events ------------------------------------------------------------------------

    def write_predictions(self, batches: Sequence[PredictionBatch], token: str) -> int:
        if not batches:
            return 0
        return self._retry(
            "insert of raw predictions",
            lambda: self.warehouse.insert_predictions(list(batches), dedup_token=f"predictions:{token}"),
        )

    def write_labels(self, labels: Sequence[LabelEvent], token: str) -> int:
        if not labels:
            return 0
        return self._retry(
            "insert of raw labels", lambda: self.warehouse.insert_labels(list(labels), dedup_token=f"labels:{token}")
        )

    def reject(self, items: Sequence[Rejected], token: str) -> None:
        """Send refused messages to the DLQ unchanged and record them in ``rejected_events``."""
        if not items:
            return
        for r in items:
            # as a DecodeError, the detail travels in the driftline-error-detail header too
            kafka.send_to_dlq(
                self.producer,
                self.settings,
                r.raw,
                r.key,
                DecodeError(r.reason, r.detail),
                r.source_topic,
                on_delivery=self._delivery,
                error_class=r.error_class,
            )
        self.flush_kafka()
        rows = [r.row() for r in items]
        self._retry(
            "insert of rejected events",
            lambda: self.warehouse.insert_rejected_events(rows, dedup_token=f"rejected:{token}"),
        )

    # -- closed windows --------------------------------------------------------------------

    def write_windows(self, windows: Sequence[ClosedWindow]) -> list[DriftReport]:
        """Write closed windows together: one insert per table and one Kafka flush for all of them.

        Per window, each insert and flush is a round trip of 10 to 80 ms, which
        a backlog that closes dozens of windows at once would pay one window
        after the other. Each window's rows carry its own ``computed_at``.
        The order of the writes is that of one window: ``window_profiles``,
        the marker of a written window, comes last, so a crash before it means
        every one of these windows is computed and written again.
        """
        if not windows:
            return []
        token = window_token([w.outcome for w in windows])
        reports = [w.outcome.report(w.computed_at) for w in windows]
        self._retry(
            "insert of drift reports",
            lambda: self.warehouse.insert_drift_reports(
                reports, dedup_token=f"drift:{token}", late_events=[w.outcome.late_events for w in windows]
            ),
        )
        # where the drift comes from: per-segment drift_metrics rows and root causes (streams.segment_rows)
        segment_rows = [r for w in windows for r in segment_drift_rows(w.outcome, w.computed_at)]
        if segment_rows:
            self._retry(
                "insert of segment drift",
                lambda: self.warehouse.insert_drift_metrics(segment_rows, dedup_token=f"segments:{token}"),
            )
        causes = root_cause_columns([(w.outcome, w.computed_at) for w in windows])
        if causes["model_id"]:
            self._retry(
                "insert of root causes",
                lambda: self.warehouse.insert(ROOT_CAUSES, causes, dedup_token=f"causes:{token}"),
            )
        latency = [
            PerformanceRow(
                o.model_id,
                o.model_version,
                name,
                o.window_start,
                o.window_end,
                float(value),
                o.n_latency,
                w.computed_at,
                n_predictions=o.n_current,
            )
            for w in windows
            for o in (w.outcome,)
            if o.latency
            for name, value in o.latency.items()
            if not np.isnan(value)
        ]
        # label-free estimates ride with the latency rows: metrics of the prediction window, n_labeled 0
        latency += [
            PerformanceRow(
                o.model_id,
                o.model_version,
                r.metric,
                o.window_start,
                o.window_end,
                float(r.value),
                0,
                w.computed_at,
                segment=r.segment,
                n_predictions=int(r.n_predictions),
            )
            for w in windows
            for o in (w.outcome,)
            for r in o.estimates
        ]
        if latency:
            self._retry(
                "insert of latency percentiles",
                lambda: self.warehouse.insert_performance_metrics(latency, dedup_token=f"latency:{token}"),
            )
        for report in reports:
            self._publish("drift", report.model_id, report)
        self._decisions([r for w in windows for r in w.requests], [a for w in windows for a in w.alerts], token)
        states = [
            _state_row(w.outcome, "score", w.computed_at) for w in windows if w.outcome.detector_state is not None
        ]
        if states:
            self._retry(
                "insert of change-detector states",
                lambda: self.warehouse.insert_detector_states(states, dedup_token=f"detectors:score:{token}"),
            )
        rows = [
            row
            for w in windows
            for row in profile_rows(
                w.outcome.profile,
                w.outcome.model_id,
                w.outcome.model_version,
                w.outcome.window_start,
                w.outcome.window_end,
                w.computed_at,
            )
        ]
        self._retry(
            "insert of window profiles",
            lambda: self.warehouse.insert_window_profiles(rows, dedup_token=f"profiles:{token}"),
        )
        return reports

    def write_performance(
        self,
        outcome: PerformanceOutcome,
        computed_at: int,
        requests: Sequence[RetrainRequest] = (),
        alerts: Sequence[Alert] = (),
    ) -> None:
        m, v, start, end = outcome.model_id, outcome.model_version, outcome.window_start, outcome.window_end
        token = f"{m}:{v}:{start}:{end}"
        if outcome.changes:
            changes = [
                DriftMetricRow(
                    m,
                    v,
                    c.feature,
                    c.detector,
                    start,
                    end,
                    float(c.alarms),
                    None,
                    1.0,
                    c.alarms > 0,
                    0,
                    c.n_values,
                    computed_at,
                )
                for c in outcome.changes
            ]
            self._retry(
                "insert of error-stream change counts",
                lambda: self.warehouse.insert_drift_metrics(changes, dedup_token=f"errors:{token}"),
            )
        self._decisions(requests, alerts, token)
        if outcome.detector_state is not None:
            state = _state_row(outcome, "error", computed_at)
            self._retry(
                "insert of change-detector states",
                lambda: self.warehouse.insert_detector_states([state], dedup_token=f"detectors:error:{token}"),
            )
        rows = [
            PerformanceRow(m, v, r.metric, start, end, float(r.value), int(r.n_labeled), computed_at, segment=r.segment)
            for r in outcome.rows
        ]
        rows.append(
            PerformanceRow(m, v, N_LABELED, start, end, float(outcome.n_labeled), outcome.n_labeled, computed_at)
        )
        self._retry(
            "insert of performance metrics",
            lambda: self.warehouse.insert_performance_metrics(rows, dedup_token=f"performance:{token}"),
        )

    def write_decisions(self, requests: Sequence[RetrainRequest], alerts: Sequence[Alert], token: str) -> None:
        """Retrain requests and alerts that no window carries (a schedule): Kafka, then ClickHouse."""
        self._decisions(requests, alerts, token)

    def _decisions(self, requests: Sequence[RetrainRequest], alerts: Sequence[Alert], token: str) -> None:
        for r in requests:
            self._publish("retrain-requests", r.model_id, r)
        for a in alerts:
            self._publish("alerts", a.model_id, a)
        self.flush_kafka()
        for r in requests:
            self._retry(
                "insert of a retrain request",
                lambda r=r: self.warehouse.upsert_retrain_request(r, "requested", updated_at=r.requested_at),
            )
        if alerts:
            self._retry(
                "insert of alerts", lambda: self.warehouse.insert_alerts(list(alerts), dedup_token=f"alerts:{token}")
            )
            if self.webhook is not None:
                # at least once, like everything else: a window replayed after a crash may post again
                self.webhook.send(list(alerts))

    # -- what was written before a restart ---------------------------------------------------

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

        drift_rows, label_rows, estimate_rows = self._retry("reading the windows written before", query)
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
        found: dict[str, list[dict[str, Any]]] = {}
        ids = list(dict.fromkeys(event_ids))
        for lo in range(0, len(ids), chunk):
            part = ids[lo : lo + chunk]

            def query(part: list[str] = part) -> list[dict[str, Any]]:
                return self.warehouse.query_rows(
                    "SELECT event_id, model_version, toUnixTimestamp64Milli(event_time) AS event_time, prediction, "
                    "predicted_label, attributes FROM predictions FINAL "
                    "WHERE model_id = {model_id:String} AND event_id IN {ids:Array(String)}",
                    {"model_id": model_id, "ids": part},
                )

            for row in self._retry("looking up predictions for labels", query):
                found.setdefault(row["model_version"], []).append(row)
        batches = []
        for version, rows in sorted(found.items()):
            keys = sorted({k for r in rows for k in r["attributes"]})
            labels = [r["predicted_label"] for r in rows]
            batches.append(
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
        return batches

    def detector_state(self, model_id: str, model_version: str, stream: str, through: int) -> bytes | None:
        """The change-detector state of a version's ``stream`` after the last window written up to ``through``."""
        return self._retry(
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

        def query() -> list[dict[str, Any]]:
            return self.warehouse.query_rows(
                "SELECT l.event_id AS event_id, toUnixTimestamp64Milli(l.event_time) AS event_time, "
                "l.label_value AS label_value, l.label_class AS label_class, l.ingested_at AS ingested_at "
                "FROM (SELECT event_id, event_time, label_value, label_class, ingested_at FROM labels FINAL "
                "      WHERE model_id = {model_id:String} "
                "      AND ingested_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')) AS l "
                # only the predictions of these labels: the key (model_id, event_id) finds them
                "LEFT JOIN (SELECT event_id, argMax(model_version, ingested_at) AS model_version FROM predictions "
                "           WHERE model_id = {model_id:String} AND event_id IN "
                "           (SELECT event_id FROM labels WHERE model_id = {model_id:String} "
                "            AND ingested_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')) "
                "           GROUP BY event_id) AS p ON l.event_id = p.event_id "
                "LEFT JOIN (SELECT model_version, max(window_end) AS through FROM performance_metrics "
                "           WHERE model_id = {model_id:String} AND metric = {marker:String} AND segment = '' "
                "           GROUP BY model_version) AS w ON p.model_version = w.model_version "
                # a missing row of a LEFT JOIN reads as the column's default: '' and 1970
                "WHERE p.event_id = '' OR l.event_time >= w.through "
                "ORDER BY l.ingested_at DESC, l.event_id DESC LIMIT {limit:UInt64}",
                {"model_id": model_id, "since": int(since_ms), "marker": N_LABELED, "limit": int(limit)},
            )

        rows = self._retry("reading the labels that waited for their predictions", query)
        rows.reverse()
        return [
            LabelEvent(
                r["event_id"],
                model_id,
                int(r["event_time"]),
                r["label_class"] if r["label_class"] is not None else r["label_value"],
            )
            for r in rows
        ]

    def latest_window(self, model_id: str, model_version: str) -> int | None:
        return self._retry(
            "reading the latest written window", lambda: self.warehouse.latest_closed_window(model_id, model_version)
        )

    def latest_label_window(self, model_id: str, model_version: str) -> int | None:
        """The end of the last performance window written for this version (the ``n_labeled`` marker)."""

        def query() -> int | None:
            rows = self.warehouse.query_rows(
                "SELECT count() AS n, toUnixTimestamp64Milli(max(window_end)) AS end_ms FROM performance_metrics "
                "WHERE model_id = {model_id:String} AND model_version = {model_version:String} "
                "AND metric = {metric:String} AND segment = ''",
                {"model_id": model_id, "model_version": model_version, "metric": N_LABELED},
            )
            return int(rows[0]["end_ms"]) if rows[0]["n"] else None

        return self._retry("reading the latest written label window", query)


__all__ = [
    "N_LABELED",
    "ClosedWindow",
    "Rejected",
    "SinkError",
    "Sinks",
    "WrittenWindow",
    "combined_token",
    "profile_rows",
    "transient",
    "window_token",
]
