"""The detector state a prediction window carries: the change detectors' bytes and the slow-drift detector.

A restarted worker resumes both from the last written window (``Monitor.restore_detectors``).
"""

from __future__ import annotations

import json

from driftline.streams.core.sequential import TrendDetector

# A score-stream state that also carries the slow-drift detector: this prefix, the length of the
# JSON part (4 bytes, big-endian), the JSON, then the change detectors' bytes (none: empty).
# Change-detector states are pickles (first byte 0x80), so a state without the prefix is read as before.
_TREND_STATE_PREFIX = b"driftline-trend/1\n"


def join_detector_state(bank_state: bytes | None, trend: tuple[str, TrendDetector]) -> bytes:
    """The ``detector_state`` of a prediction window: the change detectors' bytes and the slow-drift detector.

    >>> import numpy as np
    >>> det = TrendDetector(["x"], ref_count=[100], ref_mean=[0.0], ref_std=[1.0])
    >>> bank, (ref_key, back) = split_detector_state(join_detector_state(b"\\x80bank", ("m:1:100", det)))
    >>> bank, ref_key, back.to_dict() == det.to_dict()
    (b'\\x80bank', 'm:1:100', True)
    >>> split_detector_state(b"\\x80bank")
    (b'\\x80bank', None)
    """
    text = json.dumps({"reference": trend[0], "trend": trend[1].to_dict()}, separators=(",", ":")).encode()
    return _TREND_STATE_PREFIX + len(text).to_bytes(4, "big") + text + (bank_state or b"")


def split_detector_state(state: bytes) -> tuple[bytes | None, tuple[str, TrendDetector] | None]:
    """The change detectors' bytes (None: none ran) and the slow-drift detector (None: not stored) of a
    ``detector_state``; raises ValueError on a slow-drift part it cannot read."""
    if not state.startswith(_TREND_STATE_PREFIX):
        return state, None
    head = len(_TREND_STATE_PREFIX)
    try:
        size = int.from_bytes(state[head : head + 4], "big")
        body = state[head + 4 : head + 4 + size]
        if len(body) != size:
            raise ValueError(f"{len(body)} bytes where the state says {size}")
        saved = json.loads(body)
        trend = (str(saved["reference"]), TrendDetector.from_dict(saved["trend"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot restore the slow-drift detector: {exc}") from exc
    rest = state[head + 4 + size :]
    return (rest or None), trend
