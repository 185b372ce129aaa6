"""Reference and window profiles: what drift is measured from.

A :class:`ReferenceProfile` summarises the data a model version was trained
or validated on; a :class:`WindowProfile` summarises one event-time window of
live traffic over the *reference's* bins and categories, so that the two can be
compared without keeping raw events.

Numeric features are binned on the reference's quantile edges, with an open
bin below the reference minimum and one above its maximum. Categorical
features count the reference's top-K values plus ``other``. Both count missing
values separately. Numeric features also keep a bounded uniform sample, for
the tests that need values (KS, Wasserstein, quantiles).

The window sample is a *bottom-k* sample: every value gets a pseudo-random key
computed from the window seed, the feature and the value's position in the
window's stream, and the sample keeps the ``k`` values with the smallest
keys. That makes it

- uniform without replacement (the keys are i.i.d. uniform in effect);
- independent of how the stream was cut into batches, so a replay after a
  crash reproduces the same sample whatever the batch boundaries;
- mergeable exactly: the sample of ``a.merge(b)`` is the bottom-k of the
  union, so merging is associative and commutative, samples included.

Large arrays serialise as base64 of little-endian bytes (the packed form the
``PredictionBatch`` contract uses); everything else is plain JSON. Both
``to_dict`` forms round-trip exactly.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from driftline.streams.core.exactsum import ZERO, ExactSum, population_std, row_moments, sum_squared_deviations
from driftline.streams.records import PREDICTION_FEATURE

FORMAT_VERSION = 1
# Window profiles keep exact sums (streams.core.exactsum) instead of a running mean and m2.
WINDOW_FORMAT_VERSION = 2
OTHER = "__other__"
SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEFAULT_WINDOW_SAMPLE = 1_000

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

T = TypeVar("T")


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


def _sample_keys(base: int | NDArray[np.uint64], start: int | NDArray[np.uint64], count: int) -> NDArray[np.uint64]:
    """Keys of positions ``start .. start+count-1`` of one feature's stream (a bijection of position).

    ``base`` and ``start`` may also be columns, one row per feature: the rows
    are then each feature's keys, as separate calls would give them.

    >>> rows = _sample_keys(np.array([[3], [8]], np.uint64), np.array([[0], [5]], np.uint64), 4)
    >>> bool((rows[0] == _sample_keys(3, 0, 4)).all() and (rows[1] == _sample_keys(8, 5, 4)).all())
    True
    """
    # base + (start + i) * golden, as (base + start * golden) + i * golden: one pass over the keys, not three
    offset = np.asarray(base, np.uint64) + np.asarray(start, np.uint64) * _GOLDEN
    return _splitmix(offset + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)


def _feature_base(seed: int, feature: str) -> int:
    return stable_seed(int(seed) & _MASK64, "sample", feature)


def _pack(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def _unpack(s: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()


def _opt(x: float | None) -> float | None:
    return None if x is None else float(x)


# Below this many values, a binary search per value costs least; below the second
# bound, one sort of the values and a binary search per cut; beyond it, one pass per cut.
_COUNT_BY_SEARCH = 64
_COUNT_BY_SORT = 4_096


def bin_counts(cuts: NDArray[np.float64], values: NDArray[np.float64]) -> NDArray[np.int64]:
    """How many of ``values`` fall in each bin of ``np.searchsorted(cuts, values, side="right")``.

    ``cuts`` must be strictly increasing and ``values`` free of NaN. The result
    equals ``np.bincount(np.searchsorted(cuts, values, side="right"),
    minlength=len(cuts) + 1)``, but avoids one binary search per value, whose
    branches a CPU mispredicts on every other step: a batch of a few thousand
    values is sorted (a vectorised sort) and searched once per cut; a larger
    one takes one vectorised comparison per cut.

    >>> bin_counts(np.array([0.0, 1.0, 2.0]), np.array([-5.0, 0.0, 0.5, 1.0, 2.0, 7.0])).tolist()
    [1, 2, 1, 2]
    """
    n = values.size
    if n < _COUNT_BY_SEARCH:
        return np.bincount(np.searchsorted(cuts, values, side="right"), minlength=cuts.size + 1)
    # below[k]: how many values are < cuts[k], so bin k holds below[k] - below[k - 1]
    if n < _COUNT_BY_SORT:
        below = np.searchsorted(np.sort(values), cuts, side="left")
    else:
        below = n - np.array([np.count_nonzero(values >= cut) for cut in cuts.tolist()], dtype=np.int64)
    counts = np.empty(below.size + 1, dtype=np.int64)
    counts[0] = below[0]
    np.subtract(below[1:], below[:-1], out=counts[1:-1])
    counts[-1] = n - below[-1]
    return counts


def bin_counts_rows(cuts: Sequence[NDArray[np.float64]], values: NDArray[np.float64]) -> list[NDArray[np.int64]]:
    """``bin_counts(cuts[j], values[j])`` for each row ``j`` of ``values``, one sort serving every row.

    >>> x = np.array([[-5.0, 0.0, 0.5, 1.0, 2.0, 7.0], [3.0, 3.0, 3.0, 3.0, 3.0, -3.0]])
    >>> [c.tolist() for c in bin_counts_rows([np.array([0.0, 1.0, 2.0]), np.array([3.0])], x)]
    [[1, 2, 1, 2], [1, 5]]
    """
    rows, n = values.shape
    if n >= _COUNT_BY_SORT:
        return [bin_counts(c, v) for c, v in zip(cuts, values)]
    ordered = np.sort(values, axis=1)
    # below[j, 1 + k]: how many values of row j are < cuts[j][k]; 0 before the first cut, n after the last
    below = np.full((rows, max(c.size for c in cuts) + 2), n, dtype=np.int64)
    below[:, 0] = 0
    for j, c in enumerate(cuts):
        below[j, 1 : c.size + 1] = np.searchsorted(ordered[j], c, side="left")
    counts = np.diff(below, axis=1)
    return [counts[j, : c.size + 1] for j, c in enumerate(cuts)]


# ----------------------------------------------------------------------------- column parsing


def _numeric_column(feature: str, values: Any) -> NDArray[np.float64]:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"numeric feature {feature!r} has values that are not numbers: {exc}") from None
    if x.ndim != 1:
        raise ValueError(f"numeric feature {feature!r} must be one-dimensional, got shape {x.shape}")
    return x


def _finite_values(feature: str, x: NDArray[np.float64]) -> tuple[NDArray[np.float64], int]:
    """Non-missing values and the missing count; NaN is missing, infinity is an error."""
    missing = np.isnan(x)
    n_missing = int(np.count_nonzero(missing))
    v = x[~missing] if n_missing else x
    if v.size and not np.isfinite(v).all():
        raise ValueError(f"numeric feature {feature!r} holds infinite values; use NaN for missing")
    return v, n_missing


# Columns are stacked in blocks of at most this many values: enough features to spread
# numpy's cost per call over, few enough that each temporary stays under 128 KiB, where
# glibc starts to map fresh pages for an allocation (their page faults cost more than
# stacking saves). A batch too long for two columns a block goes column by column.
_BLOCK_VALUES = 16_000


def _complete_blocks(
    columns: Mapping[str, np.ndarray], names: Sequence[str], n: int
) -> tuple[list[tuple[list[str], np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """The columns of ``names`` that hold neither NaN nor infinity, stacked, and the names of the others.

    Each block is (names, values with one row per feature, row minima, row
    maxima). The others go through :func:`_finite_values`, one at a time, which
    separates their missing values and rejects infinity with its own message;
    so do all the columns of an empty batch or of one too long to stack.

    >>> blocks, others = _complete_blocks({"a": np.array([1.0, 2.0]), "b": np.array([np.nan, 0.0])}, ["a", "b"], 2)
    >>> [(names, x.tolist(), lo.tolist(), hi.tolist()) for names, x, lo, hi in blocks], others
    ([(['a'], [[1.0, 2.0]], [1.0], [2.0])], ['b'])
    """
    rows = _BLOCK_VALUES // max(n, 1)
    if n == 0 or rows < 2:
        return [], list(names)
    blocks, others = [], []
    for i in range(0, len(names), rows):
        group = list(names[i : i + rows])
        x = np.stack([columns[f] for f in group])
        lo, hi = x.min(axis=1), x.max(axis=1)
        # NaN spreads to the minimum and an infinity is an extreme: finite extremes, finite row.
        complete = np.isfinite(lo) & np.isfinite(hi)
        if not complete.all():
            others += [f for f, ok in zip(group, complete.tolist()) if not ok]
            group = [f for f, ok in zip(group, complete.tolist()) if ok]
            x, lo, hi = x[complete], lo[complete], hi[complete]
        if group:
            blocks.append((group, x, lo, hi))
    return blocks, others


def _category_counts(feature: str, values: Sequence[Any]) -> tuple[Counter[Any], int]:
    """Counts of each category and the missing count (None, or a float NaN as pandas writes it)."""
    try:
        counts = Counter(values)
    except TypeError as exc:
        raise ValueError(f"categorical feature {feature!r} holds an unhashable value: {exc}") from None
    n_missing = counts.pop(None, 0)
    for key in [k for k in counts if not isinstance(k, str)]:
        if isinstance(key, float) and math.isnan(key):
            n_missing += counts.pop(key)
        else:
            raise ValueError(
                f"categorical feature {feature!r} holds {key!r} ({type(key).__name__}); "
                "categories must be strings, with None for missing"
            )
    return counts, n_missing


def _columns_length(numeric: Mapping[str, Any], categorical: Mapping[str, Any], predictions: Any) -> int | None:
    lengths = {name: len(col) for name, col in numeric.items()}
    lengths.update({name: len(col) for name, col in categorical.items()})
    if predictions is not None:
        lengths[PREDICTION_FEATURE] = len(predictions)
    distinct = set(lengths.values())
    if len(distinct) > 1:
        raise ValueError(f"columns differ in length: {dict(sorted(lengths.items()))}")
    return distinct.pop() if distinct else None


def _check_names(numeric: Mapping[str, Any], categorical: Mapping[str, Any]) -> None:
    both = set(numeric) & set(categorical)
    if both:
        raise ValueError(f"features given as both numeric and categorical: {sorted(both)}")
    if PREDICTION_FEATURE in numeric or PREDICTION_FEATURE in categorical:
        raise ValueError(f"{PREDICTION_FEATURE!r} is reserved for the model output; pass it as predictions")


# ----------------------------------------------------------------------------- reference


@dataclass(eq=False)
class NumericReference:
    """The reference summary of one numeric feature.

    ``edges`` are the reference quantiles (first = minimum, last = maximum);
    ``counts`` has one open bin below the minimum, the inner bins, and one open
    bin above the maximum (the open bins are empty in the reference itself).

    >>> r = NumericReference.build("x", np.arange(100.0), bins=4, sample_size=10, seed=0)
    >>> r.edges.tolist(), r.counts.tolist()
    ([0.0, 24.0, 49.0, 74.0, 99.0], [0, 24, 25, 25, 26, 0])
    >>> r.bin_index(np.array([-1.0, 0.0, 99.0, 99.5])).tolist()
    [0, 1, 4, 5]
    """

    name: str
    edges: np.ndarray
    counts: np.ndarray
    missing: int
    mean: float
    std: float
    min: float
    max: float
    sample: np.ndarray  # sorted
    cuts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # One searchsorted on these cuts puts a value equal to the maximum in the
        # last inner bin and anything above it in the open bin.
        self.cuts = np.append(self.edges[: max(len(self.edges) - 1, 1)], np.nextafter(self.edges[-1], np.inf))
        if self.counts.shape != (self.n_bins,):
            raise ValueError(f"feature {self.name!r}: {len(self.counts)} counts for {self.n_bins} bins")

    @property
    def n_bins(self) -> int:
        return len(self.cuts) + 1

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def bin_index(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.cuts, values, side="right")

    @classmethod
    def build(cls, name: str, values: Any, *, bins: int, sample_size: int, seed: int) -> NumericReference:
        v, n_missing = _finite_values(name, _numeric_column(name, values))
        if v.size == 0:
            raise ValueError(f"numeric feature {name!r} has no values in the reference; drop it or supply data")
        # Edges are reference values (no interpolation), so repeated values of
        # a discrete feature give fewer, never empty, bins.
        edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1), method="inverted_cdf"))
        rng = np.random.default_rng(stable_seed(seed, "reference", name))
        sample = v if v.size <= sample_size else rng.choice(v, size=sample_size, replace=False)
        ref = cls(
            name,
            edges,
            np.zeros(max(len(edges), 2) + 1, np.int64),
            n_missing,
            float(v.mean()),
            float(v.std()),
            float(v.min()),
            float(v.max()),
            np.sort(sample),
        )
        ref.counts = np.bincount(ref.bin_index(v), minlength=ref.n_bins).astype(np.int64)
        return ref

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "numeric",
            "edges": self.edges.tolist(),
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "sample": _pack(self.sample, "<f8"),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NumericReference:
        return cls(
            d["name"],
            np.asarray(d["edges"], np.float64),
            np.asarray(d["counts"], np.int64),
            int(d["missing"]),
            float(d["mean"]),
            float(d["std"]),
            float(d["min"]),
            float(d["max"]),
            _unpack(d["sample"], "<f8"),
        )


@dataclass(eq=False)
class CategoricalReference:
    """The reference summary of one categorical feature: top-K counts, ``other`` and missing.

    >>> r = CategoricalReference.build("c", ["a", "b", "a", None, "c", "a"], top_k=2)
    >>> r.categories, r.counts.tolist(), r.missing
    (['a', 'b'], [3, 1, 1], 1)
    """

    name: str
    categories: list[str]
    counts: np.ndarray  # per category, then other
    missing: int
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {c: i for i, c in enumerate(self.categories)}
        if self.counts.shape != (len(self.categories) + 1,):
            raise ValueError(f"feature {self.name!r}: {len(self.counts)} counts for {len(self.categories)} categories")

    @property
    def n_bins(self) -> int:
        return len(self.categories) + 1

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def count_values(self, values: Sequence[Any]) -> tuple[np.ndarray, int]:
        """Counts over the categories + other, and the missing count, of a column."""
        counts, n_missing = _category_counts(self.name, values)
        out = np.zeros(self.n_bins, np.int64)
        other = len(self.categories)
        for key, c in counts.items():  # one step per distinct value, not per value
            out[self.index.get(key, other)] += c
        return out, n_missing

    @classmethod
    def build(cls, name: str, values: Sequence[Any], *, top_k: int) -> CategoricalReference:
        counts, n_missing = _category_counts(name, values)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        top = [k for k, _ in ranked[:top_k]]
        table = np.array([c for _, c in ranked[:top_k]] + [sum(c for _, c in ranked[top_k:])], np.int64)
        if not top:
            raise ValueError(f"categorical feature {name!r} has no values in the reference; drop it or supply data")
        return cls(name, top, table, n_missing)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "categorical",
            "categories": list(self.categories),
            "counts": self.counts.tolist(),
            "missing": self.missing,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CategoricalReference:
        return cls(d["name"], list(d["categories"]), np.asarray(d["counts"], np.int64), int(d["missing"]))


@dataclass(eq=False)
class ReferenceProfile:
    """The reference of one model version: what its inputs and outputs looked like.

    Numeric features keep quantile bins, moments and a uniform sample;
    categorical ones the top-K values. The model output is the numeric feature
    ``__prediction__``. Derived data (sorted samples, proportions, calibrated
    thresholds) is cached on the object by :meth:`cached`, never serialised.

    >>> rng = np.random.default_rng(0)
    >>> ref = ReferenceProfile.build(
    ...     "credit", "1",
    ...     numeric={"age": rng.normal(40, 10, 1_000)},
    ...     categorical={"region": ["north", "south", None, "north"] * 250},
    ...     predictions=rng.random(1_000),
    ... )
    >>> ref.features
    ['age', 'region', '__prediction__']
    >>> ref.n, ref.numeric["age"].n_bins, ref.categorical["region"].counts.tolist()
    (1000, 12, [500, 250, 0])
    >>> ReferenceProfile.from_dict(ref.to_dict()).to_dict() == ref.to_dict()
    True
    """

    model_id: str
    model_version: str
    n: int
    numeric: dict[str, NumericReference]
    categorical: dict[str, CategoricalReference]
    bins: int = 10
    top_k: int = 20
    sample_size: int = 5_000
    seed: int = 0
    # ScoreCalibrator.to_dict() of a binary classifier, fitted where the profile was built (scores and
    # labels are both at hand only there); None: no label-free performance estimate for this version
    calibrator: dict[str, Any] | None = None
    # the fitted ``MultivariateModel.to_dict()`` of the raw reference rows (None: not fitted, e.g. an
    # old profile, or fewer than two non-constant numeric features); it needs the joint rows, which
    # the per-feature references do not keep, so whoever builds the profile fits it
    multivariate: dict[str, Any] | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def features(self) -> list[str]:
        return [
            *(f for f in self.numeric if f != PREDICTION_FEATURE),
            *self.categorical,
            *(f for f in self.numeric if f == PREDICTION_FEATURE),
        ]

    def kind(self, feature: str) -> str:
        if feature in self.numeric:
            return "numeric"
        if feature in self.categorical:
            return "categorical"
        raise KeyError(f"feature {feature!r} is not in the reference of {self.model_id} {self.model_version}")

    def cached(self, key: Any, factory: Callable[[], T]) -> T:
        """Derived data kept for the life of this object (the reference is immutable once built)."""
        try:
            hit: T = self._cache[key]  # the factory stored under this key made it
            return hit
        except KeyError:
            value = self._cache[key] = factory()
            return value

    @classmethod
    def build(
        cls,
        model_id: str,
        model_version: str,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, Sequence[str | None]],
        predictions: np.ndarray | None = None,
        *,
        bins: int = 10,
        top_k: int = 20,
        sample_size: int = 5_000,
        seed: int = 0,
        multivariate: Mapping[str, Any] | None = None,
    ) -> ReferenceProfile:
        if bins < 1 or top_k < 1 or sample_size < 1:
            raise ValueError(f"bins, top_k and sample_size must be positive, got {bins}, {top_k}, {sample_size}")
        _check_names(numeric, categorical)
        n = _columns_length(numeric, categorical, predictions)
        if n is None:
            raise ValueError("a reference needs at least one feature or predictions")
        columns = dict(numeric)
        if predictions is not None:
            columns[PREDICTION_FEATURE] = predictions
        return cls(
            model_id,
            model_version,
            n,
            {
                f: NumericReference.build(f, x, bins=bins, sample_size=sample_size, seed=seed)
                for f, x in columns.items()
            },
            {f: CategoricalReference.build(f, x, top_k=top_k) for f, x in categorical.items()},
            bins,
            top_k,
            sample_size,
            seed,
            multivariate=None if multivariate is None else dict(multivariate),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "n": self.n,
            "settings": {"bins": self.bins, "top_k": self.top_k, "sample_size": self.sample_size, "seed": self.seed},
            "features": [
                *(r.to_dict() for r in self.numeric.values()),
                *(r.to_dict() for r in self.categorical.values()),
            ],
            # only when present, so profiles without one read and write exactly as before
            **({"calibrator": self.calibrator} if self.calibrator is not None else {}),
            # only when fitted, so that the dict of a profile without it is what it always was
            **({"multivariate": self.multivariate} if self.multivariate is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceProfile:
        if d.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported reference profile format {d.get('format')!r}; expected {FORMAT_VERSION}")
        s = d["settings"]
        numeric = {f["name"]: NumericReference.from_dict(f) for f in d["features"] if f["kind"] == "numeric"}
        categorical = {
            f["name"]: CategoricalReference.from_dict(f) for f in d["features"] if f["kind"] == "categorical"
        }
        return cls(
            d["model_id"],
            d["model_version"],
            int(d["n"]),
            numeric,
            categorical,
            int(s["bins"]),
            int(s["top_k"]),
            int(s["sample_size"]),
            int(s["seed"]),
            calibrator=d.get("calibrator"),
            multivariate=d.get("multivariate"),
        )


# ----------------------------------------------------------------------------- window


# Offers to a full sample wait until they hold this many times its capacity: one
# selection then serves several batches, for a few times the sample's memory.
_SAMPLE_QUEUE = 2


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
        return _U64(self._keys.max()) if self._full else _U64(_MASK64)

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
            few = np.flatnonzero(keys < _U64(min(int(2.0 * k / keys.size * 2.0**64), _MASK64)))
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


@dataclass(eq=False)
class NumericWindow:
    """One numeric feature in one window: bin counts, exact sums, and a bottom-k sample.

    The sums of the values and of their squares are exact (see
    streams.core.exactsum), so ``mean`` and ``std`` are rounded once from
    them: equal for any batching, order or merge of the same values.

    >>> ref = NumericReference.build("x", np.arange(10.0), bins=2, sample_size=10, seed=0)
    >>> w = NumericWindow.empty(ref, base=1, sample_size=100)
    >>> w.update(np.array([-5.0, 1.0, 9.0, 50.0, np.nan]))
    >>> w.counts.tolist(), w.count, w.missing, w.mean, w.min, w.max
    ([1, 1, 1, 1], 4, 1, 13.75, -5.0, 50.0)
    """

    name: str
    base: int  # key stream of this feature in this window
    cuts: np.ndarray = field(repr=False)  # the reference's, shared
    counts: np.ndarray
    sample: BottomKSample
    missing: int = 0
    count: int = 0
    total: ExactSum = ZERO
    squares: ExactSum = ZERO
    min: float | None = None
    max: float | None = None

    @classmethod
    def empty(cls, ref: NumericReference, *, base: int, sample_size: int) -> NumericWindow:
        return cls(ref.name, base, ref.cuts, np.zeros(ref.n_bins, np.int64), BottomKSample(sample_size))

    @property
    def mean(self) -> float:
        """The mean of the values, correctly rounded (0.0 when there is none)."""
        return self.total.ratio(self.count) if self.count else 0.0

    @property
    def std(self) -> float | None:
        """The population standard deviation: the square root of the correctly rounded variance."""
        return population_std(self.total, self.squares, self.count) if self.count else None

    @property
    def m2(self) -> float:
        """The sum of squared deviations from the mean, correctly rounded (0.0 when there is none)."""
        return sum_squared_deviations(self.total, self.squares, self.count) if self.count else 0.0

    def update(self, x: np.ndarray) -> None:
        self.add(*_finite_values(self.name, _numeric_column(self.name, x)))

    def add(self, v: np.ndarray, n_missing: int) -> None:
        """Add finite values ``v`` and ``n_missing`` missing ones (already validated)."""
        self.missing += n_missing
        if v.size == 0:
            return
        self.counts += bin_counts(self.cuts, v)
        self.sample.offer(v, _sample_keys(self.base, self.count, v.size))
        (total,), (squares,) = row_moments(v[None, :])
        self._combine(v.size, total, squares, float(v.min()), float(v.max()))

    @staticmethod
    def add_rows(windows: Sequence[NumericWindow], values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Add row ``j`` of ``values`` to ``windows[j]``, exactly as ``windows[j].add(values[j], 0)`` would.

        ``values`` holds one row per feature, C-contiguous and finite; ``lo``
        and ``hi`` are its row minima and maxima. Keys, bins, means and the
        values that can enter the samples take one numpy call for all the rows:
        the exact sums of values and squares take one pass for all the rows.

        >>> ref = NumericReference.build("x", np.arange(10.0), bins=2, sample_size=10, seed=0)
        >>> a, b = (NumericWindow.empty(ref, base=base, sample_size=2) for base in (1, 2))
        >>> x = np.array([[1.0, 2.0, 30.0], [4.0, -5.0, 6.0]])
        >>> NumericWindow.add_rows([a, b], x, x.min(axis=1), x.max(axis=1))
        >>> a.counts.tolist(), a.mean, b.min, b.sample.values.size
        ([0, 2, 0, 1], 11.0, -5.0, 2)
        """
        n = values.shape[1]
        keys = _sample_keys(
            np.array([[w.base] for w in windows], np.uint64), np.array([[w.count] for w in windows], np.uint64), n
        )
        counts = bin_counts_rows([w.cuts for w in windows], values)
        totals, squares = row_moments(values)
        # The values that can enter each sample, selected for every row at once: row j's are
        # the positions from j * n to (j + 1) * n of the flattened block. While no sample is
        # full, that is every value.
        bounds = np.array([[w.sample.entry_bound] for w in windows], np.uint64)
        entering_values, entering_keys = values.ravel(), keys.ravel()
        ends = np.arange(1, len(windows) + 1) * n
        if bounds.min() < _MASK64:
            entering = np.flatnonzero(keys <= bounds)
            entering_values, entering_keys = entering_values[entering], entering_keys[entering]
            ends = np.searchsorted(entering, ends)
        ends = ends.tolist()
        starts = [0, *ends[:-1]]
        for j, (w, low, high) in enumerate(zip(windows, lo.tolist(), hi.tolist())):
            w.counts += counts[j]
            w.sample.offer_entrants(entering_values[starts[j] : ends[j]], entering_keys[starts[j] : ends[j]])
            w._combine(n, totals[j], squares[j], low, high)

    def _combine(self, n: int, total: ExactSum, squares: ExactSum, lo: float | None, hi: float | None) -> None:
        if n == 0:
            return
        assert lo is not None and hi is not None  # rows were added, so they have extremes
        self.count += n
        self.total = self.total.merged(total)
        self.squares = self.squares.merged(squares)
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def merged(self, other: NumericWindow) -> NumericWindow:
        out = NumericWindow(
            self.name,
            self.base,
            self.cuts,
            self.counts + other.counts,
            self.sample.merged(other.sample),
            self.missing + other.missing,
            self.count,
            self.total,
            self.squares,
            self.min,
            self.max,
        )
        out._combine(other.count, other.total, other.squares, other.min, other.max)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.tolist(),
            "missing": self.missing,
            "count": self.count,
            "sum": self.total.to_text(),
            "sum_squares": self.squares.to_text(),
            "min": self.min,
            "max": self.max,
            "sample_capacity": self.sample.capacity,
            "sample": _pack(self.sample.values, "<f8"),
            "keys": _pack(self.sample.keys, "<u8"),
        }

    @classmethod
    def from_dict(cls, ref: NumericReference, base: int, d: Mapping[str, Any]) -> NumericWindow:
        sample = BottomKSample(int(d["sample_capacity"]), _unpack(d["sample"], "<f8"), _unpack(d["keys"], "<u8"))
        if len(d["counts"]) != ref.n_bins:
            raise ValueError(f"window feature {ref.name!r} has {len(d['counts'])} bins; the reference has {ref.n_bins}")
        return cls(
            ref.name,
            base,
            ref.cuts,
            np.asarray(d["counts"], np.int64),
            sample,
            int(d["missing"]),
            int(d["count"]),
            ExactSum.from_text(d["sum"]),
            ExactSum.from_text(d["sum_squares"]),
            _opt(d["min"]),
            _opt(d["max"]),
        )


