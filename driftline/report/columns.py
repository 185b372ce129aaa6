"""Reading the cookbook's Arrow results: timestamps as epoch milliseconds, columns as numpy arrays.

>>> import pyarrow as pa
>>> _floats(pa.array([1, 2])).tolist(), _version_key("10") < _version_key("9a"), _rows(None)
([1.0, 2.0], True, 0)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _ms(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(round(value.timestamp() * 1000))
    return int(value)


def _epoch_ms(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Epoch milliseconds of a timestamp column."""
    return pc.cast(pc.cast(column, pa.timestamp("ms", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def _strings(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=object)


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


def _rows(table: pa.Table | None) -> int:
    return 0 if table is None else table.num_rows
