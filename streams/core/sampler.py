"""The bottom-k sample a window keeps of each numeric feature, and the seeds behind it.

The window sample is a *bottom-k* sample: every value gets a pseudo-random key
computed from the window seed, the feature and the value's position in the
window's stream, and the sample keeps the ``k`` values with the smallest
keys. That makes it

- uniform without replacement (the keys are i.i.d. uniform in effect);
- independent of how the stream was cut into batches, so a replay after a
  crash reproduces the same sample whatever the batch boundaries;
- mergeable exactly: the sample of ``a.merge(b)`` is the bottom-k of the
  union, so merging is associative and commutative, samples included.
"""

from __future__ import annotations

import hashlib

import numpy as np
from numpy.typing import NDArray

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
MASK64 = (1 << 64) - 1


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, identical in every process.

    Python's built-in ``hash`` of a string changes from process to process
    (``PYTHONHASHSEED``), so it cannot make a replay reproducible; this can.

    >>> stable_seed("credit", "1", "age", 1_700_000_000_000) == stable_seed("credit", "1", "age", 1_700_000_000_000)
    True
    >>> stable_seed("a") != stable_seed("b")
    True
    """
    digest = hashlib.blake2b("\x1f".join(repr(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _splitmix(z: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """SplitMix64's finaliser, computed in place: ``z`` must be a fresh array."""
    shifted = z >> _U64(30)  # one scratch array instead of a temporary per step
    z ^= shifted
    z *= _MIX1
    z ^= np.right_shift(z, _U64(27), out=shifted)
    z *= _MIX2
    z ^= np.right_shift(z, _U64(31), out=shifted)
    return z


def sample_keys(base: int | NDArray[np.uint64], start: int | NDArray[np.uint64], count: int) -> NDArray[np.uint64]:
    """Keys of positions ``start .. start+count-1`` of one feature's stream (a bijection of position).

    ``base`` and ``start`` may also be columns, one row per feature: the rows
    are then each feature's keys, as separate calls would give them.

    >>> rows = sample_keys(np.array([[3], [8]], np.uint64), np.array([[0], [5]], np.uint64), 4)
    >>> bool((rows[0] == sample_keys(3, 0, 4)).all() and (rows[1] == sample_keys(8, 5, 4)).all())
    True
    """
    # base + (start + i) * golden, as (base + start * golden) + i * golden: one pass over the keys, not three
    offset = np.asarray(base, np.uint64) + np.asarray(start, np.uint64) * _GOLDEN
    return _splitmix(offset + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)


def feature_base(seed: int, feature: str) -> int:
    """The base of one feature's key stream in the window of ``seed`` (see ``sample_keys``).

    >>> feature_base(7, "age") == feature_base(7, "age") != feature_base(7, "income")
    True
    """
    return stable_seed(int(seed) & MASK64, "sample", feature)


# Offers to a full sample wait until they hold this many times its capacity: one
# selection then serves several batches. Once (not twice, as before) keeps an open
# window at two samples' memory a feature instead of three, for no measurable CPU
# (1,000 models x 30 features: about 0.5 GiB less while every window is busy).
_SAMPLE_QUEUE = 1


