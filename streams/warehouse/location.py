"""Where the warehouse is: the one parser of a ``DRIFTLINE_WAREHOUSE`` URL.

The client (``driftline.streams.warehouse.client``) and the local stack (``driftline stack``)
both read the URL here, so they agree on every part of it:

- ``http(s)://[user[:password]@]host[:port][/database][?database=NAME][&compress=...]``: a
  ClickHouse server, or the embedded one that ``driftline stack up`` serves. The database is
  ``?database=`` if given, else the path, else ``driftline``; the port 8123 (8443 for https);
  the user ``default``.
- ``chdb://PATH[?database=NAME]``: the engine inside this process (``chdb://:memory:`` for a
  throwaway one).

Credentials are kept (the client logs in with them) and masked in every repr and error.
No import beyond the standard library and ``driftline.redaction``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from driftline.redaction import redact, redact_url, redacted_repr
from driftline.streams.warehouse.errors import WarehouseError

DEFAULT_DATABASE = "driftline"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class WarehouseLocation:
    """Where the warehouse is, parsed from a ``DRIFTLINE_WAREHOUSE`` URL (module docstring).

    >>> loc = WarehouseLocation.parse("http://127.0.0.1:8123/?database=demo")
    >>> loc.kind, loc.host, loc.port, loc.database, loc.username
    ('http', '127.0.0.1', 8123, 'demo', 'default')
    >>> WarehouseLocation.parse("http://bob:secret@ch.local:8123/metrics").redacted()
    'http://bob:***@ch.local:8123/metrics'
    >>> loc = WarehouseLocation.parse("chdb://.driftline/warehouse?database=demo")
    >>> loc.kind, loc.path, loc.database
    ('chdb', '.driftline/warehouse', 'demo')

    HTTP bodies are compressed (lz4) except on a loopback address, where compressing
    only costs CPU on both ends; ``?compress=`` (``lz4``, ``zstd``, ``none``) decides instead:

    >>> [WarehouseLocation.parse(u).compress for u in
    ...  ("http://ch.local/m", "http://127.0.0.1:8123/m", "http://localhost/m?compress=zstd")]
    ['lz4', 'none', 'zstd']
    """

    kind: str  # "http", "https" or "chdb"
    host: str = "127.0.0.1"
    port: int = 8123
    database: str = DEFAULT_DATABASE
    username: str = "default"
    password: str = ""
    path: str | None = None  # chdb only; None means in memory
    compress: str = "lz4"  # HTTP only: lz4, zstd or none

    @classmethod
    def parse(cls, url: str) -> WarehouseLocation:
        if url.startswith("chdb://"):
            rest, _, query = url[len("chdb://") :].partition("?")
            database = _query_database(query, url, DEFAULT_DATABASE)
            path = None if rest in ("", "memory", ":memory:") else unquote(rest)
            return cls("chdb", database=database, path=path)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise WarehouseError(f"warehouse URL {redact_url(url)!r} must start with http://, https:// or chdb://")
        if not parts.hostname:
            raise WarehouseError(f"warehouse URL {redact_url(url)!r} has no host")
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) > 1:
            raise WarehouseError(f"warehouse URL {redact_url(url)!r}: the path must be just the database name")
        path_database = _check_identifier(unquote(segments[0]), "database", url) if segments else DEFAULT_DATABASE
        database = _query_database(parts.query, url, path_database)
        try:
            port = parts.port or (8443 if parts.scheme == "https" else 8123)
        except ValueError as exc:
            raise WarehouseError(f"warehouse URL {redact_url(url)!r} has a bad port: {redact(exc)}") from None
        return cls(
            parts.scheme,
            database=database,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
            compress=_query_compress(parts.query, parts.hostname, url),
        )

    def __repr__(self) -> str:
        return redacted_repr(self)

    @property
    def local(self) -> bool:
        """Whether the server is on this machine (a loopback address), so ``driftline stack up`` may start it.

        >>> [WarehouseLocation.parse(u).local for u in ("http://localhost:8123", "http://[::1]/d", "https://ch.local")]
        [True, True, False]
        """
        return self.kind != "chdb" and _loopback(self.host)

    def redacted(self) -> str:
        """The URL without the password, for logs and errors."""
        if self.kind == "chdb":
            return f"chdb://{self.path or ':memory:'}?database={self.database}"
        auth = f"{self.username}:***@" if self.password else (f"{self.username}@" if self.username != "default" else "")
        return f"{self.kind}://{auth}{self.host}:{self.port}/{self.database}"


def _query_compress(query: str, host: str, url: str) -> str:
    values = parse_qs(query).get("compress")
    if not values:
        return "none" if _loopback(host) else "lz4"
    value = values[0].lower()
    if value not in _COMPRESSIONS:
        raise WarehouseError(
            f"warehouse URL {redact_url(url)!r}: compress must be one of {', '.join(_COMPRESSIONS)}, not {values[0]!r}"
        )
    return value


_COMPRESSIONS = ("lz4", "zstd", "none")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _query_database(query: str, url: str, otherwise: str) -> str:
    """``?database=`` if the query gives one, else ``otherwise`` (the path's, or the default)."""
    values = parse_qs(query).get("database")
    return _check_identifier(values[0] if values else otherwise, "database", url)


def _check_identifier(name: str, what: str, context: str) -> str:
    if not _IDENTIFIER.match(name):
        raise WarehouseError(
            f"{redact(context)}: {what} {name!r} must be letters, digits and underscores, not starting with a digit"
        )
    return name
