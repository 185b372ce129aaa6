"""Many Avro prediction and feature messages decoded at once: single events straight into columns.

The streams worker receives one event per Kafka message. Decoding each with
``Codec.decode`` (fastavro) and then building columns with ``from_events``
costs about 19 µs per event, mostly fastavro's generic per-datum dispatch and
the Python objects in between. :func:`decode_bulk` instead concatenates the
messages into one byte buffer and parses it field by field across all messages
at once, with one cursor per message: a zigzag varint, a string, a map entry
is a handful of numpy operations over every message, never a Python step per
value. Map keys are interned by a hash of their bytes and checked byte for
byte, so keys may come in any order, be missing or repeated (the last wins,
as in a dict), and values land straight in per-key float64 columns. When most
messages share one numeric key layout (the usual case: one producer, one
feature list), the whole map of each is compared with that layout's bytes at
once and its doubles gathered from fixed offsets.

The fast path takes the common case only: single-object encoding whose writer
schema is the current reader schema and the v1 layout parsed here
(``_LAYOUTS``), maps in one block, varints of at most 5 bytes (9 for
``event_time``), keys and model names of at most 256 bytes, no ±inf, and only
records the topic accepts. Every other message (JSON, Confluent framing, other
schema versions, labels, bytes that do not parse, ±inf, rare but valid
encodings such as blocked maps) is decoded alone by ``Codec.decode``.
The result is therefore exactly the slow path's, DecodeError reasons included.

Batch messages (PredictionBatch and FeatureBatch v1, about 1 µs per event in
fastavro) are read here too when a call holds at least 16 of one kind and 1,000
events (``_parse_batches``; fewer are faster in fastavro). Their packed columns
need only their offsets, found message by message in step (a numeric map laid
out like another message's is checked with one comparison); but every string
array (event ids, categorical values, labels, attribute values) is a chain of
length-prefixed items, each starting where the one before ends. The arrays of
all messages are walked in step, one gather and one table look-up per item
position, and the strings of all of them are made by one ``bytes.decode`` and
one ``str.split`` (headers turned into NUL separators). The same rules hold:
anything else (blocked arrays, wrong column lengths, ±inf, invalid UTF-8, ...)
goes to ``Codec.decode``, and each batch lands in ``others`` equal to what
``Codec.decode`` returns; its columns are read-only aligned copies rather than
views of the message.

Like ``Codec.decode``, :func:`decode_bulk` is total: whatever the bytes, every
message ends up in a group or in ``others`` (as a record or a DecodeError). The
fast paths only ever send a message they cannot vouch for to ``Codec.decode``
(a NaN prediction, a reserved or conflicting feature name, ...); should one of
them raise all the same, the call is redone message by message and a warning
logged (``driftline.codec``), so that a bug costs speed, never a message.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from driftline.streams.codec import TOPIC_RECORDS, Codec, DecodeError
from driftline.streams.codec_schemas import NAMESPACE, SINGLE_OBJECT_MAGIC, fingerprint
from driftline.streams.core.validation import RESERVED_FEATURE_NAMES, check_feature_names
from driftline.streams.records import FeatureBatch, FeatureEvent, PredictionBatch, PredictionEvent

log = logging.getLogger("driftline.codec")

# The writer layouts the parser below knows, in Parsing Canonical Form terms: a schema file that
# changed in any way that matters to the bytes changes its fingerprint and so leaves the fast path.
_COMMON_FIELDS = [
    {"name": "event_id", "type": "string"},
    {"name": "model_id", "type": "string"},
    {"name": "model_version", "type": "string"},
    {"name": "event_time", "type": "long"},
    {"name": "numeric", "type": {"type": "map", "values": "double"}},
    {"name": "categorical", "type": {"type": "map", "values": "string"}},
]
_LAYOUTS: dict[str, dict[str, Any]] = {
    "PredictionEvent": {
        "type": "record",
        "name": f"{NAMESPACE}.PredictionEvent",
        "fields": [
            *_COMMON_FIELDS,
            {"name": "prediction", "type": ["null", "double"]},
            {"name": "predicted_label", "type": ["null", "string"]},
            {"name": "latency_ms", "type": ["null", "double"]},
            {"name": "attributes", "type": {"type": "map", "values": "string"}},
        ],
    },
    "FeatureEvent": {
        "type": "record",
        "name": f"{NAMESPACE}.FeatureEvent",
        "fields": [
            *_COMMON_FIELDS,
            {"name": "attributes", "type": {"type": "map", "values": "string"}},
        ],
    },
}
_LAYOUT_FINGERPRINTS = {name: fingerprint(layout) for name, layout in _LAYOUTS.items()}

_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_MAX_KEY = 256  # longest map key (and model_id + model_version) the fast path interns, in bytes
_MAX_STRING_WIDTH = 256  # longer strings are decoded one by one instead of in a padded matrix
_LEN_BYTES = 5  # varint bytes of a length, a count or a union index
_LONG_BYTES = 9  # 63 bits of zigzag payload: every int64 but the two extreme ends
_MAX_CELLS = 1 << 23  # messages x distinct keys of one map: beyond, messages with new keys go one by one
_TEMPLATES = 4  # key layouts tried per numeric map field and pass
_TEMPLATE_MIN_ROWS = 4  # with fewer messages left, the entry by entry reading
_TEMPLATE_SAMPLE = 64  # messages a template is first tried on
_TEMPLATE_MAX_ITEMS = 512
_TEMPLATE_MAX_BYTES = 4096
_PAD = _TEMPLATE_MAX_BYTES + 2 * _MAX_KEY + 64  # zero bytes past the last message: window reads stay inside
_FEW_ROWS_STEPS = 64  # map steps left before few remaining messages go to the slow path instead
_MANY_GROUPS = 32  # beyond this many model versions in one pass, tiny groups go to the slow path
_TINY_GROUP = 4  # (building a group's columns costs about as much as decoding 4 events slowly)
_NULL, _SECOND = 0, 2  # union branch 0 and 1 as one zigzag varint byte


@dataclass
class DecodedGroup:
    """The events of one model version and kind, in columns, with the message each row came from.

    >>> import numpy as np
    >>> g = DecodedGroup(PredictionBatch.from_events([PredictionEvent("e", "m", "1", 5)]), True,
    ...                  np.array([0], dtype=np.int64))
    >>> g.batch.event_ids, g.has_predictions, g.messages.tolist()
    (['e'], True, [0])
    """

    batch: PredictionBatch
    has_predictions: bool
    messages: np.ndarray


@dataclass
class BulkDecoded:
    """Every message of one :func:`decode_bulk` call: single events in groups, everything else alone.

    ``others`` holds ``(message index, record or DecodeError)`` in message order for every message
    that is not a Prediction/FeatureEvent: batches, labels, and the messages that did not decode.

    >>> from driftline.streams.codec import Codec
    >>> codec = Codec()
    >>> values = [codec.encode(PredictionEvent("a", "m", "1", 10, numeric={"x": 1.0})), b"{oops",
    ...           codec.encode(PredictionEvent("b", "m", "1", 20, numeric={"y": 2.0}))]
    >>> out = decode_bulk(codec, values, topic="predictions")
    >>> [(g.batch.event_ids, g.messages.tolist()) for g in out.groups]
    [(['a', 'b'], [0, 2])]
    >>> out.groups[0].batch.numeric["y"].tolist()
    [nan, 2.0]
    >>> [(i, e.reason) for i, e in out.others]
    [(1, 'json_syntax')]
    """

    groups: list[DecodedGroup]
    others: list[tuple[int, Any]]


# ---------------------------------------------------------------- byte-level reads, vectorised


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


# ---------------------------------------------------------------- the parser


class _Cursor:
    """One read position per message; a message that breaks any rule is marked failed, never raised."""

    def __init__(self, buf: _Buffer, pos: np.ndarray, end: np.ndarray) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.fail = np.zeros(len(pos), dtype=bool)

    def to(self, new_pos: np.ndarray) -> None:
        # Clamping keeps every later read of a failed message inside the buffer.
        self.fail |= new_pos > self.end
        self.pos = np.minimum(new_pos, self.end)

    def long(self) -> np.ndarray:
        value, width, ok = self.buf.varints(self.pos, _LONG_BYTES)
        self.fail |= ~ok
        self.to(self.pos + width)
        return value

    def string(self) -> tuple[np.ndarray, np.ndarray]:
        length, width, ok = self.buf.varints(self.pos, _LEN_BYTES)
        start = self.pos + width
        bad = ~ok | (length < 0)
        self.fail |= bad
        length = np.where(bad, 0, length)
        self.to(start + length)
        return start, length

    def branch(self) -> np.ndarray:
        """A ["null", T] union's branch: True for T. Any other encoding goes to the slow path."""
        tag = self.buf.u8[self.pos]
        self.fail |= (tag != _NULL) & (tag != _SECOND)
        self.to(self.pos + 1)
        return tag == _SECOND

    def optional_double(self) -> tuple[np.ndarray, np.ndarray]:
        has = self.branch()
        values = np.where(has, self.buf.doubles(self.pos), np.nan)
        self.to(self.pos + 8 * has)
        return values, has

    def optional_string(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        has = self.branch()
        length, width, ok = self.buf.varints(self.pos, _LEN_BYTES)
        bad = has & (~ok | (length < 0))
        self.fail |= bad
        length = np.where(has & ~bad, length, 0)
        start = self.pos + width * has
        self.to(start + length)
        return start, length, has


def _name_faults(numeric: _MapColumns, categorical: _MapColumns) -> np.ndarray:
    """Messages with a reserved feature name, or a name both numeric and categorical (checked once per key)."""
    fault = np.zeros(numeric.m, dtype=bool)
    # A key interned for a template that no message matched has no row in ``present``: it is present nowhere.
    numeric_names = numeric.keys.names[: len(numeric.present)]
    categorical_names = categorical.keys.names[: len(categorical.present)]
    categorical_ids = {name: i for i, name in enumerate(categorical_names) if name is not None}
    for columns, names in ((numeric, numeric_names), (categorical, categorical_names)):
        for i, name in enumerate(names):
            if name in RESERVED_FEATURE_NAMES:
                fault |= columns.present[i]
    for i, name in enumerate(numeric_names):
        j = categorical_ids.get(name)
        if j is not None:
            fault |= numeric.present[i] & categorical.present[j]
    return fault


class _MapColumns:
    """The entries of one map field of every message: one row per distinct key, one column per message.

    ``values`` holds doubles (NaN where absent; ``present`` tells absent from NaN) or, for string
    maps, item numbers into ``items_start``/``items_length`` (-1 where absent).
    """

    def __init__(self, buf: _Buffer, m: int, doubles: bool) -> None:
        self.m = m
        self.doubles = doubles
        self.keys = _Interner(buf, limit=max(1, _MAX_CELLS // max(m, 1)))
        self.values = np.empty((0, m), dtype=np.float64 if doubles else np.int64)
        self.present = np.zeros((0, m), dtype=bool)
        self.items_start: list[np.ndarray] = []
        self.items_length: list[np.ndarray] = []
        self.items_row: list[np.ndarray] = []
        self.n_items = 0

    def _grow(self) -> None:
        k, cap = len(self.keys), len(self.values)
        if k <= cap:
            return
        new_cap = max(k, 2 * cap, 8)
        fill = np.nan if self.doubles else -1
        values = np.full((new_cap, self.m), fill, dtype=self.values.dtype)
        values[:cap] = self.values
        present = np.zeros((new_cap, self.m), dtype=bool)
        present[:cap] = self.present
        self.values, self.present = values, present

    def read(self, cur: _Cursor) -> None:
        """One map field of every message; a later duplicate key overwrites, as in a Python dict."""
        todo = ~cur.fail
        if self.doubles:
            todo &= ~self._read_templates(cur, todo)
        self._read_entries(cur, todo)

    def _read_templates(self, cur: _Cursor, todo: np.ndarray) -> np.ndarray:
        """Messages whose map has the bytes of a template's keys, values read at fixed offsets.

        A template is the map of one message, parsed here in Python: a single block of distinct
        keys. Any message whose map bytes equal it everywhere but in the 8 bytes of each double
        parses the same way, so one windowed comparison and one gather read all of their values.
        Returns which messages were read.
        """
        done = np.zeros(self.m, dtype=bool)
        rows = np.flatnonzero(todo & (cur.buf.u8[cur.pos] != 0))  # an empty map is the 0 count alone
        for _ in range(_TEMPLATES):
            if rows.size < _TEMPLATE_MIN_ROWS:
                break
            template = self._template(cur, rows[0])
            if template is None:
                break
            kids, offsets, pattern, mask = template
            sample = rows[:: max(1, rows.size // _TEMPLATE_SAMPLE)]
            if self._match(cur, sample, pattern, mask)[0].mean() < 0.25:
                break  # keys vary from message to message: the entry by entry reading suits them
            match, win = self._match(cur, rows, pattern, mask)
            hit = rows[match]
            cols = (np.asarray(offsets)[:, None] + np.arange(8)).ravel()
            values = np.ascontiguousarray(win[match][:, cols]).view("<f8")  # (messages, keys), bit for bit
            self._grow()
            self.values[np.asarray(kids)[:, None], hit] = values.T
            self.present[np.asarray(kids)[:, None], hit] = True
            cur.pos[hit] += len(pattern)
            done[hit] = True
            rows = rows[~match]
        return done

    def _template(self, cur: _Cursor, row: int) -> tuple[list[int], list[int], np.ndarray, np.ndarray] | None:
        """(key ids, value offsets, byte pattern, byte mask) of one message's map, or None if unsuitable."""
        data = cur.buf.u8[cur.pos[row] : cur.end[row]].tobytes()
        keys: list[bytes] = []
        offsets: list[int] = []
        try:
            count, at = _scalar_varint(data, 0)
            if not 0 < count <= _TEMPLATE_MAX_ITEMS:
                return None
            for _ in range(count):
                length, at = _scalar_varint(data, at)
                if not 0 <= length <= _MAX_KEY:
                    return None
                keys.append(data[at : at + length])
                offsets.append(at + length)
                at += length + 8
            if at >= len(data) or data[at] != 0:
                return None
        except IndexError:
            return None
        size = at + 1
        if len(set(keys)) != len(keys) or size > _TEMPLATE_MAX_BYTES:
            return None  # duplicate keys (the last wins) are left to the entry by entry reading
        kids = [self.keys.intern(key) for key in keys]
        if any(k < 0 or self.keys.names[k] is None for k in kids):
            return None
        pattern = np.frombuffer(data[:size], dtype=np.uint8).copy()
        mask = np.full(size, 0xFF, dtype=np.uint8)
        for offset in offsets:
            pattern[offset : offset + 8] = 0
            mask[offset : offset + 8] = 0
        return kids, offsets, pattern, mask

    @staticmethod
    def _match(cur: _Cursor, rows: np.ndarray, pattern: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which rows hold the pattern where the mask is set (and have its bytes), and their byte windows."""
        width = -(-len(pattern) // 8) * 8
        padded_pattern = np.zeros(width, dtype=np.uint8)
        padded_pattern[: len(pattern)] = pattern
        padded_mask = np.zeros(width, dtype=np.uint8)
        padded_mask[: len(mask)] = mask
        win = cur.buf.windows(cur.pos[rows], width)
        words = win.view(np.uint64)
        differ = ((words ^ padded_pattern.view(np.uint64)) & padded_mask.view(np.uint64)).any(axis=1)
        return ~differ & (cur.pos[rows] + len(pattern) <= cur.end[rows]), win

    def _read_entries(self, cur: _Cursor, todo: np.ndarray) -> None:
        """The general case: entry by entry, in step across the messages of ``todo``."""
        buf = cur.buf
        count = np.zeros(self.m, dtype=np.int64)
        rows = np.flatnonzero(todo)
        n, width, ok = buf.varints(cur.pos[rows], _LEN_BYTES)
        new_pos = cur.pos[rows] + width
        bad = ~ok | (n < 0) | (new_pos > cur.end[rows])  # a negative count starts a block with a byte size
        cur.fail[rows[bad]] = True
        cur.pos[rows] = np.minimum(new_pos, cur.end[rows])
        count[rows] = np.where(bad, 0, n)
        too_many = count * (9 if self.doubles else 2) > cur.end - cur.pos  # bounds the loop by the bytes
        cur.fail |= too_many
        count[too_many] = 0
        had_items = count > 0
        for j in range(int(count.max(initial=0))):
            rows = np.flatnonzero(count > j)
            if not rows.size:
                break
            left = int(count[rows].max()) - j
            if left > _FEW_ROWS_STEPS and rows.size * 8 < left:
                # Each step costs the same numpy calls however few messages remain: a long map
                # in a few messages is cheaper in the slow path.
                cur.fail[rows] = True
                count[rows] = 0
                break
            pos, end = cur.pos[rows], cur.end[rows]
            key_length, width, ok = buf.varints(pos, _LEN_BYTES)
            key_start = pos + width
            bad = ~ok | (key_length < 0) | (key_length > _MAX_KEY) | (key_start + key_length > end)
            key_length = np.where(bad, 0, key_length)
            kid, single = self.keys.ids(key_start, key_length)
            self._grow()
            if single is None:
                bad |= ~self.keys.valid[kid]  # -1 (no id) lands on the trailing False
            elif single < 0 or self.keys.names[single] is None:
                bad[:] = True
            value_pos = key_start + key_length
            if self.doubles:
                value = buf.doubles(value_pos)
                new_pos = value_pos + 8
            else:
                value_length, width, ok = buf.varints(value_pos, _LEN_BYTES)
                value_start = value_pos + width
                bad |= ~ok | (value_length < 0)
                value_length = np.where(bad, 0, value_length)
                new_pos = value_start + value_length
            bad |= new_pos > end
            if bad.any():
                good = ~bad
                keep_rows, keep_kid = rows[good], kid[good]
                if self.doubles:
                    value = value[good]
                else:
                    value_start, value_length = value_start[good], value_length[good]
                failed = rows[bad]
                cur.fail[failed] = True
                count[failed] = 0
            else:
                keep_rows, keep_kid = rows, (single if single is not None else kid)
            if not self.doubles:
                value = np.arange(self.n_items, self.n_items + len(keep_rows))
                self.items_start.append(value_start)
                self.items_length.append(value_length)
                self.items_row.append(keep_rows)
                self.n_items += len(keep_rows)
            self.values[keep_kid, keep_rows] = value
            self.present[keep_kid, keep_rows] = True
            cur.pos[rows] = np.minimum(new_pos, end)
        # One block only: the item count must be followed by the end-of-map 0 (else: slow path).
        rows = np.flatnonzero(had_items)
        cur.fail[rows[buf.u8[cur.pos[rows]] != 0]] = True
        cur.to(cur.pos + had_items)

    def decode_items(self, fail: np.ndarray) -> np.ndarray:
        """The string values as an object array with a trailing None (the item of -1); marks bad rows."""
        out = np.empty(self.n_items + 1, dtype=object)
        if self.n_items:
            start = np.concatenate(self.items_start)
            length = np.concatenate(self.items_length)
            row = np.concatenate(self.items_row)
            live = np.flatnonzero(~fail[row])
            strings, bad = _strings(self.keys.buf, start[live], length[live])
            out[live] = strings
            fail[row[live[bad]]] = True
        return out

    def columns(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The key name and per-row values (or item numbers) of every key present in these rows."""
        k = len(self.keys)
        present = self.present[:k][:, rows]
        found = np.flatnonzero(present.any(axis=1))
        names = self.keys.names
        return {names[i]: self.values[i, rows] for i in sorted(found, key=lambda i: names[i])}


@dataclass
class _FastRows:
    """The events one pass parsed without fault, ready to be cut into groups."""

    messages: np.ndarray  # message index per parsed row (all rows, failed ones too)
    ok: np.ndarray
    event_ids: np.ndarray  # object array of str
    event_times: np.ndarray
    numeric: _MapColumns
    categorical: _MapColumns
    categorical_items: np.ndarray
    attributes: _MapColumns
    attribute_items: np.ndarray
    predictions: np.ndarray | None
    labels: np.ndarray | None  # object array, None where null
    label_present: np.ndarray | None
    latency: np.ndarray | None
    latency_present: np.ndarray | None
    group_keys: dict[tuple[str, str], np.ndarray]  # (model_id, model_version) -> rows, in order

    def batch(self, rows: np.ndarray, key: tuple[str, str]) -> PredictionBatch:
        n = len(rows)
        labels: list = []
        latency = None
        if self.labels is not None and self.label_present[rows].any():
            labels = self.labels[rows].tolist()
        if self.latency is not None and self.latency_present[rows].any():
            latency = self.latency[rows]
        return PredictionBatch(
            model_id=key[0],
            model_version=key[1],
            event_ids=self.event_ids[rows].tolist(),
            event_times=self.event_times[rows],
            numeric=self.numeric.columns(rows),
            categorical={k: self.categorical_items[v].tolist() for k, v in self.categorical.columns(rows).items()},
            predictions=self.predictions[rows] if self.predictions is not None else np.full(n, np.nan),
            predicted_labels=labels,
            latency_ms=latency,
            attributes={k: self.attribute_items[v].tolist() for k, v in self.attributes.columns(rows).items()},
        )


def _parse(
    buf: _Buffer, messages: np.ndarray, starts: np.ndarray, ends: np.ndarray, has_predictions: bool
) -> _FastRows:
    """Parse the bodies of these single-object messages, all known to have the fast-path layout."""
    m = len(messages)
    cur = _Cursor(buf, starts + _HEADER, ends)
    id_start, id_length = cur.string()
    span_start = cur.pos
    model_start, model_length = cur.string()
    version_start, version_length = cur.string()
    span_length = cur.pos - span_start
    event_times = cur.long()
    numeric = _MapColumns(buf, m, doubles=True)
    numeric.read(cur)
    categorical = _MapColumns(buf, m, doubles=False)
    categorical.read(cur)
    predictions = label_start = label_length = has_label = latency = latency_present = None
    if has_predictions:
        predictions, has_prediction = cur.optional_double()
        label_start, label_length, has_label = cur.optional_string()
        latency, latency_present = cur.optional_double()
    attributes = _MapColumns(buf, m, doubles=False)
    attributes.read(cur)
    fail = cur.fail | (cur.pos != ends)  # bytes left after the record: the slow path says avro_body

    # ±inf is invalid, and so is a NaN prediction: the slow path gives those messages their
    # DecodeError("invalid_value"), and the feature names it refuses their reasons.
    k = len(numeric.keys)
    if k:
        fail |= np.isinf(numeric.values[:k]).any(axis=0)
    if has_predictions:
        fail |= (has_prediction & ~np.isfinite(predictions)) | np.isinf(latency)
    fail |= _name_faults(numeric, categorical)

    live = np.flatnonzero(~fail)
    event_ids = np.empty(m, dtype=object)
    event_ids[live], bad = _strings(buf, id_start[live], id_length[live])
    fail[live[bad]] = True
    labels = None
    if has_predictions:
        labels = np.full(m, None, dtype=object)
        live = np.flatnonzero(~fail & has_label)
        labels[live], bad = _strings(buf, label_start[live], label_length[live])
        fail[live[bad]] = True
    categorical_items = categorical.decode_items(fail)
    attribute_items = attributes.decode_items(fail)
    attribute_items[-1] = ""  # an absent attribute is '' (the slow path's default), not None

    # Group by the raw bytes of model_id and model_version (one span); only one representative
    # per distinct span is decoded to str. Spans that decode alike (e.g. a non-minimal length
    # varint) merge in the dict below.
    fail |= span_length > _MAX_KEY
    live = np.flatnonzero(~fail)
    spans = _Interner(buf, limit=len(live) + 1)
    span_ids, _ = spans.ids(span_start[live], span_length[live])
    fail[live[span_ids < 0]] = True  # a hash collision: the slow path
    live, span_ids = live[span_ids >= 0], span_ids[span_ids >= 0]
    # The rows of each span in message order: a stable sort, cut where the id changes.
    order = np.argsort(span_ids, kind="stable")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(span_ids[order])) + 1, [len(order)]]) if live.size else [0]
    reps = live[order[bounds[:-1]]]
    model_ids, bad_model = _strings(buf, model_start[reps], model_length[reps])
    versions, bad_version = _strings(buf, version_start[reps], version_length[reps])
    many = len(reps) > _MANY_GROUPS
    group_keys: dict[tuple[str, str], list[np.ndarray]] = {}
    for g, (model_id, version, is_bad) in enumerate(
        zip(model_ids.tolist(), versions.tolist(), (bad_model | bad_version).tolist())
    ):
        rows = live[order[bounds[g] : bounds[g + 1]]]
        if is_bad or (many and len(rows) < _TINY_GROUP):
            fail[rows] = True
            continue
        group_keys.setdefault((model_id, version), []).append(rows)
    merged = {key: np.sort(np.concatenate(parts)) if len(parts) > 1 else parts[0] for key, parts in group_keys.items()}
    return _FastRows(
        messages,
        ~fail,
        event_ids,
        event_times,
        numeric,
        categorical,
        categorical_items,
        attributes,
        attribute_items,
        predictions,
        labels,
        has_label,
        latency,
        latency_present,
        merged,
    )


# ---------------------------------------------------------------- batch messages

# PredictionBatch and FeatureBatch v1 as the parser below reads them (Parsing Canonical Form terms).
_BATCH_COMMON_FIELDS = [
    {"name": "model_id", "type": "string"},
    {"name": "model_version", "type": "string"},
    {"name": "event_ids", "type": {"type": "array", "items": "string"}},
    {"name": "event_times", "type": "bytes"},
    {"name": "numeric", "type": {"type": "map", "values": "bytes"}},
    {"name": "categorical", "type": {"type": "map", "values": {"type": "array", "items": ["null", "string"]}}},
]
_BATCH_ATTRIBUTES = {"name": "attributes", "type": {"type": "map", "values": {"type": "array", "items": "string"}}}
_BATCH_LAYOUTS: dict[str, dict[str, Any]] = {
    "PredictionBatch": {
        "type": "record",
        "name": f"{NAMESPACE}.PredictionBatch",
        "fields": [
            *_BATCH_COMMON_FIELDS,
            {"name": "predictions", "type": "bytes"},
            {"name": "predicted_labels", "type": {"type": "array", "items": ["null", "string"]}},
            {"name": "latency_ms", "type": "bytes"},
            _BATCH_ATTRIBUTES,
        ],
    },
    "FeatureBatch": {
        "type": "record",
        "name": f"{NAMESPACE}.FeatureBatch",
        "fields": [
            *_BATCH_COMMON_FIELDS,
            _BATCH_ATTRIBUTES,
        ],
    },
}
_BATCH_LAYOUT_FINGERPRINTS = {name: fingerprint(layout) for name, layout in _BATCH_LAYOUTS.items()}

# Arrays are walked item by item in step across the messages, a few numpy calls per item for
# all of them: with fewer than _LOCKSTEP_ROWS arrays in step an array is cheaper walked alone,
# and with fewer messages or events than below, fastavro reads them all faster (bench/decode_bulk.py).
_LOCKSTEP_ROWS = 8
_MIN_BATCH_MESSAGES = 16
_MIN_BATCH_EVENTS = 1000
_MAX_BATCH_KEYS = 4096  # map entries per batch field the fast path walks; more: the slow path


def _step_tables() -> tuple[np.ndarray, np.ndarray]:
    """Item size by the two bytes at an item's start (little-endian), for a string and for a
    ["null", "string"] union, in two equal columns.

    0 where those two bytes do not settle it (a length of more than two varint bytes, or a union
    string of 64 bytes or more) or are not valid there; such arrays are walked one by one.
    """
    w = np.arange(1 << 16, dtype=np.int64)
    b0, b1 = w & 0xFF, w >> 8
    raw = np.where(b0 < 0x80, b0, (b0 & 0x7F) | (b1 << 7))
    width = np.where(b0 < 0x80, 1, 2)
    plain = np.where(((b0 < 0x80) | (b1 < 0x80)) & ((raw & 1) == 0), width + (raw >> 1), 0)
    union = np.where(b0 == _NULL, 1, np.where((b0 == _SECOND) & (b1 < 0x80) & ((b1 & 1) == 0), 2 + (b1 >> 1), 0))
    return np.repeat(plain[:, None], 2, axis=1), np.repeat(union[:, None], 2, axis=1)


_PLAIN_STEP, _UNION_STEP = _step_tables()


def _walk_one(data: bytes, at: int, items: int, end: int, union: bool) -> list[int] | None:
    """The end of each of ``items`` array items from ``at``, read one by one; None if they do not parse."""
    out = []
    try:
        for _ in range(items):
            if union:
                branch = data[at]
                at += 1
                if branch == _NULL:
                    out.append(at)
                    continue
                if branch != _SECOND:
                    return None
            length, at = _scalar_varint(data, at)
            if length < 0:
                return None
            at += length
            if at > end:
                return None
            out.append(at)
    except IndexError:
        return None
    return out


@dataclass
class _Items:
    """The items of one array field in many messages (one array each), found by :func:`_walk`."""

    rows: np.ndarray  # the message row of each array
    starts: np.ndarray  # every item's first byte, array after array
    bounds: np.ndarray  # array i holds items bounds[i]:bounds[i + 1]
    stops: np.ndarray  # the byte after each array's last item

    def subset(self, keep: np.ndarray) -> _Items:
        counts = np.diff(self.bounds)[keep]
        return _Items(
            self.rows[keep],
            self.starts[np.repeat(keep, np.diff(self.bounds))],
            np.concatenate([[0], np.cumsum(counts)]),
            self.stops[keep],
        )


def _walk(
    buf: _Buffer, rows: np.ndarray, first: np.ndarray, counts: np.ndarray, ends: np.ndarray, union: bool
) -> tuple[_Items, np.ndarray]:
    """Where the items of many arrays (``counts[i] >= 1`` items of one block from ``first[i]``) start.

    Each item's start depends on the one before, so the arrays are walked in step: at step j one
    gather reads the two bytes at item j of every array still walking and a table gives the
    item's size. An array the table cannot settle (long or invalid items), and the items past
    the point where fewer than ``_LOCKSTEP_ROWS`` arrays remain, are walked alone by :func:`_walk_one`.
    Returns the items of the arrays that parse and, per array (in input order), whether it did.
    """
    r = len(first)
    order = np.argsort(-counts, kind="stable")
    rows, first, counts, ends = rows[order], first[order], counts[order], ends[order]
    steps = int(counts[_LOCKSTEP_ROWS - 1]) if r >= _LOCKSTEP_ROWS else 0
    walked = np.minimum(counts, steps)
    offsets = np.concatenate([[0], np.cumsum(walked)])  # array c's walked items: sizes[offsets[c]:offsets[c + 1]]
    sizes = np.empty(int(offsets[-1]), dtype=np.int64)
    walking = r - np.searchsorted(counts[::-1], np.arange(steps), side="right")  # arrays with an item j
    table, u8, add = (_UNION_STEP if union else _PLAIN_STEP), buf.u8, np.add
    flat = np.empty(2 * r, dtype=np.int64)  # each array's next item and the byte after it, side by side
    at = flat.reshape(r, 2)
    at[:, 0] = first
    at[:, 1] = first + 1
    # The arrays still walking are a prefix (sorted by count): steps with the same prefix in one run.
    cuts = np.flatnonzero(np.diff(walking)) + 1
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), steps]) if steps else ():
        k = int(walking[lo])
        pairs, head = flat[: 2 * k], at[:k]
        run = []
        for _ in range(hi - lo):
            # The two bytes at each item as one little-endian word pick the size (twice, to move both
            # positions with one add). mode="clip": a damaged array may walk past the buffer; it
            # fails the end check below.
            step = table.take(u8.take(pairs, mode="clip").view("<u2"), axis=0)
            add(head, step, out=head)
            run.append(step)
        sizes[offsets[:k, None] + np.arange(lo, hi)] = np.stack(run, axis=1)[:, :, 0]
    # Each array up to its first item the table could not settle (size 0), else all it walked.
    stall_at = walked.copy()
    zero = np.flatnonzero(sizes == 0)
    if zero.size:
        owner = np.searchsorted(offsets, zero, side="right") - 1
        stalled, at_first = np.unique(owner, return_index=True)
        stall_at[stalled] = zero[at_first] - offsets[stalled]
    total = np.concatenate([[0], np.cumsum(sizes)])  # bytes walked before each item, over all arrays
    starts = np.repeat(first - total[offsets[:-1]], walked) + total[:-1]
    stops = first + total[offsets[:-1] + stall_at] - total[offsets[:-1]]
    ok = np.ones(r, dtype=bool)
    lengths = counts
    if (stall_at < counts).any():
        pieces = []
        for c in range(r):
            a = int(stall_at[c])
            piece = starts[offsets[c] : offsets[c] + a]
            if a < counts[c]:
                out = _walk_one(buf.data, int(stops[c]), int(counts[c]) - a, int(ends[c]), union)
                if out is None:
                    ok[c] = False
                else:
                    piece = np.concatenate([piece, [stops[c]], out[:-1]])
                    stops[c] = out[-1]
            pieces.append(piece)
        starts = np.concatenate(pieces).astype(np.int64, copy=False)
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    ok &= stops <= ends
    items = _Items(rows, starts, np.concatenate([[0], np.cumsum(lengths)]), stops)
    ok_in_order = np.empty(r, dtype=bool)
    ok_in_order[order] = ok
    return (items if ok.all() else items.subset(ok)), ok_in_order


