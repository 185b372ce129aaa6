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

from typing import TYPE_CHECKING

from driftline.lazy import lazy_exports

if TYPE_CHECKING:
    from driftline.streams.warehouse.client import SNAPSHOT_COLUMNS, SNAPSHOT_DROPPED_KEY, Warehouse
    from driftline.streams.warehouse.errors import WarehouseError
    from driftline.streams.warehouse.location import DEFAULT_DATABASE, WarehouseLocation
    from driftline.streams.warehouse.migrations import MigrationError
    from driftline.streams.warehouse.queries import WarehouseQueries, WrittenWindow

# Each name is imported from its module on first use, so that a process pays only for what it
# reads: the report needs the client (pyarrow), not the worker's queries (river, through the core).
_HOMES = {
    "DEFAULT_DATABASE": "driftline.streams.warehouse.location",
    "SNAPSHOT_COLUMNS": "driftline.streams.warehouse.client",
    "SNAPSHOT_DROPPED_KEY": "driftline.streams.warehouse.client",
    "Warehouse": "driftline.streams.warehouse.client",
    "WarehouseError": "driftline.streams.warehouse.errors",
    "WarehouseLocation": "driftline.streams.warehouse.location",
    "MigrationError": "driftline.streams.warehouse.migrations",
    "WarehouseQueries": "driftline.streams.warehouse.queries",
    "WrittenWindow": "driftline.streams.warehouse.queries",
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

__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
