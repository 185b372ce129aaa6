"""decode_bulk against the slow path it replaces: Codec.decode per message, then from_events per group.

Messages are written by a small Avro encoder written here from the specification, so that the
tests can also produce what fastavro's writer never does (blocked maps, non-minimal varints,
duplicate keys, ±inf), and by the codec itself (fastavro, JSON, batches, other schema versions).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.streams.codec import BulkDecoded, Codec, DecodedGroup, DecodeError, batch_parser, bulk, decode_bulk
from driftline.streams.codec.schemas import SchemaSet
from driftline.streams.records import FeatureBatch, FeatureEvent, LabelEvent, PredictionBatch, PredictionEvent

T0 = 1_700_000_000_000
SNAN = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000001))[0]  # a signalling NaN
NEG_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000ABC))[0]  # negative, with a payload


class CountingCodec(Codec):
    """A real codec that counts the messages it decodes one by one (the slow path)."""

    def __init__(self, schemas: SchemaSet | None = None) -> None:
        super().__init__(schemas)
        self.calls = 0

    def decode(self, data: bytes, *, topic: str | None = None) -> Any:
        self.calls += 1
        return super().decode(data, topic=topic)


# An older PredictionEvent writer, without latency_ms: readable into v1 by schema resolution only.
OLD_PREDICTION_EVENT = {
    "type": "record",
    "name": "PredictionEvent",
    "namespace": "driftline.v1",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "model_id", "type": "string"},
        {"name": "model_version", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "numeric", "type": {"type": "map", "values": "double"}},
        {"name": "categorical", "type": {"type": "map", "values": "string"}},
        {"name": "prediction", "type": ["null", "double"], "default": None},
        {"name": "predicted_label", "type": ["null", "string"], "default": None},
        {"name": "attributes", "type": {"type": "map", "values": "string"}, "default": {}},
    ],
}
CODEC = CountingCodec(SchemaSet.load())
OLD_WRITER = CODEC.schemas.add(OLD_PREDICTION_EVENT, version=0)


# ---------------------------------------------------------------- an Avro encoder from the specification


def varint(n: int, pad: int = 0) -> bytes:
    """A zigzag varint; ``pad`` extra zero groups make a valid but non-minimal encoding."""
    u = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    if pad:
        out[-1] |= 0x80
        out += b"\x80" * (pad - 1) + b"\x00"
    return bytes(out)


def string(s: str | bytes, pad: int = 0) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    return varint(len(raw), pad) + raw


def double(x: float) -> bytes:
    return struct.pack("<d", x)


def avro_map(items: list[tuple[bytes, bytes]], blocks: list[int] | None = None, negative: bool = False) -> bytes:
    """Items (encoded key, encoded value) in blocks of the given sizes; a negative count carries the byte size."""
    out = bytearray()
    sizes = blocks or ([len(items)] if items else [])
    at = 0
    for size in sizes:
        chunk = b"".join(k + v for k, v in items[at : at + size])
        at += size
        if negative:
            out += varint(-size) + varint(len(chunk)) + chunk
        else:
            out += varint(size) + chunk
    assert at == len(items)
    return bytes(out + b"\x00")


def optional(value: bytes | None) -> bytes:
    return b"\x00" if value is None else b"\x02" + value


def encode_event(
    e: PredictionEvent | FeatureEvent,
    *,
    header: bytes | None = None,
    pad: int = 0,
    blocks: dict[str, list[int]] | None = None,
    negative: bool = False,
    extra_items: dict[str, list[tuple[bytes, bytes]]] | None = None,
) -> bytes:
    """The single-object encoding of an event, with optional unusual but valid encoding choices."""
    is_prediction = isinstance(e, PredictionEvent)
    if header is None:
        header = CODEC.schemas.current("PredictionEvent" if is_prediction else "FeatureEvent").header
    blocks = blocks or {}
    extra = extra_items or {}

    def field_map(name: str, values: dict, value: Any) -> bytes:
        items = [(string(k, pad), value(v)) for k, v in values.items()] + extra.get(name, [])
        return avro_map(items, blocks.get(name), negative)

    body = (
        string(e.event_id, pad)
        + string(e.model_id, pad)
        + string(e.model_version, pad)
        + varint(e.event_time)
        + field_map("numeric", e.numeric, double)
        + field_map("categorical", e.categorical, string)
    )
    if is_prediction:
        body += (
            optional(None if e.prediction is None else double(e.prediction))
            + optional(None if e.predicted_label is None else string(e.predicted_label, pad))
            + optional(None if e.latency_ms is None else double(e.latency_ms))
        )
    return header + body + field_map("attributes", e.attributes, string)


def event(i: int, **changes: Any) -> PredictionEvent:
    values: dict[str, Any] = dict(
        event_id=f"e{i}",
        model_id="credit",
        model_version="3",
        event_time=T0 + i,
        numeric={"age": 40.0 + i, "income": 1000.5 * i},
        categorical={"region": "eu"},
        prediction=0.25,
        predicted_label=None,
        latency_ms=3.5,
        attributes={},
    )
    values.update(changes)
    return PredictionEvent(**values)


def feature_event(i: int, **changes: Any) -> FeatureEvent:
    values: dict[str, Any] = dict(
        event_id=f"f{i}",
        model_id="credit",
        model_version="3",
        event_time=T0 + i,
        numeric={"age": 30.0 + i},
        categorical={"region": "us"},
        attributes={},
    )
    values.update(changes)
    return FeatureEvent(**values)


# ---------------------------------------------------------------- the slow path and the comparison


def slow_path(codec: Codec, values: list[bytes], topic: str) -> BulkDecoded:
    """What the worker did before: decode each message, group single events, from_events per group."""
    others: list[tuple[int, Any]] = []
    singles: dict[tuple[str, str, bool], list[tuple[int, Any]]] = {}
    for i, value in enumerate(values):
        try:
            record = Codec.decode(codec, value, topic=topic)
        except DecodeError as exc:
            others.append((i, exc))
            continue
        if isinstance(record, (PredictionEvent, FeatureEvent)):
            key = (record.model_id, record.model_version, isinstance(record, PredictionEvent))
            singles.setdefault(key, []).append((i, record))
        else:
            others.append((i, record))
    groups = []
    for (_, _, is_prediction), items in singles.items():
        events = [e for _, e in items]
        batch = PredictionBatch.from_events(events) if is_prediction else FeatureBatch.from_events(events).as_batch()
        groups.append(DecodedGroup(batch, is_prediction, np.array([i for i, _ in items], dtype=np.int64)))
    return BulkDecoded(groups, others)


def assert_bits(a: np.ndarray | None, b: np.ndarray | None) -> None:
    """Same float64 values bit for bit: NaN positions, NaN payloads and -0.0 included."""
    assert (a is None) == (b is None)
    if a is not None:
        assert a.dtype == np.float64 and a.shape == b.shape
        assert np.array_equal(a.view(np.uint64), b.view(np.uint64)), (a, b)


def assert_arrow_matches(batch: PredictionBatch) -> None:
    """The decoder's Arrow copies of string columns hold exactly the strings of their lists."""
    lists: dict[tuple[str, str], list] = {("event_ids", ""): batch.event_ids}
    if batch.predicted_labels:
        lists[("predicted_labels", "")] = batch.predicted_labels
    for field in ("categorical", "attributes"):
        lists.update({(field, name): values for name, values in getattr(batch, field).items()})
    for key, array in batch.arrow.items():
        assert key in lists and array.type == pa.string(), key
        assert array.to_pylist() == lists[key], key


