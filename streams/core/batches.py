"""Slicing, sorting and joining ``PredictionBatch`` rows: the batch helpers the monitor and the worker share."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from driftline.streams.records import PredictionBatch


def _positions_by_version(versions: np.ndarray) -> list[tuple[str, np.ndarray]]:
    if versions.size == 0:
        return []
    names, codes = np.unique(versions.astype(str), return_inverse=True)
    return [(str(v), np.flatnonzero(codes == i)) for i, v in enumerate(names)]


def in_arrival_order(batch: PredictionBatch, order: np.ndarray) -> tuple[PredictionBatch, np.ndarray]:
    """The batch's rows sorted by ``order`` (stable), and the sorted keys: e.g. rows gathered kind by kind
    (batches, then single events) put back in the order of their messages.

    >>> b = PredictionBatch("m", "1", ["late-batch", "single"], np.array([70, 10]))
    >>> sorted_batch, keys = in_arrival_order(b, np.array([4, 1]))
    >>> sorted_batch.event_ids, keys.tolist()
    (['single', 'late-batch'], [1, 4])
    """
    keys = np.asarray(order, dtype=np.int64)
    if keys.size < 2 or (keys[1:] >= keys[:-1]).all():
        return batch, keys
    rows = np.argsort(keys, kind="stable")
    return take_rows(batch, rows), keys[rows]


def take_rows(batch: PredictionBatch, rows: np.ndarray) -> PredictionBatch:
    """The rows ``rows`` of a batch (an index array), as a new batch.

    Rows of one window are usually one contiguous run (events arrive roughly in
    time order), which is sliced rather than gathered.

    >>> b = PredictionBatch("m", "1", ["a", "b", "c"], np.array([1, 2, 3]), categorical={"c": ["x", None, "y"]})
    >>> take_rows(b, np.array([2, 0])).categorical["c"], take_rows(b, np.array([1, 2])).categorical["c"]
    (['y', 'x'], [None, 'y'])
    """
    idx = np.asarray(rows, dtype=np.intp)
    if idx.size and idx[-1] - idx[0] + 1 == idx.size and (idx.size == 1 or (np.diff(idx) == 1).all()):
        return _slice_rows(batch, slice(int(idx[0]), int(idx[-1]) + 1))

    def pick(values: Sequence[Any]) -> list[Any]:
        picked: list[Any] = np.asarray(values, dtype=object)[idx].tolist()
        return picked

    return PredictionBatch(
        model_id=batch.model_id,
        model_version=batch.model_version,
        event_ids=pick(batch.event_ids),
        event_times=np.asarray(batch.event_times)[idx],
        numeric={k: np.asarray(v)[idx] for k, v in batch.numeric.items()},
        categorical={k: pick(v) for k, v in batch.categorical.items()},
        predictions=batch.predictions[idx] if batch.predictions.size else batch.predictions,
        predicted_labels=pick(batch.predicted_labels) if batch.predicted_labels else [],
        latency_ms=None if batch.latency_ms is None or not batch.latency_ms.size else batch.latency_ms[idx],
        attributes={k: pick(v) for k, v in batch.attributes.items()},
        arrow={k: v.take(idx) for k, v in batch.arrow.items()},
    )


def _slice_rows(batch: PredictionBatch, rows: slice) -> PredictionBatch:
    return PredictionBatch(
        model_id=batch.model_id,
        model_version=batch.model_version,
        event_ids=list(batch.event_ids[rows]),
        event_times=np.asarray(batch.event_times)[rows],
        numeric={k: np.asarray(v)[rows] for k, v in batch.numeric.items()},
        categorical={k: list(v[rows]) for k, v in batch.categorical.items()},
        predictions=batch.predictions[rows] if batch.predictions.size else batch.predictions,
        predicted_labels=list(batch.predicted_labels[rows]) if batch.predicted_labels else [],
        latency_ms=None if batch.latency_ms is None or not batch.latency_ms.size else batch.latency_ms[rows],
        attributes={k: list(v[rows]) for k, v in batch.attributes.items()},
        arrow={k: v.slice(rows.start, rows.stop - rows.start) for k, v in batch.arrow.items()},
    )


def concat_batches(batches: Sequence[PredictionBatch]) -> PredictionBatch:
    """Batches of one model version as one, in order; a column absent from a batch is missing there.

    >>> a = PredictionBatch("m", "1", ["a"], np.array([1]), numeric={"x": np.array([1.0])}, predictions=np.array([0.5]))
    >>> b = PredictionBatch("m", "1", ["b"], np.array([2]), categorical={"c": ["k"]}, predictions=np.array([0.7]))
    >>> c = concat_batches([a, b])
    >>> c.numeric["x"].tolist(), c.categorical["c"], c.predictions.tolist()
    ([1.0, nan], [None, 'k'], [0.5, 0.7])
    """
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    sizes = [b.n for b in batches]
    numeric_names = sorted({k for b in batches for k in b.numeric})
    categorical_names = sorted({k for b in batches for k in b.categorical})
    attribute_names = sorted({k for b in batches for k in b.attributes})

    def floats(cols: Sequence[np.ndarray | None]) -> np.ndarray:
        # one column per batch, in order
        parts = []
        for col, n in zip(cols, sizes):
            parts.append(
                np.full(n, np.nan) if col is None or (n and col.size == 0) else np.asarray(col, dtype=np.float64)
            )
        return np.concatenate(parts)

    def lists(cols: Sequence[Sequence[Any] | None], fill: Any) -> list[Any]:
        out: list[Any] = []
        for col, n in zip(cols, sizes):
            out.extend(col if col else [fill] * n)
        return out

    any_latency = any(b.latency_ms is not None and b.latency_ms.size for b in batches)
    any_labels = any(b.predicted_labels for b in batches)
    return PredictionBatch(
        model_id=first.model_id,
        model_version=first.model_version,
        event_ids=list(chain.from_iterable(b.event_ids for b in batches)),
        event_times=np.concatenate([np.asarray(b.event_times, dtype=np.int64) for b in batches]),
        numeric={k: floats([b.numeric.get(k) for b in batches]) for k in numeric_names},
        categorical={k: lists([b.categorical.get(k) for b in batches], None) for k in categorical_names},
        predictions=floats([b.predictions for b in batches]),
        predicted_labels=lists([b.predicted_labels for b in batches], None) if any_labels else [],
        latency_ms=floats([b.latency_ms for b in batches]) if any_latency else None,
        attributes={k: lists([b.attributes.get(k) for b in batches], "") for k in attribute_names},
        arrow=_concat_arrow(batches),
    )


def _concat_arrow(batches: Sequence[PredictionBatch]) -> dict[tuple[str, str], Any]:
    """The Arrow string columns every batch has, joined; a column some batch lacks is left to its list."""
    shared = set(batches[0].arrow).intersection(*(b.arrow for b in batches[1:]))
    if not shared:
        return {}
    # Only batches the decoder read into Arrow arrays get here; the rest of the core never touches pyarrow.
    import pyarrow as pa  # type: ignore[import-untyped]

    return {k: pa.concat_arrays([b.arrow[k] for b in batches]) for k in sorted(shared)}
