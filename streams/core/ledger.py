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
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


@dataclass(frozen=True)
class Hold:
    """A message held until window ``(model_id, model_version, ...)`` of ``stream`` closes through ``window_end``."""

    stream: str
    model_id: str
    model_version: str
    window_end: int


@dataclass(slots=True)
class _Run:
    """Consecutive messages of one partition that wait for the same windows."""

    first: int
    last: int
    holds: tuple[Hold, ...]
    count: int


def _partition_and_offset(partition: Any, offset: int) -> Any:
    return (partition, offset)


class AckLedger(Generic[T]):
    """Messages waiting for their windows, per partition, in offset order.

    A message is kept as its partition and offset only (never its bytes).
    Acknowledging a message acknowledges every message before it in its
    partition (a Kafka commit is one position), so consecutive messages that
    wait for the same windows are kept as one run, and a released run gives
    back one token, made then by ``token(partition, last offset)`` (default:
    the pair itself). A window of single events is then a handful of
    entries, not one per message.

    >>> ledger = AckLedger(lambda partition, offset: f"{partition}@{offset}")
    >>> ledger.add("p0", 10, [Hold("predictions", "m", "1", 60_000)])
    >>> ledger.add("p0", 11, [Hold("predictions", "m", "1", 60_000)])  # the same run
    >>> ledger.add("p0", 12, [])  # nothing to wait for, but behind 11
    >>> len(ledger), ledger.runs
    (3, 2)
    >>> ledger.release(lambda hold: False)
    []
    >>> ledger.release(lambda hold: hold.window_end <= 60_000)
    ['p0@11', 'p0@12']
    >>> len(ledger)
    0
    """

    def __init__(self, token: Callable[[Any, int], T] | None = None) -> None:
        self._pending: dict[Hashable, deque[_Run]] = {}
        self._size = 0
        self._token = cast(Callable[[Any, int], T], token or _partition_and_offset)

    def __len__(self) -> int:
        return self._size

    @property
    def runs(self) -> int:
        """Entries kept: runs of messages, not messages."""
        return sum(len(q) for q in self._pending.values())

    def add(self, partition: Hashable, offset: int, holds: list[Hold] | tuple[Hold, ...]) -> None:
        """One message of ``partition`` waiting for ``holds``."""
        self.add_run(partition, offset, offset, holds, 1)

    def add_run(
        self,
        partition: Hashable,
        first: int,
        last: int,
        holds: list[Hold] | tuple[Hold, ...],
        count: int,
    ) -> None:
        """``count`` consecutive messages of ``partition`` (offsets ``first`` to ``last``) that wait for the
        same ``holds``. The same as adding them one by one, in one step.

        >>> ledger = AckLedger()
        >>> ledger.add_run("p0", 10, 14, (Hold("predictions", "m", "1", 60_000),), 5)
        >>> ledger.add("p0", 15, [Hold("predictions", "m", "1", 60_000)])  # joins the run
        >>> len(ledger), ledger.runs, ledger.oldest_offsets()
        (6, 1, {'p0': 10})
        >>> ledger.release(lambda hold: True)
        [('p0', 15)]
        """
        if count < 1 or last < first:
            raise ValueError(f"a run holds at least one message, first to last: got {count} in {first}..{last}")
        queue = self._pending.setdefault(partition, deque())
        held = holds if type(holds) is tuple else tuple(holds)
        self._size += count
        if queue:
            tail = queue[-1]
            if first <= tail.last:
                self._size -= count
                raise ValueError(f"offsets must increase per partition: got {first} after {tail.last} on {partition!r}")
            # the caller shares one tuple among the messages of a window: identity is the usual match
            if tail.holds is held or tail.holds == held:
                tail.last = last
                tail.count += count
                return
        queue.append(_Run(first, last, held, count))

    def release(self, is_done: Callable[[Hold], bool]) -> list[T]:
        """Pop, per partition, the longest prefix of finished messages; return a token per run, of its last."""
        released: list[T] = []
        token = self._token
        for partition, queue in self._pending.items():
            while queue and all(is_done(h) for h in queue[0].holds):
                run = queue.popleft()
                released.append(token(partition, run.last))
                self._size -= run.count
        return released

    def oldest_offsets(self) -> dict[Hashable, int]:
        """Per partition, the offset of the oldest message still waiting."""
        return {p: q[0].first for p, q in self._pending.items() if q}

    def clear(self) -> int:
        """Forget every waiting message (after a rebalance, Kafka delivers them again); returns how many."""
        n = self._size
        self._pending.clear()
        self._size = 0
        return n