def assert_same_batch(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, PredictionBatch):
        assert_arrow_matches(a)
    assert (a.model_id, a.model_version) == (b.model_id, b.model_version)
    assert a.event_ids == b.event_ids and type(a.event_ids) is list
    assert all(type(x) is str for x in a.event_ids)
    assert a.event_times.dtype == np.int64 and np.array_equal(a.event_times, b.event_times)
    assert list(a.numeric) == list(b.numeric)
    for key in b.numeric:
        assert_bits(a.numeric[key], b.numeric[key])
    for name in ("categorical", "attributes"):
        mine, theirs = getattr(a, name), getattr(b, name)
        assert list(mine) == list(theirs) and mine == theirs
        assert all(type(v) is list and all(x is None or type(x) is str for x in v) for v in mine.values())
    if isinstance(b, PredictionBatch):
        assert_bits(a.predictions, b.predictions)
        assert a.predicted_labels == b.predicted_labels and type(a.predicted_labels) is list
        assert_bits(a.latency_ms, b.latency_ms)


def assert_same(fast: BulkDecoded, slow: BulkDecoded) -> None:
    assert len(fast.groups) == len(slow.groups)
    for mine, theirs in zip(fast.groups, slow.groups):
        assert mine.has_predictions == theirs.has_predictions
        assert mine.messages.dtype == np.int64 and mine.messages.tolist() == theirs.messages.tolist()
        assert_same_batch(mine.batch, theirs.batch)
    assert [i for i, _ in fast.others] == [i for i, _ in slow.others]
    for (_, mine), (_, theirs) in zip(fast.others, slow.others):
        assert type(mine) is type(theirs)
        if isinstance(theirs, DecodeError):
            assert mine.reason == theirs.reason
        elif isinstance(theirs, (PredictionBatch, FeatureBatch)):
            assert_same_batch(mine, theirs)
        else:
            assert mine == theirs


def check(values: list[bytes], topic: str = "predictions", codec: CountingCodec = CODEC) -> tuple[BulkDecoded, int]:
    """decode_bulk equals the slow path; returns its result and how many messages it decoded one by one."""
    codec.calls = 0
    fast = decode_bulk(codec, values, topic=topic)
    calls = codec.calls
    assert_same(fast, slow_path(codec, values, topic))
    return fast, calls


# ---------------------------------------------------------------- hand-worked examples


def test_the_hand_encoder_writes_what_fastavro_writes() -> None:
    for e in (
        event(1),
        event(2, numeric={}, categorical={"ü": "日本"}, predicted_label="yes", attributes={"a": ""}),
        feature_event(3),
    ):
        assert encode_event(e) == CODEC.encode(e)


def test_empty_list() -> None:
    fast, calls = check([])
    assert fast == BulkDecoded([], []) and calls == 0


def test_a_single_message_takes_the_fast_path() -> None:
    fast, calls = check([CODEC.encode(event(7, predicted_label="approve"))])
    assert calls == 0
    (group,) = fast.groups
    b = group.batch
    assert group.has_predictions and group.messages.tolist() == [0]
    assert (b.model_id, b.model_version, b.event_ids, b.event_times.tolist()) == ("credit", "3", ["e7"], [T0 + 7])
    assert b.numeric["age"].tolist() == [47.0] and b.numeric["income"].tolist() == [7003.5]
    assert b.categorical == {"region": ["eu"]} and b.predicted_labels == ["approve"]
    assert b.predictions.tolist() == [0.25] and b.latency_ms.tolist() == [3.5] and b.attributes == {}


def test_interleaved_model_versions_group_in_order_of_first_appearance() -> None:
    versions = [("credit", "2"), ("credit", "3"), ("fraud", "2"), ("credit", "3"), ("credit", "2"), ("fraud", "2")]
    values = [CODEC.encode(event(i, model_id=m, model_version=v)) for i, (m, v) in enumerate(versions)]
    fast, calls = check(values)
    assert calls == 0
    assert [(g.batch.model_id, g.batch.model_version, g.messages.tolist()) for g in fast.groups] == [
        ("credit", "2", [0, 4]),
        ("credit", "3", [1, 3]),
        ("fraud", "2", [2, 5]),
    ]
    assert fast.groups[1].batch.event_ids == ["e1", "e3"]
    assert fast.groups[1].batch.numeric["age"].tolist() == [41.0, 43.0]


def test_prediction_and_feature_events_form_separate_groups() -> None:
    values = [
        CODEC.encode(event(0)),
        CODEC.encode(feature_event(1)),
        CODEC.encode(event(2)),
        CODEC.encode(feature_event(3)),
    ]
    fast, calls = check(values, topic="dlq")  # a topic that accepts both
    assert calls == 0
    assert [(g.has_predictions, g.messages.tolist()) for g in fast.groups] == [(True, [0, 2]), (False, [1, 3])]
    features = fast.groups[1].batch
    assert np.isnan(features.predictions).all() and features.predicted_labels == [] and features.latency_ms is None
    # On a topic for predictions, a feature event is unexpected there (the slow path says so).
    fast, _ = check(values, topic="predictions")
    assert [(i, e.reason) for i, e in fast.others] == [(1, "unexpected_record"), (3, "unexpected_record")]
    fast, _ = check(values, topic="features")
    assert [g.messages.tolist() for g in fast.groups] == [[1, 3]]


def test_missing_keys_and_different_key_orders() -> None:
    values = [
        CODEC.encode(event(0, numeric={"b": 1.0, "a": 2.0}, categorical={"y": "1", "x": "2"}, latency_ms=None)),
        CODEC.encode(event(1, numeric={"a": 3.0}, categorical={}, prediction=None, latency_ms=None)),
        CODEC.encode(
            event(
                2,
                numeric={"c": 4.0, "b": 5.0, "a": 6.0},
                categorical={"x": "3"},
                attributes={"tier": "gold"},
                latency_ms=None,
            )
        ),
    ]
    fast, calls = check(values)
    assert calls == 0
    b = fast.groups[0].batch
    assert list(b.numeric) == ["a", "b", "c"]
    assert b.numeric["a"].tolist() == [2.0, 3.0, 6.0]
    assert np.array_equal(b.numeric["b"], [1.0, np.nan, 5.0], equal_nan=True)
    assert np.array_equal(b.numeric["c"], [np.nan, np.nan, 4.0], equal_nan=True)
    assert b.categorical == {"x": ["2", None, "3"], "y": ["1", None, None]}
    assert b.attributes == {"tier": ["", "", "gold"]}
    assert np.array_equal(b.predictions, [0.25, np.nan, 0.25], equal_nan=True)
    assert b.latency_ms is None and b.predicted_labels == []


