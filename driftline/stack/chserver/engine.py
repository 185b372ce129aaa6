"""chdb connections behind the embedded server: sessions, a pool, per-request settings.

One process owns a chdb path; inside it, any number of chdb connections to the
path may be open, each with its own session state (settings, current
database, temporary tables). A connection is never used by two threads at
once: inserts through a shared connection mix up data. So every HTTP session
gets its own connection, and requests without a session borrow one from a pool.

ClickHouse applies URL settings to one query only. chdb has no per-query
settings argument, so a connection keeps an *overlay*: the request's
settings are SET before the query, and the values they replaced are SET back
when a later request on that connection does not ask for them. A client that
sends the same settings with every query (clickhouse-connect does) therefore
costs no extra statements after its first query.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from chdb.state import sqlitelike

from driftline.stack.chserver.errors import (
    SESSION_IS_LOCKED,
    SESSION_LIMIT_EXCEEDED,
    SESSION_NOT_FOUND,
    UNKNOWN_FORMAT,
    UNKNOWN_SETTING,
    ClickHouseError,
)
from driftline.stack.chserver.sql import (
    ALLOWED_ENGINES,
    ALLOWED_TABLE_FUNCTIONS,
    DENIED_CALLS,
    Confinement,
    Statement,
    is_identifier,
    quote_identifier,
    quote_string,
)
from driftline.stack.process import StackError

logger = logging.getLogger("driftline.stack.chserver")

DEFAULT_FORMAT = "TabSeparated"
# chdb's Python layer turns these format names into Python objects instead of bytes.
_PYTHON_OBJECT_FORMATS = frozenset({"dataframe", "arrowtable", "datastore"})
_INSERT_APPEND_BYTES = 1 << 20  # coalesce small request chunks: each append is a call into the engine
DEFAULT_MAX_EXECUTION_TIME = 600.0  # seconds; every connection starts with it, a client may only lower it
DEFAULT_MAX_SESSIONS = 64  # each session holds a chdb connection of its own


@dataclass(frozen=True)
class Limits:
    """What the engine holds every request to.

    ``readonly`` is the user's level (ClickHouse's setting: 1 reads only, 2 reads and changes
    settings); every connection starts with it, so neither a URL parameter nor ``SETTINGS
    readonly = 0`` can lift it: the engine refuses to lower ``readonly`` once it is set.

    >>> Limits(readonly=2).connection_string("/data", 1)
    '/data?max_execution_time=600&readonly=2'
    >>> Limits().connection_string("/data", 0)
    '/data?max_execution_time=600'
    """

    readonly: int = 0
    max_execution_time: float = DEFAULT_MAX_EXECUTION_TIME
    max_sessions: int = DEFAULT_MAX_SESSIONS

    def connection_string(self, path: str, readonly: int) -> str:
        level = max(self.readonly, readonly)
        extra = f"&readonly={level}" if level else ""
        return f"{path}?max_execution_time={self.max_execution_time:g}{extra}"


@dataclass
class QueryStats:
    """What ClickHouse reports in ``X-ClickHouse-Summary``.

    >>> QueryStats(written_rows=3).header()
    '{"read_rows":"0","read_bytes":"0","written_rows":"3","written_bytes":"0","total_rows_to_read":"0","result_rows":"0","result_bytes":"0","elapsed_ns":"0"}'
    """

    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    elapsed_ns: int = 0

    def add_result(self, result: object) -> None:
        """Fold in one chdb result (or streamed chunk)."""
        self.read_rows = max(self.read_rows, result.storage_rows_read())  # type: ignore[attr-defined]
        self.read_bytes = max(self.read_bytes, result.storage_bytes_read())  # type: ignore[attr-defined]
        self.written_rows += result.rows_written()  # type: ignore[attr-defined]
        self.written_bytes += result.bytes_written()  # type: ignore[attr-defined]
        self.result_rows += result.rows_read()  # type: ignore[attr-defined]
        self.result_bytes += result.size()  # type: ignore[attr-defined]

    def header(self) -> str:
        values = {
            "read_rows": self.read_rows,
            "read_bytes": self.read_bytes,
            "written_rows": self.written_rows,
            "written_bytes": self.written_bytes,
            "total_rows_to_read": 0,
            "result_rows": self.result_rows,
            "result_bytes": self.result_bytes,
            "elapsed_ns": self.elapsed_ns,
        }
        return json.dumps({k: str(v) for k, v in values.items()}, separators=(",", ":"))


def _engine_error(exc: Exception) -> ClickHouseError:
    return exc if isinstance(exc, ClickHouseError) else ClickHouseError.from_engine(str(exc))


class EngineConnection:
    """One chdb connection with a request's settings and database laid over its session state.

    >>> conn = EngineConnection(sqlitelike.connect(":memory:"))
    >>> conn.prepare({"max_threads": "1"}, None, Statement("SELECT"))
    >>> conn.run("SELECT getSetting('max_threads')", "TabSeparated", None)[0]
    b'1\\n'
    >>> conn.prepare({}, None, Statement("SELECT"))  # the next request does not ask for it: restored
    >>> conn.run("SELECT value FROM system.settings WHERE name = 'max_threads' AND changed", "TSV", None)[0]
    b''
    >>> conn.close()
    """

    def __init__(self, connection: sqlitelike.Connection, database: str = "default") -> None:
        self._conn = connection
        self._applied: dict[str, str] = {}  # the overlay now in force
        self._baseline: dict[str, tuple[str, bool]] = {}  # what the overlay replaced: value, changed
        self.database = database  # the session's own current database
        self._current_database = database
        self.default_format = ""  # the session's default_format setting
        self.tainted = False  # holds session state a pooled connection must not pass on

    # -- request preparation -------------------------------------------------------------------
    def prepare(self, settings: Mapping[str, str], database: str | None, statement: Statement) -> None:
        """Bring the connection to the state this request asks for."""
        if statement.kind == "SET":
            # The user's SET changes the session itself; lay it on the session's own values.
            self._reconcile({})
        else:
            self._reconcile(settings)
        wanted = database or self.database
        if wanted != self._current_database:
            self._execute(f"USE {quote_identifier(wanted)}")
            self._current_database = wanted

    def _reconcile(self, settings: Mapping[str, str]) -> None:
        for name in settings:
            if not is_identifier(name):
                raise ClickHouseError(UNKNOWN_SETTING, f"Setting {name!r} is not a valid setting name")
        to_set = {k: v for k, v in settings.items() if self._applied.get(k) != v}
        to_restore = [k for k in self._applied if k not in settings]
        if not to_set and not to_restore:
            return
        self._remember_baseline([k for k in to_set if k not in self._baseline])
        assignments = [f"{k} = {quote_string(v)}" for k, v in to_set.items()]
        assignments += [self._restore_assignment(k) for k in to_restore]
        try:
            self._execute("SET " + ", ".join(assignments))
        except ClickHouseError:
            self._reset_overlay()
            raise
        self._applied = dict(settings)

    def _remember_baseline(self, names: list[str]) -> None:
        if not names:
            return
        listed = ", ".join(quote_string(n) for n in names)
        body, _ = self.run(
            f"SELECT name, value, changed FROM system.settings WHERE name IN ({listed})", "JSONCompactEachRow", None
        )
        for line in body.splitlines():
            name, value, changed = json.loads(line)
            self._baseline[name] = (value, bool(int(changed)))

    def _restore_assignment(self, name: str) -> str:
        value, changed = self._baseline.get(name, ("", False))
        return f"{name} = {quote_string(value)}" if changed else f"{name} = DEFAULT"

    def _reset_overlay(self) -> None:
        """After a failed SET part of the overlay may be in force: put every known setting back, one by one."""
        for name in set(self._applied) | set(self._baseline):
            try:
                self._execute("SET " + self._restore_assignment(name))
            except ClickHouseError:
                logger.warning("could not restore setting %s on a chdb connection", name)
        self._applied = {}

    def after(self, statement: Statement) -> None:
        """Learn the session state a SET or USE statement changed."""
        if statement.kind == "SET":
            self._baseline.clear()
            body, _ = self.run("SELECT getSetting('default_format')", "TabSeparatedRaw", None)
            self.default_format = body.decode().strip()
        elif statement.kind == "USE":
            body, _ = self.run("SELECT currentDatabase()", "TabSeparatedRaw", None)
            self.database = self._current_database = body.decode().strip()
        if statement.changes_session:
            self.tainted = True

    # -- execution ---------------------------------------------------------------------------------
    def _execute(self, sql: str) -> None:
        self.run(sql, DEFAULT_FORMAT, None)

    def run(self, sql: str, fmt: str, params: Mapping[str, str] | None) -> tuple[bytes, QueryStats]:
        """Run a statement to completion; the whole result in memory."""
        _check_format(fmt)
        started = time.perf_counter_ns()
        try:
            result = self._conn.query(sql, fmt, params=dict(params) if params else None)
        except Exception as exc:
            raise _engine_error(exc) from None
        stats = QueryStats()
        stats.add_result(result)
        stats.elapsed_ns = time.perf_counter_ns() - started
        return result.bytes(), stats

    def stream(self, sql: str, fmt: str, params: Mapping[str, str] | None, stats: QueryStats) -> Iterator[bytes]:
        """Run a query, yielding its output chunk by chunk (``fmt`` must concatenate cleanly)."""
        _check_format(fmt)
        started = time.perf_counter_ns()
        try:
            result = self._conn.send_query(sql, fmt, params=dict(params) if params else None)
        except Exception as exc:
            raise _engine_error(exc) from None
        finished = False
        try:
            while True:
                try:
                    chunk = result.fetch()
                except Exception as exc:
                    finished = True  # a failed stream is already closed by chdb
                    raise _engine_error(exc) from None
                if chunk is None:
                    finished = True
                    break
                stats.add_result(chunk)
                stats.elapsed_ns = time.perf_counter_ns() - started
                data = chunk.bytes()
                if data:
                    yield data
        finally:
            if not finished:
                result.cancel()

    def insert(self, sql: str, fmt: str, chunks: Iterable[bytes]) -> QueryStats:
        """Stream ``chunks`` (data in format ``fmt``) into ``sql``, an INSERT without its FORMAT clause."""
        started = time.perf_counter_ns()
        try:
            inserter = self._conn.send_insert(sql, fmt)
        except Exception as exc:
            raise _engine_error(exc) from None
        try:
            pending = bytearray()
            for chunk in chunks:
                if not pending and len(chunk) >= _INSERT_APPEND_BYTES:
                    inserter.append(chunk)
                    continue
                pending += chunk
                if len(pending) >= _INSERT_APPEND_BYTES:
                    inserter.append(bytes(pending))
                    pending.clear()
            if pending:
                inserter.append(bytes(pending))
            result = inserter.finish()
        except RuntimeError as exc:  # chdb reports rejected data as RuntimeError with ClickHouse's text
            _cancel(inserter)
            raise _engine_error(exc) from None
        except BaseException:  # a bad body or a lost client; parts already written stay, as in ClickHouse
            _cancel(inserter)
            raise
        return QueryStats(
            written_rows=result.rows_written,
            written_bytes=result.bytes_written,
            elapsed_ns=time.perf_counter_ns() - started,
        )

    def close(self) -> None:
        try:
            self._conn.close()
        except Exception:
            logger.debug("closing a chdb connection failed", exc_info=True)


def _cancel(inserter: sqlitelike.StreamingInserter) -> None:
    try:
        inserter.cancel()
    except Exception:
        logger.debug("cancelling a failed insert failed too", exc_info=True)


def _check_format(fmt: str) -> None:
    if fmt.lower() in _PYTHON_OBJECT_FORMATS:
        raise ClickHouseError(UNKNOWN_FORMAT, f"Unknown output format {fmt}")


@dataclass
class Session:
    """An HTTP session: its connection, the lock that keeps its requests apart, and its expiry.

    >>> session = Session("s1", connection=None, timeout=60.0, last_used=0.0)  # type: ignore[arg-type]
    >>> session.expired(now=30.0), session.expired(now=61.0)
    (False, True)
    """

    id: str
    connection: EngineConnection
    timeout: float
    last_used: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expired(self, now: float) -> bool:
        return now - self.last_used > self.timeout


class Lease:
    """A connection lent to one request; ``release`` gives it back exactly once.

    >>> returned = []
    >>> lease = Lease(connection=None, give_back=returned.append, session_id=None)  # type: ignore[arg-type]
    >>> lease.release(); lease.release(broken=True)
    >>> returned
    [False]
    """

    def __init__(self, connection: EngineConnection, give_back: Callable[[bool], None], session_id: str | None) -> None:
        self.connection = connection
        self.session_id = session_id
        self._give_back = give_back
        self._released = False

    def release(self, broken: bool = False) -> None:
        if not self._released:
            self._released = True
            self._give_back(broken)


@dataclass(frozen=True)
class ServerInfo:
    """What the engine tells clients about itself.

    >>> ServerInfo("26.9.2.1", "Etc/UTC", http_compression_default=True).timezone
    'Etc/UTC'
    """

    version: str
    timezone: str
    http_compression_default: bool


class Engine:
    """The chdb engine at one path, shared by every request of the server.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     engine = Engine(tmp)
    ...     lease = engine.lease("s1", timeout=60, check=False)
    ...     lease.connection.run("SELECT 1", "TSV", None)[0]
    ...     lease.release()
    ...     engine.close()
    b'1\\n'
    """

    def __init__(self, path: str | Path, pool_size: int = 8, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        # The anchor holds the path for the server's lifetime, even when no request is running.
        try:
            self._anchor = self._open()
        except Exception as exc:
            raise StackError(
                f"cannot open chdb at {self.path} ({exc}); only one process can use a chdb path: "
                "is another server or a chdb:// client using it?"
            ) from exc
        body, _ = self._anchor.run(
            "SELECT version(), timezone(), getSetting('enable_http_compression')", "JSONCompactEachRow", None
        )
        version, timezone, compression = json.loads(body)
        self.info = ServerInfo(version, timezone, str(compression).lower() in ("1", "true"))
        self.confinement = Confinement(self.limits.max_execution_time, self._denied_calls())
        self._pools: dict[int, list[EngineConnection]] = {}
        self._pool_size = pool_size
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _open(self, readonly: int = 0) -> EngineConnection:
        return EngineConnection(sqlitelike.connect(self.limits.connection_string(str(self.path), readonly)))

    def _denied_calls(self) -> frozenset[str]:
        """The static list plus every table function and engine this chdb has beyond the allowlists."""
        body, _ = self._anchor.run(
            "SELECT lower(name) FROM system.table_functions UNION ALL SELECT lower(name) FROM system.table_engines "
            "UNION ALL SELECT lower(name) FROM system.database_engines",
            "TabSeparatedRaw",
            None,
        )
        listed = set(body.decode().split()) - ALLOWED_TABLE_FUNCTIONS - ALLOWED_ENGINES
        return DENIED_CALLS | frozenset(listed)

    def confine(self, connection: EngineConnection, sql: str) -> None:
        """Ask the engine's own parser what ``sql`` calls, and refuse what reaches files or the network.

        The lexer has already looked; this catches any shape it reads differently from ClickHouse.
        A statement the parser rejects is left for the engine to reject with its own message.

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     engine = Engine(tmp)
        ...     lease = engine.lease(None, timeout=60, check=False)
        ...     engine.confine(lease.connection, "SELECT count() FROM numbers(3)")
        ...     try:
        ...         engine.confine(lease.connection, "SELECT * FROM `url`('http://example.com', 'TSV')")
        ...     except ClickHouseError as err:
        ...         print(err.name, err.message)
        ...     lease.release(); engine.close()
        ACCESS_DENIED url(...) is not allowed on this server: it reads files or reaches the network
        """
        try:
            ast, _ = connection.run("EXPLAIN AST " + sql, "TabSeparatedRaw", None)
        except ClickHouseError:
            return
        self.confinement.check_ast(ast.decode("utf-8", "replace"))

    def lease(self, session_id: str | None, timeout: float, check: bool, readonly: int = 0) -> Lease:
        """A connection for one request: the session's own, or one from the pool of its ``readonly`` level.

        Pooled connections are opened at the level a request asks for (at least the user's) and only
        ever serve that level: ``readonly`` cannot be lowered on a chdb connection. A session keeps the
        connection it was opened with, at the user's level.
        """
        if session_id:
            session = self._acquire_session(session_id, timeout, check)
            return Lease(session.connection, lambda broken: self._release_session(session), session_id)
        level = max(self.limits.readonly, readonly)
        with self._lock:
            pool = self._pools.setdefault(level, [])
            connection = pool.pop() if pool else None
        if connection is None:
            connection = self._open(level)
        return Lease(connection, lambda broken: self._return(connection, broken, level), None)

    def _return(self, connection: EngineConnection, broken: bool, level: int) -> None:
        with self._lock:
            pool = self._pools.setdefault(level, [])
            if not (broken or connection.tainted or self._closed) and len(pool) < self._pool_size:
                pool.append(connection)
                return
        connection.close()

    def _acquire_session(self, session_id: str, timeout: float, check: bool) -> Session:
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expired(now) and session.lock.acquire(blocking=False):
                del self._sessions[session_id]  # expired but not yet reaped
                session.connection.close()
                session.lock.release()
                session = None
            if session is None:
                if check:
                    raise ClickHouseError(SESSION_NOT_FOUND, f"Session {session_id} not found")
                if len(self._sessions) >= self.limits.max_sessions:
                    raise ClickHouseError(
                        SESSION_LIMIT_EXCEEDED,
                        f"Too many sessions ({self.limits.max_sessions} open, the server's --max-sessions); "
                        "close idle ones or wait for them to expire",
                    )
                session = Session(session_id, self._open(), timeout)
                self._sessions[session_id] = session
                logger.debug("session opened session=%s timeout=%s", session_id, timeout)
            if not session.lock.acquire(blocking=False):
                raise ClickHouseError(SESSION_IS_LOCKED, f"Session {session_id} is locked by a concurrent client")
            session.timeout = timeout
            return session

    def _release_session(self, session: Session) -> None:
        session.last_used = time.monotonic()
        session.lock.release()

    def reap_sessions(self) -> int:
        """Close sessions idle past their timeout; the number closed."""
        now = time.monotonic()
        closed = []
        with self._lock:
            for session_id, session in list(self._sessions.items()):
                if session.expired(now) and session.lock.acquire(blocking=False):
                    del self._sessions[session_id]
                    closed.append(session)
        for session in closed:
            session.connection.close()
            session.lock.release()
            logger.debug("session expired session=%s", session.id)
        return len(closed)

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        """Close every connection; requests still running must have finished."""
        with self._lock:
            self._closed = True
            connections = [s.connection for s in self._sessions.values()]
            connections += [c for pool in self._pools.values() for c in pool]
            self._sessions.clear()
            self._pools = {}
        for connection in connections:
            connection.close()
        self._anchor.close()
