"""The ClickHouse warehouse adapter: every driftline read and write of ClickHouse.

``DRIFTLINE_WAREHOUSE`` names the warehouse:

- ``http(s)://[user[:password]@]host:port/database``: a ClickHouse server, or
  the embedded one that ``driftline stack up`` serves;
- ``chdb://PATH``: the engine inside this process (``chdb://:memory:`` for a
  throwaway one). The database is ``driftline`` unless given as
  ``?database=NAME``. chdb allows one PATH per process, and one process per
  PATH.

Both go through clickhouse-connect. Each thread gets its own client: a chdb
connection shared between threads mixed up inserted data, and a ClickHouse
HTTP session refuses concurrent queries. Inserts are columnar (Native, or
Arrow for predictions), queries bind parameters server-side
(``{name:Type}``), and timestamps are epoch milliseconds in
``DateTime64(3, 'UTC')`` columns: typed inserts, never JSONEachRow, in which
chdb turns epoch-millisecond integers into the year 9999 without an error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from driftline.schemas import CLICKHOUSE_DIR
from driftline.streams.records import Alert, DriftReport, LabelEvent, PredictionBatch, RetrainRequest
from driftline.streams.warehouse.errors import WarehouseError
from driftline.streams.warehouse.location import WarehouseLocation
from driftline.streams.warehouse.migrations import (
    MIGRATIONS_DDL,
    MIGRATIONS_TABLE,
    Migration,
    MigrationError,
    load_migrations,
)
from driftline.streams.warehouse.rows import (
    DetectorStateRow,
    DriftMetricRow,
    ModelVersionRow,
    PerformanceRow,
    RejectedEventRow,
    WindowProfileRow,
    alert_columns,
    columns,
    drift_metric_rows,
    drift_report_columns,
    label_columns,
    predictions_table,
    retrain_request_columns,
)
from driftline.streams.warehouse.ttl import RowTTL

if TYPE_CHECKING:
    import pandas as pd
    from clickhouse_connect.driver.client import Client

    from driftline.settings import Settings

log = logging.getLogger(__name__)

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
# Columns of a training snapshot that are not features.
SNAPSHOT_COLUMNS = ("event_id", "model_version", "event_time", "prediction", "label")

__all__ = ["Warehouse", "WarehouseError", "WarehouseLocation", "MigrationError"]


class Warehouse:
    """The ClickHouse warehouse, over HTTP or in-process (chdb).

    >>> with Warehouse.connect("chdb://:memory:?database=doc") as wh:
    ...     _ = wh.migrate()
    ...     wh.query_rows("SELECT {x:UInt8} + 1 AS y", {"x": 41})
    [{'y': 42}]
    """

    def __init__(self, location: WarehouseLocation) -> None:
        self.location = location
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        self._closed = False
        self._tables: dict[str, _TableInfo] = {}

    # ---- lifecycle -------------------------------------------------------

    @classmethod
    def connect(cls, url: str, *, migrate: bool = False) -> Warehouse:
        """Connect, create the database if missing, and optionally apply the migrations."""
        warehouse = cls(WarehouseLocation.parse(url))
        try:
            warehouse._create_database()
            if migrate:
                warehouse.migrate()
        except BaseException:
            warehouse.close()
            raise
        return warehouse

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = False) -> Warehouse:
        """Connect to ``settings.warehouse``; a local stack's password is found in its state directory."""
        from driftline.settings import warehouse_url

        return cls.connect(warehouse_url(settings), migrate=migrate)

    @property
    def database(self) -> str:
        return self.location.database

    def close(self) -> None:
        """Close every thread's client; the warehouse cannot be used afterwards."""
        with self._lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # closing is best effort: the process may be exiting
                log.debug("closing a warehouse client failed", exc_info=True)

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Warehouse({self.location.redacted()!r})"

    @property
    def client(self) -> Client:
        """This thread's clickhouse-connect client, created on first use."""
        if self._closed:
            raise WarehouseError(f"{self!r} is closed")
        _pandas_as_imported()
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._open_client(self.database)
            self._local.client = client
        return client

    def _open_client(self, database: str | None) -> Client:
        import clickhouse_connect

        loc = self.location
        with self._lock:
            if self._closed:
                raise WarehouseError(f"{self!r} is closed")
        if loc.kind == "chdb":
            if loc.path:
                Path(loc.path).mkdir(parents=True, exist_ok=True)
            # the engine's own message for a path locked by another process says nothing about locks
            hint = (
                "; chdb runs one engine per process and one process per path: if another process (a worker, "
                "`driftline stack up`) uses this path, connect to it over HTTP instead"
            )
            with self._errors(f"opening the chdb engine at {loc.path or ':memory:'}", hint=hint):
                client = clickhouse_connect.get_client(
                    interface="chdb", path=loc.path, database=database, tz_mode="aware"
                )
        else:
            with self._errors(f"connecting to {loc.redacted()}"):
                client = clickhouse_connect.get_client(
                    interface=loc.kind,
                    host=loc.host,
                    port=loc.port,
                    username=loc.username,
                    password=loc.password,
                    database=database,
                    tz_mode="aware",
                    connect_timeout=10,
                    compress=False if loc.compress == "none" else loc.compress,
                )
        with self._lock:
            self._clients.append(client)
        return client

    def _create_database(self) -> None:
        # The database may not exist yet, and an HTTP client bound to a missing database fails to connect.
        bootstrap = self._open_client(None)
        with self._errors(f"creating database {self.database}"):
            # ask first: a user may read and write a database without the grant to create one
            exists = bootstrap.command(
                "SELECT count() FROM system.databases WHERE name = {db:String}", parameters={"db": self.database}
            )
            if not int(exists):
                bootstrap.command("CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters={"db": self.database})
            bootstrap.database = self.database
        self._local.client = bootstrap

    @contextlib.contextmanager
    def _errors(self, what: str, hint: str = "") -> Iterator[None]:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            yield
        except ClickHouseError as exc:
            code = getattr(exc, "code", None)
            raise WarehouseError(f"{what} failed ({self.location.redacted()}): {exc}{hint}", code=code) from exc

    # ---- generic queries -------------------------------------------------

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        """Run a statement (DDL, OPTIMIZE, ...); returns ClickHouse's short answer, if any."""
        with self._errors(f"command {_head(sql)}"):
            return self.client.command(sql, parameters=dict(parameters or {}))

    def query_rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The result as a list of dicts. Timestamps come back as UTC-aware datetimes."""
        with self._errors(f"query {_head(sql)}"):
            return list(self.client.query(sql, parameters=dict(parameters or {})).named_results())

    def query_df(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pd.DataFrame:
        import pandas  # noqa: F401  (clickhouse-connect uses it once it is imported: see _pandas_as_imported)

        with self._errors(f"query {_head(sql)}"):
            return self.client.query_df(sql, parameters=dict(parameters or {}))

    def query_arrow(self, sql: str, parameters: Mapping[str, Any] | None = None) -> pa.Table:
        with self._errors(f"query {_head(sql)}"):
            return self.client.query_arrow(sql, parameters=dict(parameters or {}))

    # ---- generic inserts -------------------------------------------------

    def insert(
        self,
        table: str,
        columns: Mapping[str, Sequence[Any] | np.ndarray],
        *,
        dedup_token: str | None = None,
    ) -> int:
        """Insert equal-length columns as one Native block; returns the number of rows.

        Ints in DateTime64 columns are epoch milliseconds (every driftline
        timestamp column has precision 3); numpy datetime64 arrays are
        converted. With ``dedup_token``, a retry of the same insert counts
        once (the table needs ``non_replicated_deduplication_window``).
        Rows already past the table's TTL are refused with an error:
        ClickHouse would acknowledge them and delete them moments later.
        """
        _check_table(table)
        if not columns:
            raise ValueError(f"insert into {table}: no columns given")
        names = list(columns)
        data = [_column_values(columns[name]) for name in names]
        lengths = {name: len(values) for name, values in zip(names, data)}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"insert into {table}: columns differ in length: {lengths}")
        n = len(data[0])
        if n == 0:
            return 0
        info = self._table_info(table)
        if not set(names) <= set(info.types):
            self._tables.pop(table, None)  # a newer migration may have added the column since we looked
            info = self._table_info(table)
        types = info.types
        unknown = [name for name in names if name not in types]
        if unknown:
            raise WarehouseError(
                f"insert into {table}: no column(s) {', '.join(unknown)}; the table has {', '.join(types)}"
            )
        if info.ttl is not None and info.ttl.column in lengths:
            _refuse_expired(table, info.ttl, data[names.index(info.ttl.column)])
        try:
            with self._errors(f"insert of {n} rows into {table}"):
                self.client.insert(
                    table,
                    data,
                    column_names=names,
                    column_type_names=[types[name] for name in names],
                    column_oriented=True,
                    settings=_insert_settings(dedup_token, table),
                )
        except WarehouseError:
            self._tables.pop(table, None)  # the table may have changed under us
            raise
        except (ValueError, TypeError, OverflowError) as exc:  # clickhouse-connect serialises client-side
            raise WarehouseError(f"insert of {n} rows into {table}: values do not fit the column types: {exc}") from exc
        _FREED.after(n * len(names) * 8)  # about 8 bytes a value, as serialised (strings and maps weigh more)
        return n

    def _table_info(self, table: str) -> _TableInfo:
        # Cached: saves a DESCRIBE round trip per insert. Migrations only add columns, so a cached type stays right.
        info = self._tables.get(table)
        if info is None:
            database, _, name = table.rpartition(".")
            rows = self.query_rows(
                "SELECT name, type, (SELECT any(engine_full) FROM system.tables WHERE database = {db:String} "
                "AND name = {table:String}) AS engine_full "
                "FROM system.columns WHERE database = {db:String} AND table = {table:String} ORDER BY position",
                {"db": database or self.database, "table": name},
            )
            if not rows:
                raise WarehouseError(
                    f"insert into {table}: no such table in {self.location.redacted()} (run migrate()?)"
                )
            types = {r["name"]: r["type"] for r in rows}
            info = self._tables[table] = _TableInfo(types, RowTTL.parse(rows[0]["engine_full"]))
        return info

    def insert_arrow(self, table: str, data: pa.Table, *, dedup_token: str | None = None) -> int:
        """Insert an Arrow table (columns by name); returns the number of rows."""
        _check_table(table)
        if data.num_rows == 0:
            return 0
        with self._errors(f"insert of {data.num_rows} rows into {table}"):
            self.client.insert_arrow(table, data, settings=_insert_settings(dedup_token, table))
        _FREED.after(data.nbytes)
        return data.num_rows

    # ---- typed inserts ---------------------------------------------------

    def insert_drift_metrics(
        self, rows: Sequence[DriftMetricRow | Mapping[str, Any]], *, dedup_token: str | None = None
    ) -> int:
        return self.insert("drift_metrics", columns(rows, DriftMetricRow), dedup_token=dedup_token)

    def insert_drift_reports(
        self,
        reports: Sequence[DriftReport],
        *,
        with_metrics: bool = True,
        dedup_token: str | None = None,
        late_events: Sequence[int] | None = None,
    ) -> int:
        """One ``drift_reports`` row per report (with ``late_events`` per report, when given) and, unless told
        otherwise, their ``drift_metrics`` rows."""
        if with_metrics:
            rows = [row for report in reports for row in drift_metric_rows(report)]
            self.insert_drift_metrics(rows, dedup_token=None if dedup_token is None else f"{dedup_token}:metrics")
        return self.insert("drift_reports", drift_report_columns(reports, late_events), dedup_token=dedup_token)

    def insert_window_profiles(
        self, rows: Sequence[WindowProfileRow | Mapping[str, Any]], *, dedup_token: str | None = None
    ) -> int:
        return self.insert("window_profiles", columns(rows, WindowProfileRow), dedup_token=dedup_token)

    def insert_performance_metrics(
        self, rows: Sequence[PerformanceRow | Mapping[str, Any]], *, dedup_token: str | None = None
    ) -> int:
        return self.insert("performance_metrics", columns(rows, PerformanceRow), dedup_token=dedup_token)

    def insert_detector_states(
        self, rows: Sequence[DetectorStateRow | Mapping[str, Any]], *, dedup_token: str | None = None
    ) -> int:
        return self.insert("detector_states", columns(rows, DetectorStateRow), dedup_token=dedup_token)

    def insert_predictions(
        self, batches: PredictionBatch | Sequence[PredictionBatch], *, dedup_token: str | None = None
    ) -> int:
        """Insert one or more batches as a single Arrow block."""
        if isinstance(batches, PredictionBatch):
            batches = [batches]
        return self.insert_arrow("predictions", predictions_table(batches), dedup_token=dedup_token)

    def insert_labels(self, events: Sequence[LabelEvent | Mapping[str, Any]], *, dedup_token: str | None = None) -> int:
        return self.insert("labels", label_columns(events), dedup_token=dedup_token)

    def insert_alerts(self, alerts: Sequence[Alert | Mapping[str, Any]], *, dedup_token: str | None = None) -> int:
        return self.insert("alerts", alert_columns(alerts), dedup_token=dedup_token)

    def insert_rejected_events(
        self, rows: Sequence[RejectedEventRow | Mapping[str, Any]], *, dedup_token: str | None = None
    ) -> int:
        return self.insert("rejected_events", columns(rows, RejectedEventRow), dedup_token=dedup_token)

    def upsert_retrain_request(
        self,
        request: RetrainRequest,
        status: str,
        error: str | None = None,
        *,
        registered_version: str | None = None,
        updated_at: int | None = None,
    ) -> None:
        """Record ``request`` in ``status``; the latest ``updated_at`` wins (read with FINAL)."""
        stamp = _now_ms() if updated_at is None else updated_at
        self.insert("retrain_requests", retrain_request_columns(request, status, stamp, error, registered_version))

    def upsert_model_versions(self, rows: Sequence[ModelVersionRow | Mapping[str, Any]]) -> int:
        return self.insert("model_versions", columns(rows, ModelVersionRow))

    # ---- migrations ------------------------------------------------------

    def migrate(self, directory: Path = CLICKHOUSE_DIR) -> list[Migration]:
        """Apply the migrations not yet applied, in order; returns those applied now.

        An applied migration whose file changed since is an error, found
        before anything is applied.
        """
        migrations = load_migrations(directory)
        self._tables.clear()
        self.command(MIGRATIONS_DDL)
        applied = {row["version"]: row for row in self.applied_migrations()}
        for m in migrations:
            done = applied.get(m.version)
            if done is not None and done["checksum"] != m.checksum:
                raise MigrationError(
                    f"migration {m.version:04d}_{m.name} was applied to {self.location.redacted()} with checksum "
                    f"{done['checksum'][:12]}, but the file now has {m.checksum[:12]}: applied migrations must not "
                    "change; add a new migration instead"
                )
        unknown = sorted(set(applied) - {m.version for m in migrations})
        if unknown:
            log.warning(
                "warehouse %s has migrations %s that %s does not know", self.location.redacted(), unknown, directory
            )
        pending = [m for m in migrations if m.version not in applied]
        for m in pending:
            for statement in m.statements:
                try:
                    self.command(statement)
                except WarehouseError as exc:
                    raise MigrationError(f"migration {m.version:04d}_{m.name} failed: {exc}") from exc
            self.insert(
                MIGRATIONS_TABLE,
                {"version": [m.version], "name": [m.name], "checksum": [m.checksum], "applied_at": [_now_ms()]},
            )
            log.info("applied warehouse migration %04d_%s to %s", m.version, m.name, self.location.redacted())
        self._tables.clear()
        return pending

    def applied_migrations(self) -> list[dict[str, Any]]:
        return self.query_rows(
            f"SELECT version, name, checksum, applied_at FROM {MIGRATIONS_TABLE} FINAL ORDER BY version"
        )

    # ---- what the worker and the retrainer read --------------------------

    def retrain_request_status(self, request_id: str) -> dict[str, Any] | None:
        """The latest ``status``, ``error`` and ``registered_version`` of a retrain request (None: no row)."""
        rows = self.query_rows(
            "SELECT toString(status) AS status, error, registered_version FROM retrain_requests FINAL "
            "WHERE request_id = {request_id:String}",
            {"request_id": request_id},
        )
        return rows[0] if rows else None

    def latest_closed_window(self, model_id: str, model_version: str) -> int | None:
        """The end (epoch ms) of the latest window profiled for a model version, or None."""
        rows = self.query_rows(
            "SELECT count() AS n, toUnixTimestamp64Milli(max(window_end)) AS end_ms FROM window_profiles "
            "WHERE model_id = {model_id:String} AND model_version = {model_version:String}",
            {"model_id": model_id, "model_version": model_version},
        )
        return int(rows[0]["end_ms"]) if rows[0]["n"] else None

    def latest_detector_state(
        self, model_id: str, model_version: str, stream: str, at_or_before_ms: int
    ) -> bytes | None:
        """The change-detector state of a version's stream after its latest window ending at or before
        ``at_or_before_ms`` (``DetectorStateRow.state``), or None.

        The state is binary: it travels as base64, which a String column of the
        driver's results could not carry unchanged.
        """
        rows = self.query_rows(
            "SELECT base64Encode(state) AS state FROM detector_states "
            "WHERE model_id = {model_id:String} AND model_version = {model_version:String} "
            "AND stream = {stream:String} "
            "AND window_end <= fromUnixTimestamp64Milli({at:Int64}, 'UTC') ORDER BY window_end DESC LIMIT 1",
            {"model_id": model_id, "model_version": model_version, "stream": stream, "at": int(at_or_before_ms)},
        )
        return base64.b64decode(rows[0]["state"]) if rows else None

    def training_snapshot(self, model_id: str, start_ms: int, end_ms: int) -> pa.Table:
        """Labelled predictions of ``model_id`` with ``start_ms <= event_time < end_ms``.

        One column per feature (numeric: float64 with NaN for missing;
        categorical: string with null for missing), plus ``event_id``,
        ``model_version``, ``event_time``, ``prediction`` and ``label``
        (float64 for numeric labels, string for classes). Rows are ordered by
        event time then event id, so the same data gives the same table.
        """
        raw = self.query_arrow(
            "SELECT p.event_id AS event_id, p.model_version AS model_version, p.event_time AS event_time, "
            "p.numeric AS numeric, p.categorical AS categorical, p.prediction AS prediction, "
            "l.label_value AS label_value, l.label_class AS label_class "
            "FROM (SELECT * FROM predictions FINAL WHERE model_id = {model_id:String} "
            "      AND event_time >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') "
            "      AND event_time < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')) AS p "
            "INNER JOIN (SELECT event_id, label_value, label_class FROM labels FINAL "
            "            WHERE model_id = {model_id:String}) AS l ON p.event_id = l.event_id "
            "ORDER BY p.event_time, p.event_id",
            {"model_id": model_id, "start_ms": int(start_ms), "end_ms": int(end_ms)},
        )
        return _snapshot_table(raw)


@dataclass(frozen=True)
class _TableInfo:
    """What an insert needs to know about its table."""

    types: dict[str, str]
    ttl: RowTTL | None


def _refuse_expired(table: str, ttl: RowTTL, values: list[Any]) -> None:
    try:
        epoch_ms = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        return  # not epoch milliseconds (datetimes, nulls): clickhouse-connect converts or refuses those
    expired = ttl.expired(epoch_ms, _now_ms())
    if expired:
        raise WarehouseError(
            f"insert into {table}: {expired} of {len(epoch_ms)} rows have {ttl.column} past the table's TTL "
            f"({ttl.text}); ClickHouse would accept them and delete them at its next merge, so none were written"
        )


# Schema metadata key of a training snapshot: the features left out of it and why (JSON list).
SNAPSHOT_DROPPED_KEY = b"driftline.dropped_features"


def _snapshot_table(raw: pa.Table) -> pa.Table:
    n = raw.num_rows
    numeric = _flatten_map(raw.column("numeric"), n, numeric=True)
    categorical = _flatten_map(raw.column("categorical"), n, numeric=False)
    numeric, categorical, dropped = drop_clashing_features(numeric, categorical)
    values = raw.column("label_value")
    classes = raw.column("label_class")
    # one label event of the other kind must not fail the snapshot: the kind most rows use wins,
    # the others become unlabelled (and are dropped and counted downstream)
    numbers, words = n - values.null_count, n - classes.null_count
    keep_numbers = numbers >= words
    label = values.cast(pa.float64()) if keep_numbers else classes.cast(pa.string())
    if numbers and words:
        dropped.append(
            {
                "feature": "label",
                "kind": "label_class" if keep_numbers else "label_value",
                "reason": "label_kind_conflict",
                "values": words if keep_numbers else numbers,
            }
        )
    out = {
        "event_id": raw.column("event_id"),
        "model_version": raw.column("model_version"),
        "event_time": raw.column("event_time").cast(pa.timestamp("ms", tz="UTC")),
        **{name: numeric[name] for name in sorted(numeric)},
        **{name: categorical[name] for name in sorted(categorical)},
        "prediction": raw.column("prediction").cast(pa.float64()),
        "label": label,
    }
    table = pa.table(out)
    if not dropped:
        return table
    log.warning(
        "training snapshot: left out %s",
        "; ".join(f"{d['kind']} {d['feature']!r} ({d['reason']}, {d['values']} value(s))" for d in dropped),
    )
    return table.replace_schema_metadata({SNAPSHOT_DROPPED_KEY: json.dumps(dropped, sort_keys=True).encode()})


def drop_clashing_features(
    numeric: dict[str, pa.Array], categorical: dict[str, pa.Array]
) -> tuple[dict[str, pa.Array], dict[str, pa.Array], list[dict[str, Any]]]:
    """Features that cannot be snapshot columns, left out deterministically, with the reason for each.

    A feature named like a snapshot column (``label``, ``prediction``, ...) is left out
    (``reserved_feature_name``); a name used as numeric by some events and categorical by
    others keeps the kind more events used (numeric on a tie) and loses the other kind's
    values (``feature_kind_conflict``). ``values`` counts the non-missing values left out.

    >>> num = {"label": pa.array([1.0, 2.0]), "x": pa.array([1.0, float("nan")])}
    >>> cat = {"x": pa.array([None, "a"]), "y": pa.array(["u", "v"])}
    >>> num, cat, dropped = drop_clashing_features(num, cat)
    >>> sorted(num), sorted(cat)
    (['x'], ['y'])
    >>> [(d["feature"], d["kind"], d["reason"], d["values"]) for d in dropped]
    [('x', 'categorical', 'feature_kind_conflict', 1), ('label', 'numeric', 'reserved_feature_name', 2)]
    """

    def present(kind: str, array: pa.Array) -> int:
        if kind == "numeric":
            return int(np.count_nonzero(~np.isnan(array.to_numpy(zero_copy_only=False))))
        return len(array) - array.null_count

    numeric, categorical = dict(numeric), dict(categorical)
    dropped: list[dict[str, Any]] = []

    def drop(name: str, kind: str, reason: str) -> None:
        array = (numeric if kind == "numeric" else categorical).pop(name)
        dropped.append({"feature": name, "kind": kind, "reason": reason, "values": present(kind, array)})

    for name in sorted(set(numeric) & set(categorical) - set(SNAPSHOT_COLUMNS)):
        loser = (
            "categorical"
            if present("numeric", numeric[name]) >= present("categorical", categorical[name])
            else "numeric"
        )
        drop(name, loser, "feature_kind_conflict")
    for name in sorted(set(SNAPSHOT_COLUMNS)):
        for kind, features in (("numeric", numeric), ("categorical", categorical)):
            if name in features:
                drop(name, kind, "reserved_feature_name")
    return numeric, categorical, dropped


def _flatten_map(column: pa.ChunkedArray, n: int, *, numeric: bool) -> dict[str, pa.Array]:
    """One array per map key, positioned by row; absent keys are NaN (numeric) or null."""
    maps = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    if maps.offset:  # keys and items are the unsliced children: make the offsets start at 0
        maps = maps.take(pa.array(np.arange(len(maps))))
    offsets = maps.offsets.to_numpy()
    keys = maps.keys.to_numpy(zero_copy_only=False)
    items = maps.items
    rows = np.repeat(np.arange(n), np.diff(offsets))
    out: dict[str, pa.Array] = {}
    for name in np.unique(keys) if len(keys) else []:
        mask = keys == name
        where = rows[mask]
        if numeric:
            filled = np.full(n, np.nan)
            filled[where] = items.filter(pa.array(mask)).to_numpy(zero_copy_only=False)
            out[str(name)] = pa.array(filled)
        else:
            # scatter the matches into place: row -> position among the matches, or null
            position = np.full(n, -1, dtype=np.int64)
            position[where] = np.arange(len(where))
            out[str(name)] = pc.take(items.filter(pa.array(mask)), pa.array(position, mask=position < 0))
    return out


class _FreedMemory:
    """Hands glibc's free pages back to the system once inserts have freed ``every`` bytes or so.

    A big insert's buffers (the serialised block, its Python values) are freed into glibc's
    arenas, which keep most of them: a worker reading a backlog held 100 to 200 MiB free
    that way. ``malloc_trim`` returns them (a few ms for a few hundred MiB of heap); where
    the C library has none (not glibc), nothing happens.

    >>> freed = _FreedMemory(every=100)
    >>> freed.after(60), freed.after(60)
    (False, True)
    """

    def __init__(self, every: int) -> None:
        self.every = every
        self._pending = 0
        self._lock = threading.Lock()
        self._trim: Any = None

    def after(self, nbytes: int) -> bool:
        """Count ``nbytes`` freed; trim (and return True) when ``every`` bytes have been."""
        with self._lock:
            self._pending += nbytes
            if self._pending < self.every:
                return False
            self._pending = 0
        if self._trim is None:
            import ctypes

            self._trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
        if self._trim:
            self._trim(0)
        return True


_FREED = _FreedMemory(every=32 * 1024 * 1024)


def _pandas_as_imported() -> None:
    """Tell clickhouse-connect that pandas is absent until this process imports it.

    clickhouse-connect imports pandas (29 MiB, 500 modules) at its first insert, only to
    ask whether the data is a DataFrame, or a value pandas' NaT or a Timedelta: while no
    one has imported pandas no such object exists, so "pandas is not installed" (its own
    setting when the import fails) gives the same answers, for every column type, and a
    worker never loads pandas. Once pandas is imported (``query_df``, the retrainer),
    clickhouse-connect resolves it again at its next use.

    >>> from clickhouse_connect.driver import options
    >>> _pandas_as_imported()
    >>> vars(options).get("pd", "unresolved") is None or "pandas" in sys.modules
    True
    """
    from clickhouse_connect.driver import options

    resolved = vars(options)
    if "pandas" in sys.modules:
        if "pd" in resolved and resolved["pd"] is None:  # told absent before pandas came
            del resolved["pd"], resolved["pd_time_test"]
    elif "pd" not in resolved:
        resolved["pd"] = resolved["pd_time_test"] = None


def _column_values(values: Sequence[Any] | np.ndarray) -> list[Any]:
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "M":
            return values.astype("datetime64[ms]").astype(np.int64).tolist()
        return values.tolist()
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.to_pylist()
    return list(values)


def _check_table(table: str) -> None:
    if not _TABLE.match(table):
        raise ValueError(f"{table!r} is not a table name")


# Raw events are read with FINAL (event_id is their idempotency key), so an insert need not
# collapse repeated ids itself: skipping that pass over every column, the maps included, makes
# the server's insert of a 100k-row part about a quarter cheaper. Merges still collapse them.
_RAW_EVENT_TABLES = frozenset({"predictions", "labels"})


def _insert_settings(token: str | None, table: str) -> dict[str, str | int] | None:
    settings: dict[str, str | int] = {}
    if token is not None:
        settings["insert_deduplication_token"] = token
    if table.rpartition(".")[2] in _RAW_EVENT_TABLES:
        settings["optimize_on_insert"] = 0
    return settings or None


def _head(sql: str) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= 80 else flat[:77] + "..."


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
