"""Byte-level reads for the bulk decoder, vectorised: many messages in one zero-padded buffer.

Zigzag varints, 64-bit words and doubles at many byte positions at once, strings (UTF-8 checked)
built from many (start, length) pairs at once, and map keys interned by a hash of their bytes.
Used by the single-event parser (``event_parser``) and the batch parser (``batch_parser``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from driftline.streams.codec.schemas import SINGLE_OBJECT_MAGIC

_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_MAX_KEY = 256  # longest map key (and model_id + model_version) the fast path interns, in bytes
_MAX_STRING_WIDTH = 256  # longer strings are decoded one by one instead of in a padded matrix
_LEN_BYTES = 5  # varint bytes of a length, a count or a union index
_LONG_BYTES = 9  # 63 bits of zigzag payload: every int64 but the two extreme ends
_TEMPLATES = 4  # key layouts tried per numeric map field and pass
_TEMPLATE_MAX_BYTES = 4096
_PAD = _TEMPLATE_MAX_BYTES + 2 * _MAX_KEY + 64  # zero bytes past the last message: window reads stay inside
_NULL, _SECOND = 0, 2  # union branch 0 and 1 as one zigzag varint byte


def _scalar_varint(data: bytes, at: int) -> tuple[int, int]:
    """One zigzag varint of at most _LEN_BYTES bytes at ``at``: (value, next position); IndexError if none."""
    raw = 0
    for shift in range(0, 7 * _LEN_BYTES, 7):
        byte = data[at]
        at += 1
        raw |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (raw >> 1) ^ -(raw & 1), at
    raise IndexError("varint too long")


_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)  # the low k bytes of a word


class _Buffer:
    """Every message end to end, zero-padded, read at many positions at once.

    64-bit reads at any byte position combine the two aligned words around it: two gathers and
    a few shifts are about twice as fast as copying 8-byte rows out of a strided view.
    """

    def __init__(self, values: list[bytes], total: int) -> None:
        pad = _PAD + (-(total + _PAD)) % 8
        joined = b"".join([*values, bytes(pad)])
        self.data = joined
        self.u8 = np.frombuffer(joined, dtype=np.uint8)
        self.u64 = np.frombuffer(joined, dtype="<u8")
        # The two bytes at every position (overlapping, unaligned): one gather reads a whole
        # short varint or a union branch with the length after it.
        self.u16 = np.ndarray((len(joined) - 1,), dtype="<u2", buffer=joined, strides=(1,))

    def windows(self, pos: np.ndarray, width: int) -> np.ndarray:
        """A fresh (len(pos), width) array of the bytes starting at each position."""
        view = as_strided(self.u8, shape=(self.u8.size - width + 1, width), strides=(1, 1), writeable=False)
        return view[pos]

    def words(self, pos: np.ndarray) -> np.ndarray:
        """The 8 bytes at each position as a little-endian uint64."""
        shift = ((pos & 7) << 3).astype(np.uint64)
        q = pos >> 3
        # (hi << 1) << (63 - shift): a shift by 64 when the position is aligned, in two legal steps
        return (self.u64[q] >> shift) | ((self.u64[q + 1] << np.uint64(1)) << (np.uint64(63) - shift))

    def doubles(self, pos: np.ndarray) -> np.ndarray:
        """The little-endian doubles at each position, bit for bit (NaN payloads included)."""
        return self.words(pos).view("<f8")

    def padded(self, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """The byte strings at (start, length) as rows of uint64 words, zero past each string's end."""
        n_words = max(1, -(-int(length.max(initial=0)) // 8))
        out = np.empty((len(start), n_words), dtype="<u8")
        for c in range(n_words):
            out[:, c] = self.words(start + 8 * c) & _MASKS[np.clip(length - 8 * c, 0, 8)]
        return out

    def varints(self, pos: np.ndarray, max_bytes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Zigzag varints at each position: (value, bytes read, ok); not ok if longer than max_bytes."""
        first = self.u8[pos]
        raw = first.astype(np.int64)
        width = np.ones(len(pos), dtype=np.int64)
        ok = np.ones(len(pos), dtype=bool)
        longer = np.flatnonzero(first >= 0x80)
        if longer.size:  # most lengths and counts are one byte: only the others pay for the general case
            win = self.windows(pos[longer], max_bytes).astype(np.int64)
            last = win < 0x80
            ok[longer] = last.any(axis=1)
            n_bytes = last.argmax(axis=1) + 1
            parts = (win & 0x7F) << (7 * np.arange(max_bytes, dtype=np.int64))
            parts[np.arange(max_bytes) >= n_bytes[:, None]] = 0
            raw[longer] = parts.sum(axis=1)  # the parts' bits do not overlap: the sum is their OR
            width[longer] = n_bytes
        return (raw >> 1) ^ -(raw & 1), width, ok


def _hash(words: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit mix of zero-padded byte strings; only a hint, ids are always checked byte for byte.

    Words past a string's end are left out, so that its hash does not depend on how wide the
    longest string of the same call made the padding.
    """
    h = lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for c in range(words.shape[1]):
        mixed = (h ^ words[:, c]) * np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(31)
        h = np.where(lengths > 8 * c, mixed, h)
    return h


class _Interner:
    """Exact small ids for the byte strings at (start, length) in a buffer, first seen first.

    A hash finds the candidate id, a comparison of the padded bytes confirms it; strings without an
    id (more than ``limit`` distinct ones, or a hash collision) get -1 and go to the slow path.
    """

    def __init__(self, buf: _Buffer, limit: int) -> None:
        self.buf = buf
        self.limit = limit
        self.raw: list[bytes] = []
        self.names: list[str | None] = []  # None: not valid UTF-8
        self._by_raw: dict[bytes, int] = {}
        self._by_hash: dict[int, int] = {}
        self._rows: list[np.ndarray] = []  # each string's own words
        self._stale = True  # the numpy tables below lag behind the lists above

    def __len__(self) -> int:
        return len(self.raw)

    @property
    def valid(self) -> np.ndarray:
        """Per id, whether the string is valid UTF-8; then a False, which id -1 picks."""
        self._refresh()
        return self._valid

    def intern(self, raw: bytes) -> int:
        """The id of one string, added if new; -1 if it cannot have one."""
        found = self._by_raw.get(raw)
        if found is None:
            length = np.array([len(raw)], dtype=np.int64)
            words = np.zeros((1, max(1, -(-len(raw) // 8))), dtype=np.uint64)
            words.view(np.uint8)[0, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
            self._add(_hash(words, length), words, length)
            found = self._by_raw.get(raw, -1)
        return found

    def ids(self, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, int | None]:
        """The id of each string (-1: none), and that id when all rows hold the same string."""
        if not len(start):
            return np.empty(0, dtype=np.int64), None
        words = self.buf.padded(start, length)
        # The common case: every row holds the same string (the same key at the same map position,
        # one model version). One comparison with the first row and a dict look-up then do.
        if (length == length[0]).all() and (words == words[0]).all():
            found = self.intern(words[0].view(np.uint8)[: length[0]].tobytes())
            return np.full(len(start), found, dtype=np.int64), found
        h = _hash(words, length)
        ids = self._lookup(h, words, length)
        miss = np.flatnonzero(ids < 0)
        if miss.size and len(self.raw) < self.limit:
            _, first = np.unique(h[miss], return_index=True)
            self._add(h[miss[first]], words[miss[first]], length[miss[first]])
            ids[miss] = self._lookup(h[miss], words[miss], length[miss])
        return ids, None

    def _lookup(self, h: np.ndarray, words: np.ndarray, length: np.ndarray) -> np.ndarray:
        if not self.raw:
            return np.full(len(h), -1, dtype=np.int64)
        self._refresh()
        at = np.minimum(np.searchsorted(self._hashes, h), len(self._hashes) - 1)
        cand = self._sorted_ids[at]
        n_words = min(words.shape[1], self._words.shape[1])  # beyond, both are zero when lengths agree
        same = (
            (self._hashes[at] == h)
            & (self._lengths[cand] == length)
            & (words[:, :n_words] == self._words[cand, :n_words]).all(axis=1)
        )
        return np.where(same, cand, -1)

    def _add(self, h: np.ndarray, words: np.ndarray, length: np.ndarray) -> None:
        """New distinct strings; one whose hash is taken by another string (a collision) gets no id."""
        for value, row, n in zip(h.tolist(), words, length.tolist()):
            if len(self.raw) >= self.limit or value in self._by_hash:
                continue
            raw = row.view(np.uint8)[:n].tobytes()
            self._by_hash[value] = self._by_raw[raw] = len(self.raw)
            self.raw.append(raw)
            self._rows.append(row[: max(1, -(-n // 8))].copy())
            try:
                self.names.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                self.names.append(None)
            self._stale = True

    def _refresh(self) -> None:
        if not self._stale:
            return
        width = max((len(r) for r in self._rows), default=1)
        self._words = np.zeros((len(self._rows), width), dtype=np.uint64)
        for i, row in enumerate(self._rows):
            self._words[i, : len(row)] = row
        self._lengths = np.array([len(r) for r in self.raw], dtype=np.int64)
        self._valid = np.array([name is not None for name in self.names] + [False])
        hashes = np.fromiter(self._by_hash, dtype=np.uint64, count=len(self._by_hash))
        order = np.argsort(hashes)
        self._hashes = hashes[order]
        self._sorted_ids = np.fromiter(self._by_hash.values(), dtype=np.int64, count=len(self._by_hash))[order]
        self._stale = False


def _strings(buf: _Buffer, start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strict UTF-8 strings at (start, length): an object array of str, and where decoding failed.

    Strings become rows of a zero-padded UCS-4 matrix that numpy turns into str objects in C;
    the rare strings holding NUL (numpy would strip it when trailing) or longer than
    ``_MAX_STRING_WIDTH`` are decoded one by one.
    """
    n = len(start)
    out = np.empty(n, dtype=object)
    bad = np.zeros(n, dtype=bool)
    if not n:
        return out, bad
    alone = length > _MAX_STRING_WIDTH
    rows = np.flatnonzero(~alone)
    if rows.size:
        win = buf.padded(start[rows], length[rows]).view(np.uint8)
        width = win.shape[1]
        inside = np.arange(width) < length[rows, None]
        nul = (inside & (win == 0)).any(axis=1)
        high = (win >= 0x80).any(axis=1)
        plain = ~nul & ~high
        if plain.any():
            out[rows[plain]] = _ucs4(win[plain].astype(np.uint32))
        wide = ~nul & high
        if wide.any():
            done = _utf8_rows(win[wide], inside[wide])
            if done is not None:
                out[rows[wide]] = done
            else:
                nul |= wide  # somewhere in there is invalid UTF-8: find it string by string
        alone[rows[nul]] = True
    for i in np.flatnonzero(alone):
        try:
            out[i] = buf.u8[start[i] : start[i] + length[i]].tobytes().decode("utf-8")
        except UnicodeDecodeError:
            bad[i] = True
    return out, bad


def _ucs4(codepoints: np.ndarray) -> np.ndarray:
    """Rows of zero-padded code points as str (numpy drops the trailing zeros)."""
    if codepoints.shape[1] == 0:
        return np.full(len(codepoints), "", dtype=object)
    return np.ascontiguousarray(codepoints).view(np.dtype(("U", codepoints.shape[1])))[:, 0]


def _utf8_rows(win: np.ndarray, inside: np.ndarray) -> np.ndarray | None:
    """Non-ASCII rows decoded with one strict decode of their concatenation, or None if it fails.

    The concatenation is valid UTF-8 and each string valid alone exactly when the whole decodes and
    no string starts with a continuation byte (a character cut in two would have to).
    """
    flat = win[inside]
    lengths = inside.sum(axis=1)
    starts = np.cumsum(lengths) - lengths
    firsts = flat[starts[lengths > 0]]
    if ((firsts & 0xC0) == 0x80).any():
        return None
    try:
        text = flat.tobytes().decode("utf-8")
    except UnicodeDecodeError:
        return None
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    chars = (inside & ((win & 0xC0) != 0x80)).sum(axis=1)
    matrix = np.zeros((len(win), int(chars.max(initial=0))), dtype=np.uint32)
    matrix[np.arange(matrix.shape[1]) < chars[:, None]] = codepoints
    return _ucs4(matrix)