def test_unicode_keys_and_values() -> None:
    values = [
        CODEC.encode(
            event(
                0,
                event_id="é-1",
                model_id="modèle",
                numeric={"ünï": 1.0, "🙂": 2.0},
                categorical={"región": "日本", "z": "a\x00b", "t": "x\x00"},
                predicted_label="ja✓",
            )
        ),
        CODEC.encode(
            event(
                1,
                event_id="plain",
                model_id="modèle",
                numeric={"🙂": 3.0},
                categorical={"región": "ascii", "z": ""},
                attributes={"ключ": "значение"},
            )
        ),
    ]
    fast, calls = check(values)
    assert calls == 0
    b = fast.groups[0].batch
    assert b.model_id == "modèle" and b.event_ids == ["é-1", "plain"]
    assert b.numeric["🙂"].tolist() == [2.0, 3.0]
    assert b.categorical == {"región": ["日本", "ascii"], "t": ["x\x00", None], "z": ["a\x00b", ""]}
    assert b.predicted_labels == ["ja✓", None] and b.attributes == {"ключ": ["", "значение"]}


def test_nan_values_keep_their_bits() -> None:
    values = [
        CODEC.encode(event(0, numeric={"a": SNAN, "b": -0.0}, latency_ms=SNAN)),
        CODEC.encode(event(1, numeric={"a": math.nan}, prediction=None)),
    ]
    fast, calls = check(values)
    assert calls == 0
    b = fast.groups[0].batch
    assert b.numeric["a"].view(np.uint64).tolist() == [0x7FF0000000000001, 0x7FF8000000000000]
    assert b.numeric["b"].view(np.uint64)[0] == 0x8000000000000000 and np.isnan(b.numeric["b"][1])
    assert b.latency_ms.view(np.uint64)[0] == 0x7FF0000000000001


def test_a_nan_prediction_of_a_single_event_is_an_invalid_value() -> None:
    values = [encode_event(event(0)), encode_event(event(1, prediction=NEG_NAN)), encode_event(event(2))]
    fast, calls = check(values)
    assert calls == 1
    assert [(i, e.reason) for i, e in fast.others] == [(1, "invalid_value")]
    assert fast.groups[0].messages.tolist() == [0, 2]


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"numeric": {"label": 1.0}}, "reserved_feature_name"),
        ({"categorical": {"prediction": "x"}}, "reserved_feature_name"),
        ({"numeric": {"__prediction__": 0.5}}, "reserved_feature_name"),
        ({"numeric": {"f0": 1.0}, "categorical": {"f0": "x"}}, "feature_kind_conflict"),
    ],
)
def test_feature_names_refused_by_the_codec_are_refused_in_the_fast_path(changes: dict, reason: str) -> None:
    # the same key in another event of the poll, numeric in one and categorical in the other, is not a conflict
    values = [
        encode_event(event(0, categorical={"f0": "x"})),
        encode_event(event(1, **changes)),
        encode_event(event(2)),
        encode_event(feature_event(3, **changes)),
    ]
    fast, calls = check(values)
    assert calls == 2
    assert [(i, e.reason) for i, e in fast.others] == [(1, reason), (3, reason)]
    assert fast.groups[0].messages.tolist() == [0, 2]


def test_a_reserved_name_in_a_template_no_message_matches(caplog: pytest.LogCaptureFixture) -> None:
    # Found by make fuzz: the first message's keys are interned as a template, which the others do not
    # match; the name checks must not look for rows of keys that no message holds (an IndexError, which
    # the fallback hid at the cost of decoding the whole call one by one).
    # Here no entry is read at all: one long map among few messages sends them all to the codec at once.
    values = [encode_event(event(0, numeric={"age": 1.0, "income": 2.0, "label": 3.0}))]
    values += [encode_event(event(i, numeric={f"k{i}": 1.0})) for i in range(1, 4)]
    values += [encode_event(event(4, numeric={f"f{k}": 1.0 for k in range(1_000)}))]
    with caplog.at_level("WARNING", logger="driftline.codec"):
        fast, calls = check(values)
    assert "fell back" not in caplog.text
    assert calls == 5
    assert [(i, e.reason) for i, e in fast.others] == [(0, "reserved_feature_name")]


def test_feature_names_refused_in_batches_take_the_codec() -> None:
    good = batches(20)
    bad = [
        encode_batch({**batch_datum(prediction_batch(90)), "numeric": {"label": packed(np.ones(5))}}),
        encode_batch({**batch_datum(prediction_batch(91)), "categorical": {"age": [None, "a", "b", "c", "d"]}}),
    ]
    fast, calls = check(good[:10] + bad + good[10:])
    assert calls == 2
    reasons = [(i, r.reason) for i, r in fast.others if isinstance(r, DecodeError)]
    assert reasons == [(10, "reserved_feature_name"), (11, "feature_kind_conflict")]


def test_tombstones_and_a_failing_fast_path_cost_no_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = [encode_event(event(0)), None, encode_event(event(1)), b"{oops"]
    out = decode_bulk(CODEC, values, topic="predictions")
    assert [(i, e.reason) for i, e in out.others] == [(1, "empty"), (3, "json_syntax")]
    assert out.groups[0].messages.tolist() == [0, 2]

    # A fault injected into the vectorised reader (no input found by the fuzzer does this): the call is
    # redone one message at a time, with the same result, and a warning says so.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise IndexError("injected")

    monkeypatch.setattr(bulk, "_parse", broken)
    with caplog.at_level("WARNING", logger="driftline.codec"):
        again = decode_bulk(CODEC, values, topic="predictions")
    assert "fell back" in caplog.text and "IndexError" in caplog.text
    assert_same(again, out)


@pytest.mark.parametrize(
    "changes", [{"numeric": {"a": 1.0, "b": math.inf}}, {"prediction": -math.inf}, {"latency_ms": math.inf}]
)
def test_inf_is_an_invalid_value(changes: dict) -> None:
    values = [encode_event(event(0)), encode_event(event(1, **changes)), encode_event(event(2))]
    fast, calls = check(values)
    assert calls == 1
    assert [(i, e.reason) for i, e in fast.others] == [(1, "invalid_value")]
    assert fast.groups[0].messages.tolist() == [0, 2]


def test_feature_event_with_inf_is_an_invalid_value_on_any_topic() -> None:
    bad = encode_event(feature_event(0, numeric={"a": -math.inf}))
    for topic in ("features", "predictions", "dlq"):
        fast, _ = check([bad, encode_event(feature_event(1))], topic=topic)
        assert fast.others[0][1].reason == "invalid_value"


def test_truncated_and_overlong_messages_get_the_slow_path_reasons() -> None:
    good = CODEC.encode(event(0, categorical={"region": "eu", "x": "y"}))
    values = [good[:5], good[:10], good[:20], good[:-1], good + b"\x00", good]
    fast, calls = check(values)
    assert calls == 5
    assert [(i, e.reason) for i, e in fast.others] == [
        (0, "truncated"),
        (1, "avro_body"),
        (2, "avro_body"),
        (3, "avro_body"),
        (4, "avro_body"),
    ]
    assert fast.groups[0].messages.tolist() == [5]


@pytest.mark.parametrize("make", [event, feature_event])
def test_the_last_message_cut_before_an_empty_map(make: Any) -> None:
    # Past the last message the buffer holds zero bytes, which read as an empty map: still too short.
    values = [CODEC.encode(make(i, numeric={}, categorical={}, attributes={})) for i in range(5)]
    for cut in (1, 2, 3):
        fast, _ = check([*values[:4], values[4][:-cut]], topic="dlq")
        assert [(i, e.reason) for i, e in fast.others] == [(4, "avro_body")]