def _texts(buf: _Buffer, items: _Items, union: bool) -> tuple[list[list], np.ndarray]:
    """The strings of each array (None for a null item), and which arrays hold invalid UTF-8.

    The bytes of all the arrays are copied end to end with every header byte (union branch,
    length) set to NUL, then decoded and split at NUL in two C calls; each string is the piece
    after its header's last NUL. That is exact when no string holds a NUL itself (the NUL count
    tells) and the whole decodes: a NUL cannot be part of a multi-byte character, so the whole
    decodes iff every string does. Otherwise the arrays are halved until the culprits are found,
    and those are decoded string by string.
    """
    counts = np.diff(items.bounds)
    n_items = len(items.starts)
    if not n_items:
        return [], np.zeros(0, dtype=bool)
    nexts = np.empty(n_items, dtype=np.int64)  # the byte after each item
    nexts[:-1] = items.starts[1:]
    nexts[items.bounds[1:] - 1] = items.stops
    if union:
        present = buf.u8[items.starts] == _SECOND
        _, width, _ = buf.varints(items.starts + 1, _LEN_BYTES)
        header = np.where(present, 1 + width, 1)
    else:
        present = None
        _, header, _ = buf.varints(items.starts, _LEN_BYTES)
    ends_before = np.cumsum(header)  # NULs up to each item's text: its piece's index after the split
    h = int(header[0])
    regular = (present is None or bool(present.all())) and bool((header == h).all())  # then every h-th piece

    def decode(a: int, b: int) -> tuple[list[list], np.ndarray]:
        """Arrays a..b-1."""
        lo, hi = int(items.bounds[a]), int(items.bounds[b])
        first, stop = items.starts[items.bounds[a:b]], items.stops[a:b]
        spans = stop - first
        region = np.concatenate([buf.u8[x:y] for x, y in zip(first.tolist(), stop.tolist())])
        at = items.starts[lo:hi] + np.repeat(np.cumsum(spans) - spans - first, counts[a:b])
        heads = header[lo:hi]
        region[at] = 0  # every item has a header byte
        for k in range(1, int(heads.max())):
            region[at[heads > k] + k] = 0
        flat = region.tobytes()
        nuls = int(ends_before[hi - 1] - (ends_before[lo - 1] if lo else 0))
        pieces: list[str] | None = None
        if flat.count(0) == nuls:
            with contextlib.suppress(UnicodeDecodeError):  # pieces stays None: the per-item path below
                pieces = flat.decode("utf-8").split("\x00")
        if pieces is None:
            if b - a == 1:
                return one(a)
            mid = (a + b) // 2
            left, bad_left = decode(a, mid)
            right, bad_right = decode(mid, b)
            return left + right, np.concatenate([bad_left, bad_right])
        offsets = (items.bounds[a : b + 1] - lo).tolist()
        if regular:
            strings = pieces[h::h]
            return [strings[x:y] for x, y in zip(offsets[:-1], offsets[1:])], np.zeros(b - a, dtype=bool)
        column = np.empty(hi - lo, dtype=object)
        chosen = ends_before[lo:hi] - (ends_before[lo - 1] if lo else 0)
        if present is not None:
            chosen = chosen[present[lo:hi]]
        texts = np.empty(len(pieces), dtype=object)
        texts[:] = pieces
        if present is None:
            column[:] = texts[chosen]
        else:
            column[present[lo:hi]] = texts[chosen]
        return [column[x:y].tolist() for x, y in zip(offsets[:-1], offsets[1:])], np.zeros(b - a, dtype=bool)

    def one(a: int) -> tuple[list[list], np.ndarray]:
        """One array, string by string (a NUL inside a string, or invalid UTF-8)."""
        lo, hi = int(items.bounds[a]), int(items.bounds[a + 1])
        data = buf.data
        out: list[str | None] = []
        is_text = [True] * (hi - lo) if present is None else present[lo:hi].tolist()
        try:
            for x, y, text in zip((items.starts[lo:hi] + header[lo:hi]).tolist(), nexts[lo:hi].tolist(), is_text):
                out.append(data[x:y].decode("utf-8") if text else None)
        except UnicodeDecodeError:
            return [[]], np.ones(1, dtype=bool)
        return [out], np.zeros(1, dtype=bool)

    return decode(0, len(counts))


