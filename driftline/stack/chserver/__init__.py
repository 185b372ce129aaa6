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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from driftline.stack.chserver.server import EmbeddedClickHouse, HttpLimits, serve

# imported on first use: the statement reader (``sql``) and the errors need no chdb, the server does
_HOMES = {"EmbeddedClickHouse": "server", "HttpLimits": "server", "serve": "server"}

__all__ = ["EmbeddedClickHouse", "HttpLimits", "serve"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
