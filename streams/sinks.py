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
from driftline.streams.core.outcomes import PerformanceOutcome, WindowOutcome
from driftline.streams.core.window_profile import SUMMARY_QUANTILES, WindowProfile
from driftline.streams.records import Alert, DriftReport, LabelEvent, PredictionBatch, RetrainRequest
from driftline.streams.supervision import DETAIL_LIMIT, Outage, clip
from driftline.streams.warehouse import Warehouse, WarehouseError
from driftline.streams.warehouse.rows import (
    N_LABELED,
    DetectorStateRow,
    DriftMetricRow,
    PerformanceRow,
    RejectedEventRow,
    WindowProfileRow,
)
from driftline.streams.warehouse.segment_rows import ROOT_CAUSES, root_cause_columns, segment_drift_rows
from driftline.streams.webhook import AlertWebhook

log = logging.getLogger(__name__)

# ClickHouse error codes that mean "not now" rather than "never": the server is busy, restarting
# or cut off (TIMEOUT_EXCEEDED, SOCKET_TIMEOUT, NETWORK_ERROR, TOO_MANY_SIMULTANEOUS_QUERIES,
# NO_FREE_CONNECTION, MEMORY_LIMIT_EXCEEDED, TABLE_IS_READ_ONLY, TOO_MANY_PARTS, ...).
TRANSIENT_CODES = frozenset({3, 159, 164, 198, 202, 203, 209, 210, 236, 241, 242, 252, 319, 394, 425, 999, 1000})
# A rejected message's bytes and model id kept in ``rejected_events`` at most (the DLQ keeps more).
REJECTED_RAW_LIMIT = 64 * 1024
REJECTED_MODEL_ID_LIMIT = 256

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


@dataclass
class ClosedLabelWindow:
    """A label window to write (its performance metrics), with the retrain requests and alerts it led to.

    >>> closed = ClosedLabelWindow(outcome=None)  # the worker passes the monitor's PerformanceOutcome
    >>> closed.requests, closed.alerts, closed.computed_at
    ([], [], 0)
    """

    outcome: PerformanceOutcome
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

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried as every warehouse write is: an outage is waited out, other failures
        ``attempts`` times, then :class:`SinkError`. The worker's reads (``WarehouseQueries``) use it too."""
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
        return self.retry(
            "insert of raw predictions",
            lambda: self.warehouse.insert_predictions(list(batches), dedup_token=f"predictions:{token}"),
        )

    def write_labels(self, labels: Sequence[LabelEvent], token: str) -> int:
        if not labels:
            return 0
        return self.retry(
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
        self.retry(
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
        self.retry(
            "insert of drift reports",
            lambda: self.warehouse.insert_drift_reports(
                reports, dedup_token=f"drift:{token}", late_events=[w.outcome.late_events for w in windows]
            ),
        )
        # where the drift comes from: per-segment drift_metrics rows and root causes (streams.warehouse.segment_rows)
        segment_rows = [r for w in windows for r in segment_drift_rows(w.outcome, w.computed_at)]
        if segment_rows:
            self.retry(
                "insert of segment drift",
                lambda: self.warehouse.insert_drift_metrics(segment_rows, dedup_token=f"segments:{token}"),
            )
        causes = root_cause_columns([(w.outcome, w.computed_at) for w in windows])
        if causes["model_id"]:
            self.retry(
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
            self.retry(
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
            self.retry(
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
        self.retry(
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
        """One label window's rows (see :meth:`write_label_windows`)."""
        self.write_label_windows([ClosedLabelWindow(outcome, list(requests), list(alerts), computed_at)])

    def write_label_windows(self, windows: Sequence[ClosedLabelWindow]) -> None:
        """Write closed label windows together: one insert per table for all of them.

        The order is that of one window: error-stream change counts, decisions, detector
        states, then the performance rows, whose ``n_labeled`` row marks a window written.
        One window keeps the deduplication tokens it always had (``window_token``).
        """
        if not windows:
            return
        token = window_token([w.outcome for w in windows])
        changes = [
            DriftMetricRow(
                o.model_id,
                o.model_version,
                c.feature,
                c.detector,
                o.window_start,
                o.window_end,
                float(c.alarms),
                None,
                1.0,
                c.alarms > 0,
                0,
                c.n_values,
                w.computed_at,
            )
            for w in windows
            for o in (w.outcome,)
            for c in o.changes
        ]
        if changes:
            self.retry(
                "insert of error-stream change counts",
                lambda: self.warehouse.insert_drift_metrics(changes, dedup_token=f"errors:{token}"),
            )
        self._decisions([r for w in windows for r in w.requests], [a for w in windows for a in w.alerts], token)
        states = [
            _state_row(w.outcome, "error", w.computed_at) for w in windows if w.outcome.detector_state is not None
        ]
        if states:
            self.retry(
                "insert of change-detector states",
                lambda: self.warehouse.insert_detector_states(states, dedup_token=f"detectors:error:{token}"),
            )
        rows = []
        for w in windows:
            o, at = w.outcome, w.computed_at
            m, v, start, end = o.model_id, o.model_version, o.window_start, o.window_end
            rows += [
                PerformanceRow(m, v, r.metric, start, end, float(r.value), int(r.n_labeled), at, segment=r.segment)
                for r in o.rows
            ]
            rows.append(PerformanceRow(m, v, N_LABELED, start, end, float(o.n_labeled), o.n_labeled, at))
        self.retry(
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
            self.retry(
                "insert of a retrain request",
                lambda r=r: self.warehouse.upsert_retrain_request(r, "requested", updated_at=r.requested_at),
            )
        if alerts:
            self.retry(
                "insert of alerts", lambda: self.warehouse.insert_alerts(list(alerts), dedup_token=f"alerts:{token}")
            )
            if self.webhook is not None:
                # at least once, like everything else: a window replayed after a crash may post again
                self.webhook.send(list(alerts))


__all__ = [
    "ClosedLabelWindow",
    "ClosedWindow",
    "Rejected",
    "SinkError",
    "Sinks",
    "combined_token",
    "profile_rows",
    "transient",
    "window_token",
]