class BottomKSample:
    """A uniform sample of at most ``capacity`` values: those with the smallest keys.

    Once the sample is full, offers wait in a queue and one selection settles
    many of them together; ``values`` and ``keys`` settle the queue first, so
    a read always sees the bottom-k of everything offered. (A plain class,
    not a dataclass, because of that lazy state.)

    >>> s = BottomKSample(3)
    >>> s.offer(np.array([5.0, 6.0, 7.0, 8.0]), np.array([40, 10, 30, 20], np.uint64))
    >>> sorted(s.values.tolist())
    [6.0, 7.0, 8.0]
    >>> s.offer(np.array([1.0, 2.0]), np.array([15, 50], np.uint64))
    >>> sorted(s.values.tolist()), sorted(s.keys.tolist())
    ([1.0, 6.0, 8.0], [10, 15, 20])
    """

    def __init__(
        self, capacity: int, values: NDArray[np.float64] | None = None, keys: NDArray[np.uint64] | None = None
    ) -> None:
        self.capacity = capacity
        self._values = np.empty(0, np.float64) if values is None else values
        self._keys = np.empty(0, np.uint64) if keys is None else keys
        self._queued_values: list[NDArray[np.float64]] = []
        self._queued_keys: list[NDArray[np.uint64]] = []
        self._queued = 0
        self._bound = self._entry_bound()

    def __repr__(self) -> str:
        return f"BottomKSample(capacity={self.capacity}, values={self.values!r}, keys={self.keys!r})"

    @property
    def values(self) -> NDArray[np.float64]:
        self._settle()
        return self._values

    @property
    def keys(self) -> NDArray[np.uint64]:
        self._settle()
        return self._keys

    def offer(self, values: NDArray[np.float64], keys: NDArray[np.uint64]) -> None:
        """Offer values and their keys; the sample keeps copies, never the arrays given."""
        if self.capacity == 0 or values.size == 0:
            return
        if self._full:
            # Only keys up to the largest kept key can enter (ties are broken by value).
            take = np.flatnonzero(keys <= self._bound)
            self._enqueue(values[take], keys[take])
            return
        if self._values.size + values.size <= self.capacity:
            self._values = np.concatenate([self._values, values])
            self._keys = np.concatenate([self._keys, keys])
            self._bound = self._entry_bound()
            return
        if self._values.size == 0:
            self._keep(values, keys)  # more values than capacity: what it keeps is a copy
            return
        self._keep(np.concatenate([self._values, values]), np.concatenate([self._keys, keys]))

    @property
    def entry_bound(self) -> np.uint64:
        """The largest key that can still enter (ties are broken by value); any key while not full."""
        return self._bound

    def offer_entrants(self, values: NDArray[np.float64], keys: NDArray[np.uint64]) -> None:
        """Offer values whose keys are all at most ``entry_bound``, in arrays that nobody changes afterwards.

        A full sample queues the arrays as they are (views included), without
        a copy or another comparison: the caller has made it for many samples
        at once. (Keys above the bound would only make the queue longer.)
        """
        if self._full and values.size:
            self._enqueue(values, keys)
        else:
            self.offer(values, keys)

    @property
    def _full(self) -> bool:
        return self.capacity > 0 and self._values.size >= self.capacity

    def _enqueue(self, values: NDArray[np.float64], keys: NDArray[np.uint64]) -> None:
        self._queued_values.append(values)
        self._queued_keys.append(keys)
        self._queued += values.size
        if self._queued >= _SAMPLE_QUEUE * self.capacity:
            self._settle()

    def _settle(self) -> None:
        if self._queued:
            values = np.concatenate([self._values, *self._queued_values])
            keys = np.concatenate([self._keys, *self._queued_keys])
            self._queued_values, self._queued_keys, self._queued = [], [], 0
            self._keep(values, keys)

    def _entry_bound(self) -> np.uint64:
        return _U64(self._keys.max()) if self._full else _U64(MASK64)

    def _keep(self, values: NDArray[np.float64], keys: NDArray[np.uint64]) -> None:
        k = self.capacity
        if keys.size <= k:
            self._values, self._keys = values, keys
            self._bound = self._entry_bound()
            return
        if keys.size >= 10 * k:
            # The keys are uniform over 64 bits: the k-th smallest of N lies near k/N of their
            # range, and the keys below twice that are a small part of the array that holds the
            # whole sample (unless fewer than k are, all but impossible: then every key is used).
            few = np.flatnonzero(keys < _U64(min(int(2.0 * k / keys.size * 2.0**64), MASK64)))
            if few.size >= k:
                values, keys = values[few], keys[few]
        kth = np.partition(keys, k - 1)[k - 1]
        # Positions, not a mask: gathering by position costs less than masking, and keeps the order.
        keep = np.flatnonzero(keys <= kth)
        if keep.size > k:
            # Equal keys only arise when windows that share a seed are merged:
            # the smaller values win, so that every merge order gives one sample.
            tied = np.flatnonzero(keys == kth)
            tied = tied[np.argsort(values[tied], kind="stable")]
            below = np.flatnonzero(keys < kth)
            keep = np.sort(np.concatenate([below, tied[: k - below.size]]))
        self._values, self._keys, self._bound = values[keep], keys[keep], kth

    def merged(self, other: BottomKSample) -> BottomKSample:
        out = BottomKSample(min(self.capacity, other.capacity))
        out._keep(np.concatenate([self.values, other.values]), np.concatenate([self.keys, other.keys]))
        return out

    def canonical(self) -> tuple[NDArray[np.float64], NDArray[np.uint64]]:
        """(values, keys) ordered by key then value: equal samples give equal arrays."""
        order = np.lexsort((self.values, self.keys))
        return self.values[order], self.keys[order]

    def copy(self) -> BottomKSample:
        return BottomKSample(self.capacity, self.values.copy(), self.keys.copy())
