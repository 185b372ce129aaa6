"""The single-event parser of the bulk decoder: Prediction/FeatureEvent v1 messages into columns.

One cursor per message walks the v1 layout (``_LAYOUTS``) field by field across all messages at
once; maps are read through key templates when messages share a numeric key layout, else entry
by entry. A message that breaks any rule of the fast path is marked failed (``_FastRows.ok``) and
goes to ``Codec.decode``; nothing is raised (``driftline.streams.codec.bulk``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.streams.codec.buffer import (
    _HEADER,
    _LEN_BYTES,
    _LONG_BYTES,
    _MAX_KEY,
    _NULL,
    _SECOND,
    _TEMPLATE_MAX_BYTES,
    _TEMPLATES,
    _Buffer,
    _Interner,
    _scalar_varint,
    _strings,
)
from driftline.streams.codec.schemas import NAMESPACE, fingerprint
from driftline.streams.core.validation import RESERVED_FEATURE_NAMES
from driftline.streams.records import PredictionBatch

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

_MAX_CELLS = 1 << 23  # messages x distinct keys of one map: beyond, messages with new keys go one by one
_TEMPLATE_MIN_ROWS = 4  # with fewer messages left, the entry by entry reading
_TEMPLATE_SAMPLE = 64  # messages a template is first tried on
_TEMPLATE_MAX_ITEMS = 512
_FEW_ROWS_STEPS = 64  # map steps left before few remaining messages go to the slow path instead
_MANY_GROUPS = 32  # beyond this many model versions in one pass, tiny groups go to the slow path
_TINY_GROUP = 4  # (building a group's columns costs about as much as decoding 4 events slowly)


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
