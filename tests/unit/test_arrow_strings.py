"""String columns the decoder hands over as Arrow arrays: kept beside the lists through slicing, gathering and
joining, and written by the raw insert as the lists would be."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from driftline.streams.codec import decode_bulk, default_codec
from driftline.streams.core.batches import concat_batches, in_arrival_order, take_rows
from driftline.streams.outbox import batch_bytes
from driftline.streams.records import PredictionBatch
from driftline.streams.warehouse.rows import predictions_table

T0 = 1_764_000_000_000


def _batch(j: int, n: int, rng: np.random.Generator, labels: bool, attributes: bool) -> PredictionBatch:
    words = ["eu", "us", None, "", "long-" * 30, "x"]
    return PredictionBatch(
        "credit",
        "1",
        [f"e{j}-{i}" for i in range(n)],
        T0 + np.arange(n, dtype=np.int64) + 10_000 * j,
        numeric={"age": rng.normal(size=n)},
        categorical={
            "region": [words[x] for x in rng.integers(0, len(words), n)],
            f"only-{j % 2}": [words[x] for x in rng.integers(0, 2, n)],
        },
        predictions=rng.random(n),
        predicted_labels=[["yes", None, "no"][x] for x in rng.integers(0, 3, n)] if labels else [],
        attributes={"tier": [["gold", "silver"][x] for x in rng.integers(0, 2, n)]} if attributes else {},
    )


@pytest.fixture(scope="module")
def decoded() -> list[PredictionBatch]:
    """Twenty batch messages of 100 events, decoded by the fast path (enough for its cut-offs)."""
    rng = np.random.default_rng(3)
    codec = default_codec()
    values = [codec.encode(_batch(j, 100, rng, labels=j % 3 != 0, attributes=j % 4 != 0)) for j in range(20)]
    out = decode_bulk(codec, values, topic="predictions")
    batches = [b for _, b in out.others]
    assert len(batches) == 20 and all(isinstance(b, PredictionBatch) for b in batches)
    return batches


def _lists(batch: PredictionBatch) -> dict[tuple[str, str], list[Any]]:
    out: dict[tuple[str, str], list[Any]] = {("event_ids", ""): batch.event_ids}
    if batch.predicted_labels:
        out[("predicted_labels", "")] = batch.predicted_labels
    for field in ("categorical", "attributes"):
        out.update({(field, k): v for k, v in getattr(batch, field).items()})
    return out


def _assert_arrow_matches(batch: PredictionBatch) -> None:
    lists = _lists(batch)
    for key, array in batch.arrow.items():
        assert array.to_pylist() == lists[key], key


def _plain(batch: PredictionBatch) -> PredictionBatch:
    return dataclasses.replace(batch, arrow={})


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    # NaN compares unequal to itself: spell it out
    return [
        {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        | {"numeric": [(k, "nan" if math.isnan(v) else v) for k, v in row["numeric"]]}
        for row in table.to_pylist()
    ]


def test_the_decoder_hands_over_every_string_column_as_arrow(decoded: list[PredictionBatch]) -> None:
    for b in decoded:
        assert set(b.arrow) == set(_lists(b))
        _assert_arrow_matches(b)


def test_slices_gathers_and_joins_keep_the_arrow_columns_equal_to_the_lists(decoded: list[PredictionBatch]) -> None:
    joined = concat_batches(decoded[:6])
    # a column some batch lacks (labels, "only-1", attributes) is left to its list
    assert set(joined.arrow) == {("event_ids", ""), ("categorical", "region")}
    _assert_arrow_matches(joined)
    both = concat_batches([decoded[1], decoded[2]])
    assert ("predicted_labels", "") in both.arrow and ("attributes", "tier") in both.arrow
    _assert_arrow_matches(both)
    for rows in (np.arange(10, 70), np.array([150, 3, 3, 99, 0])):
        part = take_rows(both, rows)
        assert part.event_ids == [both.event_ids[i] for i in rows] and set(part.arrow) == set(both.arrow)
        _assert_arrow_matches(part)
    shuffled, _ = in_arrival_order(both, np.random.default_rng(1).permutation(both.n))
    _assert_arrow_matches(shuffled)


def test_raw_rows_from_arrow_columns_equal_those_from_the_lists(decoded: list[PredictionBatch]) -> None:
    mixed = [decoded[0], _plain(decoded[1]), take_rows(decoded[2], np.array([5, 1, 2])), decoded[3]]
    mixed.append(concat_batches(decoded[4:8]))
    mixed.append(PredictionBatch("other", "2", ["z"], np.array([T0]), categorical={"region": ["日本"]}))
    with_arrow = predictions_table(mixed)
    assert _rows(with_arrow) == _rows(predictions_table([_plain(b) for b in mixed]))
    assert with_arrow.schema == predictions_table([_plain(b) for b in mixed]).schema
    first = with_arrow.slice(0, 3).to_pylist()
    b = decoded[0]
    assert [r["event_id"] for r in first] == b.event_ids[:3]
    assert [dict(r["categorical"]) for r in first] == [
        {k: v[i] for k, v in b.categorical.items() if v[i] is not None} for i in range(3)
    ]


def test_batch_bytes_counts_arrow_columns_as_their_strings(decoded: list[PredictionBatch]) -> None:
    for b in [*decoded[:4], concat_batches(decoded[:3]), take_rows(decoded[1], np.array([4, 0]))]:
        assert batch_bytes(b) == batch_bytes(_plain(b))
