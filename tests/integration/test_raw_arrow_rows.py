"""The raw rows of decoded batches, written from the decoder's Arrow string arrays, read back from the real
engine exactly as when written from the lists (driftline.streams.codec.batch_parser, warehouse.rows)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from driftline.streams.codec import decode_bulk, default_codec
from driftline.streams.core.batches import concat_batches, in_arrival_order
from driftline.streams.records import PredictionBatch
from driftline.streams.warehouse import Warehouse

T0 = 1_764_000_000_123


def _messages(k: int, n: int) -> list[bytes]:
    rng = np.random.default_rng(5)
    words = ["eu", "日本", None, "", "long-" * 30, "ü"]
    codec = default_codec()
    return [
        codec.encode(
            PredictionBatch(
                "arrow",
                str(j % 2),
                [f"é{j}-{i}" if i % 7 == 0 else f"e{j}-{i}" for i in range(n)],
                T0 + np.arange(n, dtype=np.int64) * 3 + 1000 * j,
                numeric={"age": rng.normal(size=n), "score": np.where(rng.random(n) < 0.1, np.nan, rng.random(n))},
                categorical={"region": [words[x] for x in rng.integers(0, len(words), n)]},
                predictions=rng.random(n),
                predicted_labels=[["yes", None, "no"][x] for x in rng.integers(0, 3, n)] if j % 2 else [],
                latency_ms=rng.random(n) if j % 3 else None,
                attributes={"tier": [["gold", "", "sïlver"][x] for x in rng.integers(0, 3, n)]},
            )
        )
        for j in range(k)
    ]


def _read(warehouse: Warehouse) -> list[dict[str, Any]]:
    rows = warehouse.query_rows(
        "SELECT event_id, model_id, model_version, toUnixTimestamp64Milli(event_time) AS t, numeric, categorical, "
        "prediction, predicted_label, latency_ms, attributes FROM predictions FINAL ORDER BY event_id"
    )
    return [
        r | {"numeric": {k: "nan" if math.isnan(v) else v for k, v in r["numeric"].items()}}
        for r in rows  # NaN is unequal to itself
    ]


def test_raw_rows_from_arrow_strings_equal_those_from_lists(warehouse_url: str) -> None:
    decoded = decode_bulk(default_codec(), _messages(20, 100), topic="predictions")
    batches = [b for _, b in decoded.others]
    assert len(batches) == 20 and all(isinstance(b, PredictionBatch) and b.arrow for b in batches)
    # as the worker hands them over: one batch per model version, its rows put in arrival order
    by_version = [
        in_arrival_order(concat_batches([b for b in batches if b.model_version == v]), np.arange(1000))[0]
        for v in ("0", "1")
    ]
    assert all(("event_ids", "") in b.arrow and ("categorical", "region") in b.arrow for b in by_version)
    plain = [dataclasses.replace(b, arrow={}) for b in by_version]

    with_arrow = Warehouse.connect(warehouse_url, migrate=True)
    from_lists = Warehouse.connect(warehouse_url.replace("/dl_", "/dl_lists_"), migrate=True)
    try:
        assert with_arrow.insert_predictions(by_version) == 2000
        assert from_lists.insert_predictions(plain) == 2000
        written = _read(with_arrow)
        assert len(written) == 2000 and written == _read(from_lists)
        first = next(r for r in written if r["event_id"] == "é0-0")
        assert first["categorical"] == (
            {} if batches[0].categorical["region"][0] is None else {"region": batches[0].categorical["region"][0]}
        )
    finally:
        for warehouse in (with_arrow, from_lists):
            warehouse.command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": warehouse.database})
            warehouse.close()
