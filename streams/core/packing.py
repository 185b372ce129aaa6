"""Large arrays in JSON: base64 of little-endian bytes (the packed form the ``PredictionBatch`` contract uses).

>>> unpack_array(pack_array(np.array([1.5, -2.0]), "<f8"), "<f8").tolist()
[1.5, -2.0]
"""

from __future__ import annotations

import base64

import numpy as np


def pack_array(a: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype=dtype).tobytes()).decode("ascii")


def unpack_array(s: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).copy()
