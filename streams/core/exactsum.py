"""Exact, order-independent sums of float64 values, rounded once when read.

A float sum depends on the order of its terms: ``(a + b) + c`` and
``a + (b + c)`` can differ in the last bits. A window's mean, a segment's log
loss or a feature's variance, summed batch by batch, would then depend on how
the events were cut into batches, on the pace of reading and on restarts, and
replays would not be bit-identical. Here every sum is kept *exactly*, as an
integer times a power of two (:class:`ExactSum`); integer addition is
associative and commutative, so any batching, order or merge of the same
values gives the same total, and a statistic rounds that exact total once
(``ratio``, ``std``): the result is correctly rounded, hence equal everywhere.

How it stays batch-first: ``np.frexp`` splits each value into a fraction and
a binary exponent; the fraction is cut into a 27-bit integer and a 27-bit
remainder, each summed per (row, exponent) by ``np.bincount`` in float64,
which is exact while a bucket takes at most 2**16 terms (the sums stay below
2**43 units). Eight exponents at a time are then folded in float64, still
exactly, and only the few non-empty groups become Python integers. Squares
are summed exactly too: ``x*x`` is split into its rounded product and the
rounding error (Dekker's TwoProduct), both plain floats, and summed with the
values in the same pass (``row_moments``).

>>> s = ExactSum.of(np.array([1e16, 1.0, -1e16]))
>>> float(s), sum([1e16, 1.0, -1e16])  # the float sum loses the 1.0
(1.0, 0.0)
>>> a, b = ExactSum.of(np.array([0.1, 0.2])), ExactSum.of(np.array([0.3]))
>>> float(a.merged(b)) == float(ExactSum.of(np.array([0.3, 0.2, 0.1])))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray

_DEKKER = 134217729.0  # 2**27 + 1, Veltkamp's splitter for float64
_CHUNK = 16_000  # terms at a time: temporaries of 125 KiB
_MAX_TERMS = 1 << 16  # terms a bucket may take
_FOLD = 2.0 ** np.arange(8)
_LANE_BITS = 3
_LANE_CYCLE = np.arange(_CHUNK, dtype=np.int64) & ((1 << _LANE_BITS) - 1)
_SAFE_LOW = 2.0**-450
_SAFE_HIGH = 2.0**450
_EXTRACTIONS = 2  # rounds of extraction before the terms left are summed as integers (few) or by buckets
# up to this many terms left by extraction are summed one Python step each (the buckets' arrays cost more)
_FEW_TERMS = 512


@dataclass(frozen=True)
class ExactSum:
    """The exact value ``mantissa * 2**exponent`` (canonical: an odd mantissa, or 0 with exponent 0).

    Equal totals are equal objects whatever the order of the values that made
    them; ``merged`` adds two totals exactly.

    >>> t = ExactSum.of(np.array([0.5, 0.25, -0.125]))
    >>> t, float(t), t.ratio(3)
    (ExactSum(mantissa=5, exponent=-3), 0.625, 0.20833333333333334)
    >>> ExactSum.from_text(t.to_text()) == t
    True
    """

    mantissa: int = 0
    exponent: int = 0

    @staticmethod
    def make(mantissa: int, exponent: int) -> ExactSum:
        if mantissa == 0:
            return ZERO
        zeros = (mantissa & -mantissa).bit_length() - 1
        return ExactSum(mantissa >> zeros, exponent + zeros)

    @classmethod
    def of(cls, values: NDArray[np.float64]) -> ExactSum:
        """The exact sum of finite ``values``."""
        return row_sums(np.asarray(values, dtype=np.float64).reshape(1, -1))[0]

    def merged(self, other: ExactSum) -> ExactSum:
        if not other.mantissa:
            return self
        if not self.mantissa:
            return other
        low = min(self.exponent, other.exponent)
        return ExactSum.make((self.mantissa << (self.exponent - low)) + (other.mantissa << (other.exponent - low)), low)

    def fraction(self) -> Fraction:
        if self.exponent >= 0:
            return Fraction(self.mantissa << self.exponent)
        return Fraction(self.mantissa, 1 << -self.exponent)

    def __float__(self) -> float:
        return self.ratio(1)

    def ratio(self, n: int) -> float:
        """``self / n`` correctly rounded to float64 (e.g. a mean); n must be positive."""
        if n <= 0:
            raise ValueError(f"cannot divide a sum by {n}")
        num, den = (self.mantissa << self.exponent, n) if self.exponent >= 0 else (self.mantissa, n << -self.exponent)
        try:
            return num / den  # Python divides integers with correct rounding
        except OverflowError:
            return math.inf if num > 0 else -math.inf

    def to_text(self) -> str:
        """A compact exact text form, ``<hex mantissa>p<exponent>``."""
        return f"{self.mantissa:x}p{self.exponent}"

    @classmethod
    def from_text(cls, text: str) -> ExactSum:
        mantissa, _, exponent = str(text).partition("p")
        return cls.make(int(mantissa, 16), int(exponent or 0))


ZERO = ExactSum()


def population_std(total: ExactSum, squares: ExactSum, n: int) -> float:
    """``sqrt(sum((x - mean)**2) / n)`` from the exact sums of x and of x**2, the variance rounded once.

    >>> x = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    >>> population_std(*(s[0] for s in row_moments(x[None, :])), x.size)
    2.0
    """
    if n <= 0:
        raise ValueError(f"no standard deviation of {n} values")
    return math.sqrt(_n_times_m2(total, squares, n).ratio(n * n))


def sum_squared_deviations(total: ExactSum, squares: ExactSum, n: int) -> float:
    """M2 = ``sum((x - mean)**2)`` from the exact sums of x and of x**2, rounded once.

    >>> x = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    >>> sum_squared_deviations(*(s[0] for s in row_moments(x[None, :])), x.size)
    32.0
    """
    if n <= 0:
        raise ValueError(f"no deviations of {n} values")
    return _n_times_m2(total, squares, n).ratio(n)


def _n_times_m2(total: ExactSum, squares: ExactSum, n: int) -> ExactSum:
    # n * sum(x**2) - sum(x)**2 >= 0 exactly (Cauchy-Schwarz)
    s, q = total, squares
    low = min(q.exponent, 2 * s.exponent)
    num = ((n * q.mantissa) << (q.exponent - low)) - ((s.mantissa * s.mantissa) << (2 * s.exponent - low))
    return ExactSum.make(num, low)


def row_sums(values: NDArray[np.float64]) -> list[ExactSum]:
    """The exact sum of each row of a 2-D array of finite values.

    >>> [float(s) for s in row_sums(np.array([[0.1, 0.2, 0.3], [1e300, -1e300, 5e-324]]))]
    [0.6, 5e-324]
    >>> 0.1 + 0.2 + 0.3, 0.3 + 0.2 + 0.1  # float sums depend on the order
    (0.6000000000000001, 0.6)
    """
    frac, exp = np.frexp(values)
    rows = np.broadcast_to(np.arange(values.shape[0])[:, None], values.shape)
    return _totals(frac.ravel(), exp.ravel(), rows.ravel(), values.shape[0])


def row_moments(values: NDArray[np.float64]) -> tuple[list[ExactSum], list[ExactSum]]:
    """The exact sums of the values and of their squares, per row of a 2-D array of finite values.

    Rows whose values and squares stay well inside float64's range (the usual
    case) are summed by extraction (``_extracted_sums``); the others, and
    whatever extraction leaves, by exponent buckets. Both are exact, so the
    sums are the same whichever way a row goes.

    >>> from fractions import Fraction
    >>> x = np.array([[0.1, 1e8 + 0.5, -3.0]])
    >>> sums, squares = row_moments(x)
    >>> sums[0] == ExactSum.of(x[0]), squares[0].fraction() == sum(Fraction(v) ** 2 for v in x[0].tolist())
    (True, True)
    """
    n_rows, n = values.shape
    if values.size == 0:
        return [ZERO] * n_rows, [ZERO] * n_rows
    if n <= _MAX_TERMS:
        magnitude = np.abs(values)
        largest = magnitude.max(axis=1)
        # x*x and its rounding error are normal floats, far from overflow, for 2**-450 <= |x| <= 2**450
        safe = largest <= _SAFE_HIGH
        tiny = magnitude < _SAFE_LOW
        if tiny.any():
            safe &= np.count_nonzero(tiny, axis=1) == np.count_nonzero(values == 0.0, axis=1)
        if safe.all():
            return _moments_by_extraction(values, largest)
        if safe.any():
            fast = np.flatnonzero(safe)
            slow = np.flatnonzero(~safe)
            sums: list[ExactSum] = [ZERO] * n_rows
            squares: list[ExactSum] = [ZERO] * n_rows
            for rows, (s, q) in (
                (fast, _moments_by_extraction(values[fast], largest[fast])),
                (slow, _moments_by_buckets(values[slow])),
            ):
                for j, a, b in zip(rows.tolist(), s, q):
                    sums[j], squares[j] = a, b
            return sums, squares
    return _moments_by_buckets(values)


def _moments_by_extraction(
    values: NDArray[np.float64], largest: NDArray[np.float64]
) -> tuple[list[ExactSum], list[ExactSum]]:
    """``row_moments`` of rows whose squares and their errors are normal floats (see ``row_moments``)."""
    # Dekker's TwoProduct: x*x = p + err exactly, with err a normal float in this range (in place where
    # it can be: a fresh temporary per step would cost page faults on a big block). p and err are rows
    # of one array, so that one extraction takes both.
    n_rows = values.shape[0]
    squares = np.empty((2 * n_rows, values.shape[1]))
    p, err = squares[:n_rows], squares[n_rows:]
    np.multiply(values, values, out=p)
    t = values * _DEKKER
    hi = t - values
    np.subtract(t, hi, out=hi)
    lo = np.subtract(values, hi, out=t)
    np.multiply(lo, lo, out=err)
    t2 = hi * hi
    t2 -= p
    hi *= lo
    t2 += hi
    t2 += hi
    err += t2
    del t, hi, lo, t2
    sum_levels, sum_left = _extracted_levels(values, largest)
    # |err| <= 2**-53 * x*x: no need for a pass to find its largest magnitude
    bound = largest * largest
    levels, left = _extracted_levels(squares, np.concatenate([bound, bound * 2.0**-53]), owned=True)
    return _level_totals(n_rows, sum_levels, sum_left), _level_totals(
        n_rows,
        [level[:n_rows] for level in levels] + [level[n_rows:] for level in levels],
        [sums[:n_rows] for sums in left] + [sums[n_rows:] for sums in left],
    )


def _moments_by_buckets(values: NDArray[np.float64]) -> tuple[list[ExactSum], list[ExactSum]]:
    """``row_moments`` by exponent buckets, for any finite values."""
    n_rows, n = values.shape
    if n > _MAX_TERMS // 2:  # a square gives two terms to a row's buckets
        parts = [_moments_by_buckets(values[:, lo : lo + _MAX_TERMS // 2]) for lo in range(0, n, _MAX_TERMS // 2)]
        return (
            [_merged(p[0][j] for p in parts) for j in range(n_rows)],
            [_merged(p[1][j] for p in parts) for j in range(n_rows)],
        )
    frac, exp = np.frexp(values)
    frac, exp = frac.ravel(), exp.ravel().astype(np.int64)
    # x**2 = frac**2 * 2**(2 exp), and frac**2 = p + err exactly (Dekker's TwoProduct; frac is in
    # [0.5, 1), so nothing under- or overflows): p * 2**54 and err * 2**106 are integers
    p = frac * frac
    t = _DEKKER * frac
    hi = t - (t - frac)
    lo = frac - hi
    err = lo * lo - (((p - hi * hi) - hi * lo) - lo * hi)
    err *= 2.0**52
    twice = 2 * exp
    acc = _Buckets(2 * n_rows, min(int(exp.min()), 2 * int(exp.min()) - 52), max(int(exp.max()), 2 * int(exp.max())))
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), n)
    acc.add(frac, exp, acc.places(rows))
    rows += n_rows
    places = acc.places(rows)
    acc.add(p, twice, places)
    twice -= 52
    acc.add(err, twice, places)
    totals = acc.totals()
    return totals[:n_rows], totals[n_rows:]


def _extracted_sums(terms: NDArray[np.float64], largest: NDArray[np.float64], *, owned: bool = False) -> list[ExactSum]:
    """The exact sum of each row of ``terms`` (normal floats or zeros, at most 2**900), ``largest`` a bound of
    its |t| (its max |t|, or more). ``owned``: ``terms`` may be overwritten.

    >>> x = np.array([[1e16, 1.0, -1e16, 0.25], [0.1, 0.2, 0.3, 0.0]])
    >>> [s.fraction() for s in _extracted_sums(x, np.abs(x).max(axis=1))] == [
    ...     sum(map(Fraction, row)) for row in x.tolist()]
    True
    """
    return _level_totals(terms.shape[0], *_extracted_levels(terms, largest, owned=owned))


def _extracted_levels(
    terms: NDArray[np.float64], largest: NDArray[np.float64], *, owned: bool = False
) -> tuple[list[NDArray[np.float64]], list[list[ExactSum]]]:
    """Each row's exact sum as float levels (one array per round, each exact) and the exact sums of the
    few terms extraction left.

    Rump, Ogita and Oishi's extraction (Accurate floating-point summation,
    part I, 2008): with ``sigma = 2**(m + e)``, ``2**m >= n + 2`` and every
    ``|t| < 2**e``, ``q = (sigma + t) - sigma`` is a multiple of
    ``2**-53 * sigma`` no larger than ``2**-m * sigma``, ``t - q`` is exact
    and at most ``2**-53 * sigma``, and any sum of the n values ``q`` is exact
    in float64. Each round takes about 52 - m leading bits of every term; the
    next round's bound comes from that, not from another pass over the terms.
    After a few rounds the terms still left (usually none) go to the buckets.
    """
    n_rows, n = terms.shape
    m = (n + 1).bit_length()
    levels: list[NDArray[np.float64]] = []
    rest = terms if owned else None
    q = np.empty_like(terms)
    # every |t| of a row is below 2**e; rows with no terms (largest 0) take no part in the checks
    _, e = np.frexp(largest)
    e = e.astype(np.int64)
    nonzero = e if largest.all() else e[largest > 0]
    lowest = int(nonzero.min()) if nonzero.size else None
    for _ in range(_EXTRACTIONS):
        # sigma's multiples of 2**-53 must be normal floats: rows with terms this small go to the buckets
        if lowest is None or lowest <= -900:
            break
        sigma = np.ldexp(1.0, e + m)[:, None]
        np.add(terms if rest is None else rest, sigma, out=q)
        q -= sigma
        if rest is None:
            rest = terms - q
        else:
            rest -= q
        levels.append(q.sum(axis=1))
        # |t - q| <= 2**-53 * sigma, so every term left is below 2**(e + m - 52)
        e += m - 52
        lowest += m - 52
    if rest is None:
        rest = terms
    left: list[list[ExactSum]] = []
    # (nonzero of a float array costs several times a comparison and nonzero of its booleans)
    remaining = np.flatnonzero(rest != 0.0)
    if remaining.size:
        rows, _ = np.divmod(remaining, n)
        if remaining.size <= _FEW_TERMS:
            left.append(_few_sums(rows.tolist(), rest.ravel()[remaining], n_rows))
        else:
            left.append(group_sums(rows, rest.ravel()[remaining], n_rows))
    return levels, left


def _few_sums(rows: list[int], terms: NDArray[np.float64], n_rows: int) -> list[ExactSum]:
    """The exact sum of ``terms`` per row (``rows[i]``, ascending, is the row of ``terms[i]``): each term
    becomes an integer times a power of two at once, and a row's integers are shifted and added in Python.

    >>> [s.fraction() for s in _few_sums([0, 1, 1], np.array([0.5, 1e16, 1.0]), 3)]
    [Fraction(1, 2), Fraction(10000000000000001, 1), Fraction(0, 1)]
    """
    frac, exp = np.frexp(terms)
    # a float's fraction times 2**53 is an integer, exactly
    mantissas = (frac * 2.0**53).astype(np.int64).tolist()
    exponents = exp.tolist()
    totals = [ZERO] * n_rows
    start = 0
    while start < len(rows):
        row, end = rows[start], start + 1
        while end < len(rows) and rows[end] == row:
            end += 1
        low = min(exponents[start:end])
        total = 0
        for mantissa, exponent in zip(mantissas[start:end], exponents[start:end]):
            total += mantissa << (exponent - low)
        totals[row] = ExactSum.make(total, low - 53)
        start = end
    return totals


def _level_totals(n_rows: int, levels: list[NDArray[np.float64]], left: list[list[ExactSum]]) -> list[ExactSum]:
    """Per row, the exact sum of its levels (floats, one array per round) and of its ``left`` sums.

    The levels are summed as the few terms they are (``_few_sums``): they become
    integers times powers of two all at once; only the shifts and additions of
    each row's few integers are Python steps.

    >>> [s.fraction() for s in _level_totals(2, [np.array([1e16, 0.5]), np.array([1.0, 0.0])], [])]
    [Fraction(10000000000000001, 1), Fraction(1, 2)]
    """
    if levels:
        # row by row, each row's levels side by side: the nonzero ones are a few terms of ascending rows
        stacked = np.stack(levels, axis=1).ravel()
        terms = np.flatnonzero(stacked != 0.0)
        totals = _few_sums((terms // len(levels)).tolist(), stacked[terms], n_rows)
    else:
        totals = [ZERO] * n_rows
    for sums in left:
        totals = [a.merged(b) for a, b in zip(totals, sums)]
    return totals


def _float_sum(value: float) -> ExactSum:
    fraction, exponent = math.frexp(value)
    return ExactSum.make(int(fraction * 2.0**53), exponent - 53)


def _merged(sums: Any) -> ExactSum:
    out = ZERO
    for s in sums:
        out = out.merged(s)
    return out


def group_sums(codes: NDArray[np.integer], values: NDArray[np.float64], n_groups: int) -> list[ExactSum]:
    """The exact sum of ``values`` per group: ``np.bincount(codes, values, n_groups)``, without rounding.

    >>> [s.fraction() for s in group_sums(np.array([0, 1, 0, 1]), np.array([1e16, 2.0, 1.0, 3.0]), 3)]
    [Fraction(10000000000000001, 1), Fraction(5, 1), Fraction(0, 1)]
    """
    frac, exp = np.frexp(np.asarray(values, dtype=np.float64))
    return _totals(frac, exp, np.asarray(codes, dtype=np.int64), n_groups)


def group_ratios(
    codes: NDArray[np.integer], values: NDArray[np.float64], counts: NDArray[np.integer]
) -> NDArray[np.float64]:
    """Per group, the exact sum of its values over its count, correctly rounded (NaN where the count is 0).

    >>> group_ratios(np.array([0, 0, 1]), np.array([0.1, 0.2, 5.0]), np.array([2, 1, 0])).tolist()
    [0.15000000000000002, 5.0, nan]
    """
    sums = group_sums(codes, values, counts.size)
    return np.array([s.ratio(int(n)) if n > 0 else math.nan for s, n in zip(sums, counts.tolist())], dtype=np.float64)


def _totals(
    frac: NDArray[np.float64], exp: NDArray[np.integer], rows: NDArray[np.integer], n_rows: int
) -> list[ExactSum]:
    """Exact totals per row of the terms ``frac * 2**exp`` (see ``_Buckets``), rows given per term."""
    if frac.size == 0:
        return [ZERO] * n_rows
    if frac.size > _MAX_TERMS:
        parts = [
            _totals(frac[lo : lo + _MAX_TERMS], exp[lo : lo + _MAX_TERMS], rows[lo : lo + _MAX_TERMS], n_rows)
            for lo in range(0, frac.size, _MAX_TERMS)
        ]
        return [_merged(p[j] for p in parts) for j in range(n_rows)]
    exp64 = exp.astype(np.int64)
    acc = _Buckets(n_rows, int(exp64.min()), int(exp64.max()))
    acc.add(frac, exp64, acc.places(rows.astype(np.int64)))
    return acc.totals()


class _Buckets:
    """Exact sums of terms per (row, exponent), in float64 until ``totals``; at most _MAX_TERMS a bucket.

    A term ``frac * 2**exp`` (|frac| < 1, ``frac * 2**54`` an integer) is
    ``hi * 2**(exp - 27) + lo * 2**exp`` with ``hi`` an integer below 2**27 and
    ``lo`` a multiple of 2**-54 below 2**-27: each part is summed per bucket by
    ``np.bincount`` in float64, exactly (the sums stay below 2**43 units).
    ``totals`` folds eight exponents at a time in float64, still exactly (below
    2**51 units), so that only one Python integer step is left per eight.
    """

    def __init__(self, n_rows: int, low: int, high: int) -> None:
        self.n_rows = n_rows
        self.low = low
        self.n_groups = ((high - low) >> 3) + 1
        self.width = self.n_groups << 3  # exponents a row, padded to whole groups of eight
        self.sums = [np.zeros(n_rows * self.width << _LANE_BITS) for _ in range(2)]

    def places(self, rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """Each term's bucket before its exponent: its row's, and a lane (see ``add``)."""
        places = rows * (self.width << _LANE_BITS)
        places |= np.resize(_LANE_CYCLE, places.size) if places.size > _LANE_CYCLE.size else _LANE_CYCLE[: places.size]
        return places

    def add(self, frac: NDArray[np.float64], exp: NDArray[np.int64], places: NDArray[np.int64]) -> None:
        """Add terms ``frac * 2**exp``, each with its ``places``."""
        size = self.sums[0].size
        # in chunks whose temporaries stay under 128 KiB (glibc maps larger ones afresh, page faults and all)
        for start in range(0, frac.size, _CHUNK):
            f = frac[start : start + _CHUNK]
            hi = np.trunc(f * 2.0**27)
            lo = f - hi * 2.0**-27
            # consecutive terms mostly share a bucket: spread over 8 lanes each, bincount does not wait
            # on its previous add to the same place (about ten times faster); the lanes' sums add exactly
            k = exp[start : start + _CHUNK] - self.low
            k <<= _LANE_BITS
            k += places[start : start + _CHUNK]
            for total, part in zip(self.sums, (hi, lo)):
                total += np.bincount(k, weights=part, minlength=size)

    def totals(self) -> list[ExactSum]:
        lanes = 1 << _LANE_BITS
        hi, lo = (s.reshape(-1, lanes).sum(axis=1).reshape(-1, 8) for s in self.sums)
        lo *= 2.0**54
        hi, lo = hi @ _FOLD, lo @ _FOLD  # exponent k + j of a group counts 2**j
        used = np.flatnonzero((hi != 0) | (lo != 0))
        totals = [0] * self.n_rows
        for j, a, b in zip(used.tolist(), hi[used].astype(np.int64).tolist(), lo[used].astype(np.int64).tolist()):
            row, group = divmod(j, self.n_groups)
            totals[row] += ((a << 27) + b) << (group << 3)
        return [ExactSum.make(total, self.low - 54) for total in totals]
