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

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from driftline.streams.codec.batch_parser import _BATCH_LAYOUT_FINGERPRINTS, _parse_batches
from driftline.streams.codec.buffer import (
    _HEADER,
    _Buffer,
)
from driftline.streams.codec.codec import TOPIC_RECORDS, Codec, DecodeError
from driftline.streams.codec.event_parser import _LAYOUT_FINGERPRINTS, _FastRows, _parse
from driftline.streams.codec.schemas import SINGLE_OBJECT_MAGIC
from driftline.streams.records import FeatureBatch, FeatureEvent, PredictionBatch, PredictionEvent

log = logging.getLogger("driftline.codec")

# With fewer batch messages of one kind than this in a call, fastavro reads them faster (bench/decode_bulk.py).
_MIN_BATCH_MESSAGES = 16


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