def test_invalid_utf8_anywhere_is_an_avro_body_error() -> None:
    e = event(0)
    values = [
        encode_event(e, extra_items={"numeric": [(string(b"k\xff"), double(1.0))]}),  # a key
        encode_event(e, extra_items={"categorical": [(string("k"), string(b"\xed\xa0\x80"))]}),  # a surrogate
        encode_event(e, extra_items={"attributes": [(string("k"), string(b"\xc0\x80"))]}),  # an overlong NUL
        encode_event(event(0, event_id="\u00e9")).replace("\u00e9".encode(), b"\xe9\x80"),
        encode_event(event(0, model_id="\u00e9")).replace("\u00e9".encode(), b"\xc3\x28"),
        encode_event(e),
    ]
    fast, calls = check(values)
    assert [(i, err.reason) for i, err in fast.others] == [(i, "avro_body") for i in range(5)]
    assert calls == 5


def test_json_messages_join_their_group_in_message_order() -> None:
    values = [
        CODEC.encode(event(0, numeric={"a": 1.0})),
        CODEC.encode_json(event(1, numeric={"j": 2.0})),
        CODEC.encode(event(2, numeric={"a": 3.0}, latency_ms=None)),
        b'{"broken',
        CODEC.encode_json(event(4, model_version="9")),
    ]
    fast, calls = check(values)
    assert calls == 3
    b = fast.groups[0].batch
    assert fast.groups[0].messages.tolist() == [0, 1, 2] and b.event_ids == ["e0", "e1", "e2"]
    assert np.array_equal(b.numeric["j"], [np.nan, 2.0, np.nan], equal_nan=True)
    assert np.array_equal(b.latency_ms, [3.5, 3.5, np.nan], equal_nan=True)
    assert [(i, e.reason) for i, e in fast.others] == [(3, "json_syntax")]
    assert fast.groups[1].messages.tolist() == [4]


def test_batches_and_other_records_stay_alone() -> None:
    batch = PredictionBatch.from_events([event(10), event(11, numeric={"z": 1.0})])
    values = [
        CODEC.encode(event(0)),
        CODEC.encode(batch),
        CODEC.encode(event(1)),
        CODEC.encode(LabelEvent("e0", "credit", T0, 1.0)),
        CODEC.encode(FeatureBatch.from_events([feature_event(0)])),
    ]
    fast, calls = check(values, topic="dlq")
    assert calls == 3
    assert [(i, type(r).__name__) for i, r in fast.others] == [
        (1, "PredictionBatch"),
        (3, "LabelEvent"),
        (4, "FeatureBatch"),
    ]
    assert fast.groups[0].messages.tolist() == [0, 2]
    fast, _ = check(values, topic="predictions")
    assert [(i, getattr(r, "reason", None)) for i, r in fast.others] == [
        (1, None),
        (3, "unexpected_record"),
        (4, "unexpected_record"),
    ]


def test_other_schema_versions_go_through_the_codec() -> None:
    old = CODEC.encode_datum(
        {k: v for k, v in vars(event(1, numeric={"old": 1.0})).items() if k != "latency_ms"}, OLD_WRITER
    )
    unknown = b"\xc3\x01" + b"\x01" * 8 + CODEC.encode(event(3))[10:]
    values = [CODEC.encode(event(0)), old, CODEC.encode(event(2)), unknown]
    fast, calls = check(values)
    assert calls == 2
    b = fast.groups[0].batch
    assert fast.groups[0].messages.tolist() == [0, 1, 2]
    assert np.array_equal(b.latency_ms, [3.5, np.nan, 3.5], equal_nan=True)
    assert [(i, e.reason) for i, e in fast.others] == [(3, "unknown_fingerprint")]


def test_a_newer_current_schema_turns_the_fast_path_off() -> None:
    schemas = SchemaSet.load()
    codec = CountingCodec(schemas)
    v1 = [encode_event(event(i)) for i in range(3)]
    # v2 only moves attributes first: readable both ways, but not the layout the fast path knows.
    fields = schemas.current("PredictionEvent").schema["fields"]
    v2 = schemas.add(
        {**schemas.current("PredictionEvent").schema, "fields": [fields[-1], *fields[:-1]]}, make_current=True
    )
    values = [*v1, codec.encode(event(5, attributes={"a": "b"}))]
    assert values[-1][:10] == v2.header
    fast, calls = check(values, codec=codec)
    assert calls == 4 and fast.groups[0].messages.tolist() == [0, 1, 2, 3]


def test_unusual_but_valid_encodings() -> None:
    e = event(0, numeric={"a": 1.0, "b": 2.0, "c": 3.0}, categorical={"x": "1", "y": "2"})
    values = [
        encode_event(e),
        encode_event(e, blocks={"numeric": [1, 2]}),  # a map in two blocks
        encode_event(e, negative=True),  # blocks with byte sizes
        encode_event(e, pad=2),  # non-minimal length varints
        encode_event(
            e, extra_items={"numeric": [(string("a"), double(9.0))], "categorical": [(string("x"), string("last"))]}
        ),  # duplicate keys
        encode_event(event(1, event_time=2**62)),  # a 9-byte varint
        encode_event(event(2, event_time=-(2**63))),  # the 10-byte extreme
        encode_event(event(3, event_id="x" * 300, categorical={"k" * 300: "v" * 1000})),  # long strings
        encode_event(e, header=CODEC.schemas.current("PredictionEvent").header[:2] + b"\0" * 8),
    ]
    fast, _ = check(values)
    b = fast.groups[0].batch
    assert b.numeric["a"].tolist()[4] == 9.0 and b.categorical["x"][4] == "last"
    assert b.event_times.tolist()[5:7] == [2**62, -(2**63)]


def test_duplicate_keys_in_the_fast_path_keep_the_last_value() -> None:
    e = event(0, numeric={"a": 1.0})
    values = [
        encode_event(e, extra_items={"numeric": [(string("a"), double(2.0))]}),
        encode_event(event(1, numeric={"a": 41.0})),
    ]
    fast, calls = check(values)
    assert calls == 0 and fast.groups[0].batch.numeric["a"].tolist() == [2.0, 41.0]


def test_a_union_branch_other_than_null_or_double_goes_to_the_codec() -> None:
    good = encode_event(event(0, prediction=None, predicted_label=None, latency_ms=None))
    # the three trailing unions (00 00 00) then the empty attributes map (00)
    assert good.endswith(b"\x00\x00\x00\x00")
    values = [good[:-4] + b"\x04\x00\x00\x00", good[:-4] + b"\x01" + double(1.0) + b"\x00\x00\x00", good]
    fast, calls = check(values)
    assert calls == 2


def test_many_model_versions() -> None:
    values = [CODEC.encode(event(i, model_version=str(i % 50))) for i in range(120)]
    values += [CODEC.encode(event(i, model_version="big")) for i in range(200, 240)]
    fast, _ = check(values)
    assert len(fast.groups) == 51


