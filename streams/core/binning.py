"""Counting values into a reference's bins, batch first.

A numeric feature's bins are cut at the reference's quantile edges (see
``streams.core.reference``); these kernels count a batch of values, or a
stack of batches (one row per feature), into them without a binary search
per value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

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
    """``bin_counts(cuts[j], values[j])`` for each row ``j`` of ``values`` (finite), the rows counted together.

    >>> x = np.array([[-5.0, 0.0, 0.5, 1.0, 2.0, 7.0], [3.0, 3.0, 3.0, 3.0, 3.0, -3.0]])
    >>> [c.tolist() for c in bin_counts_rows([np.array([0.0, 1.0, 2.0]), np.array([3.0])], x)]
    [[1, 2, 1, 2], [1, 5]]
    """
    rows, n = values.shape
    if n >= _COUNT_BY_SORT:
        return [bin_counts(c, v) for c, v in zip(cuts, values)]
    width = max(c.size for c in cuts)
    # each value's bin is how many of its row's cuts it reaches: one comparison of the whole block per
    # cut (rows with fewer cuts are padded with +inf, which no finite value reaches), then one bincount
    # of every row's bins; half the cost of sorting each row and searching it once per cut
    grid = np.full((rows, width), np.inf)
    for j, c in enumerate(cuts):
        grid[j, : c.size] = c
    bins = np.zeros(values.shape, np.uint8 if width < 255 else np.intp)
    reached = np.empty(values.shape, dtype=bool)
    for k in range(width):
        np.greater_equal(values, grid[:, k, None], out=reached)
        bins += reached
    codes = bins.astype(np.intp)
    codes += (np.arange(rows, dtype=np.intp) * (width + 1))[:, None]
    counts = np.bincount(codes.ravel(), minlength=rows * (width + 1)).reshape(rows, width + 1).astype(np.int64)
    return [counts[j, : c.size + 1] for j, c in enumerate(cuts)]
