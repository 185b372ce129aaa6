"""The ClickHouse warehouse: the client, its migrations, its rows, its time to live, and its reads.

One concept per module: ``location`` (the one parser of a warehouse URL, also the local
stack's), ``errors`` (:class:`WarehouseError`), ``client`` (:class:`Warehouse`, every driftline
read and write of ClickHouse), ``migrations`` (the schema's SQL files applied in order), ``rows`` (table rows and
their columns, pure), ``ttl`` (the tables' time to live), and ``queries`` (the streams worker's
reads; ``driftline.streams.sinks`` only writes). The names below are the public surface.

>>> from driftline.streams.warehouse import WarehouseLocation
>>> WarehouseLocation.parse("http://127.0.0.1:8123/?database=demo").database
'demo'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from driftline.streams.warehouse.client import SNAPSHOT_COLUMNS, SNAPSHOT_DROPPED_KEY, Warehouse
    from driftline.streams.warehouse.errors import WarehouseError
    from driftline.streams.warehouse.location import DEFAULT_DATABASE, WarehouseLocation
    from driftline.streams.warehouse.migrations import MigrationError
    from driftline.streams.warehouse.queries import WarehouseQueries, WrittenWindow

# Each name is imported from its module on first use, so that a process pays only for what it
# reads: the report needs the client (pyarrow), not the worker's queries (river, through the core).
_HOMES = {
    "DEFAULT_DATABASE": "location",
    "SNAPSHOT_COLUMNS": "client",
    "SNAPSHOT_DROPPED_KEY": "client",
    "Warehouse": "client",
    "WarehouseError": "errors",
    "WarehouseLocation": "location",
    "MigrationError": "migrations",
    "WarehouseQueries": "queries",
    "WrittenWindow": "queries",
}

__all__ = [
    "DEFAULT_DATABASE",
    "SNAPSHOT_COLUMNS",
    "SNAPSHOT_DROPPED_KEY",
    "MigrationError",
    "Warehouse",
    "WarehouseError",
    "WarehouseLocation",
    "WarehouseQueries",
    "WrittenWindow",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