class _Rows:
    """One read position per batch message; a message that breaks a rule is marked failed and read no more.

    Every method reads the messages ``rows`` (indices of messages not failed).
    """

    def __init__(self, buf: _Buffer, pos: np.ndarray, end: np.ndarray) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.fail = np.zeros(len(pos), dtype=bool)

    def live(self, rows: np.ndarray) -> np.ndarray:
        return rows[~self.fail[rows]]

    def advance(self, rows: np.ndarray, by: np.ndarray, bad: np.ndarray | None = None) -> None:
        new = self.pos[rows] + by
        end = self.end[rows]
        bad = new > end if bad is None else bad | (new > end)
        self.fail[rows[bad]] = True
        self.pos[rows] = np.minimum(new, end)

    def varint(self, rows: np.ndarray) -> np.ndarray:
        value, width, ok = self.buf.varints(self.pos[rows], _LEN_BYTES)
        self.advance(rows, width, ~ok)
        return value

    def count(self, rows: np.ndarray, most: int | None = None) -> np.ndarray:
        """An array or map block count; a negative one (a block with its byte size) fails: the slow path."""
        n = self.varint(rows)
        bad = (n < 0) | (n > self.end[rows] - self.pos[rows]) | (n > most if most is not None else False)
        self.fail[rows[bad]] = True
        return np.where(bad, 0, n)

    def string(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        length = self.varint(rows)
        start = self.pos[rows]
        bad = length < 0
        length = np.where(bad, 0, length)
        self.advance(rows, length, bad)
        return start, length

    def column(self, rows: np.ndarray, n: np.ndarray, empty_ok: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Packed bytes of exactly n 8-byte values (or none, if ``empty_ok``): (start, whether present)."""
        length = self.varint(rows)
        start = self.pos[rows]
        present = length != 0
        bad = (length != 8 * n) & (present if empty_ok else True)
        self.advance(rows, np.where(bad, 0, length), bad)
        return start, present

    def zero(self, rows: np.ndarray) -> None:
        """The 0 count that ends an array or map: one block only, else the slow path."""
        self.advance(rows, 1, self.buf.u8[self.pos[rows]] != 0)


def _read_array(cur: _Rows, rows: np.ndarray, counts: np.ndarray, union: bool) -> list[tuple[int, list]]:
    """One array field (``counts[i] >= 1`` items) of these messages: (row, its list) of those that parse."""
    if not rows.size:
        return []
    items, ok = _walk(cur.buf, rows, cur.pos[rows], counts, cur.end[rows], union)
    cur.fail[rows[~ok]] = True
    lists, bad = _texts(cur.buf, items, union)
    cur.fail[items.rows[bad]] = True
    cur.pos[items.rows] = items.stops
    cur.zero(cur.live(items.rows))
    return list(zip(items.rows.tolist(), lists))


def _column_template(data: bytes, at: int, end: int, n: int) -> tuple[np.ndarray, list, list[int], int] | None:
    """The numeric map of one message as a template: (offsets of its bytes outside the columns,
    its keys as (start, length), the offsets of its columns, its size); None if it is unsuitable."""
    start = at
    keys: list[tuple[int, int]] = []
    columns: list[int] = []
    outside: list[range] = []
    try:
        count, at = _scalar_varint(data, at)
        if not 0 < count <= _MAX_BATCH_KEYS:
            return None
        outside.append(range(0, at - start))
        for _ in range(count):
            entry = at
            length, at = _scalar_varint(data, at)
            if length < 0:
                return None
            keys.append((at, length))
            length, at = _scalar_varint(data, at + length)
            if length != 8 * n:
                return None
            outside.append(range(entry - start, at - start))
            columns.append(at - start)
            at += length
        if at >= end or data[at] != 0:
            return None
    except IndexError:
        return None
    outside.append(range(at - start, at - start + 1))
    return np.fromiter((i for r in outside for i in r), dtype=np.int64), keys, columns, at + 1 - start


def _read_column_templates(
    cur: _Rows, rows: np.ndarray, n: np.ndarray, keys: list[list], out: list[list]
) -> np.ndarray:
    """Numeric maps laid out byte for byte as another message's (the same keys, in the same order,
    of the same n), found with one gather and compared at once; returns the rows read.

    Producers write one feature list, so this is nearly every message; the rest, and any map
    with a repeated key, are read entry by entry.
    """
    buf = cur.buf
    done = np.zeros(len(cur.pos), dtype=bool)
    todo = rows
    for _ in range(_TEMPLATES):
        if not todo.size:
            break
        first = int(todo[0])
        template = _column_template(buf.data, int(cur.pos[first]), int(cur.end[first]), int(n[first]))
        if template is None:
            break
        outside, template_keys, offsets, size = template
        if len({buf.data[a : a + b] for a, b in template_keys}) != len(template_keys):
            break
        expected = buf.u8[cur.pos[first] + outside]
        candidates = todo[(n[todo] == n[first]) & (cur.pos[todo] + size <= cur.end[todo])]
        same = (buf.u8[cur.pos[candidates][:, None] + outside] == expected).all(axis=1)
        hit = candidates[same]
        for row, start in zip(hit.tolist(), cur.pos[hit].tolist()):
            keys[row] = template_keys  # the same bytes as this message's keys
            out[row] = [start + offset for offset in offsets]
        cur.pos[hit] += size
        done[hit] = True  # at least the template's own message
        todo = todo[~done[todo]]
    return done


def _read_map(cur: _Rows, rows: np.ndarray, n: np.ndarray, values: str) -> tuple[list[list], list[list]]:
    """A map field of these messages: per message row, its (key start, key length) and values in wire order.

    ``values``: "column" (bytes of n 8-byte values: the value is its start), "strings" or
    "optional strings" (an array of n items: the value is the list).
    """
    m = len(cur.pos)
    keys: list[list[tuple[int, int]]] = [[] for _ in range(m)]
    out: list[list[Any]] = [[] for _ in range(m)]
    if values == "column" and rows.size:
        rows = rows[~_read_column_templates(cur, rows, n, keys, out)[rows]]
    size = np.zeros(m, dtype=np.int64)
    size[rows] = cur.count(rows, _MAX_BATCH_KEYS)
    for j in range(int(size.max(initial=0))):
        at = cur.live(rows[size[rows] > j])
        if not at.size:
            break
        key_start, key_length = cur.string(at)
        for row, start, length in zip(at.tolist(), key_start.tolist(), key_length.tolist()):
            keys[row].append((start, length))
        if values == "column":
            start, _ = cur.column(at, n[at])
            for row, value in zip(at.tolist(), start.tolist()):
                out[row].append(value)
            continue
        at = cur.live(at)
        count = cur.count(at)
        cur.fail[at[count != n[at]]] = True  # the slow path says column_length (or avro_body)
        at = cur.live(at)
        for row, strings in _read_array(cur, at, n[at], union=values == "optional strings"):
            out[row].append(strings)
    cur.zero(cur.live(rows[size[rows] > 0]))
    return keys, out


def _parse_batches(
    buf: _Buffer, starts: np.ndarray, ends: np.ndarray, has_predictions: bool
) -> list[PredictionBatch | FeatureBatch | None]:
    """The batch in each of these single-object messages (all with the v1 layout), None where it
    takes the slow path: anything that does not parse here, or that the codec would reject."""
    m = len(starts)
    cur = _Rows(buf, starts + _HEADER, ends)
    rows = np.arange(m)
    model_start, model_length = cur.string(rows)
    version_start, version_length = cur.string(rows)
    n = cur.count(rows)
    cur.fail |= n == 0  # the codec: column_length, a batch needs at least one event
    if n.sum() < _MIN_BATCH_EVENTS:
        return [None] * m
    rows = cur.live(rows)
    event_ids: list[list | None] = [None] * m
    for row, strings in _read_array(cur, rows, n[rows], union=False):
        event_ids[row] = strings
    # The packed columns: event_times, predictions and latency_ms at their start, or -1.
    times, predictions, latency = (np.full(m, -1, dtype=np.int64) for _ in range(3))
    rows = cur.live(rows)
    times[rows], _ = cur.column(rows, n[rows])
    numeric_keys, numeric = _read_map(cur, cur.live(rows), n, "column")
    categorical_keys, categorical = _read_map(cur, cur.live(rows), n, "optional strings")
    labels: list[list] = [[] for _ in range(m)]
    if has_predictions:
        rows = cur.live(rows)
        predictions[rows], _ = cur.column(rows, n[rows])
        rows = cur.live(rows)
        count = cur.count(rows)
        cur.fail[rows[(count != 0) & (count != n[rows])]] = True  # the codec: column_length
        with_labels = cur.live(rows[count != 0])
        for row, strings in _read_array(cur, with_labels, n[with_labels], union=True):
            labels[row] = strings
        rows = cur.live(rows)
        start, present = cur.column(rows, n[rows], empty_ok=True)
        latency[rows[present]] = start[present]
    attribute_keys, attributes = _read_map(cur, cur.live(rows), n, "strings")
    cur.fail |= cur.pos != ends  # bytes left after the record: the slow path says avro_body

    data = buf.data
    names: dict[bytes, str | None] = {}

    def text(start: int, length: int) -> str | None:
        raw = data[start : start + length]
        name = names.get(raw, False)
        if name is False:
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                name = None
            names[raw] = name
        return name

    def mapping(keys: list[tuple[int, int]], values: list) -> dict[str, Any] | None:
        decoded = [text(a, b) for a, b in keys]
        if None in decoded or len(decoded) != len(values):
            return None
        return dict(zip(decoded, values))  # a repeated key: first place, last value, as fastavro's dict

    views: dict[int, np.ndarray] = {}
    out: list[PredictionBatch | FeatureBatch | None] = [None] * m
    for row in np.flatnonzero(~cur.fail).tolist():
        size = int(n[row])
        model_id = text(int(model_start[row]), int(model_length[row]))
        version = text(int(version_start[row]), int(version_length[row]))
        cats = mapping(categorical_keys[row], categorical[row])
        attrs = mapping(attribute_keys[row], attributes[row])
        if model_id is None or version is None or cats is None or attrs is None:
            continue
        # Every packed column of the message in one gather of 8-byte words (bit for bit, NaN
        # payloads included): aligned, read-only as the codec's views, and holding no more memory
        # alive than the message itself while any of its columns lives.
        column_starts = [int(times[row]), *numeric[row]]
        if has_predictions:
            column_starts.append(int(predictions[row]))
            if latency[row] >= 0:
                column_starts.append(int(latency[row]))
        view = views.get(size)
        if view is None:
            view = views[size] = np.ndarray((len(data) - 8 * size + 1, size), dtype="<u8", buffer=data, strides=(1, 8))
        words = view[column_starts]
        words.flags.writeable = False
        values = words.view("<f8")
        if np.isinf(values[1:]).any():
            continue  # the codec: invalid_value
        k = len(numeric[row])
        numeric_columns = mapping(numeric_keys[row], list(values[1 : 1 + k]))
        if numeric_columns is None or check_feature_names(numeric_columns, cats, attrs) is not None:
            continue  # the codec says why
        if has_predictions:
            out[row] = PredictionBatch(
                model_id,
                version,
                event_ids[row],
                words[0].view("<i8"),
                numeric_columns,
                cats,
                values[1 + k],
                labels[row],
                values[2 + k] if latency[row] >= 0 else None,
                attrs,
            )
        else:
            out[row] = FeatureBatch(
                model_id, version, event_ids[row], words[0].view("<i8"), numeric_columns, cats, attrs
            )
    return out


# ---------------------------------------------------------------- merging with the slow path


def _slow_batch(events: list, has_predictions: bool) -> PredictionBatch:
    if has_predictions:
        return PredictionBatch.from_events(events)
    return FeatureBatch.from_events(events).as_batch()


def _merge(parts: list[tuple[np.ndarray, PredictionBatch]]) -> tuple[PredictionBatch, np.ndarray]:
    """Batches of one model version interleaved back into message order, as from_events would build them."""
    if len(parts) == 1:
        return parts[0][1], parts[0][0]
    messages = np.concatenate([m for m, _ in parts])
    order = np.argsort(messages, kind="stable")
    sizes = [b.n for _, b in parts]
    batches = [b for _, b in parts]

    def objects(lists: list[list]) -> list:
        joined = np.empty(sum(sizes), dtype=object)
        joined[:] = [x for values in lists for x in values]
        return joined[order].tolist()

    def floats(columns: list[np.ndarray | None]) -> np.ndarray:
        return np.concatenate([np.full(n, np.nan) if c is None else c for c, n in zip(columns, sizes)])[order]

    def names(field: str) -> list[str]:
        return sorted({k for b in batches for k in getattr(b, field)})

    labels: list = []
    if any(b.predicted_labels for b in batches):
        labels = objects([b.predicted_labels or [None] * n for b, n in zip(batches, sizes)])
    latency = None
    if any(b.latency_ms is not None for b in batches):
        latency = floats([b.latency_ms for b in batches])
    first = batches[0]
    batch = PredictionBatch(
        model_id=first.model_id,
        model_version=first.model_version,
        event_ids=objects([b.event_ids for b in batches]),
        event_times=np.concatenate([b.event_times for b in batches])[order],
        numeric={k: floats([b.numeric.get(k) for b in batches]) for k in names("numeric")},
        categorical={
            k: objects([b.categorical.get(k) or [None] * n for b, n in zip(batches, sizes)])
            for k in names("categorical")
        },
        predictions=floats([b.predictions for b in batches]),
        predicted_labels=labels,
        latency_ms=latency,
        attributes={
            k: objects([b.attributes.get(k) or [""] * n for b, n in zip(batches, sizes)]) for k in names("attributes")
        },
    )
    return batch, messages[order]


# ---------------------------------------------------------------- entry point


def _fast_fingerprints(codec: Codec, topic: str | None) -> dict[int, bool]:
    """Fingerprint (as a little-endian int) -> has_predictions, for the records the fast path may take."""
    if sys.byteorder != "little":
        return {}  # the word-level reads above assume a little-endian machine
    allowed = TOPIC_RECORDS[topic] if topic is not None else ()
    out = {}
    for name, has_predictions in (("PredictionEvent", True), ("FeatureEvent", False)):
        if allowed and name not in allowed:
            continue  # the slow path rejects it with unexpected_record (after its own body checks)
        current = codec.schemas.current(name).fingerprint
        if current == _LAYOUT_FINGERPRINTS[name]:
            out[int.from_bytes(current, "little")] = has_predictions
    return out


def _fast_batch_fingerprints(codec: Codec, topic: str | None) -> dict[int, bool]:
    """As :func:`_fast_fingerprints`, for PredictionBatch and FeatureBatch messages."""
    if sys.byteorder != "little":
        return {}
    allowed = TOPIC_RECORDS[topic] if topic is not None else ()
    out = {}
    for name, has_predictions in (("PredictionBatch", True), ("FeatureBatch", False)):
        if allowed and name not in allowed:
            continue
        current = codec.schemas.current(name).fingerprint
        if current == _BATCH_LAYOUT_FINGERPRINTS[name]:
            out[int.from_bytes(current, "little")] = has_predictions
    return out


def _message_bytes(value: Any) -> bytes:
    # a missing value (a Kafka tombstone) decodes as no bytes: DecodeError("empty")
    return b"" if value is None else bytes(value)


def decode_bulk(codec: Codec, values: Sequence[bytes | None], *, topic: str | None) -> BulkDecoded:
    """Decode many messages at once; the result is that of ``codec.decode(v, topic=topic)`` on each.

    Prediction and feature events are grouped per (model_id, model_version, kind) in order of
    first appearance, each group's rows in message order, its batch equal to
    ``PredictionBatch.from_events`` (``FeatureBatch.from_events(...).as_batch()`` for feature
    events) of those events. Every other outcome is in ``others``. An unknown topic raises
    ValueError at once, as ``codec.decode`` would at the first message that decodes; nothing
    else is raised (module docstring). A None value (a tombstone) is a DecodeError ``empty``.
    """
    if topic is not None and topic not in TOPIC_RECORDS:
        raise ValueError(f"unknown topic {topic!r}; expected one of {', '.join(TOPIC_RECORDS)}")
    values = [v if type(v) is bytes else _message_bytes(v) for v in values]
    if not values:
        return BulkDecoded([], [])
    try:
        return _decode_bulk(codec, values, topic)
    except Exception as exc:  # a bug in the vectorised reading: redo the call the slow way
        log.warning(
            "decode_bulk fell back to decoding %d messages one by one after %s: %s",
            len(values),
            type(exc).__name__,
            exc,
        )
        others: list[tuple[int, Any]] = []
        parts = _decode_alone(codec, values, range(len(values)), topic, others)
        return _assemble(parts, others)


def _decode_alone(
    codec: Codec, values: list[bytes], indices: Sequence[int], topic: str | None, others: list[tuple[int, Any]]
) -> dict[tuple[str, str, bool], list[tuple[np.ndarray, PredictionBatch]]]:
    """The messages at ``indices`` through ``codec.decode``, one at a time, exactly as the worker's slow path:
    their events as one batch per (model_id, model_version, kind), everything else into ``others``."""
    slow_events: dict[tuple[str, str, bool], tuple[list[int], list]] = {}
    for i in indices:
        try:
            record: Any = codec.decode(values[i], topic=topic)
        except DecodeError as exc:
            others.append((i, exc))
            continue
        if isinstance(record, (PredictionEvent, FeatureEvent)):
            key = (record.model_id, record.model_version, isinstance(record, PredictionEvent))
            found, events = slow_events.setdefault(key, ([], []))
            found.append(i)
            events.append(record)
        else:
            others.append((i, record))
    parts: dict[tuple[str, str, bool], list[tuple[np.ndarray, PredictionBatch]]] = {}
    for key, (found, events) in slow_events.items():
        try:
            parts[key] = [(np.array(found, dtype=np.int64), _slow_batch(events, key[2]))]
        except Exception:  # noqa: BLE001 - one event the columns cannot hold: find it, the others stay
            for i, event in zip(found, events):
                try:
                    parts.setdefault(key, []).append((np.array([i], dtype=np.int64), _slow_batch([event], key[2])))
                except Exception as exc:  # noqa: BLE001
                    others.append((i, DecodeError("malformed", f"{type(exc).__name__}: {exc}")))
    return parts


def _assemble(
    parts: dict[tuple[str, str, bool], list[tuple[np.ndarray, PredictionBatch]]], others: list[tuple[int, Any]]
) -> BulkDecoded:
    groups = []
    for key, group_parts in parts.items():
        batch, messages = _merge(group_parts)
        groups.append(DecodedGroup(batch, key[2], messages.astype(np.int64, copy=False)))
    groups.sort(key=lambda g: int(g.messages[0]))
    others.sort(key=lambda item: item[0])
    return BulkDecoded(groups, others)


def _decode_bulk(codec: Codec, values: list[bytes], topic: str | None) -> BulkDecoded:
    n = len(values)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buf = _Buffer(values, int(ends[-1]))

    fast_rows: list[tuple[_FastRows, bool]] = []
    others: list[tuple[int, Any]] = []
    taken = np.zeros(n, dtype=bool)
    fast = _fast_fingerprints(codec, topic)
    fast_batches = _fast_batch_fingerprints(codec, topic)
    candidates = np.flatnonzero(lengths >= _HEADER)
    if (fast or fast_batches) and candidates.size:
        head = buf.windows(starts[candidates], _HEADER)
        magic = (head[:, 0] == SINGLE_OBJECT_MAGIC[0]) & (head[:, 1] == SINGLE_OBJECT_MAGIC[1])
        fps = np.ascontiguousarray(head[:, 2:]).view("<u8")[:, 0]
        for fp, has_predictions in fast.items():
            chosen = candidates[magic & (fps == np.uint64(fp))]
            if chosen.size:
                parsed = _parse(buf, chosen, starts[chosen], ends[chosen], has_predictions)
                taken[chosen[parsed.ok]] = True
                fast_rows.append((parsed, has_predictions))
        for fp, has_predictions in fast_batches.items():
            chosen = candidates[magic & (fps == np.uint64(fp))]
            if chosen.size >= _MIN_BATCH_MESSAGES:
                for i, record in zip(
                    chosen.tolist(), _parse_batches(buf, starts[chosen], ends[chosen], has_predictions)
                ):
                    if record is not None:
                        taken[i] = True
                        others.append((i, record))

    # Everything else, one message at a time, exactly as the worker's slow path.
    slow_parts = _decode_alone(codec, values, np.flatnonzero(~taken).tolist(), topic, others)
    parts: dict[tuple[str, str, bool], list[tuple[np.ndarray, PredictionBatch]]] = {}
    for parsed, has_predictions in fast_rows:
        for key, rows in parsed.group_keys.items():
            batch = parsed.batch(rows, key)
            parts.setdefault((*key, has_predictions), []).append((parsed.messages[rows], batch))
    for key, group_parts in slow_parts.items():
        parts.setdefault(key, []).extend(group_parts)
    return _assemble(parts, others)
