"""The one error every warehouse call raises (the URL parser included).

A module of its own so that reading a warehouse URL (``location``) needs neither pyarrow nor
clickhouse-connect: the local stack's commands parse the URL with nothing else installed.
"""

from __future__ import annotations


class WarehouseError(RuntimeError):
    """A failed warehouse call; ``code`` is ClickHouse's error code when it sent one.

    >>> WarehouseError("query SELEC 1 failed: Syntax error", code=62).code
    62
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
