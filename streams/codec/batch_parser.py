"""The batch parser of the bulk decoder: PredictionBatch and FeatureBatch v1 messages, packed columns.

Packed columns need only their offsets, found message by message in step; string arrays are
walked in step across messages, one gather and one table look-up per item position, and their
strings made by one ``bytes.decode`` and one ``str.split``. A message the fast path cannot vouch
for comes back as None and goes to ``Codec.decode`` (``driftline.streams.codec.bulk``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import pyarrow as pa
except ImportError:  # the light SDK install has no Arrow: the decoder then hands over the lists alone
    pa = None

from driftline.streams.codec.buffer import (
    _HEADER,
    _LEN_BYTES,
    _NULL,
    _SECOND,
    _TEMPLATES,
    _Buffer,
    _scalar_varint,
)
from driftline.streams.codec.schemas import NAMESPACE, fingerprint
from driftline.streams.core.validation import check_feature_names
from driftline.streams.records import FeatureBatch, PredictionBatch

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
_MIN_BATCH_EVENTS = 1000
_MAX_BATCH_KEYS = 4096  # map entries per batch field the fast path walks; more: the slow path
_ARROW_MAX_BYTES = 1 << 31  # string bytes an Arrow string array (32-bit offsets) holds


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
    """Where the items of many arrays start: arrays whose items all have one size (fixed-width ids)
    at once, the others by :func:`_walk_in_step`. Returns the items of the arrays that parse and, per
    array (in input order), whether it did."""
    uniform = _uniform_arrays(buf, first, counts, ends, union)
    if uniform.all():
        return _fixed_items(buf, rows, first, counts, union), uniform
    if not uniform.any():
        return _walk_in_step(buf, rows, first, counts, ends, union)
    rest = ~uniform
    items, ok_rest = _walk_in_step(buf, rows[rest], first[rest], counts[rest], ends[rest], union)
    fixed = _fixed_items(buf, rows[uniform], first[uniform], counts[uniform], union)
    ok = uniform.copy()
    ok[rest] = ok_rest
    return (
        _Items(
            np.concatenate([fixed.rows, items.rows]),
            np.concatenate([fixed.starts, items.starts]),
            np.concatenate([fixed.bounds, items.bounds[1:] + fixed.bounds[-1]]),
            np.concatenate([fixed.stops, items.stops]),
        ),
        ok,
    )


def _two_bytes(buf: _Buffer, pos: np.ndarray) -> np.ndarray:
    """The two bytes at each position as one little-endian word (taking from the unaligned ``u16``
    view would copy the whole buffer first)."""
    pairs = np.empty((pos.size, 2), dtype=np.int64)
    pairs[:, 0] = pos
    pairs[:, 1] = pos + 1
    return buf.u8.take(pairs.reshape(-1), mode="clip").view("<u2")


def _fixed_starts(first: np.ndarray, counts: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Item starts of arrays whose items all have one size, array after array, and the arrays' bounds."""
    bounds = np.concatenate([[0], np.cumsum(counts)])
    index = np.arange(int(bounds[-1]), dtype=np.int64) - np.repeat(bounds[:-1], counts)
    return np.repeat(first, counts) + index * np.repeat(size, counts), bounds


def _uniform_arrays(buf: _Buffer, first: np.ndarray, counts: np.ndarray, ends: np.ndarray, union: bool) -> np.ndarray:
    """Which arrays have every item of the size of their first, read from each item's header.

    Exact, not a guess: if the item at every assumed start has that size, walking item by item
    from the first reaches exactly those starts.
    """
    table = (_UNION_STEP if union else _PLAIN_STEP)[:, 0]
    size = table.take(_two_bytes(buf, first))
    candidate = (size > 0) & (first + counts * size <= ends)
    if not candidate.any():
        return candidate
    starts, bounds = _fixed_starts(first[candidate], counts[candidate], size[candidate])
    same = table.take(_two_bytes(buf, starts)) == np.repeat(size[candidate], counts[candidate])
    # per array: all its items agree
    bad = np.add.reduceat(~same, bounds[:-1]) if same.size else np.zeros(0, dtype=np.int64)
    candidate[np.flatnonzero(candidate)[bad > 0]] = False
    return candidate


