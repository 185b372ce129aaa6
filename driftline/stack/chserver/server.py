"""The embedded ClickHouse HTTP server: chdb behind ClickHouse's HTTP interface.

Only one process can open a chdb path, so this process owns the warehouse, and
every other driftline process (worker, retrainer, CLI) and every analyst tool
(curl, clickhouse-connect's sync and async clients, Grafana's ClickHouse
datasource in HTTP mode) reaches it over HTTP::

    python -m driftline.stack.chserver --path DIR [--host H] [--port P] [--user U --password PW]

or, embedded in a test or a command::

    server = serve(path, "127.0.0.1", 0)   # port 0: any free port, see server.port
    ...
    server.close()

Safe by default (docs/SECURITY.md): with ``--password-file`` (``driftline stack up`` makes one) every
query needs the password; statements that read files, reach the network or run programs are refused
(``Confinement`` in ``sql``, then the engine's own parser); ``readonly`` is the engine's;
requests with an ``Origin`` or a foreign ``Host`` are refused; body, decompressed body, statement,
connections, header time, sessions and query time are limited (``--max-*``, ``--*-timeout``).

Why the standard library's ``ThreadingHTTPServer``: chdb's API is blocking and
releases the GIL while the engine works, so one thread per connection gives
real concurrency without an event loop, a request keeps its chdb connection on
one thread from start to end, and the server needs nothing beyond chdb. What
the stdlib lacks (chunked request bodies, chunked streaming responses, tracking
connections for a clean shutdown) is small and lives here.

Modules (``driftline.stack.chserver``): ``sql`` reads the statement, ``engine`` owns the chdb
connections (sessions, pool, per-request settings), ``codec`` does request and response
compression, ``native`` adapts Native output to the client's protocol revision, ``errors`` gives
errors ClickHouse's form, ``access`` decides whom to answer, ``cli`` runs this as a process.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import secrets
import socket
import socketserver
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import chain
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from driftline.stack.chserver.access import Credentials, allowed_hosts, host_allowed
from driftline.stack.chserver.codec import (
    ResponseEncoder,
    decode_body,
    decode_native_blocks,
    response_encoder,
    response_encoding,
)
from driftline.stack.chserver.engine import (
    DEFAULT_FORMAT,
    Engine,
    EngineConnection,
    Lease,
    Limits,
    QueryStats,
    ServerInfo,
)
from driftline.stack.chserver.errors import (
    ACCESS_DENIED,
    AUTHENTICATION_FAILED,
    BAD_ARGUMENTS,
    NOT_IMPLEMENTED,
    READONLY,
    STD_EXCEPTION,
    SYNTAX_ERROR,
    TOO_MANY_ROWS_OR_BYTES,
    TOO_MANY_SIMULTANEOUS_QUERIES,
    ClickHouseError,
)
from driftline.stack.chserver.native import upgrade_native
from driftline.stack.chserver.sql import (
    Head,
    InsertData,
    Statement,
    parse_statement,
    split_insert,
    tokenize,
)

logger = logging.getLogger("driftline.stack.chserver")

KEEP_ALIVE_SECONDS = 60
DEFAULT_SESSION_TIMEOUT = 60.0  # ClickHouse's default_session_timeout
MAX_SESSION_TIMEOUT = 3600.0  # and max_session_timeout
MAX_FORM_BYTES = 16 << 20  # a multipart form of query and bind parameters
READ_BYTES = 1 << 20
SPOOL_BYTES = 32 << 20  # wait_end_of_query results past this go to a temporary file

# URL parameters that steer the HTTP exchange, not the query; the rest are ClickHouse settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
        "session_timeout", "session_check", "compress", "decompress", "buffer_size", "wait_end_of_query",
        "client_protocol_version", "role", "stacktrace", "readonly", "add_http_cors_header",
        "enable_http_compression", "send_progress_in_http_headers", "cancel_http_readonly_queries_on_client_close",
    }
)  # fmt: skip
# Formats whose output for several blocks is the concatenation of each block's output, so chdb's
# streamed chunks can go to the client as they come. Others (JSON, Parquet, Arrow, ...WithNames)
# wrap the whole result and are answered from one complete result.
_STREAMABLE_FORMATS = frozenset(
    {
        "native", "tabseparated", "tsv", "tabseparatedraw", "tsvraw", "csv", "jsoneachrow", "jsonlines",
        "ndjson", "jsoncompacteachrow", "jsonstringseachrow", "jsoncompactstringseachrow", "rowbinary",
        "tskv", "lineasstring",
    }
)  # fmt: skip


def _content_type(fmt: str) -> str:
    name = fmt.lower()
    if name.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if name.startswith("csv"):
        return "text/csv; charset=UTF-8"
    if name.startswith("json") or name in ("ndjson", "jsonlines"):
        return "application/json; charset=UTF-8"
    if name == "xml":
        return "application/xml; charset=UTF-8"
    if name.startswith(("pretty", "vertical", "markdown", "values", "tskv", "lineasstring")):
        return "text/plain; charset=UTF-8"
    return "application/octet-stream"


@dataclass
class Request:
    """A query request's parameters, sorted into what the server does with them.

    >>> r = Request.parse("POST", {"database": "dl", "max_threads": "1", "param_x": "5", "session_id": "s"}, {})
    >>> r.database, r.settings, r.bind, r.session_id, r.readonly
    ('dl', {'max_threads': '1'}, {'x': '5'}, 's', 0)
    >>> Request.parse("GET", {}, {}).readonly  # ClickHouse: GET implies readonly=2
    2
    """

    query: str = ""
    database: str | None = None
    default_format: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    bind: dict[str, str] = field(default_factory=dict)
    query_id: str = ""
    session_id: str | None = None
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    session_check: bool = False
    readonly: int = 0
    get: bool = False
    wait_end_of_query: bool = False
    decompress: bool = False
    protocol_version: int = 0  # the client's Native protocol revision (client_protocol_version)
    compression_enabled: bool | None = None  # None: the engine's default
    zlib_level: int = 3

    @classmethod
    def parse(cls, method: str, params: Mapping[str, str], headers: Mapping[str, str]) -> Request:
        if _flag(params, "compress"):
            raise ClickHouseError(
                NOT_IMPLEMENTED,
                "compress=1 (ClickHouse-compressed responses) is not supported by the embedded server; "
                "use enable_http_compression=1 with an Accept-Encoding header",
            )
        request = cls(
            query=params.get("query", ""),
            database=params.get("database") or headers.get("X-ClickHouse-Database") or None,
            default_format=params.get("default_format") or headers.get("X-ClickHouse-Format") or None,
            query_id=params.get("query_id") or str(uuid.uuid4()),
            session_id=params.get("session_id") or None,
            session_timeout=_number(params, "session_timeout", DEFAULT_SESSION_TIMEOUT),
            session_check=_flag(params, "session_check"),
            readonly=min(2, max(0, int(_number(params, "readonly", 0)))),  # ClickHouse's levels; also bounds the pools
            get=method == "GET",
            wait_end_of_query=_flag(params, "wait_end_of_query") or _flag(params, "http_wait_end_of_query"),
            decompress=_flag(params, "decompress"),
            protocol_version=int(_number(params, "client_protocol_version", 0)),
            compression_enabled=_flag(params, "enable_http_compression")
            if "enable_http_compression" in params
            else None,
            zlib_level=int(_number(params, "http_zlib_compression_level", 3)),
        )  # add_http_cors_header is read and ignored: the server never answers with CORS headers
        if not 0 < request.session_timeout <= MAX_SESSION_TIMEOUT:
            raise ClickHouseError(
                BAD_ARGUMENTS, f"Session timeout {request.session_timeout} is not in (0, {MAX_SESSION_TIMEOUT:g}]"
            )
        if request.get and request.readonly == 0:
            request.readonly = 2
        for name, value in params.items():
            if name.startswith("param_"):
                request.bind[name[len("param_") :]] = value
            elif name not in _TRANSPORT_PARAMS and not name.startswith("http_"):
                request.settings[name] = value
        return request


def _flag(params: Mapping[str, str], name: str) -> bool:
    return params.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _number(params: Mapping[str, str], name: str, default: float) -> float:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ClickHouseError(BAD_ARGUMENTS, f"Parameter {name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class HttpLimits:
    """What one client may ask of the HTTP side; each refusal says which limit and its value.

    >>> HttpLimits().max_query_bytes
    262144
    """

    max_body_bytes: int = 256 << 20  # a request body on the wire, and again once decompressed
    max_query_bytes: int = 256 << 10  # a statement read whole (ClickHouse's max_query_size); not insert data
    max_connections: int = 64  # open client connections, idle keep-alive ones included
    header_timeout: float = 10.0  # from a request's first byte to the end of its headers
    read_timeout: float = 30.0  # the longest wait for the next bytes of a body, or for a client to read


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        credentials: Credentials | None,
        limits: HttpLimits,
        extra_hosts: tuple[str, ...] = (),
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.engine = engine
        self.credentials = credentials
        self.limits = limits
        self._state = threading.Condition()
        self._active = 0
        self._closing = False
        self._connections: set[socket.socket] = set()
        self._reading_headers: dict[socket.socket, float] = {}  # connection -> deadline for its headers
        self.display_name = socket.gethostname()
        super().__init__(address, _Handler)
        self.extra_hosts = extra_hosts
        self.hosts = allowed_hosts(address[0], self.server_port, extra_hosts)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        """Past ``max_connections``, answer 503 at once instead of starting another thread."""
        with self._state:
            full = len(self._connections) >= self.limits.max_connections
            if not full:
                self._connections.add(request)
        if full:
            body = (
                f"Code: 202. DB::Exception: Too many connections ({self.limits.max_connections}, the server's "
                "--max-connections). (TOO_MANY_SIMULTANEOUS_QUERIES)\n"
            ).encode()
            head = (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                f"X-ClickHouse-Exception-Code: {TOO_MANY_SIMULTANEOUS_QUERIES}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            try:
                request.settimeout(1.0)
                request.sendall(head + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)  # type: ignore[arg-type]

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)  # type: ignore[arg-type]
        finally:
            with self._state:
                self._connections.discard(request)
                self._reading_headers.pop(request, None)

    def reading_headers(self, connection: socket.socket, reading: bool) -> None:
        with self._state:
            if reading:
                self._reading_headers[connection] = time.monotonic() + self.limits.header_timeout
            else:
                self._reading_headers.pop(connection, None)

    def hang_up_slow_headers(self) -> int:
        """Close connections whose request headers did not arrive within ``header_timeout`` (slowloris)."""
        now = time.monotonic()
        with self._state:
            late = [c for c, deadline in self._reading_headers.items() if deadline < now]
            for connection in late:
                del self._reading_headers[connection]
        for connection in late:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if late:
            logger.warning(
                "closed %d connection(s) whose request headers took over %.0f s", len(late), self.limits.header_timeout
            )
        return len(late)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, which can hang without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def enter(self) -> bool:
        """Count a request in; False once the server is closing."""
        with self._state:
            if self._closing:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._state:
            self._active -= 1
            self._state.notify_all()

    def drain(self, timeout: float) -> bool:
        """Refuse new requests and wait for running ones; then hang up on every client, and wait a little more.

        Hanging up ends idle keep-alive connections and makes a request still streaming to a slow
        client fail its next write, which cancels its chdb query, so the engine can close safely.
        """
        with self._state:
            self._closing = True
            finished = self._state.wait_for(lambda: self._active == 0, timeout)
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if not finished:
            with self._state:
                finished = self._state.wait_for(lambda: self._active == 0, 1.0)
        return finished


@dataclass(frozen=True)
class _Reply:
    """What a successful response's headers say besides the summary."""

    request: Request
    content_type: str
    fmt: str | None = None  # X-ClickHouse-Format: only statements that return rows have one
    encoding: str | None = None  # Content-Encoding


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "driftline-chserver"
    timeout = KEEP_ALIVE_SECONDS  # an idle keep-alive connection is closed after this
    server: _HTTPServer

    # -- plumbing ----------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; without this, Nagle plus delayed ACKs add 40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._answered = False

    def handle_one_request(self) -> None:
        """Wait for a request as long as keep-alive allows, then give its headers ``header_timeout`` in all.

        A new connection gets only ``header_timeout`` for its first byte: a client that connects and
        says nothing (a half-open connection) does not hold a slot for the whole keep-alive time.
        """
        self.connection.settimeout(KEEP_ALIVE_SECONDS if self._answered else self.server.limits.header_timeout)
        self._answered = True
        try:
            first = self.rfile.peek(1)  # type: ignore[attr-defined]
        except OSError:
            first = b""
        if not first:
            self.close_connection = True
            return
        self.connection.settimeout(self.server.limits.read_timeout)
        self.server.reading_headers(self.connection, True)
        try:
            super().handle_one_request()
        finally:
            self.server.reading_headers(self.connection, False)

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self.server.reading_headers(self.connection, False)
        return ok

    def _refuse_foreign(self) -> bool:
        """Refuse a request from a web page (``Origin``) or for another host name (DNS rebinding)."""
        reason = None
        if self.headers.get("Origin") is not None:
            reason = "requests from web pages (with an Origin header) are not allowed"
        else:
            host = self.headers.get("Host")
            if host is not None and not host_allowed(
                host.strip(), self.server.hosts, self.server.server_port, self.server.extra_hosts
            ):
                reason = f"Host {host.strip()!r} is not this server's address (see --allow-host)"
        if reason is None:
            return False
        logger.warning(
            "refused %s %s from %s: %s", self.command, urlsplit(self.path).path, self.client_address[0], reason
        )
        body = f"Code: {ACCESS_DENIED}. DB::Exception: {reason}. (ACCESS_DENIED)\n".encode()
        self.close_connection = True
        self.send_response(403)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("X-ClickHouse-Exception-Code", str(ACCESS_DENIED))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self._write(body)
        return True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        logger.debug("http: " + format, *args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _serve logs one line per request with more to say

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's naming
        self._serve()

    def do_POST(self) -> None:  # noqa: N802
        self._serve()

    def do_HEAD(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        self._head_only = True
        self._body_consumed = not self._has_body()
        if self._refuse_foreign():
            return
        if path in ("/", "/ping", "/replicas_status"):
            self._send_plain(200, "Ok.\n")
        else:
            self._send_plain(404, "There is no handle " + path + "\n")

    # -- one request -------------------------------------------------------------------------------
    def _serve(self) -> None:
        started = time.perf_counter()
        self._head_only = False
        self._headers_sent = False
        self._body_consumed = not self._has_body()
        self._log: dict[str, object] = {"session": None, "query": ""}
        if self._refuse_foreign():
            return
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path in ("/ping", "/replicas_status") or (
            url.path == "/" and self.command == "GET" and "query" not in params and self._body_consumed
        ):
            self._send_plain(200, "Ok.\n")
            return
        query_id = params["query_id"] = params.get("query_id") or str(uuid.uuid4())
        status: int | str = 200
        if not self.server.enter():
            self._send_plain(503, "The server is shutting down.\n")
            self.close_connection = True
            return
        try:
            self._serve_query(params)
        except ClickHouseError as err:
            status = err.http_status
            self._fail(err, query_id)
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
            status = "disconnected"
            logger.debug("client went away query_id=%s: %s", query_id, exc)
            self.close_connection = True
        except Exception as exc:  # a bad request must never take the server down
            status = 500
            logger.exception("request failed unexpectedly query_id=%s", query_id)
            self._fail(ClickHouseError(STD_EXCEPTION, f"{type(exc).__name__}: {exc}"), query_id)
        finally:
            self.server.leave()
            logger.debug(
                "%s %s status=%s session=%s query_id=%s ms=%.2f query=%.200r",
                self.command, url.path, status, self._log["session"], query_id,
                (time.perf_counter() - started) * 1000, self._log["query"],
            )  # fmt: skip

    def _serve_query(self, params: dict[str, str]) -> None:
        self._authenticate(params)
        chunks = self._request_body(params)
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/form-data"):
            params = {**params, **self._form_fields(content_type, chunks)}
            chunks = iter(())
        request = Request.parse(self.command, params, self.headers)
        self._log["session"] = request.session_id
        engine = self.server.engine
        engine.confinement.check_settings(request.settings)
        insert, text, data = self._read_statement(request.query, chunks)
        if insert is not None:
            statement = Statement("INSERT")
            checked = insert.sql + b" FORMAT " + insert.fmt.encode()
            self._log["query"] = checked.decode("utf-8", "replace")
            tokens = tokenize(checked)
        else:
            checked = text
            sql = _decode_sql(text)
            self._log["query"] = sql
            tokens = tokenize(text)  # once: the lexer costs a few microseconds a token
            statement = parse_statement(text, tokens)
            if not statement.kind:
                raise ClickHouseError(SYNTAX_ERROR, "Empty query")
            if statement.multiple:
                raise ClickHouseError(SYNTAX_ERROR, "Multi-statements are not allowed")
        engine.confinement.check(checked, tokens)
        # Outside a session the engine enforces readonly (a pooled connection opened at the request's
        # level); a session's connection keeps the user's level, so a stricter request is checked here.
        if request.session_id and request.readonly > engine.limits.readonly and not statement.allowed(request.readonly):
            hint = (
                ". For queries over HTTP, method GET implies readonly; use POST for modifying queries"
                if request.get
                else ""
            )
            raise ClickHouseError(READONLY, f"Cannot execute query in readonly mode{hint}")
        lease = engine.lease(request.session_id, request.session_timeout, request.session_check, request.readonly)
        try:
            connection = lease.connection
            engine.confine(connection, checked.decode("utf-8", "replace"))
            connection.prepare(request.settings, request.database, statement)
            if insert is not None:
                stats = connection.insert(_decode_sql(insert.sql), insert.fmt, data)
                lease.release()
                self._send_done(request, stats, b"")
            elif statement.returns_rows:
                self._send_rows(request, statement, connection, sql, lease)
            else:
                body, stats = connection.run(sql, DEFAULT_FORMAT, request.bind)
                connection.after(statement)
                lease.release()
                self._send_done(request, stats, body)
        except ClickHouseError:
            lease.release()
            raise
        except BaseException:
            lease.release(broken=True)
            raise

    def _authenticate(self, params: Mapping[str, str]) -> None:
        credentials = self.server.credentials
        if credentials is None:
            return
        user = self.headers.get("X-ClickHouse-User") or params.get("user") or ""
        password = self.headers.get("X-ClickHouse-Key") or params.get("password") or ""
        authorization = self.headers.get("Authorization", "")
        if authorization.lower().startswith("basic "):
            try:
                basic_user, _, basic_password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise ClickHouseError(AUTHENTICATION_FAILED, "Malformed Basic authorization header") from None
            user, password = user or basic_user, password or basic_password
        credentials.check(user or "default", password)

    # -- request body ------------------------------------------------------------------------------
    def _has_body(self) -> bool:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return True
        try:
            return self._content_length() > 0
        except ClickHouseError:
            return True  # unreadable: the request fails when the body is read, and the connection closes

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length") or "0"
        try:
            length = int(raw)
        except ValueError:
            length = -1
        if length < 0:
            raise ClickHouseError(BAD_ARGUMENTS, f"Malformed Content-Length {raw!r}")
        return length

    def _raw_body(self) -> Iterator[bytes]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            yield from self._chunked_body()
        else:
            left = self._content_length()
            while left > 0:
                piece = self.rfile.read(min(left, READ_BYTES))
                if not piece:
                    raise ConnectionResetError("client closed the connection inside the request body")
                left -= len(piece)
                yield piece
        self._body_consumed = True

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionResetError("client closed the connection inside a chunked body")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ClickHouseError(BAD_ARGUMENTS, f"Malformed chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers carry nothing the server uses
                return
            while size > 0:
                piece = self.rfile.read(min(size, READ_BYTES))
                if not piece:
                    raise ConnectionResetError("client closed the connection inside a chunk")
                size -= len(piece)
                yield piece
            self.rfile.readline(65537)  # the CRLF after the chunk

    def _request_body(self, params: Mapping[str, str]) -> Iterator[bytes]:
        limit = self.server.limits.max_body_bytes
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower() and self._content_length() > limit:
            raise ClickHouseError(
                TOO_MANY_ROWS_OR_BYTES,
                f"The request body is larger than {limit} bytes, the server's --max-body-bytes (Content-Length "
                f"{self._content_length()}); send it in smaller requests",
            )
        chunks = decode_body(
            _capped(self._raw_body(), limit, "request body"), self.headers.get("Content-Encoding"), limit
        )
        if _flag(params, "decompress"):
            chunks = decode_native_blocks(chunks, limit)
        return iter(chunks)

    def _form_fields(self, content_type: str, chunks: Iterator[bytes]) -> dict[str, str]:
        """query and param_* fields of a multipart form (clickhouse-connect sends long bind values this way)."""
        body = _read_capped(chunks, MAX_FORM_BYTES)
        message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        fields: dict[str, str] = {}
        for part in message.iter_parts() if message.is_multipart() else ():
            assert isinstance(part, Message)
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is not None:
                raise ClickHouseError(NOT_IMPLEMENTED, "External data (files in a multipart request) is not supported")
            if isinstance(name, str):
                payload = part.get_payload(decode=True)
                fields[name] = payload.decode("utf-8") if isinstance(payload, bytes) else str(payload or "")
        return fields

    def _read_statement(self, query: str, chunks: Iterator[bytes]) -> tuple[InsertData | None, bytes, Iterator[bytes]]:
        """Split the URL query followed by the body into a statement and, for an INSERT, its data."""
        limit = self.server.limits.max_query_bytes
        head = query.encode() + b"\n" if query else b""
        if len(head) > limit:
            raise _query_too_long(limit)
        final = False
        while True:
            split = split_insert(head, final)
            if split is not Head.NEED_MORE:
                break
            if len(head) > limit:
                split = Head.WHOLE_STATEMENT
                break
            chunk = next(chunks, None)
            if chunk is None:
                final = True
            else:
                head += chunk
        if isinstance(split, InsertData):
            return split, b"", chain((head[split.data_start :],), chunks)
        if len(head) > limit:
            raise _query_too_long(limit)
        text = head + _read_capped(chunks, limit - len(head))
        return None, text, iter(())

    # -- responses ---------------------------------------------------------------------------------
    def _send_rows(
        self, request: Request, statement: Statement, connection: EngineConnection, sql: str, lease: Lease
    ) -> None:
        fmt = statement.output_format or request.default_format or connection.default_format or DEFAULT_FORMAT
        enabled = request.compression_enabled
        if enabled is None:
            enabled = self.server.engine.info.http_compression_default
        encoding = response_encoding(self.headers.get("Accept-Encoding")) if enabled else None
        encoder = response_encoder(encoding, request.zlib_level)
        reply = _Reply(request, _content_type(fmt), fmt, encoding)
        revision = request.protocol_version if fmt.lower() == "native" else 0
        # chdb streams SELECTs only; other row statements (SHOW, DESCRIBE, ...) are small anyway
        if fmt.lower() not in _STREAMABLE_FORMATS or statement.kind not in ("SELECT", "WITH"):
            body, stats = connection.run(sql, fmt, request.bind)
            lease.release()
            payload = encoder.compress(upgrade_native(body, revision)) + encoder.flush()
            self._start(reply, stats, length=len(payload))
            self._write(payload)
            return
        stats = QueryStats()
        stream = connection.stream(sql, fmt, request.bind, stats)
        chunks = _native_blocks(stream, revision, stats) if revision else stream
        try:
            # HTTP/1.0 has no chunked transfer encoding: such clients get a Content-Length too
            if request.wait_end_of_query or self.request_version == "HTTP/1.0":
                self._send_spooled(reply, stats, chunks, encoder, lease)
            else:
                self._send_streamed(reply, stats, chunks, encoder, lease)
        finally:
            stream.close()  # cancels an unfinished chdb stream before the connection is reused

    def _send_spooled(
        self, reply: _Reply, stats: QueryStats, chunks: Iterator[bytes], encoder: ResponseEncoder, lease: Lease
    ) -> None:
        """The whole result first (memory, then a temporary file), so a late error is still a clean error."""
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            for chunk in chunks:
                spool.write(encoder.compress(chunk))
            spool.write(encoder.flush())
            lease.release()
            size = spool.tell()
            spool.seek(0)
            self._start(reply, stats, length=size)
            while piece := spool.read(READ_BYTES):
                self._write(piece)

    def _send_streamed(
        self, reply: _Reply, stats: QueryStats, chunks: Iterator[bytes], encoder: ResponseEncoder, lease: Lease
    ) -> None:
        """Chunks as chdb makes them; an error after the first byte goes out as ClickHouse's tagged block."""
        first = next(chunks, b"")  # an error before the first byte is an ordinary error response
        tag = secrets.token_hex(8)
        self._start(reply, stats, length=None, exception_tag=tag)
        self._write_chunk(encoder.compress(first))
        try:
            for chunk in chunks:
                self._write_chunk(encoder.compress(chunk))
        except ClickHouseError as err:
            logger.warning(
                "query failed mid-stream code=%s name=%s query_id=%s error=%r",
                err.code, err.name, reply.request.query_id, err.message,
            )  # fmt: skip
            message = err.text() + f" (version {self.server.engine.info.version})"
            block = f"__exception__\r\n{tag}\r\n{message}\n{len(message.encode())} {tag}\r\n__exception__\r\n"
            self._write_chunk(encoder.compress(block.encode()))
        lease.release()  # before the last bytes, so the client's next request finds the session free
        self._write_chunk(encoder.flush())
        self._write(b"0\r\n\r\n")

    def _send_done(self, request: Request, stats: QueryStats, body: bytes) -> None:
        self._start(_Reply(request, "text/plain; charset=UTF-8"), stats, length=len(body))
        self._write(body)

    def _start(self, reply: _Reply, stats: QueryStats, length: int | None, exception_tag: str | None = None) -> None:
        request = reply.request
        self.send_response(200)
        self._common_headers(request.query_id, reply.content_type)
        if reply.fmt is not None:
            self.send_header("X-ClickHouse-Format", reply.fmt)
        self.send_header("X-ClickHouse-Summary", stats.header())
        if request.session_id:
            self.send_header("X-ClickHouse-Session-Id", request.session_id)
        if reply.encoding is not None:
            self.send_header("Content-Encoding", reply.encoding)
        if exception_tag is not None:
            self.send_header("X-ClickHouse-Exception-Tag", exception_tag)
        if length is None:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()
        self._headers_sent = True

    def _common_headers(self, query_id: str, content_type: str) -> None:
        info: ServerInfo = self.server.engine.info
        self.send_header("Content-Type", content_type)
        self.send_header("X-ClickHouse-Server-Display-Name", self.server.display_name)
        if query_id:
            self.send_header("X-ClickHouse-Query-Id", query_id)
        self.send_header("X-ClickHouse-Timezone", info.timezone)
        self.send_header("Keep-Alive", f"timeout={KEEP_ALIVE_SECONDS}")

    def _fail(self, err: ClickHouseError, query_id: str) -> None:
        level = logging.ERROR if err.http_status >= 500 else logging.WARNING
        logger.log(
            level,
            "query failed code=%s name=%s status=%s session=%s query_id=%s error=%r query=%.500r",
            err.code, err.name, err.http_status, self._log.get("session"), query_id, err.message,
            self._log.get("query"),
            extra={"ch_code": err.code, "ch_name": err.name, "query_id": query_id},
        )  # fmt: skip
        if self._headers_sent:
            self.close_connection = True  # nothing sensible can follow a half-sent response
            return
        if not self._body_consumed:
            self.close_connection = True  # the unread body would be taken for the next request
        body = err.body(self.server.engine.info.version).encode()
        self.send_response(err.http_status)
        self._common_headers(query_id, "text/plain; charset=UTF-8")
        self.send_header("X-ClickHouse-Exception-Code", str(err.code))
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self._headers_sent = True
        self._write(body)

    def _send_plain(self, status: int, text: str) -> None:
        body = text.encode()
        if not self._body_consumed:
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Keep-Alive", f"timeout={KEEP_ALIVE_SECONDS}")
        self.end_headers()
        if not self._head_only:
            self._write(body)

    def _write(self, data: bytes) -> None:
        if data:
            self.wfile.write(data)

    def _write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n" % len(data))
            self.wfile.write(data)
            self.wfile.write(b"\r\n")


def _native_blocks(stream: Iterator[bytes], revision: int, stats: QueryStats) -> Iterator[bytes]:
    """A chdb Native stream (one block per chunk) as a client at protocol ``revision`` reads it."""
    rows_before = 0
    for chunk in stream:
        rows = stats.result_rows - rows_before
        rows_before = stats.result_rows
        yield upgrade_native(chunk, revision, rows)


def _read_capped(chunks: Iterator[bytes], limit: int) -> bytes:
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise _query_too_long(limit)
        parts.append(chunk)
    return b"".join(parts)


def _query_too_long(limit: int) -> ClickHouseError:
    return ClickHouseError(
        SYNTAX_ERROR,
        f"Max query size exceeded (the statement is longer than {limit} bytes, the server's --max-query-bytes); "
        "send data after INSERT ... FORMAT, or bind long values as parameters",
    )


def _capped(chunks: Iterator[bytes], limit: int, what: str) -> Iterator[bytes]:
    """``chunks`` until they pass ``limit`` bytes in all, then a clear error."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ClickHouseError(
                TOO_MANY_ROWS_OR_BYTES, f"The {what} is larger than {limit} bytes, the server's --max-body-bytes"
            )
        yield chunk


def _decode_sql(text: bytes) -> str:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClickHouseError(SYNTAX_ERROR, f"The query is not valid UTF-8 ({exc})") from None


class EmbeddedClickHouse:
    """chdb at ``path`` served over ClickHouse's HTTP interface; ``close`` stops it cleanly.

    >>> import tempfile, urllib.request
    >>> with tempfile.TemporaryDirectory() as tmp, serve(tmp, "127.0.0.1", 0) as server:
    ...     urllib.request.urlopen(server.url + "/?query=SELECT+40%2B2").read()
    b'42\\n'
    """

    def __init__(
        self,
        path: str | Path,
        host: str = "127.0.0.1",
        port: int = 8123,
        user: str | None = None,
        password: str | None = None,
        limits: Limits | None = None,
        http_limits: HttpLimits | None = None,
        allow_hosts: tuple[str, ...] = (),
    ) -> None:
        if password and not user:
            user = "default"
        self.engine = Engine(path, limits=limits)
        credentials = Credentials(user, password or "") if user else None
        try:
            self._http = _HTTPServer((host, port), self.engine, credentials, http_limits or HttpLimits(), allow_hosts)
        except BaseException:
            self.engine.close()
            raise
        self.host, self.port = host, self._http.server_port
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._started = False
        self._threads = [
            threading.Thread(
                target=self._http.serve_forever, kwargs={"poll_interval": 0.2}, name="chserver-http", daemon=True
            ),
            threading.Thread(target=self._reap, name="chserver-sessions", daemon=True),
        ]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> EmbeddedClickHouse:
        self._started = True
        for thread in self._threads:
            thread.start()
        logger.info("serving chdb %s at %s (ClickHouse %s)", self.engine.path, self.url, self.engine.info.version)
        return self

    def _reap(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.engine.reap_sessions()
                self._http.hang_up_slow_headers()
            except Exception:
                logger.exception("expiring sessions or slow connections failed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, let running requests finish (up to ``timeout``), then close the engine."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._stop.set()
        if self._started:
            self._http.shutdown()  # waits for serve_forever to return, so only once it has run
        drained = self._http.drain(timeout)
        self._http.server_close()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)
        if not drained:
            # a chdb call cannot be interrupted from here, and closing its connection under it is unsafe;
            # the process exits without closing the engine, which MergeTree survives as it survives a kill
            logger.warning("requests still running after %.0f s; leaving the engine to the process exit", timeout)
            return
        self.engine.close()
        logger.info("stopped serving %s", self.engine.path)

    def wait(self) -> None:
        """Block until ``close`` has been called (from a signal handler or another thread)."""
        while not self._closed.wait(0.5):
            pass

    def __enter__(self) -> EmbeddedClickHouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8123,
    user: str | None = None,
    password: str | None = None,
    limits: Limits | None = None,
    http_limits: HttpLimits | None = None,
    allow_hosts: tuple[str, ...] = (),
) -> EmbeddedClickHouse:
    """Start serving chdb at ``path`` on ``host:port`` (0: any free port) in background threads."""
    return EmbeddedClickHouse(path, host, port, user, password, limits, http_limits, allow_hosts).start()
