"""Joining late labels to the predictions they grade, in bounded memory.

Labels often arrive hours after their prediction, and sometimes before it
(separate topics, separate partitions). ``PredictionIndex`` keeps recent
predictions by ``event_id`` until their label comes, their time to live runs
out or capacity forces the oldest out; labels without a prediction wait,
also bounded, for the prediction to arrive. Every row that leaves without a
join is counted in ``IndexStats``.

Time is whatever the caller passes to ``expire`` (usually the stream's
event-time watermark): there is no clock in here. The lookup by id is a dict
(inherently per id); the rows themselves live in numpy columns, so adding,
joining and expiring copy whole batches.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_Scalar = TypeVar("_Scalar", bound=np.generic)


@dataclass
class JoinedLabels:
    """Predictions matched with their labels, row by row, plus the label ids still waiting.

    ``labels`` holds the labels as they came (numbers or strings); the
    performance metrics parse them. ``unmatched`` are the ids of labels in
    this call that found no prediction: they are kept pending, not dropped.

    >>> j = JoinedLabels.empty(unmatched=["e9"])
    >>> j.n, j.unmatched, j.by_version()
    (0, ['e9'], {})
    """

    event_ids: NDArray[np.object_]  # str
    model_versions: NDArray[np.object_]  # str
    event_times: NDArray[np.int64]  # timestamp-millis
    scores: NDArray[np.float64]  # NaN where none
    predicted_labels: NDArray[np.object_]  # str or None
    labels: NDArray[np.object_]  # float or str
    attributes: dict[str, NDArray[np.object_]]  # str; '' where the event had no such attribute
    unmatched: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.event_ids.size)

    @classmethod
    def empty(cls, unmatched: list[str] | None = None) -> JoinedLabels:
        obj = np.empty(0, dtype=object)
        return cls(obj, obj.copy(), np.empty(0, np.int64), np.empty(0), obj.copy(), obj.copy(), {}, unmatched or [])

    def select(self, mask: NDArray[np.bool_]) -> JoinedLabels:
        """The rows where ``mask`` is true (``unmatched`` is not carried over)."""
        return JoinedLabels(
            self.event_ids[mask],
            self.model_versions[mask],
            self.event_times[mask],
            self.scores[mask],
            self.predicted_labels[mask],
            self.labels[mask],
            {k: v[mask] for k, v in self.attributes.items()},
        )

    def by_version(self) -> dict[str, JoinedLabels]:
        """The matched rows of each model version."""
        if self.n == 0:
            return {}
        versions, codes = np.unique(self.model_versions.astype(str), return_inverse=True)
        return {str(v): self.select(codes == i) for i, v in enumerate(versions)}


@dataclass
class IndexStats:
    """Where the rows went; nothing leaves the index uncounted.

    >>> s = IndexStats(added=10, joined=6, evicted=1, expired=2)
    >>> s.added - s.joined - s.evicted - s.expired  # still waiting for a label
    1
    """

    added: int = 0  # predictions stored
    replaced: int = 0  # predictions whose event_id was already stored (the newer one is kept)
    joined: int = 0  # labels matched to a stored prediction
    joined_pending: int = 0  # predictions matched to a label that had arrived first
    unmatched: int = 0  # labels that found no prediction and were kept pending
    evicted: int = 0  # predictions dropped unlabeled because the index was full
    expired: int = 0  # predictions dropped unlabeled because their time to live ran out
    pending_evicted: int = 0  # pending labels dropped because too many were waiting
    pending_expired: int = 0  # pending labels dropped because their time to live ran out


class IndexBudget:
    """One bound on the predictions stored by several ``PredictionIndex`` together (a worker's models).

    When the indexes sharing it hold more than ``max_entries`` predictions in
    all, the earliest added go first, whichever index holds them: a busy model
    does not keep a quiet one's predictions, and a thousand models do not each
    keep ``max_entries``. Each index counts what it lost in its own ``stats.evicted``.

    >>> import numpy as np
    >>> budget = IndexBudget(3)
    >>> a, b = (PredictionIndex(ttl_ms=10**9, budget=budget) for _ in range(2))
    >>> _ = a.add(["a1", "a2"], "1", np.array([0, 1]), np.zeros(2))
    >>> _ = b.add(["b1", "b2"], "1", np.array([2, 3]), np.zeros(2))
    >>> len(a), len(b), budget.size, a.stats.evicted
    (1, 2, 3, 1)
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("need max_entries >= 1")
        self.max_entries = max_entries
        self.size = 0  # predictions stored by all the indexes sharing the budget
        self._next_seq = 0  # sequence numbers are shared, so that "earliest added" spans the indexes
        # (oldest stored sequence number, tie-breaker, index) of every index holding predictions; an
        # index's oldest only grows, so an entry is at most stale low, and is refreshed when popped
        self._oldest: list[tuple[int, int, PredictionIndex]] = []
        self._queued: set[int] = set()

    def _take_seqs(self, n: int) -> int:
        first = self._next_seq
        self._next_seq += n
        return first

    def _enqueue(self, index: PredictionIndex) -> None:
        if id(index) not in self._queued and len(index):
            oldest = index._oldest_seq()
            assert oldest is not None  # it holds predictions
            self._queued.add(id(index))
            heapq.heappush(self._oldest, (oldest, id(index), index))

    def _evict(self) -> None:
        """Drop the earliest added predictions of all the indexes until they fit."""
        heap = self._oldest
        while self.size > self.max_entries and heap:
            seq, key, index = heapq.heappop(heap)
            oldest = index._oldest_seq()
            if oldest is None:
                self._queued.discard(key)
                continue
            if oldest != seq:
                heapq.heappush(heap, (oldest, key, index))
                continue
            # every row of this index before the next index's oldest goes first (a stale, lower
            # entry only makes the step shorter); sequence numbers are unique, so at least one goes
            limit = heap[0][0] if heap else None
            index._evict_oldest(self.size - self.max_entries, limit)
            self._queued.discard(key)
            self._enqueue(index)


class PredictionIndex:
    """Recent predictions by ``event_id``, waiting for their labels.

    A prediction stays until it is joined, until ``expire(now_ms)`` finds its
    event time older than ``now_ms - ttl_ms``, or until more than
    ``max_entries`` are stored (the earliest added goes first; with a shared
    ``budget``, more than its ``max_entries`` in all the indexes that share it). A label with
    no prediction waits in the same way: at most ``max_pending`` of them, for
    ``ttl_ms`` after the latest ``expire`` time at which it arrived. The rows
    live in numpy columns of at most about 3 x (max_entries + largest batch) rows.

    >>> import numpy as np
    >>> index = PredictionIndex(max_entries=1000, ttl_ms=60_000)
    >>> _ = index.add(["a", "b", "c"], "v1", np.array([0, 10, 20]), np.array([0.9, 0.2, 0.7]),
    ...               None, {"region": ["eu", "us", "eu"]})
    >>> joined = index.join(["b", "x"], ["1", "0"])
    >>> joined.event_ids.tolist(), joined.scores.tolist(), joined.labels.tolist(), joined.unmatched
    (['b'], [0.2], ['1'], ['x'])
    >>> late = index.add(["x"], "v1", np.array([30]), np.array([0.1]))
    >>> late.event_ids.tolist(), late.labels.tolist()
    (['x'], ['0'])
    >>> index.expire(now_ms=60_015)
    1
    >>> len(index), index.stats.expired, index.stats.joined, index.stats.joined_pending
    (1, 1, 1, 1)
    """

    def __init__(
        self,
        max_entries: int | None = None,
        ttl_ms: int = 24 * 3_600_000,
        max_pending: int | None = None,
        *,
        budget: IndexBudget | None = None,
    ) -> None:
        if budget is None:
            if max_entries is None:
                raise ValueError("need max_entries or a budget")
            budget = IndexBudget(max_entries)
        elif max_entries is not None and max_entries != budget.max_entries:
            raise ValueError(f"max_entries={max_entries} with a budget of {budget.max_entries}")
        if ttl_ms < 0:
            raise ValueError("need ttl_ms >= 0")
        self.budget = budget
        self.ttl_ms = ttl_ms
        self.max_pending = budget.max_entries if max_pending is None else max_pending
        if self.max_pending < 0:
            raise ValueError("max_pending must be >= 0")
        self.stats = IndexStats()
        self._counted = 0  # len(_rows) as last told to the budget
        self._head = 0  # no live row before this one
        # event_id -> sequence number, in order of arrival (a dict keeps insertion order, and a
        # re-sent id is popped and put back, so the order is that of the sequence numbers). Rows
        # are found from it by a search in ``_seqs`` (ascending), so compaction moves rows
        # without rebuilding this per id.
        self._rows: dict[str, int] = {}
        # label id -> (label, time it started waiting; None before the first expire)
        self._pending: OrderedDict[str, tuple[object, int | None]] = OrderedDict()
        self._now: int | None = None
        self._size = 0
        self._ids = np.empty(0, dtype=object)
        self._seqs = np.empty(0, dtype=np.int64)  # each row's sequence number, ascending
        self._versions = np.empty(0, dtype=object)
        self._times = np.empty(0, dtype=np.int64)
        self._scores = np.empty(0, dtype=np.float64)
        self._predicted = np.empty(0, dtype=object)
        self._attributes: dict[str, NDArray[np.object_]] = {}
        self._alive = np.empty(0, dtype=bool)
        self._head = 0  # no row before this one is alive: eviction looks for the oldest from here

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def max_entries(self) -> int:
        """The bound of the budget (shared or this index's own)."""
        return self.budget.max_entries

    def _account(self) -> None:
        """Tell the budget how many predictions this index now holds."""
        self.budget.size += len(self._rows) - self._counted
        self._counted = len(self._rows)

    def _oldest_seq(self) -> int | None:
        """The sequence number of the earliest added prediction still stored (None: none)."""
        if not self._rows:
            return None
        alive = self._alive[self._head : self._size]
        self._head += int(alive.argmax())  # a prediction is stored, so some row is alive
        return int(self._seqs[self._head])

    def _evict_oldest(self, most: int, below: int | None) -> None:
        """Drop up to ``most`` of the earliest added predictions, those with sequence numbers below ``below``."""
        live = self._first_alive(most)
        if below is not None:
            live = live[: int(np.searchsorted(self._seqs[live], below))]
        for event_id in self._ids[live].tolist():
            del self._rows[event_id]
        self._alive[live] = False
        if live.size:
            self._head = int(live[-1]) + 1  # the rows before it are dead now
        self.stats.evicted += live.size
        self._account()

    @property
    def n_pending(self) -> int:
        return len(self._pending)

    def add(
        self,
        event_ids: Sequence[str],
        model_version: str,
        event_times: NDArray[np.integer],
        scores: NDArray[np.floating],
        predicted_labels: Sequence[str | None] | None = None,
        attributes: Mapping[str, Sequence[str]] | None = None,
    ) -> JoinedLabels:
        """Store a batch of predictions; return those whose label was already waiting."""
        ids = np.asarray(event_ids, dtype=object)
        n = ids.size
        times = np.asarray(event_times, dtype=np.int64)
        values = np.asarray(scores, dtype=np.float64)
        predicted = np.full(n, None, dtype=object)
        if predicted_labels is not None and len(predicted_labels):
            predicted = np.asarray(predicted_labels, dtype=object)
        attrs = {k: np.asarray(v, dtype=object) for k, v in (attributes or {}).items()}
        for name, col in [
            ("event_times", times),
            ("scores", values),
            ("predicted_labels", predicted),
            *((f"attribute {k!r}", v) for k, v in attrs.items()),
        ]:
            if col.shape != (n,):
                raise ValueError(f"{name} has {col.size} values for {n} event ids")
        if n == 0:
            return JoinedLabels.empty()

        joined = JoinedLabels.empty()
        if self._pending:
            pending = self._pending
            # pop as we go: an id repeated in the batch joins once, its repeat is stored
            found = [(j, pending.pop(i)[0]) for j, i in enumerate(ids.tolist()) if i in pending]
            if found:
                waiting = np.zeros(n, dtype=bool)
                waiting[[j for j, _ in found]] = True
                labels = np.empty(len(found), dtype=object)
                labels[:] = [label for _, label in found]
                joined = JoinedLabels(
                    ids[waiting],
                    np.full(labels.size, model_version, dtype=object),
                    times[waiting],
                    values[waiting],
                    predicted[waiting],
                    labels,
                    {k: v[waiting] for k, v in attrs.items()},
                )
                self.stats.joined_pending += labels.size
                keep = ~waiting
                ids, times, values, predicted = ids[keep], times[keep], values[keep], predicted[keep]
                attrs = {k: v[keep] for k, v in attrs.items()}
                n = ids.size

        self._reserve(n)
        start, stop = self._size, self._size + n
        self._ids[start:stop] = ids
        first = self.budget._take_seqs(n)
        self._seqs[start:stop] = np.arange(first, first + n)
        self._versions[start:stop] = model_version
        self._times[start:stop] = times
        self._scores[start:stop] = values
        self._predicted[start:stop] = predicted
        for key in attrs.keys() - self._attributes.keys():
            self._attributes[key] = np.full(self._ids.size, "", dtype=object)
        for key, col in self._attributes.items():
            col[start:stop] = attrs.get(key, "")
        self._alive[start:stop] = True
        self._size = stop

        rows = self._rows
        id_list = ids.tolist()
        known = len(rows)
        # Usually every id is new: then the batch is merged in C, without a Python step per id.
        rows.update(zip(id_list, range(first, first + n)))
        replaced: list[int] = []
        if len(rows) != known + n:
            replaced = self._readd(id_list, first, start)
        if replaced:
            self._alive[self._row_of(replaced)] = False
        self.stats.added += n
        self.stats.replaced += len(replaced)

        # ``_rows`` is in order of sequence number, and so are the live rows of the columns:
        # the earliest added are the first live rows.
        self._account()
        self.budget._enqueue(self)
        self.budget._evict()
        return joined

    def _first_alive(self, k: int) -> NDArray[np.intp]:
        """The first ``k`` live rows from ``_head`` on (fewer if there are fewer), found in growing
        stretches: a full index evicts a batch's worth per batch, so scanning every row each time
        cost more than the eviction itself."""
        found: list[NDArray[np.intp]] = []
        need, at, step = k, self._head, max(2 * k, 1024)
        while need > 0 and at < self._size:
            stop = min(at + step, self._size)
            live = np.flatnonzero(self._alive[at:stop])[:need] + at
            found.append(live)
            need -= live.size
            at, step = stop, 2 * step
        return np.concatenate(found) if found else np.empty(0, dtype=np.intp)

    def _readd(self, id_list: list[str], first: int, start: int) -> list[int]:
        """Redo, id by id, the merge of a batch whose ids were not all new; return the replaced sequence numbers.

        The one-go merge put a stored or repeated id at its first place with its last sequence
        number, where a re-sent id must count as newest. The sequence numbers it overwrote are
        those of the live rows before ``start`` with an id of the batch (rare: replays, retries).
        """
        rows = self._rows
        batch = set(id_list)
        before = np.flatnonzero(self._alive[:start])
        in_batch = [event_id in batch for event_id in self._ids[before].tolist()]
        replaced: list[int] = self._seqs[before[in_batch]].tolist()
        for event_id in id_list:  # back to the index without this batch
            rows.pop(event_id, None)
        for event_id, seq in zip(id_list, range(first, first + len(id_list))):
            old = rows.pop(event_id, None)  # pop, so that an id repeated in the batch counts as newest
            if old is not None:
                replaced.append(old)
            rows[event_id] = seq
        return replaced

    def join(self, event_ids: Sequence[str], labels: Sequence[object]) -> JoinedLabels:
        """Match labels to stored predictions; keep the others pending."""
        ids = list(event_ids)
        labels = list(labels)
        if len(labels) != len(ids):
            raise ValueError(f"{len(labels)} labels for {len(ids)} event ids")
        label_values = np.empty(len(ids), dtype=object)
        label_values[:] = labels
        seqs = np.array([self._rows.pop(i, -1) for i in ids], dtype=np.int64)
        matched = seqs >= 0
        unmatched = [ids[i] for i in np.flatnonzero(~matched).tolist()]
        for event_id, label in zip(unmatched, label_values[~matched].tolist()):
            self._pending.pop(event_id, None)  # a newer label for the same id replaces the older
            self._pending[event_id] = (label, self._now)
        self.stats.unmatched += len(unmatched)
        excess = len(self._pending) - self.max_pending
        for _ in range(max(excess, 0)):
            self._pending.popitem(last=False)
        self.stats.pending_evicted += max(excess, 0)

        hit = self._row_of(seqs[matched])
        self._alive[hit] = False
        self._account()
        self.stats.joined += hit.size
        return JoinedLabels(
            self._ids[hit],
            self._versions[hit],
            self._times[hit],
            self._scores[hit],
            self._predicted[hit],
            label_values[matched],
            {k: v[hit] for k, v in self._attributes.items()},
            unmatched,
        )

    def expire(self, now_ms: int) -> int:
        """Drop predictions with event time before ``now_ms - ttl_ms`` and labels pending that long.

        Returns the number of predictions dropped; ``stats`` counts both kinds.
        """
        now_ms = int(now_ms)
        self._now = now_ms if self._now is None else max(self._now, now_ms)
        cutoff = self._now - self.ttl_ms

        old = np.flatnonzero(self._alive[: self._size] & (self._times[: self._size] < cutoff))
        for event_id in self._ids[old].tolist():
            del self._rows[event_id]
        self._alive[old] = False
        self._account()
        self.stats.expired += old.size

        pending = self._pending
        unstamped = []
        for event_id, (label, since) in pending.items():
            if since is not None:
                break
            unstamped.append((event_id, label))
        for event_id, label in unstamped:  # arrived before time was known: waits from now
            pending[event_id] = (label, self._now)
        while pending:
            event_id, (label, since) = next(iter(pending.items()))
            assert since is not None  # every label pending was stamped just above
            if since >= cutoff:
                break
            pending.popitem(last=False)
            self.stats.pending_expired += 1
        return int(old.size)

    def _row_of(self, seqs: Sequence[int] | NDArray[np.int64]) -> NDArray[np.intp]:
        """The rows of stored sequence numbers (every one must be in the index)."""
        return np.searchsorted(self._seqs[: self._size], np.asarray(seqs, dtype=np.int64))

    def _reserve(self, n: int) -> None:
        """Room for ``n`` more rows: first by dropping dead rows, else by growing."""
        if self._size + n <= self._ids.size:
            return
        self._compact()
        # grow unless compaction freed a quarter, so that compactions stay rare (amortised O(1) per row)
        if self._size + n <= 0.75 * self._ids.size:
            return
        capacity = max(2 * self._ids.size, len(self._rows) + n, 1024)

        def grow(col: NDArray[_Scalar], fill: object) -> NDArray[_Scalar]:
            out = np.full(capacity, fill, dtype=col.dtype)
            out[: self._size] = col[: self._size]
            return out

        self._ids = grow(self._ids, None)
        self._seqs = grow(self._seqs, 0)
        self._versions = grow(self._versions, None)
        self._times = grow(self._times, 0)
        self._scores = grow(self._scores, np.nan)
        self._predicted = grow(self._predicted, None)
        self._attributes = {k: grow(v, "") for k, v in self._attributes.items()}
        self._alive = grow(self._alive, False)

    def _compact(self) -> None:
        live = np.flatnonzero(self._alive[: self._size])
        k = live.size
        for col in (
            self._ids,
            self._seqs,
            self._versions,
            self._times,
            self._scores,
            self._predicted,
            *self._attributes.values(),
        ):
            col[:k] = col[live]
        self._alive[:k] = True
        self._alive[k:] = False
        self._size = k
        self._head = 0  # ``_seqs`` stays ascending, so ``_rows`` needs no change
