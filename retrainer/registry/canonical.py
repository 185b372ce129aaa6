"""One JSON spelling per value, so that equal content always hashes alike."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from driftline.retrainer.registry.errors import RegistryError


def canonical_json(value: Any, *, what: str, allow_nan: bool = False) -> str:
    """Compact JSON with sorted keys.

    Lineage JSON is mirrored to ClickHouse, whose JSON functions reject NaN,
    so non-finite numbers are refused there rather than stored as a value
    nobody downstream can read; opaque blobs (profiles) may allow them.

    >>> canonical_json({"b": 1, "a": [1.5, None], "c": np.float32(0.5)}, what="params")
    '{"a":[1.5,null],"b":1,"c":0.5}'
    >>> try:
    ...     canonical_json({"auc": float("nan")}, what="metrics")
    ... except RegistryError as exc:
    ...     print(str(exc)[:40])
    metrics must be JSON with finite numbers
    """
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=allow_nan, ensure_ascii=False, default=_plain
        )
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must be JSON with finite numbers: {exc}") from exc


def _plain(value: Any) -> Any:
    # trainers hand over numpy scalars (np.float64 metrics, np.int64 counts)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``.

    >>> sha256_hex(b"")[:12]
    'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()