def test_many_events_with_random_keys_take_the_fast_path() -> None:
    rng = np.random.default_rng(7)
    values = []
    for i in range(3000):
        keys = [f"f{k}" for k in rng.permutation(25)[: rng.integers(0, 25)]]
        e = event(
            i,
            numeric={k: float(rng.normal()) for k in keys},
            categorical={"region": ["eu", "us", "日本"][i % 3]} if i % 4 else {},
            model_version=str(i % 3),
            prediction=None if i % 5 == 0 else float(rng.random()),
            predicted_label=None if i % 2 else "yes",
            latency_ms=None if i % 7 else 1.5,
            attributes={"tier": "gold"} if i % 11 == 0 else {},
        )
        values.append(CODEC.encode(e))
    fast, calls = check(values)
    assert calls == 0 and [g.batch.n for g in fast.groups] == [1000, 1000, 1000]


def test_bytes_like_messages() -> None:
    data = CODEC.encode(event(0))
    fast, _ = check([memoryview(data), bytearray(data)])
    assert fast.groups[0].messages.tolist() == [0, 1]


def test_an_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown topic"):
        decode_bulk(CODEC, [CODEC.encode(event(0))], topic="nope")


# ---------------------------------------------------------------- generated messages

KEYS = st.sampled_from(["f0", "f1", "f2", "age", "ünï", "🙂", "", "k" * 40])
TEXT = st.text(max_size=8)
NAN_BITS = st.integers(0x7FF0000000000001, 0x7FFFFFFFFFFFFFFF) | st.integers(0xFFF0000000000001, 2**64 - 1)
NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(),
    NAN_BITS.map(lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]),
)
FINITE = st.floats(allow_infinity=False)


@st.composite
def events(draw: st.DrawFn, numbers: st.SearchStrategy = NUMBERS) -> PredictionEvent | FeatureEvent:
    common = dict(
        event_id=draw(TEXT),
        model_id=draw(st.sampled_from(["credit", "fraud", "ü"])),
        model_version=draw(st.sampled_from(["1", "2"])),
        event_time=draw(st.integers(-(2**50), 2**50) | st.integers(-(2**63), 2**63 - 1)),
        numeric=draw(st.dictionaries(KEYS, numbers, max_size=5)),
        categorical=draw(st.dictionaries(KEYS, TEXT, max_size=3)),
        attributes=draw(st.dictionaries(KEYS, TEXT, max_size=2)),
    )
    if draw(st.integers(0, 3)) == 0:
        return FeatureEvent(**common)
    return PredictionEvent(
        **common,
        prediction=draw(st.none() | numbers),
        predicted_label=draw(st.none() | TEXT),
        latency_ms=draw(st.none() | numbers),
    )


@st.composite
def unusual(draw: st.DrawFn) -> bytes:
    e = draw(events())
    names = ["numeric", "categorical", "attributes"]
    blocks = {}
    for name in names:
        n = len(getattr(e, name))
        if n > 1 and draw(st.booleans()):
            cut = draw(st.integers(1, n - 1))
            blocks[name] = [cut, n - cut]
    return encode_event(e, pad=draw(st.integers(0, 2)), blocks=blocks, negative=draw(st.booleans()))


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_event(draw(events())))
    how = draw(st.sampled_from(["cut", "flip", "append"]))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        at = draw(st.integers(10, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
        return bytes(data)
    return bytes(data) + draw(st.binary(min_size=1, max_size=3))


def _encode_or_skip(encode: Any, record: Any) -> bytes:
    try:
        return encode(record)
    except ValueError:  # ±inf has no encoding through the codec
        return b""


MESSAGES = st.one_of(
    events().map(encode_event),
    events().map(encode_event),
    events().map(encode_event),
    events(FINITE).map(CODEC.encode),
    unusual(),
    damaged(),
    events(FINITE).map(lambda e: _encode_or_skip(CODEC.encode_json, e)),
    st.lists(events(FINITE).filter(lambda e: isinstance(e, PredictionEvent)), min_size=1, max_size=3).map(
        lambda es: CODEC.encode(PredictionBatch.from_events(es))
    ),
    st.just(CODEC.encode(LabelEvent("e", "credit", T0, "yes"))),
    events(FINITE)
    .filter(lambda e: isinstance(e, PredictionEvent))
    .map(lambda e: CODEC.encode_datum({k: v for k, v in vars(e).items() if k != "latency_ms"}, OLD_WRITER)),
    st.binary(max_size=40),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGES, max_size=25), st.sampled_from(["predictions", "features", "dlq"]))
def test_generated_messages_decode_as_the_slow_path(values: list[bytes], topic: str) -> None:
    check(values, topic=topic)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(), min_size=1, max_size=60))
def test_generated_events_of_one_model_version(items: list) -> None:
    values = [encode_event(type(e)(**{**vars(e), "model_id": "m", "model_version": "1"})) for e in items]
    fast, calls = check(values, topic="dlq")
    # Only ±inf, NaN predictions, a name both numeric and categorical, and 10-byte timestamps (a zigzag
    # payload over 63 bits) go one by one.
    slow = [
        e
        for e in items
        if ((e.event_time << 1) ^ (e.event_time >> 63)) >= 2**63
        or any(math.isinf(v) for v in e.numeric.values())
        or any(math.isinf(getattr(e, f) or 0.0) for f in ("prediction", "latency_ms") if hasattr(e, f))
        or _nan_prediction(e)
        or e.numeric.keys() & e.categorical.keys()
    ]
    assert calls == len(slow)


def _nan_prediction(e: PredictionEvent | FeatureEvent) -> bool:
    prediction = getattr(e, "prediction", None)
    return prediction is not None and math.isnan(prediction)


@st.composite
def shared_layout(draw: st.DrawFn) -> list[PredictionEvent | FeatureEvent]:
    """Events whose numeric keys mostly come in one order (the fast path's templates), with variants."""
    keys = draw(st.lists(KEYS, min_size=1, max_size=6, unique=True))
    kind = draw(st.sampled_from([PredictionEvent, FeatureEvent]))
    out = []
    for i in range(draw(st.integers(4, 40))):
        names = keys
        if draw(st.integers(0, 4)) == 0:  # another order, or fewer keys
            names = draw(st.permutations(keys))[: draw(st.integers(0, len(keys)))]
        extra = dict(prediction=draw(st.none() | NUMBERS)) if kind is PredictionEvent else {}
        out.append(
            kind(
                f"e{i}",
                "m",
                draw(st.sampled_from(["1", "2"])),
                T0 + i,
                numeric={k: draw(NUMBERS) for k in names},
                categorical=draw(st.dictionaries(KEYS, TEXT, max_size=2)),
                **extra,
            )
        )
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shared_layout())
def test_generated_events_sharing_a_key_layout(items: list) -> None:
    fast, calls = check([encode_event(e) for e in items], topic="dlq")
    assert calls == sum(
        any(math.isinf(v) for v in e.numeric.values())
        or math.isinf(getattr(e, "prediction", 0) or 0)
        or _nan_prediction(e)
        or bool(e.numeric.keys() & e.categorical.keys())
        for e in items
    )


# ---------------------------------------------------------------- batch messages (PredictionBatch, FeatureBatch)


def packed(values: Any, dtype: str = "<f8") -> bytes:
    return np.asarray(values, dtype=dtype).tobytes()


