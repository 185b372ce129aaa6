"""Many ``LabelEvent`` messages decoded at once.

Labels come one a message, and ``Codec.decode`` costs about 5 µs for each
(fastavro's per-datum dispatch, a BytesIO, the record). :func:`decode_labels`
reads all of a poll's label messages in step over one buffer, as the bulk
decoder reads single events (``event_parser``): two strings, a long and a
``["double", "string"]`` union, a handful of numpy operations over every
message. It takes the common case only (single-object encoding whose writer
schema is the current reader schema and the v1 layout below, varints of at
most 5 bytes, 9 for ``event_time``, strict UTF-8, no byte left over) and
answers None for every other message, which the caller decodes alone with
``Codec.decode``: so whatever it returns is what ``Codec.decode`` would.

A ``LabelBatch`` message (many labels of one model in packed columns) is one
fastavro read and a few ``np.frombuffer`` calls for hundreds of labels, so
:func:`decode_labels` reads each with ``Codec.decode`` and returns the batch;
one the codec refuses comes back as None, for the caller to decode alone and
dead-letter with the codec's reason.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import numpy as np

from driftline.streams.codec.buffer import _HEADER, _Buffer, _strings
from driftline.streams.codec.codec import SINGLE_OBJECT_MAGIC, Codec, DecodeError
from driftline.streams.codec.event_parser import _Cursor
from driftline.streams.codec.schemas import NAMESPACE, fingerprint
from driftline.streams.records import LabelBatch, LabelEvent

log = logging.getLogger("driftline.codec")

_LABEL_LAYOUT = {
    "type": "record",
    "name": f"{NAMESPACE}.LabelEvent",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "model_id", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "label", "type": ["double", "string"]},
    ],
}
_LABEL_FINGERPRINT = fingerprint(_LABEL_LAYOUT)
_DOUBLE, _STRING = 0, 2  # the union's branch bytes: zigzag 0 and 1
# Below this many messages, Codec.decode alone is faster (the numpy steps cost about 0.2 ms a call).
MIN_BULK_LABELS = 128


def decode_labels(codec: Codec, values: Sequence[bytes | None]) -> list[LabelEvent | LabelBatch | None]:
    """The label (or label batch) of each message, or None where ``codec.decode(v, topic="labels")`` must
    decide alone (every single label of a call with fewer than ``MIN_BULK_LABELS``: the codec is faster there).

    >>> from driftline.streams.codec import default_codec
    >>> codec = default_codec()
    >>> values = [codec.encode(LabelEvent("e1", "m", 5, 1.0)), codec.encode(LabelEvent("e2", "m", 6, "fraud"))]
    >>> decode_labels(codec, [*values, b"{}", None] * 40)[:4]
    [LabelEvent(event_id='e1', model_id='m', event_time=5, label=1.0), \
LabelEvent(event_id='e2', model_id='m', event_time=6, label='fraud'), None, None]
    >>> batch = codec.encode(LabelBatch.from_events([LabelEvent("e3", "m", 7, 0.0), LabelEvent("e4", "m", 8, 1.0)]))
    >>> found = decode_labels(codec, [batch, values[0]])
    >>> found[0].event_ids, found[0].labels(), found[1]
    (['e3', 'e4'], [0.0, 1.0], None)
    """
    out: list[LabelEvent | LabelBatch | None] = [None] * len(values)
    batch_header = codec.schemas.current("LabelBatch").header
    for i, v in enumerate(values):
        if type(v) is bytes and v[:_HEADER] == batch_header:
            try:
                record = codec.decode(v, topic="labels")
            except DecodeError:
                continue  # the caller decodes it again and dead-letters it with the reason
            if isinstance(record, LabelBatch):
                out[i] = record
    current = codec.schemas.current("LabelEvent").fingerprint
    if len(values) < MIN_BULK_LABELS or sys.byteorder != "little" or current != _LABEL_FINGERPRINT:
        return out
    header = SINGLE_OBJECT_MAGIC + current
    rows = [i for i, v in enumerate(values) if type(v) is bytes and v[:_HEADER] == header and len(v) > _HEADER]
    if not rows:
        return out
    try:
        labels = _parse([values[i] for i in rows])  # type: ignore[misc]
    except Exception as exc:  # a bug in the vectorised reading: every single label is decoded alone instead
        log.warning("decode_labels left %d messages to Codec.decode after %s: %s", len(rows), type(exc).__name__, exc)
        return out
    for i, label in zip(rows, labels):
        out[i] = label
    return out


def _parse(values: list[bytes]) -> list[LabelEvent | None]:
    sizes = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    ends = np.cumsum(sizes)
    buf = _Buffer(values, int(ends[-1]))
    cur = _Cursor(buf, ends - sizes + _HEADER, ends)
    id_start, id_length = cur.string()
    model_start, model_length = cur.string()
    times = cur.long()
    tag = buf.u8[cur.pos]
    cur.fail |= (tag != _DOUBLE) & (tag != _STRING)
    cur.to(cur.pos + 1)
    is_string = tag == _STRING
    numbers = buf.doubles(cur.pos)
    # a double ends the message 8 bytes on; a string is a length and its bytes that end it
    ok = ~cur.fail & ~is_string & (cur.pos + 8 == ends)
    text_start, text_length = cur.string()
    ok |= ~cur.fail & is_string & (cur.pos == ends)
    out: list[LabelEvent | None] = [None] * len(values)
    rows = np.flatnonzero(ok)
    if not rows.size:
        return out
    ids, bad = _strings(buf, id_start[rows], id_length[rows])
    models, bad_models = _strings(buf, model_start[rows], model_length[rows])
    bad |= bad_models
    labels = numbers[rows].astype(object)
    texts = np.flatnonzero(is_string[rows])
    if texts.size:
        labels[texts], bad_texts = _strings(buf, text_start[rows[texts]], text_length[rows[texts]])
        bad[texts] |= bad_texts
    for row, event_id, model_id, time, label, wrong in zip(
        rows.tolist(), ids.tolist(), models.tolist(), times[rows].tolist(), labels.tolist(), bad.tolist()
    ):
        if not wrong:
            out[row] = LabelEvent(event_id, model_id, time, label)
    return out