def _fixed_items(buf: _Buffer, rows: np.ndarray, first: np.ndarray, counts: np.ndarray, union: bool) -> _Items:
    table = (_UNION_STEP if union else _PLAIN_STEP)[:, 0]
    size = table.take(_two_bytes(buf, first))
    starts, bounds = _fixed_starts(first, counts, size)
    return _Items(rows, starts, bounds, first + counts * size)


def _walk_in_step(
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


def _texts(buf: _Buffer, items: _Items, union: bool) -> tuple[list[list], list[pa.StringArray | None], np.ndarray]:
    """The strings of each array (None for a null item), the same as an Arrow array (None for an
    array read string by string), and which arrays hold invalid UTF-8.

    The bytes of all the arrays are copied end to end with every header byte (union branch,
    length) set to NUL, then decoded and split at NUL in two C calls; each string is the piece
    after its header's last NUL. That is exact when no string holds a NUL itself (the NUL count
    tells) and the whole decodes: a NUL cannot be part of a multi-byte character, so the whole
    decodes iff every string does. Otherwise the arrays are halved until the culprits are found,
    and those are decoded string by string.

    The Arrow arrays are slices of one array over all the arrays decoded together: its bytes are
    the copied bytes without their NULs (the header bytes, when the NUL count tells there are no
    others), and its offsets the items' text lengths summed.
    """
    counts = np.diff(items.bounds)
    n_items = len(items.starts)
    if not n_items:
        return [], [], np.zeros(0, dtype=bool)
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

    lengths = nexts - items.starts - header  # of each item's text (0 for a null)

    def arrow(region: np.ndarray, lo: int, hi: int) -> pa.StringArray | None:
        """Items lo..hi-1 as one Arrow array, from their copied bytes with only the headers NUL."""
        if pa is None:
            return None  # no Arrow here: the raw insert, if any, converts the lists
        offsets = np.zeros(hi - lo + 1, dtype=np.int64)
        np.cumsum(lengths[lo:hi], out=offsets[1:])
        if offsets[-1] >= _ARROW_MAX_BYTES:
            return None  # beyond 32-bit offsets: the raw insert converts the lists
        valid = None if present is None else present[lo:hi]
        nulls = 0 if valid is None else int(hi - lo - np.count_nonzero(valid))
        bitmap = None if not nulls else pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.StringArray.from_buffers(
            hi - lo, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(region[region != 0]), bitmap, nulls
        )

    def decode(a: int, b: int) -> tuple[list[list], list[pa.StringArray | None], np.ndarray]:
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
            left, left_arrays, bad_left = decode(a, mid)
            right, right_arrays, bad_right = decode(mid, b)
            return left + right, left_arrays + right_arrays, np.concatenate([bad_left, bad_right])
        offsets = (items.bounds[a : b + 1] - lo).tolist()
        whole = arrow(region, lo, hi)
        arrays = [None if whole is None else whole.slice(x, y - x) for x, y in zip(offsets[:-1], offsets[1:])]
        if regular:
            strings = pieces[h::h]
            return [strings[x:y] for x, y in zip(offsets[:-1], offsets[1:])], arrays, np.zeros(b - a, dtype=bool)
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
        lists = [column[x:y].tolist() for x, y in zip(offsets[:-1], offsets[1:])]
        return lists, arrays, np.zeros(b - a, dtype=bool)

    def one(a: int) -> tuple[list[list], list[pa.StringArray | None], np.ndarray]:
        """One array, string by string (a NUL inside a string, or invalid UTF-8)."""
        lo, hi = int(items.bounds[a]), int(items.bounds[a + 1])
        data = buf.data
        out: list[str | None] = []
        is_text = [True] * (hi - lo) if present is None else present[lo:hi].tolist()
        try:
            for x, y, text in zip((items.starts[lo:hi] + header[lo:hi]).tolist(), nexts[lo:hi].tolist(), is_text):
                out.append(data[x:y].decode("utf-8") if text else None)
        except UnicodeDecodeError:
            return [[]], [None], np.ones(1, dtype=bool)
        return [out], [None], np.zeros(1, dtype=bool)

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


def _read_array(
    cur: _Rows, rows: np.ndarray, counts: np.ndarray, union: bool
) -> list[tuple[int, list, pa.StringArray | None]]:
    """One array field (``counts[i] >= 1`` items) of these messages: (row, its list, the same as an Arrow
    array or None) of those that parse."""
    if not rows.size:
        return []
    items, ok = _walk(cur.buf, rows, cur.pos[rows], counts, cur.end[rows], union)
    cur.fail[rows[~ok]] = True
    lists, arrays, bad = _texts(cur.buf, items, union)
    cur.fail[items.rows[bad]] = True
    cur.pos[items.rows] = items.stops
    cur.zero(cur.live(items.rows))
    return list(zip(items.rows.tolist(), lists, arrays))


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


def _read_map(cur: _Rows, rows: np.ndarray, n: np.ndarray, values: str) -> tuple[list[list], list[list], list[list]]:
    """A map field of these messages: per message row, its (key start, key length), values in wire order
    and, for string values, the same values as Arrow arrays (or None).

    ``values``: "column" (bytes of n 8-byte values: the value is its start), "strings" or
    "optional strings" (an array of n items: the value is the list).
    """
    m = len(cur.pos)
    keys: list[list[tuple[int, int]]] = [[] for _ in range(m)]
    out: list[list[Any]] = [[] for _ in range(m)]
    arrays: list[list[pa.StringArray | None]] = [[] for _ in range(m)]
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
        for row, strings, array in _read_array(cur, at, n[at], union=values == "optional strings"):
            out[row].append(strings)
            arrays[row].append(array)
    cur.zero(cur.live(rows[size[rows] > 0]))
    return keys, out, arrays


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
    id_arrays: list[pa.StringArray | None] = [None] * m
    for row, strings, array in _read_array(cur, rows, n[rows], union=False):
        event_ids[row], id_arrays[row] = strings, array
    # The packed columns: event_times, predictions and latency_ms at their start, or -1.
    times, predictions, latency = (np.full(m, -1, dtype=np.int64) for _ in range(3))
    rows = cur.live(rows)
    times[rows], _ = cur.column(rows, n[rows])
    numeric_keys, numeric, _ = _read_map(cur, cur.live(rows), n, "column")
    categorical_keys, categorical, categorical_arrays = _read_map(cur, cur.live(rows), n, "optional strings")
    labels: list[list] = [[] for _ in range(m)]
    label_arrays: list[pa.StringArray | None] = [None] * m
    if has_predictions:
        rows = cur.live(rows)
        predictions[rows], _ = cur.column(rows, n[rows])
        rows = cur.live(rows)
        count = cur.count(rows)
        cur.fail[rows[(count != 0) & (count != n[rows])]] = True  # the codec: column_length
        with_labels = cur.live(rows[count != 0])
        for row, strings, array in _read_array(cur, with_labels, n[with_labels], union=True):
            labels[row], label_arrays[row] = strings, array
        rows = cur.live(rows)
        start, present = cur.column(rows, n[rows], empty_ok=True)
        latency[rows[present]] = start[present]
    attribute_keys, attributes, attribute_arrays = _read_map(cur, cur.live(rows), n, "strings")
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
            arrays = {("event_ids", ""): id_arrays[row], ("predicted_labels", ""): label_arrays[row]}
            for field, field_keys, field_arrays in (
                ("categorical", categorical_keys[row], categorical_arrays[row]),
                ("attributes", attribute_keys[row], attribute_arrays[row]),
            ):
                # as mapping(): a repeated key keeps its last value
                arrays.update({(field, str(text(a, b))): array for (a, b), array in zip(field_keys, field_arrays)})
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
                arrow={key: array for key, array in arrays.items() if array is not None},
            )
        else:
            out[row] = FeatureBatch(
                model_id, version, event_ids[row], words[0].view("<i8"), numeric_columns, cats, attrs
            )
    return out
