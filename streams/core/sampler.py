"""Seeds that are identical in every process, for whatever must replay the same after a crash.

(Windows used to keep a bottom-k sample of each numeric feature keyed by
these seeds; their quantiles now come from the exact bin counts, see
``streams.core.window_profile.binned_quantiles``.)
"""

from __future__ import annotations

import hashlib

MASK64 = (1 << 64) - 1


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, identical in every process.

    Python's built-in ``hash`` of a string changes from process to process
    (``PYTHONHASHSEED``), so it cannot make a replay reproducible; this can.

    >>> stable_seed("credit", "1", "age", 1_700_000_000_000) == stable_seed("credit", "1", "age", 1_700_000_000_000)
    True
    >>> stable_seed("a") != stable_seed("b")
    True
    """
    digest = hashlib.blake2b("\x1f".join(repr(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
