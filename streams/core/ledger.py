"""Which consumed messages may be acknowledged: only those whose windows were written.

The worker commits a Kafka offset only when every message before it has
finished: all windows it contributed to were closed and written to the
warehouse. After a crash, consumption resumes at the first message of the
oldest open window, and nothing that was not written is lost. Messages are
released strictly in offset order per partition, because a Kafka commit is a
single position, not a set.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Hold:
    """A message waits until window ``(model_id, model_version, ...)`` of ``stream`` is closed through ``window_end``."""

    stream: str
    model_id: str
    model_version: str
    window_end: int


@dataclass
class _Entry(Generic[T]):
    offset: int
    token: T
    holds: tuple[Hold, ...]


class AckLedger(Generic[T]):
    """Messages waiting for their windows, per partition, in offset order.

    ``token`` is whatever the caller needs to acknowledge the message later.

    >>> ledger = AckLedger()
    >>> ledger.add("p0", 10, "m10", [Hold("predictions", "m", "1", 60_000)])
    >>> ledger.add("p0", 11, "m11", [])  # nothing to wait for, but behind m10
    >>> ledger.release(lambda hold: False)
    []
    >>> ledger.release(lambda hold: hold.window_end <= 60_000)
    ['m10', 'm11']
    >>> len(ledger)
    0
    """

    def __init__(self) -> None:
        self._pending: dict[Hashable, deque[_Entry[T]]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, partition: Hashable, offset: int, token: T, holds: list[Hold] | tuple[Hold, ...]) -> None:
        queue = self._pending.setdefault(partition, deque())
        if queue and offset <= queue[-1].offset:
            raise ValueError(
                f"offsets must increase per partition: got {offset} after {queue[-1].offset} on {partition!r}"
            )
        queue.append(_Entry(offset, token, tuple(holds)))
        self._size += 1

    def release(self, is_done: Callable[[Hold], bool]) -> list[T]:
        """Pop and return, per partition, the longest prefix of finished messages."""
        released: list[T] = []
        for queue in self._pending.values():
            while queue and all(is_done(h) for h in queue[0].holds):
                released.append(queue.popleft().token)
                self._size -= 1
        return released

    def oldest_offsets(self) -> dict[Hashable, int]:
        """Per partition, the offset of the oldest message still waiting."""
        return {p: q[0].offset for p, q in self._pending.items() if q}

    def clear(self) -> int:
        """Forget every waiting message (after a rebalance, Kafka delivers them again); returns how many."""
        n = self._size
        self._pending.clear()
        self._size = 0
        return n
