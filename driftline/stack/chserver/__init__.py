"""The embedded ClickHouse HTTP server: chdb behind ClickHouse's HTTP interface.

One concept per module: ``server`` (the HTTP server and its request handling; :func:`serve`),
``access`` (the Host headers it answers and the one user it lets in), ``sql`` (reads the
statement and refuses what reaches files, network or programs), ``engine`` (the chdb connections:
sessions, pool, per-request settings), ``codec`` (request and response compression), ``native``
(Native output at the client's protocol revision), ``errors`` (errors in ClickHouse's form), and
``cli`` (``python -m driftline.stack.chserver``).

>>> from driftline.stack.chserver import serve
>>> serve.__module__
'driftline.stack.chserver.server'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftline.lazy import lazy_exports

if TYPE_CHECKING:
    from driftline.stack.chserver.server import EmbeddedClickHouse, HttpLimits, serve

# imported on first use: the statement reader (``sql``) and the errors need no chdb, the server does
_HOMES = dict.fromkeys(("EmbeddedClickHouse", "HttpLimits", "serve"), "driftline.stack.chserver.server")

__all__ = ["EmbeddedClickHouse", "HttpLimits", "serve"]

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
