"""Window profiles: live traffic of one model version in one event-time window.

A :class:`WindowProfile` summarises one window over the *reference's* bins
and categories (``streams.core.reference``), so that the two can be compared
without keeping raw events: numeric features keep bin counts, exact sums
(``streams.core.exactsum``), minimum and maximum; categorical ones count the
reference's categories plus ``other``. The summary quantiles are read off the
binned CDF (``metrics.binned_quantiles``), so no window keeps values.
``to_dict`` round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftline.streams.core import metrics
from driftline.streams.core.binning import bin_counts, bin_counts_rows
from driftline.streams.core.columns import check_names, columns_length, finite_values, numeric_column
from driftline.streams.core.exactsum import ZERO, ExactSum, population_std, row_moments, sum_squared_deviations
from driftline.streams.core.reference import CategoricalReference, NumericReference, ReferenceProfile
from driftline.streams.core.sampler import MASK64
from driftline.streams.records import PREDICTION_FEATURE

# 2: exact sums (streams.core.exactsum) instead of a running mean and m2; 3: no sample.
WINDOW_FORMAT_VERSION = 3
_READABLE_FORMATS = (2, 3)  # a format-2 window's sample is ignored on load
SUMMARY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _opt(x: float | None) -> float | None:
    return None if x is None else float(x)


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
    maxima). The others go through :func:`finite_values`, one at a time, which
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


# Rows of different windows are summed in one ``row_moments`` call per width (a power of two, at least
# this): the zeros that pad a row to its width change no exact sum.
_MIN_WIDTH = 16
# Rows longer than this are summed at once: one call per window is cheap per value there, and
# padding them would cost copies.
_DEFER_VALUES = 1_024


class PendingMoments:
    """Rows of values whose exact sums (``row_moments``) are taken together, for many windows at once.

    A poll spread over many model versions gives each window a few dozen values a feature; one
    ``row_moments`` call per window costs more in numpy's per-call overhead than in arithmetic. The
    rows wait here (each window that has some points here) and are summed, padded with zeros to a
    few widths, when ``flush`` is called or the first of them is read. The sums are exact, so they
    are the same however the rows are grouped.

    >>> ref = NumericReference.build("x", np.arange(10.0), bins=2, sample_size=10, seed=0)
    >>> a, b, pending = NumericWindow.empty(ref), NumericWindow.empty(ref), PendingMoments()
    >>> x, y = np.array([[0.1, 0.2, 0.3]]), np.array([[1e16, 1.0, -1e16, 0.5]])
    >>> NumericWindow.add_rows_deferred([a], x, x.min(axis=1), x.max(axis=1), pending)
    >>> NumericWindow.add_rows_deferred([b], y, y.min(axis=1), y.max(axis=1), pending)
    >>> pending.values, b.total == ExactSum.of(y[0]), a.total == ExactSum.of(x[0]), pending.values
    (7, True, True, 0)
    """

    def __init__(self) -> None:
        self._rows: list[tuple[Sequence[NumericWindow], np.ndarray]] = []
        self.values = 0  # values waiting

    def add(self, windows: Sequence[NumericWindow], values: np.ndarray) -> None:
        """Row ``j`` of ``values`` (finite, one row per window) waits for ``windows[j]``'s sums."""
        self._rows.append((windows, values))
        self.values += values.size
        for w in windows:
            w.pending = self

    def flush(self) -> None:
        """Add every waiting row's exact sums to its window."""
        rows, self._rows, self.values = self._rows, [], 0
        by_width: dict[int, list[tuple[Sequence[NumericWindow], np.ndarray]]] = {}
        for windows, values in rows:
            for w in windows:
                w.pending = None
            by_width.setdefault(max(_MIN_WIDTH, 1 << (values.shape[1] - 1).bit_length()), []).append((windows, values))
        for width, group in by_width.items():
            # blocks of at most about _BLOCK_VALUES values: bigger temporaries cost page faults
            step = max(1, _BLOCK_VALUES // width)
            chunk: list[tuple[Sequence[NumericWindow], np.ndarray]] = []
            rows_in_chunk = 0
            for windows, values in group:
                if chunk and rows_in_chunk + len(windows) > step:
                    _sum_rows(chunk, rows_in_chunk, width)
                    chunk, rows_in_chunk = [], 0
                chunk.append((windows, values))
                rows_in_chunk += len(windows)
            if chunk:
                _sum_rows(chunk, rows_in_chunk, width)


def _sum_rows(chunk: Sequence[tuple[Sequence[NumericWindow], np.ndarray]], n_rows: int, width: int) -> None:
    # the rows side by side, padded with zeros to ``width``: one row_moments call for them all
    stacked = np.zeros((n_rows, width))
    at = 0
    for windows, values in chunk:
        stacked[at : at + len(windows), : values.shape[1]] = values
        at += len(windows)
    totals, squares = row_moments(stacked)
    at = 0
    for windows, _ in chunk:
        for w in windows:
            w.settled_total = w.settled_total.merged(totals[at])
            w.settled_squares = w.settled_squares.merged(squares[at])
            at += 1


@dataclass(eq=False)
class NumericWindow:
    """One numeric feature in one window: bin counts, exact sums, minimum and maximum.

    The sums of the values and of their squares are exact (see
    streams.core.exactsum), so ``mean`` and ``std`` are rounded once from
    them: equal for any batching, order or merge of the same values.

    >>> ref = NumericReference.build("x", np.arange(10.0), bins=2, sample_size=10, seed=0)
    >>> w = NumericWindow.empty(ref)
    >>> w.update(np.array([-5.0, 1.0, 9.0, 50.0, np.nan]))
    >>> w.counts.tolist(), w.count, w.missing, w.mean, w.min, w.max
    ([1, 1, 1, 1], 4, 1, 13.75, -5.0, 50.0)
    """

    name: str
    cuts: np.ndarray = field(repr=False)  # the reference's, shared
    counts: np.ndarray
    missing: int = 0
    count: int = 0
    settled_total: ExactSum = ZERO  # of the values whose sums are known; see ``total``
    settled_squares: ExactSum = ZERO
    min: float | None = None
    max: float | None = None
    # values added whose exact sums wait in this queue, to be summed with other windows' (``PendingMoments``)
    pending: PendingMoments | None = field(default=None, repr=False)

    @classmethod
    def empty(cls, ref: NumericReference) -> NumericWindow:
        return cls(ref.name, ref.cuts, np.zeros(ref.n_bins, np.int64))

    @property
    def total(self) -> ExactSum:
        """The exact sum of the values."""
        if self.pending is not None:
            self.pending.flush()
        return self.settled_total

    @property
    def squares(self) -> ExactSum:
        """The exact sum of the squares of the values."""
        if self.pending is not None:
            self.pending.flush()
        return self.settled_squares

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
        self.add(*finite_values(self.name, numeric_column(self.name, x)))

    def add(self, v: np.ndarray, n_missing: int, pending: PendingMoments | None = None) -> None:
        """Add finite values ``v`` and ``n_missing`` missing ones (already validated); their exact sums
        wait in ``pending`` when given (and the batch is short)."""
        self.missing += n_missing
        if v.size == 0:
            return
        if pending is not None and v.size <= _DEFER_VALUES:
            self.counts += bin_counts(self.cuts, v)
            self.count += v.size
            low, high = float(v.min()), float(v.max())
            self.min = low if self.min is None else min(self.min, low)
            self.max = high if self.max is None else max(self.max, high)
            pending.add([self], v[None, :])
            return
        self.counts += bin_counts(self.cuts, v)
        (total,), (squares,) = row_moments(v[None, :])
        self._combine(v.size, total, squares, float(v.min()), float(v.max()))

    @staticmethod
    def add_rows(windows: Sequence[NumericWindow], values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Add row ``j`` of ``values`` to ``windows[j]``, exactly as ``windows[j].add(values[j], 0)`` would.

        ``values`` holds one row per feature, C-contiguous and finite; ``lo``
        and ``hi`` are its row minima and maxima. Bins take one numpy call for
        all the rows, the exact sums of values and squares one pass.

        >>> ref = NumericReference.build("x", np.arange(10.0), bins=2, sample_size=10, seed=0)
        >>> a, b = NumericWindow.empty(ref), NumericWindow.empty(ref)
        >>> x = np.array([[1.0, 2.0, 30.0], [4.0, -5.0, 6.0]])
        >>> NumericWindow.add_rows([a, b], x, x.min(axis=1), x.max(axis=1))
        >>> a.counts.tolist(), a.mean, b.min
        ([0, 2, 0, 1], 11.0, -5.0)
        """
        NumericWindow.add_rows_deferred(windows, values, lo, hi, None)

    @staticmethod
    def add_rows_deferred(
        windows: Sequence[NumericWindow],
        values: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        pending: PendingMoments | None,
    ) -> None:
        """``add_rows``, the exact sums left to ``pending`` (when given) to take with other windows' rows."""
        n = values.shape[1]
        counts = bin_counts_rows([w.cuts for w in windows], values)
        for w, c, low, high in zip(windows, counts, lo.tolist(), hi.tolist()):
            w.counts += c
            w.count += n
            w.min = low if w.min is None else min(w.min, low)
            w.max = high if w.max is None else max(w.max, high)
        if pending is not None and n <= _DEFER_VALUES:
            pending.add(windows, values)
            return
        totals, squares = row_moments(values)
        for w, total, square in zip(windows, totals, squares):
            w.settled_total = w.settled_total.merged(total)
            w.settled_squares = w.settled_squares.merged(square)

    def _combine(self, n: int, total: ExactSum, squares: ExactSum, lo: float | None, hi: float | None) -> None:
        if n == 0:
            return
        assert lo is not None and hi is not None  # rows were added, so they have extremes
        self.count += n
        # the sums waiting in ``pending`` add to these whenever they come: exact sums commute
        self.settled_total = self.settled_total.merged(total)
        self.settled_squares = self.settled_squares.merged(squares)
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def merged(self, other: NumericWindow) -> NumericWindow:
        out = NumericWindow(
            self.name,
            self.cuts,
            self.counts + other.counts,
            self.missing + other.missing,
            self.count,
            self.total,  # settles what is pending
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
        }

    @classmethod
    def from_dict(cls, ref: NumericReference, d: Mapping[str, Any]) -> NumericWindow:
        if len(d["counts"]) != ref.n_bins:
            raise ValueError(f"window feature {ref.name!r} has {len(d['counts'])} bins; the reference has {ref.n_bins}")
        return cls(
            ref.name,
            ref.cuts,
            np.asarray(d["counts"], np.int64),
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

    ``seed`` (e.g. ``stable_seed(model_id, version, window_start)``) is
    carried for whoever needs randomness tied to the window. ``merge`` is
    exact for counts, missing, min, max and the sums behind mean and variance,
    so every field, and so every summary row, is bit-identical for any
    batching or merge order.

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
    numeric: dict[str, NumericWindow]
    categorical: dict[str, CategoricalWindow]
    n: int = 0
    unknown_features: set[str] = field(default_factory=set)

    @classmethod
    def empty(cls, reference: ReferenceProfile, seed: int) -> WindowProfile:
        """An empty window of ``reference``."""
        return cls(
            reference,
            int(seed) & MASK64,
            {f: NumericWindow.empty(r) for f, r in reference.numeric.items()},
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
        pending: PendingMoments | None = None,
    ) -> None:
        """Add a batch of ``n`` events (inferred from the columns when not given). ``pending``: a queue the
        exact sums of short batches wait in, to be summed with other windows' (see ``PendingMoments``)."""
        check_names(numeric, categorical)
        length = columns_length(numeric, categorical, predictions)
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
        columns: dict[str, np.ndarray] = {f: numeric_column(f, x) for f, x in numeric.items()}
        if predictions is not None:
            columns[PREDICTION_FEATURE] = numeric_column(PREDICTION_FEATURE, predictions)
        # Validate every column before changing any state, so a bad batch leaves no trace.
        # Columns without a missing value (the common case) are checked and added
        # stacked; the others one by one, in the reference's order, so that the
        # first bad column in that order gives the error.
        blocks, others = _complete_blocks(columns, [f for f in self.numeric if f in columns], n)
        parsed_num = {f: finite_values(f, columns[f]) for f in others}
        parsed_cat = {
            f: ref.categorical[f].count_values(col) for f, col in categorical.items() if f in self.categorical
        }
        self.unknown_features.update(f for f in columns if f not in self.numeric)
        self.unknown_features.update(f for f in categorical if f not in self.categorical)
        for names, x, lo, hi in blocks:
            NumericWindow.add_rows_deferred([self.numeric[f] for f in names], x, lo, hi, pending)
        for f, w in self.numeric.items():
            if f in parsed_num:
                w.add(*parsed_num[f], pending)
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
            {f: w.merged(other.numeric[f]) for f, w in self.numeric.items()},
            {f: w.merged(other.categorical[f]) for f, w in self.categorical.items()},
            self.n + other.n,
            self.unknown_features | other.unknown_features,
        )

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per feature for the ``window_profiles`` table.

        Keys: feature, kind, count (non-missing), missing, mean, std, min, max
        (None for categorical features or when nothing was seen), quantiles
        (p5, p25, p50, p75, p95 of the binned CDF, see :func:`binned_quantiles`;
        empty if no value), histogram (the bin counts: open-low, inner bins,
        open-high; or categories then other).
        """
        rows = []
        for f in self.features:
            if f in self.numeric:
                w = self.numeric[f]
                q = binned_quantiles(self.reference.numeric[f], w).tolist() if w.count else []
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": WINDOW_FORMAT_VERSION,
            "model_id": self.reference.model_id,
            "model_version": self.reference.model_version,
            "seed": self.seed,
            "n": self.n,
            "unknown_features": sorted(self.unknown_features),
            "numeric": {f: w.to_dict() for f, w in self.numeric.items()},
            "categorical": {f: w.to_dict() for f, w in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], reference: ReferenceProfile) -> WindowProfile:
        if d.get("format") not in _READABLE_FORMATS:
            raise ValueError(f"unsupported window profile format {d.get('format')!r}; expected {WINDOW_FORMAT_VERSION}")
        ref = reference
        if (d["model_id"], d["model_version"]) != (ref.model_id, ref.model_version):
            raise ValueError(
                f"window of {d['model_id']} {d['model_version']} given the reference of "
                f"{ref.model_id} {ref.model_version}"
            )
        if list(d["numeric"]) != list(ref.numeric) or list(d["categorical"]) != list(ref.categorical):
            raise ValueError("window features do not match the reference's")
        numeric = {f: NumericWindow.from_dict(ref.numeric[f], w) for f, w in d["numeric"].items()}
        categorical = {f: CategoricalWindow.from_dict(f, w) for f, w in d["categorical"].items()}
        for f, c in categorical.items():
            if len(c.counts) != ref.categorical[f].n_bins:
                raise ValueError(
                    f"window feature {f!r} has {len(c.counts)} categories; "
                    f"the reference has {ref.categorical[f].n_bins}"
                )
        return cls(ref, int(d["seed"]), numeric, categorical, int(d["n"]), set(d["unknown_features"]))


def binned_quantiles(
    reference: NumericReference, window: NumericWindow, levels: Sequence[float] = SUMMARY_QUANTILES
) -> np.ndarray:
    """Quantiles of a window's values from its exact bin counts, spread inside each bin like the reference's.

    The window's binned CDF is the one KS and Wasserstein read (``metrics.cdf_grid``
    on the reference's in-bin octiles, the open bins stretched to the window's
    minimum and maximum), linear between its points; the quantiles are read off
    it and kept within the window's minimum and maximum. Each lies in the bin the
    exact quantile lies in; inside it, only the spread is the reference's. For a
    window like its reference they are within a few hundredths of a standard
    deviation of ``np.quantile`` (tests/unit/test_profile.py states the tolerance).

    >>> ref = NumericReference.build("x", np.arange(1_000.0), bins=10, sample_size=1_000, seed=0)
    >>> w = NumericWindow.empty(ref)
    >>> w.update(np.arange(1_000.0))
    >>> binned_quantiles(ref, w).round(1).tolist(), np.quantile(np.arange(1_000.0), SUMMARY_QUANTILES).tolist()
    ([49.0, 249.0, 499.0, 749.0, 949.0], [49.95, 249.75, 499.5, 749.25, 949.05])
    """
    if not window.count:
        raise ValueError(f"feature {window.name!r} has no values in this window: no quantiles")
    assert window.min is not None and window.max is not None  # values were added, so they have extremes
    points, bins, fractions = reference.grid
    points = points.copy()
    points[0] = min(points[0], window.min)
    points[-1] = max(points[-1], window.max)
    q = metrics.binned_quantiles(points, bins, fractions, window.counts / window.count, np.asarray(levels))
    out: np.ndarray = np.clip(q, window.min, window.max)
    return out