@dataclass(eq=False)
class CategoricalWindow:
    """One categorical feature in one window: counts over the reference categories + other.

    >>> ref = CategoricalReference.build("c", ["a", "b"], top_k=5)
    >>> w = CategoricalWindow.empty(ref)
    >>> w.update(["a", "z", None, "a"], ref)
    >>> w.counts.tolist(), w.missing, w.count
    ([2, 0, 1], 1, 3)
    """

    name: str
    counts: np.ndarray
    missing: int = 0

    @classmethod
    def empty(cls, ref: CategoricalReference) -> CategoricalWindow:
        return cls(ref.name, np.zeros(ref.n_bins, np.int64))

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def update(self, values: Sequence[Any], ref: CategoricalReference) -> None:
        counts, n_missing = ref.count_values(values)
        self.counts += counts
        self.missing += n_missing

    def merged(self, other: CategoricalWindow) -> CategoricalWindow:
        return CategoricalWindow(self.name, self.counts + other.counts, self.missing + other.missing)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts.tolist(), "missing": self.missing}

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> CategoricalWindow:
        return cls(name, np.asarray(d["counts"], np.int64), int(d["missing"]))


@dataclass(eq=False)
class WindowProfile:
    """Live traffic of one model version in one window, over the reference's bins.

    ``update`` takes whole batches of columns. A reference feature absent from
    a batch is missing for every event of it (the contract: an absent key
    means missing), except ``__prediction__``, which only counts batches that
    carry predictions (``FeatureEvent`` batches have none). Features unknown
    to the reference are ignored and listed in ``unknown_features``.

    The seed fixes the sample: pass something stable such as
    ``stable_seed(model_id, version, window_start)`` so that a replay
    gives identical results. ``merge`` is exact for counts, missing, min,
    max and the sums behind mean and variance (so these are bit-identical
    for any batching or merge order), and takes the bottom-k of the union
    for the sample (associative and commutative).

    >>> ref = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {"c": ["a", "b"] * 50})
    >>> w = WindowProfile.empty(ref, seed=7)
    >>> w.update({"x": np.array([1.0, np.nan, 500.0])}, {"c": ["a", "new", None], "zip": ["1", "2", "3"]}, None)
    >>> w.n, w.numeric["x"].count, w.numeric["x"].missing, sorted(w.unknown_features)
    (3, 2, 1, ['zip'])
    >>> other = WindowProfile.empty(ref, seed=8)
    >>> other.update({}, {"c": ["b"]}, np.array([0.5]))
    >>> merged = w.merge(other)
    >>> merged.n, merged.numeric["x"].missing, merged.categorical["c"].counts.tolist()
    (4, 2, [1, 1, 1])
    >>> rows = {r["feature"]: r for r in merged.summary_rows()}
    >>> rows["x"]["count"], rows["x"]["max"], rows["c"]["histogram"]
    (2, 500.0, [1, 1, 1])
    >>> WindowProfile.from_dict(merged.to_dict(), ref).to_dict() == merged.to_dict()
    True
    """

    reference: ReferenceProfile
    seed: int
    sample_size: int
    numeric: dict[str, NumericWindow]
    categorical: dict[str, CategoricalWindow]
    n: int = 0
    unknown_features: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls, reference: ReferenceProfile, seed: int, *, sample_size: int | None = None) -> WindowProfile:
        """An empty window; ``sample_size`` bounds each numeric sample.

        The default is 1,000 values, or the reference's sample size if smaller.
        """
        size = min(DEFAULT_WINDOW_SAMPLE, reference.sample_size) if sample_size is None else int(sample_size)
        if size < 0:
            raise ValueError(f"sample_size cannot be negative, got {size}")
        seed = int(seed) & _MASK64
        return cls(
            reference,
            seed,
            size,
            {
                f: NumericWindow.empty(r, base=_feature_base(seed, f), sample_size=size)
                for f, r in reference.numeric.items()
            },
            {f: CategoricalWindow.empty(r) for f, r in reference.categorical.items()},
        )

    @property
    def features(self) -> list[str]:
        return self.reference.features

    def update(
        self,
        numeric: Mapping[str, np.ndarray],
        categorical: Mapping[str, Sequence[str | None]],
        predictions: np.ndarray | None = None,
        *,
        n: int | None = None,
    ) -> None:
        """Add a batch of ``n`` events (inferred from the columns when not given)."""
        _check_names(numeric, categorical)
        length = _columns_length(numeric, categorical, predictions)
        if n is None:
            if length is None:
                raise ValueError("a batch without columns needs n, its number of events")
            n = length
        elif length is not None and length != n:
            raise ValueError(f"columns hold {length} values for a batch of {n} events")
        ref = self.reference
        wrong = [f for f in numeric if f in ref.categorical] + [f for f in categorical if f in ref.numeric]
        if wrong:
            raise ValueError(f"features of the wrong kind for the reference: {sorted(wrong)}")
        columns: dict[str, np.ndarray] = {f: _numeric_column(f, x) for f, x in numeric.items()}
        if predictions is not None:
            columns[PREDICTION_FEATURE] = _numeric_column(PREDICTION_FEATURE, predictions)
        # Validate every column before changing any state, so a bad batch leaves no trace.
        # Columns without a missing value (the common case) are checked and added
        # stacked; the others one by one, in the reference's order, so that the
        # first bad column in that order gives the error.
        blocks, others = _complete_blocks(columns, [f for f in self.numeric if f in columns], n)
        parsed_num = {f: _finite_values(f, columns[f]) for f in others}
        parsed_cat = {
            f: ref.categorical[f].count_values(col) for f, col in categorical.items() if f in self.categorical
        }
        self.unknown_features.update(f for f in columns if f not in self.numeric)
        self.unknown_features.update(f for f in categorical if f not in self.categorical)
        for names, x, lo, hi in blocks:
            NumericWindow.add_rows([self.numeric[f] for f in names], x, lo, hi)
        for f, w in self.numeric.items():
            if f in parsed_num:
                w.add(*parsed_num[f])
            elif f not in columns and f != PREDICTION_FEATURE:
                w.missing += n
        for f, cw in self.categorical.items():
            if f in parsed_cat:
                counts, n_missing = parsed_cat[f]
                cw.counts += counts
                cw.missing += n_missing
            else:
                cw.missing += n
        self.n += n

    def merge(self, other: WindowProfile) -> WindowProfile:
        """The window of both profiles' events; the result keeps this profile's seed."""
        a, b = self.reference, other.reference
        if a is not b and (a.model_id, a.model_version, a.features) != (b.model_id, b.model_version, b.features):
            raise ValueError(
                f"cannot merge windows of different references: {a.model_id} {a.model_version} "
                f"and {b.model_id} {b.model_version}"
            )
        return WindowProfile(
            self.reference,
            self.seed,
            min(self.sample_size, other.sample_size),
            {f: w.merged(other.numeric[f]) for f, w in self.numeric.items()},
            {f: w.merged(other.categorical[f]) for f, w in self.categorical.items()},
            self.n + other.n,
            self.unknown_features | other.unknown_features,
        )

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per feature for the ``window_profiles`` table.

        Keys: feature, kind, count (non-missing), missing, mean, std, min, max
        (None for categorical features or when nothing was seen), quantiles
        (p5, p25, p50, p75, p95 of the sample; empty if none), histogram (the
        bin counts: open-low, inner bins, open-high; or categories then other).
        """
        quantiles = self._sample_quantiles()
        rows = []
        for f in self.features:
            if f in self.numeric:
                w = self.numeric[f]
                q = quantiles.get(f, [])
                rows.append(
                    {
                        "feature": f,
                        "kind": "numeric",
                        "count": w.count,
                        "missing": w.missing,
                        "mean": w.mean if w.count else None,
                        "std": w.std,
                        "min": w.min,
                        "max": w.max,
                        "quantiles": q,
                        "histogram": w.counts.tolist(),
                    }
                )
            else:
                c = self.categorical[f]
                rows.append(
                    {
                        "feature": f,
                        "kind": "categorical",
                        "count": c.count,
                        "missing": c.missing,
                        "mean": None,
                        "std": None,
                        "min": None,
                        "max": None,
                        "quantiles": [],
                        "histogram": c.counts.tolist(),
                    }
                )
        return rows

    def _sample_quantiles(self) -> dict[str, list[float]]:
        """The summary quantiles of every non-empty numeric sample.

        Samples of one size (usually all: the window's sample size) go through one
        ``np.quantile`` along the rows of their stack, which computes each row as
        ``np.quantile`` of that sample alone would.
        """
        by_size: dict[int, list[str]] = {}
        for f, w in self.numeric.items():
            if w.sample.values.size:
                by_size.setdefault(w.sample.values.size, []).append(f)
        out: dict[str, list[float]] = {}
        for names in by_size.values():
            stack = np.stack([self.numeric[f].sample.values for f in names])
            out.update(zip(names, np.quantile(stack, SUMMARY_QUANTILES, axis=1).T.tolist()))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": WINDOW_FORMAT_VERSION,
            "model_id": self.reference.model_id,
            "model_version": self.reference.model_version,
            "seed": self.seed,
            "sample_size": self.sample_size,
            "n": self.n,
            "unknown_features": sorted(self.unknown_features),
            "numeric": {f: w.to_dict() for f, w in self.numeric.items()},
            "categorical": {f: w.to_dict() for f, w in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], reference: ReferenceProfile) -> WindowProfile:
        if d.get("format") != WINDOW_FORMAT_VERSION:
            raise ValueError(f"unsupported window profile format {d.get('format')!r}; expected {WINDOW_FORMAT_VERSION}")
        ref = reference
        if (d["model_id"], d["model_version"]) != (ref.model_id, ref.model_version):
            raise ValueError(
                f"window of {d['model_id']} {d['model_version']} given the reference of "
                f"{ref.model_id} {ref.model_version}"
            )
        if list(d["numeric"]) != list(ref.numeric) or list(d["categorical"]) != list(ref.categorical):
            raise ValueError("window features do not match the reference's")
        seed = int(d["seed"])
        numeric = {
            f: NumericWindow.from_dict(ref.numeric[f], _feature_base(seed, f), w) for f, w in d["numeric"].items()
        }
        categorical = {f: CategoricalWindow.from_dict(f, w) for f, w in d["categorical"].items()}
        for f, c in categorical.items():
            if len(c.counts) != ref.categorical[f].n_bins:
                raise ValueError(
                    f"window feature {f!r} has {len(c.counts)} categories; "
                    f"the reference has {ref.categorical[f].n_bins}"
                )
        return cls(ref, seed, int(d["sample_size"]), numeric, categorical, int(d["n"]), set(d["unknown_features"]))