def batch_datum(b: PredictionBatch | FeatureBatch) -> dict[str, Any]:
    """The Avro datum of a batch, by the schema's docs (packed little-endian columns)."""
    d: dict[str, Any] = {
        "model_id": b.model_id,
        "model_version": b.model_version,
        "event_ids": list(b.event_ids),
        "event_times": packed(b.event_times, "<i8"),
        "numeric": {k: packed(v) for k, v in b.numeric.items()},
        "categorical": dict(b.categorical),
        "attributes": dict(b.attributes),
    }
    if isinstance(b, PredictionBatch):
        d["predictions"] = packed(b.predictions)
        d["predicted_labels"] = list(b.predicted_labels)
        d["latency_ms"] = b"" if b.latency_ms is None else packed(b.latency_ms)
    return d


def encode_batch(
    d: dict[str, Any],
    *,
    header: bytes | None = None,
    pad: int = 0,
    blocks: dict[str, list[int]] | None = None,
    two_blocks: str = "",
    negative: bool = False,
    extra_items: dict[str, list[tuple[bytes, bytes]]] | None = None,
) -> bytes:
    """The single-object encoding of a batch datum from the Avro specification (arrays and maps are
    written like the maps of encode_event), with optional unusual but valid encoding choices; the datum
    is written as it is, so that it may break the codec's rules (±inf, wrong column lengths).

    ``blocks`` gives the block sizes of a field's arrays or maps (``categorical_values`` and
    ``attribute_values`` name the arrays in those maps); ``two_blocks`` names a field whose arrays or
    maps of two items or more are written in two blocks.
    """
    is_prediction = "predictions" in d
    if header is None:
        header = CODEC.schemas.current("PredictionBatch" if is_prediction else "FeatureBatch").header
    blocks = blocks or {}
    extra = extra_items or {}

    def sizes(name: str, n: int) -> list[int] | None:
        return blocks.get(name) or ([1, n - 1] if name == two_blocks and n > 1 else None)

    def array(name: str, items: list, item: Any) -> bytes:
        return avro_map([(item(x), b"") for x in items], sizes(name, len(items)), negative)

    def text(x: str | bytes) -> bytes:
        return string(x, pad)

    def maybe_text(x: str | bytes | None) -> bytes:
        return optional(None if x is None else text(x))

    def field_map(name: str, value: Any) -> bytes:
        items = [(text(k), value(v)) for k, v in d[name].items()] + extra.get(name, [])
        return avro_map(items, sizes(name, len(items)), negative)

    body = (
        text(d["model_id"])
        + text(d["model_version"])
        + array("event_ids", d["event_ids"], text)
        + text(d["event_times"])
        + field_map("numeric", text)
        + field_map("categorical", lambda v: array("categorical_values", v, maybe_text))
    )
    if is_prediction:
        body += (
            text(d["predictions"])
            + array("predicted_labels", d["predicted_labels"], maybe_text)
            + text(d["latency_ms"])
        )
    return header + body + field_map("attributes", lambda v: array("attribute_values", v, text))


def prediction_batch(j: int, n: int = 5, **changes: Any) -> PredictionBatch:
    regions = ["eu", "us", None, "日本", "apac"]
    values: dict[str, Any] = dict(
        model_id="credit",
        model_version="3",
        event_ids=[f"b{j}-{i}" for i in range(n)],
        event_times=T0 + np.arange(n, dtype=np.int64) + 1000 * j,
        numeric={"age": 30.0 + np.arange(n), "income": np.linspace(0, 1, n) * j},
        categorical={"region": [regions[(i + j) % 5] for i in range(n)], "channel": ["web"] * n},
        predictions=np.full(n, 0.25),
        predicted_labels=[],
        latency_ms=np.full(n, 3.5),
        attributes={"tier": ["gold"] * n},
    )
    values.update(changes)
    return PredictionBatch(**values)


def feature_batch(j: int, n: int = 5, **changes: Any) -> FeatureBatch:
    b = prediction_batch(j, n)
    values: dict[str, Any] = dict(
        model_id=b.model_id,
        model_version=b.model_version,
        event_ids=b.event_ids,
        event_times=b.event_times,
        numeric=b.numeric,
        categorical=b.categorical,
        attributes=b.attributes,
    )
    values.update(changes)
    return FeatureBatch(**values)


def batches(k: int = 10, n: int = 5) -> list[bytes]:
    return [CODEC.encode(prediction_batch(j, n)) for j in range(k)]


MIN_BATCH_MESSAGES = bulk._MIN_BATCH_MESSAGES
MIN_BATCH_EVENTS = batch_parser._MIN_BATCH_EVENTS


