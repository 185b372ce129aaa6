"""A table's row TTL, read from ClickHouse, so that rows it would delete are refused instead.

ClickHouse accepts rows whose TTL has already passed, acknowledges the insert,
and then deletes them in a TTL merge that it schedules right after the insert:
a query a few milliseconds later may or may not still see them. The warehouse
adapter asks :class:`RowTTL` before inserting and raises rather than let such
rows vanish without a word.

Only the plain form driftline's migrations use is understood,
``TTL [toDateTime(]column[)] + INTERVAL n UNIT`` as ClickHouse prints it in
``system.tables.engine_full``; other TTLs (several clauses, ``WHERE``, moves to
volumes) are left to ClickHouse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_TTL = re.compile(
    r"\bTTL (?P<text>(?:toDateTime\()?(?P<column>[A-Za-z_][A-Za-z0-9_]*)\)? \+ "
    r"toInterval(?P<unit>Second|Minute|Hour|Day|Week|Month|Quarter|Year)\((?P<count>\d+)\))(?: SETTINGS |$)"
)
_DAY_MS = 86_400_000
# The longest a unit can be, so that a refused row is expired whatever the calendar says.
_UNIT_MS = {
    "Second": 1_000, "Minute": 60_000, "Hour": 3_600_000, "Day": _DAY_MS, "Week": 7 * _DAY_MS,
    "Month": 31 * _DAY_MS, "Quarter": 92 * _DAY_MS, "Year": 366 * _DAY_MS,
}  # fmt: skip


@dataclass(frozen=True)
class RowTTL:
    """A ``column + INTERVAL`` row TTL: rows whose column is older than ``keep_ms`` are deleted at merges.

    >>> ttl = RowTTL.parse("ReplacingMergeTree(t) ORDER BY k TTL toDateTime(t) + toIntervalDay(30) SETTINGS x = 1")
    >>> ttl.column, ttl.keep_ms // 86_400_000, ttl.text
    ('t', 30, 'toDateTime(t) + toIntervalDay(30)')
    >>> now = 1_000 * 86_400_000
    >>> ttl.expired(np.array([now - 31 * 86_400_000, now - 29 * 86_400_000, now]), now_ms=now)
    1
    >>> RowTTL.parse("MergeTree ORDER BY k TTL d + toIntervalDay(1) TO VOLUME 'cold'") is None
    True
    """

    column: str
    keep_ms: int
    text: str  # as ClickHouse prints it, for error messages

    @classmethod
    def parse(cls, engine_full: str) -> RowTTL | None:
        """The TTL in a ``system.tables.engine_full``; None without one, or with one of another form."""
        match = _TTL.search(engine_full)
        if match is None:
            return None
        return cls(match["column"], int(match["count"]) * _UNIT_MS[match["unit"]], match["text"])

    def expired(self, epoch_ms: np.ndarray, now_ms: int) -> int:
        """How many of the timestamps (epoch ms) are past the TTL at ``now_ms``."""
        whole_seconds = epoch_ms // 1_000 * 1_000  # the TTL sees toDateTime(column): seconds
        return int(np.count_nonzero(whole_seconds + self.keep_ms <= now_ms))