@pytest.fixture(autouse=True, scope="module")
def small_polls_of_batches() -> Iterator[None]:
    """The fast path takes batch messages only in polls of at least 16 of them and 1000 events, where
    it beats fastavro; these tests lower both to 8 messages and 1 event to exercise it on small
    examples (test_small_polls_of_batches_go_one_by_one checks the real cut-offs)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bulk, "_MIN_BATCH_MESSAGES", 8)
        patch.setattr(batch_parser, "_MIN_BATCH_EVENTS", 1)
        yield


def test_the_batch_hand_encoder_writes_what_fastavro_writes() -> None:
    for b in (
        prediction_batch(0),
        prediction_batch(
            1, predicted_labels=["a", None, "ü", "", "x" * 70], latency_ms=None, numeric={}, attributes={}
        ),
        feature_batch(2),
    ):
        assert encode_batch(batch_datum(b)) == CODEC.encode(b)


def test_batches_take_the_fast_path() -> None:
    values = batches(10)
    fast, calls = check(values)
    assert calls == 0 and fast.groups == []
    assert [i for i, _ in fast.others] == list(range(10))
    b = fast.others[3][1]
    assert type(b) is PredictionBatch and b.event_ids == ["b3-0", "b3-1", "b3-2", "b3-3", "b3-4"]
    assert b.event_times.tolist() == [T0 + 3000 + i for i in range(5)]
    assert b.numeric["income"].tolist() == [0.0, 0.75, 1.5, 2.25, 3.0]
    assert b.categorical == {"region": ["日本", "apac", "eu", "us", None], "channel": ["web"] * 5}
    assert b.attributes == {"tier": ["gold"] * 5} and b.predicted_labels == []
    assert b.latency_ms.tolist() == [3.5] * 5


def test_feature_batches_and_topics() -> None:
    values = [CODEC.encode(feature_batch(j)) for j in range(9)]
    fast, calls = check(values, topic="features")
    assert calls == 0 and all(type(r) is FeatureBatch for _, r in fast.others)
    # On the predictions topic a FeatureBatch is unexpected, and a PredictionBatch on features.
    fast, _ = check(values, topic="predictions")
    assert {e.reason for _, e in fast.others} == {"unexpected_record"}
    fast, _ = check(batches(9), topic="features")
    assert {e.reason for _, e in fast.others} == {"unexpected_record"}


def test_small_polls_of_batches_go_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "_MIN_BATCH_MESSAGES", MIN_BATCH_MESSAGES)
    monkeypatch.setattr(batch_parser, "_MIN_BATCH_EVENTS", MIN_BATCH_EVENTS)
    assert (MIN_BATCH_MESSAGES, MIN_BATCH_EVENTS) == (16, 1000)
    _, calls = check(batches(15, n=100))
    assert calls == 15
    _, calls = check(batches(16, n=62))  # 992 events
    assert calls == 16
    _, calls = check([*batches(16, n=63), CODEC.encode(feature_batch(0, n=1000))])  # 1008 events
    assert calls == 1


def test_batches_among_single_events_and_broken_messages() -> None:
    values = [
        CODEC.encode(event(0)),
        *batches(4),
        b"{oops",
        *batches(5),
        CODEC.encode(event(1)),
        CODEC.encode(LabelEvent("e0", "credit", T0, 1.0)),
    ]
    fast, calls = check(values, topic="dlq")
    assert calls == 2  # the JSON and the label
    assert fast.groups[0].messages.tolist() == [0, 11]
    assert [type(r).__name__ for _, r in fast.others] == ["PredictionBatch"] * 4 + ["DecodeError"] + [
        "PredictionBatch"
    ] * 5 + ["LabelEvent"]


def test_batches_of_different_sizes() -> None:
    values = [CODEC.encode(prediction_batch(j, n)) for j, n in enumerate([3, 1, 40, 7, 7, 2, 9, 1, 5, 6, 300])]
    fast, calls = check(values)
    # past the 8th longest, the longer batches walk their last items one by one, still in the fast path
    assert calls == 0 and len(fast.others) == 11


def test_arrays_of_one_item_size_beside_others() -> None:
    # Arrays whose items all have one size are placed at once, the others walked: in one poll, fixed-width
    # ids beside ids that change width at the last item or the first, and all-null or fixed-width unions.
    values = [
        CODEC.encode(prediction_batch(0, n=12, event_ids=[f"id{i:03d}" for i in range(12)])),
        CODEC.encode(prediction_batch(1, n=12, event_ids=[*(f"id{i:03d}" for i in range(11)), "id0110"])),
        CODEC.encode(prediction_batch(2, n=12, event_ids=["i", *(f"id{i:03d}" for i in range(11))])),
        CODEC.encode(prediction_batch(3, n=12, predicted_labels=[None] * 12, categorical={"c": ["ab"] * 12})),
        CODEC.encode(
            prediction_batch(4, n=12, predicted_labels=["yes"] * 11 + [None], categorical={"c": ["x" * 70] * 12})
        ),
        *[CODEC.encode(prediction_batch(j, n=12)) for j in range(5, 12)],
    ]
    fast, calls = check(values)
    assert calls == 0
    assert fast.others[1][1].event_ids[-2:] == ["id010", "id0110"] and fast.others[2][1].event_ids[0] == "i"
    assert fast.others[4][1].predicted_labels[-2:] == ["yes", None]


def test_labels_latency_and_nulls() -> None:
    values = [
        CODEC.encode(prediction_batch(0, predicted_labels=["yes", None, "no", None, "日本"])),
        CODEC.encode(prediction_batch(1, predicted_labels=[None] * 5)),  # kept, as the codec keeps it
        CODEC.encode(prediction_batch(2, latency_ms=None)),
        CODEC.encode(prediction_batch(3, categorical={"c": [None] * 5}, attributes={})),
        CODEC.encode(prediction_batch(4, numeric={}, categorical={}, attributes={}, n=1)),
        CODEC.encode(
            prediction_batch(
                5,
                predictions=np.array([np.nan, SNAN, NEG_NAN, -0.0, 1.0]),
                numeric={"a": np.array([SNAN, NEG_NAN, -0.0, np.nan, 5e-324])},
            )
        ),
        CODEC.encode(prediction_batch(6, event_times=np.array([-(2**63), -1, 0, 2**63 - 1, 2**62]))),
        *batches(3),
    ]
    fast, calls = check(values)
    assert calls == 0
    assert fast.others[1][1].predicted_labels == [None] * 5 and fast.others[2][1].latency_ms is None
    assert fast.others[6][1].event_times.tolist() == [-(2**63), -1, 0, 2**63 - 1, 2**62]


def test_strings_that_need_the_careful_path() -> None:
    odd = ["", "a\x00b", "x\x00", "é", "🙂" * 20, "k" * 100, "z" * 9000]  # NUL, long (2- and 3-byte lengths)
    values = [
        CODEC.encode(prediction_batch(0, n=7, event_ids=odd)),
        CODEC.encode(prediction_batch(1, n=7, categorical={"c": odd, "d": [None, *odd[1:]]})),
        CODEC.encode(prediction_batch(2, n=7, predicted_labels=odd[::-1], attributes={"t": odd, "\x00": odd})),
        *[CODEC.encode(prediction_batch(j, n=7)) for j in range(3, 12)],
    ]
    fast, calls = check(values)
    assert calls == 0
    assert fast.others[0][1].event_ids == odd and fast.others[1][1].categorical["d"] == [None, *odd[1:]]


def test_invalid_utf8_in_one_batch_leaves_the_others_fast() -> None:
    good = batch_datum(prediction_batch(0))
    values = [
        encode_batch({**good, "categorical": {"c": ["a", b"\xff", None, "b", "c"]}}),
        encode_batch({**good, "event_ids": ["a", "b", b"\xed\xa0\x80", "c", "d"]}),  # a surrogate
        encode_batch({**good, "attributes": {b"\xc0\x80": ["a"] * 5}}),  # an overlong NUL
        encode_batch({**good, "model_version": b"\xe9"}),
        encode_batch({**good, "predicted_labels": ["a", "b", "c", "d", b"\x80"]}),
        encode_batch({**good, "numeric": {b"k\xff": packed([1.0] * 5)}}),
        *batches(9),
    ]
    fast, calls = check(values)
    assert calls == 6 and [(i, e.reason) for i, e in fast.others[:6]] == [(i, "avro_body") for i in range(6)]


@pytest.mark.parametrize(
    "changes",
    [
        {
            "event_ids": [],
            "event_times": b"",
            "numeric": {},
            "categorical": {},
            "attributes": {},
            "predictions": b"",
            "latency_ms": b"",
        },  # an empty batch
        {"event_times": packed([T0] * 4, "<i8")},
        {"numeric": {"a": packed([1.0] * 6)}},
        {"categorical": {"c": ["x"] * 4}},
        {"categorical": {"c": []}},
        {"attributes": {"t": ["x"] * 6}},
        {"predictions": packed([1.0] * 4)},
        {"predicted_labels": ["x"] * 4},
        {"latency_ms": packed([1.0] * 6)},
    ],
)
def test_columns_of_the_wrong_length(changes: dict) -> None:
    values = [encode_batch({**batch_datum(prediction_batch(0)), **changes}), *batches(9)]
    fast, calls = check(values)
    assert calls == 1 and fast.others[0][1].reason == "column_length"


@pytest.mark.parametrize(
    "changes",
    [
        {"numeric": {"a": packed([1.0, 2.0, np.inf, 4.0, 5.0])}},
        {"predictions": packed([-np.inf] * 5)},
        {"latency_ms": packed([1.0, 2.0, 3.0, 4.0, np.inf])},
    ],
)
def test_inf_in_a_batch_is_an_invalid_value(changes: dict) -> None:
    values = [*batches(9), encode_batch({**batch_datum(prediction_batch(0)), **changes})]
    fast, calls = check(values)
    assert calls == 1 and fast.others[9][1].reason == "invalid_value"


def test_unusual_encodings_of_batches() -> None:
    d = batch_datum(prediction_batch(0, predicted_labels=["y", None, "n", "y", None]))
    values = [
        encode_batch(d, pad=1),  # non-minimal varints (2 bytes)
        encode_batch(d, pad=3),  # non-minimal varints (4 bytes)
        encode_batch(
            d,
            extra_items={
                "numeric": [(string("age"), string(packed([9.0] * 5)))],
                "categorical": [(string("region"), avro_map([(optional(string("z")), b"")] * 5))],
                "attributes": [(string("tier"), avro_map([(string("w"), b"")] * 5))],
            },
        ),
        encode_batch(d, blocks={"event_ids": [2, 3]}),  # an array in two blocks
        encode_batch(d, blocks={"categorical_values": [4, 1]}),
        encode_batch(d, blocks={"numeric": [1, 1]}),  # a map in two blocks
        encode_batch(d, negative=True),  # blocks with byte sizes
        encode_batch(d) + b"\x00",  # a byte too many
        encode_batch(d)[:-1],  # a byte too few
        *batches(9),
    ]
    fast, calls = check(values)
    assert calls == 6
    assert fast.others[2][1].numeric["age"].tolist() == [9.0] * 5
    assert fast.others[2][1].categorical["region"] == ["z"] * 5


def test_a_newer_batch_schema_turns_the_batch_fast_path_off() -> None:
    schemas = SchemaSet.load()
    codec = CountingCodec(schemas)
    v1 = batches(9)
    fields = schemas.current("PredictionBatch").schema["fields"]
    schemas.add({**schemas.current("PredictionBatch").schema, "fields": [fields[-1], *fields[:-1]]}, make_current=True)
    values = [*v1, *[codec.encode(prediction_batch(j)) for j in range(9)]]
    fast, calls = check(values, codec=codec)
    assert calls == 18 and len(fast.others) == 18


def test_many_batches_with_random_columns() -> None:
    rng = np.random.default_rng(11)
    words = ["eu", "us", "日本", "", "long-" * 20, None]
    values = []
    for j in range(40):
        n = 300
        names = [f"f{k}" for k in rng.permutation(12)[: rng.integers(0, 12)]]
        values.append(
            CODEC.encode(
                PredictionBatch(
                    "credit",
                    str(j % 3),
                    [f"evt-{j}-{i}" for i in range(n)],
                    T0 + rng.integers(0, 10**6, n),
                    numeric={k: rng.normal(size=n) for k in names},
                    categorical={f"c{k}": [words[x] for x in rng.integers(0, 6, n)] for k in range(rng.integers(0, 4))},
                    predictions=rng.random(n),
                    predicted_labels=["yes", None] * (n // 2) if j % 2 else [],
                    latency_ms=rng.random(n) if j % 3 else None,
                    attributes={"tier": [["gold", "silver"][x] for x in rng.integers(0, 2, n)]} if j % 4 else {},
                )
            )
        )
    fast, calls = check(values)
    assert calls == 0 and len(fast.others) == 40
    for _, b in fast.others:  # every string column also came as an Arrow array
        expected = {("event_ids", "")} | {("categorical", k) for k in b.categorical}
        expected |= {("attributes", k) for k in b.attributes} | (
            {("predicted_labels", "")} if b.predicted_labels else set()
        )
        assert set(b.arrow) == expected


TEXTS = st.one_of(TEXT, TEXT, TEXT, st.text(min_size=20, max_size=40))


@st.composite
def batch_data(
    draw: st.DrawFn, n: int | None = None, numbers: st.SearchStrategy = NUMBERS, is_prediction: bool | None = None
) -> dict[str, Any]:
    """A random batch datum; with ``numbers`` holding ±inf it may be one the codec rejects."""
    n = draw(st.integers(1, 6)) if n is None else n
    column = st.lists(numbers, min_size=n, max_size=n).map(packed)
    d: dict[str, Any] = dict(
        model_id=draw(st.sampled_from(["credit", "fraud", "ü"])),
        model_version=draw(st.sampled_from(["1", "2"])),
        event_ids=draw(st.lists(TEXTS, min_size=n, max_size=n)),
        event_times=packed(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=n, max_size=n)), "<i8"),
        numeric=draw(st.dictionaries(KEYS, column, max_size=4)),
        categorical=draw(st.dictionaries(KEYS, st.lists(st.none() | TEXTS, min_size=n, max_size=n), max_size=3)),
        attributes=draw(st.dictionaries(KEYS, st.lists(TEXTS, min_size=n, max_size=n), max_size=2)),
    )
    if is_prediction if is_prediction is not None else draw(st.booleans()):
        d["predictions"] = draw(column)
        d["predicted_labels"] = draw(st.just([]) | st.lists(st.none() | TEXTS, min_size=n, max_size=n))
        d["latency_ms"] = draw(st.just(b"") | column)
    return d


@st.composite
def batch_message(draw: st.DrawFn, n: int | None = None, is_prediction: bool | None = None) -> bytes:
    """A batch, mostly as fastavro writes it, else in an unusual but valid encoding, or damaged."""
    d = draw(batch_data(n, is_prediction=is_prediction))
    how = draw(st.sampled_from(["plain"] * 6 + ["pad", "blocks", "negative", "cut", "flip", "append"]))
    if how in ("pad", "blocks", "negative"):
        fields = [
            "event_ids",
            "numeric",
            "categorical",
            "categorical_values",
            "attributes",
            "attribute_values",
            "predicted_labels",
        ]
        return encode_batch(
            d,
            pad=draw(st.integers(0, 2)) if how == "pad" else 0,
            two_blocks=draw(st.sampled_from(fields)) if how == "blocks" else "",
            negative=how == "negative",
        )
    data = bytearray(encode_batch(d))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        at = draw(st.integers(10, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
    if how == "append":
        data += draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


@st.composite
def batch_poll(draw: st.DrawFn) -> list[bytes]:
    """Enough batches for the fast path (of one kind, or both), with other messages in between."""
    n = draw(st.none() | st.integers(1, 6))
    is_prediction = draw(st.sampled_from([True, False, None]))
    values = draw(st.lists(batch_message(n, is_prediction), min_size=8, max_size=16))
    values += draw(st.lists(MESSAGES, max_size=4))
    return draw(st.permutations(values))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_poll(), st.sampled_from(["predictions", "features", "dlq"]))
def test_generated_batches_decode_as_the_codec(values: list[bytes], topic: str) -> None:
    check(values, topic=topic)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 8).flatmap(lambda n: st.lists(batch_data(n, FINITE, is_prediction=True), min_size=8, max_size=14))
)
def test_generated_valid_batches_all_take_the_fast_path(data: list[dict[str, Any]]) -> None:
    fast, calls = check([encode_batch(d) for d in data])
    # all of them, but those with a name both numeric and categorical: the codec refuses those
    assert calls == sum(bool(d["numeric"].keys() & d["categorical"].keys()) for d in data)
    assert len(fast.others) == len(data)
