"""The codec against the Avro specification, hand-worked bytes and a local schema registry."""

from __future__ import annotations

import io
import json
import math
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.schemas import AVRO_DIR
from driftline.streams.codec import (
    DECODE_ERROR_REASONS,
    MAX_DETAIL_CHARS,
    TOPIC_RECORDS,
    Codec,
    DecodeError,
    decode,
    encode,
    encode_json,
)
from driftline.streams.codec.schemas import SchemaSet, SchemaSetError, SchemaVersion, fingerprint, strip_logical_types
from driftline.streams.records import (
    Alert,
    DriftReport,
    Evidence,
    FeatureBatch,
    FeatureDrift,
    FeatureEvent,
    LabelBatch,
    LabelEvent,
    ModelEvent,
    PredictionBatch,
    PredictionEvent,
    RetrainRequest,
)

T0 = 1_700_000_000_123


def _prediction_event(i: int = 0, **changes) -> PredictionEvent:
    values = dict(
        event_id=f"e{i}",
        model_id="credit",
        model_version="3",
        event_time=T0 + i,
        numeric={"age": 41.0 + i, "income": -1.5e6},
        categorical={"region": "eu"},
        prediction=0.25,
        predicted_label="approve",
        latency_ms=3.5,
        attributes={"channel": "web"},
    )
    values.update(changes)
    return PredictionEvent(**values)


def sample_records() -> list:
    """One of every record kind, with values that exercise unions, maps, arrays and enums."""
    events = [_prediction_event(i) for i in range(3)]
    events[1].numeric = {"age": float("nan")}
    events[1].prediction = None
    events[2].categorical = {}
    return [
        _prediction_event(),
        PredictionEvent("e-min", "m", "1", 0),
        PredictionBatch.from_events(events),
        FeatureEvent("f1", "credit", "3", T0, numeric={"age": 3.0}, categorical={"c": "x"}, attributes={"a": "b"}),
        FeatureBatch.from_events(
            [
                FeatureEvent("f1", "credit", "3", T0, numeric={"age": 3.0}),
                FeatureEvent("f2", "credit", "3", T0 + 1, categorical={"c": "y"}),
            ]
        ),
        LabelEvent("e1", "credit", T0, 1.0),
        LabelEvent("e2", "credit", T0, "approve"),
        LabelBatch.from_events([LabelEvent("e1", "credit", T0, 1.0), LabelEvent("e2", "credit", T0 + 1, "approve")]),
        RetrainRequest("r1", "credit", "3", "drift", T0, [Evidence("psi", "age", 0.31, 0.2, T0 - 3_600_000, T0)]),
        RetrainRequest("r2", "credit", "3", "manual", T0),
        ModelEvent("promoted", "credit", "4", T0, alias="champion", request_id="r1"),
        ModelEvent("registered", "credit", "5", T0),
        DriftReport(
            "credit",
            "3",
            T0 - 3_600_000,
            T0,
            1000,
            5000,
            ["age"],
            [FeatureDrift("age", "psi", 0.31, None, 0.2, True), FeatureDrift("age", "ks", 0.12, 0.003, 0.1, True)],
            T0 + 5,
        ),
        Alert("a1", "credit", "3", "warning", "drift", "age drifted", T0, T0 - 3_600_000, T0),
        Alert("a2", "credit", "3", "critical", "retrain_failed", "boom", T0),
    ]


def assert_same(a, b) -> None:
    """Field-by-field equality that also compares numpy columns (NaN equal to NaN)."""
    assert type(a) is type(b)
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, dict) and x and isinstance(next(iter(x.values())), np.ndarray):
            assert list(x) == list(y), f.name
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{f.name}[{k}]")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
            assert np.asarray(y).dtype == np.asarray(x).dtype, f.name
        elif isinstance(x, dict):
            assert x.keys() == y.keys(), f.name
            for k in x:
                assert _same_value(x[k], y[k]), f"{f.name}[{k}]"
        else:
            assert _same_value(x, y), f.name


def _same_value(x, y) -> bool:
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))


# ------------------------------------------------------------ fingerprints and schemas


def _spec_fingerprint64(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification writes it (its Java listing, transcribed by hand)."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_fingerprint_matches_the_published_vector_for_int() -> None:
    # The Avro project's own test vector: "int" -> 0x7275d51a3f395c8f, header c3 01 8f 5c 39 3f 1a d5 75 72.
    assert _spec_fingerprint64(b'"int"') == 0x7275D51A3F395C8F
    assert fingerprint("int") == bytes.fromhex("8f5c393f1ad57572")
    assert fingerprint({"type": "int"}) == struct.pack("<Q", 0x7275D51A3F395C8F)


def test_every_schema_header_is_magic_and_spec_fingerprint_of_its_canonical_form() -> None:
    for version in SchemaSet.load().versions():
        from fastavro.schema import to_parsing_canonical_form

        pcf = to_parsing_canonical_form(version.schema).encode()
        expected = struct.pack("<Q", _spec_fingerprint64(pcf))
        assert version.header == b"\xc3\x01" + expected, version.name
        assert encode_header_of(version) == version.header


def encode_header_of(version: SchemaVersion) -> bytes:
    codec = Codec()
    for record in sample_records():
        if type(record).__name__ == version.short_name:
            return codec.encode(record)[:10]
    raise AssertionError(f"no sample of {version.name}")


def test_canonical_form_drops_doc_defaults_and_logical_types_by_hand() -> None:
    schema = {
        "type": "record",
        "name": "T",
        "namespace": "x.y",
        "doc": "d",
        "fields": [
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}, "default": 0, "doc": "when"}
        ],
    }
    from fastavro.schema import to_parsing_canonical_form

    hand = '{"name":"x.y.T","type":"record","fields":[{"name":"t","type":"long"}]}'
    assert to_parsing_canonical_form(schema) == hand
    assert fingerprint(schema) == struct.pack("<Q", _spec_fingerprint64(hand.encode()))


# Fixed contracts: a change to a v1 file changes its fingerprint and must be a new version instead.
PINNED_V1 = {
    "Alert": "b0a0dc677e255ae5",
    "DriftReport": "7d5c48daab95bc43",
    "FeatureBatch": "cb015e8f867e6684",
    "FeatureEvent": "c871750506a36bab",
    "LabelBatch": "d1c1ac4ba0661a6b",
    "LabelEvent": "29686dc300a4e678",
    "ModelEvent": "4678aa89e4dd4e38",
    "PredictionBatch": "fd96d0fc3be9ba43",
    "PredictionEvent": "ed63e297b6542bd3",
    "RetrainRequest": "1f8654be23aba0be",
}


def test_v1_schemas_are_pinned() -> None:
    schemas = SchemaSet.load()
    v1 = {v.short_name: v.fingerprint.hex() for v in schemas.versions() if v.version == 1}
    assert v1 == PINNED_V1
    assert sorted(p.name for p in AVRO_DIR.glob("*.v1.avsc")) == sorted(f"{n}.v1.avsc" for n in PINNED_V1)
    assert all(v.name.startswith("driftline.v1.") for v in schemas.versions())


def test_prediction_event_schema_is_the_contract() -> None:
    schema = json.loads((AVRO_DIR / "PredictionEvent.v1.avsc").read_text())
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert list(types) == [
        "event_id",
        "model_id",
        "model_version",
        "event_time",
        "numeric",
        "categorical",
        "prediction",
        "predicted_label",
        "latency_ms",
        "attributes",
    ]
    assert types["event_time"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert types["numeric"] == {"type": "map", "values": "double"}
    assert types["prediction"] == ["null", "double"]
    batch = {f["name"]: f["type"] for f in json.loads((AVRO_DIR / "PredictionBatch.v1.avsc").read_text())["fields"]}
    assert batch["event_times"] == batch["predictions"] == batch["latency_ms"] == "bytes"
    assert batch["numeric"] == {"type": "map", "values": "bytes"}


def test_current_schemas_have_exactly_the_fields_of_the_records() -> None:
    schemas = SchemaSet.load()
    for record in sample_records():
        version = schemas.current(type(record).__name__)
        # order may differ (dataclass fields with defaults come last); names may not. In-process fields
        # (metadata "wire": False, e.g. PredictionBatch.arrow, the decoder's Arrow copies) are not sent.
        wire = [f.name for f in fields(record) if f.metadata.get("wire", True)]
        assert sorted(version.field_names) == sorted(wire), version.name


def test_schema_files_must_be_named_after_their_record(tmp_path) -> None:
    (tmp_path / "Wrong.v1.avsc").write_text((AVRO_DIR / "LabelEvent.v1.avsc").read_text())
    with pytest.raises(SchemaSetError, match="holds record driftline.v1.LabelEvent"):
        SchemaSet.load(tmp_path)
    (tmp_path / "Wrong.v1.avsc").unlink()
    (tmp_path / "LabelEvent.avsc").write_text("{}")
    with pytest.raises(SchemaSetError, match=r"<Record>.v<N>.avsc"):
        SchemaSet.load(tmp_path)


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize("record", sample_records(), ids=lambda r: type(r).__name__)
def test_every_record_round_trips(record) -> None:
    data = encode(record)
    assert data[:2] == b"\xc3\x01"
    assert_same(decode(data), record)


def test_timestamps_are_exact_integers() -> None:
    codec = Codec()
    for t in (0, 1, -1, T0, 2**53 + 1, 2**63 - 1, -(2**63)):
        event = codec.decode(codec.encode(LabelEvent("e", "m", t, 1.0)))
        assert type(event.event_time) is int and event.event_time == t
        batch = codec.decode(codec.encode(PredictionEvent("e", "m", "1", t).as_batch()))
        assert batch.event_times.dtype == np.int64 and int(batch.event_times[0]) == t
    alert = codec.decode(codec.encode(Alert("a", "m", "1", "info", "k", "x", T0, window_start=T0 - 1)))
    assert (alert.window_start, alert.window_end) == (T0 - 1, None)


def test_single_event_body_is_avro_binary_by_hand() -> None:
    data = encode(LabelEvent("e", "m", 5, "x"))
    # strings are zigzag length + bytes; long 5 is zigzag 10; union branch 1 (string) is zigzag 2.
    assert data[10:] == b"\x02e" + b"\x02m" + b"\x0a" + b"\x02" + b"\x02x"


def test_batch_columns_are_packed_little_endian_and_decoded_zero_copy() -> None:
    batch = PredictionBatch.from_events([_prediction_event(0), _prediction_event(1, latency_ms=None)])
    codec = Codec()
    version, datum = codec.decode_datum(codec.encode(batch))
    assert version.short_name == "PredictionBatch"
    assert datum["event_times"] == struct.pack("<2q", T0, T0 + 1)
    assert datum["numeric"]["age"] == struct.pack("<2d", 41.0, 42.0)
    assert datum["latency_ms"][:8] == struct.pack("<d", 3.5) and math.isnan(
        struct.unpack("<d", datum["latency_ms"][8:])[0]
    )
    decoded = codec.decode(codec.encode(batch))
    assert not decoded.numeric["age"].flags.writeable  # a view of the message bytes, not a copy
    assert decoded.numeric["age"].base is not None


def test_batch_without_latency_or_labels_sends_empty_columns() -> None:
    batch = PredictionBatch.from_events([PredictionEvent("a", "m", "1", 1), PredictionEvent("b", "m", "1", 2)])
    codec = Codec()
    _, datum = codec.decode_datum(codec.encode(batch))
    assert datum["latency_ms"] == b"" and datum["predicted_labels"] == []
    decoded = codec.decode(codec.encode(batch))
    assert decoded.latency_ms is None and decoded.predicted_labels == []
    assert np.isnan(decoded.predictions).all()


finite = st.floats(allow_infinity=False, width=64)
names = st.text(min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    # one name cannot be numeric and categorical in one event (feature_kind_conflict): prefixes keep them apart
    numeric=st.dictionaries(names.map("n".__add__), finite, max_size=5),
    categorical=st.dictionaries(names.map("c".__add__), st.text(max_size=8), max_size=3),
    prediction=st.none() | finite,
    label=st.none() | st.text(max_size=5),
    t=st.integers(-(2**63), 2**63 - 1),
)
def test_prediction_event_round_trip_property(numeric, categorical, prediction, label, t) -> None:
    event = PredictionEvent(str(uuid.uuid4()), "m", "v", t, numeric, categorical, prediction, label)
    codec = Codec()
    # a NaN prediction is written as null, "no prediction", as a batch column says it with NaN
    expected = PredictionEvent(**{**event.__dict__, "prediction": None if prediction != prediction else prediction})
    assert_same(codec.decode(codec.encode(event)), expected)
    assert_same(codec.decode(codec.encode(event.as_batch())), event.as_batch())


# ------------------------------------------------------------ JSON input


def test_json_prediction_event_is_validated_and_normalised() -> None:
    raw = json.dumps(
        {
            "event_id": "e1",
            "model_id": "credit",
            "model_version": "3",
            "event_time": T0,
            "numeric": {"age": 41},
            "prediction": 1,
        }
    ).encode()
    event = decode(raw)
    assert event == PredictionEvent("e1", "credit", "3", T0, numeric={"age": 41.0}, prediction=1.0)
    assert type(event.numeric["age"]) is float and type(event.prediction) is float


def test_json_record_comes_from_type_then_topic_then_fields() -> None:
    base = {"event_id": "e1", "model_id": "credit", "model_version": "3", "event_time": T0}
    assert type(decode(json.dumps(base).encode())) is FeatureEvent
    assert type(decode(json.dumps(base).encode(), topic="predictions")) is PredictionEvent
    assert type(decode(json.dumps({**base, "type": "PredictionEvent"}).encode())) is PredictionEvent
    with pytest.raises(DecodeError) as err:  # the hint wins over the topic's default, then fails the topic check
        decode(json.dumps({**base, "type": "PredictionEvent"}).encode(), topic="features")
    assert err.value.reason == "unexpected_record"
    assert type(decode(json.dumps({**base, "type": "driftline.v1.PredictionEvent"}).encode())) is PredictionEvent
    assert type(decode(json.dumps({**base, "latency_ms": 2}).encode())) is PredictionEvent
    label = decode(b' {"event_id": "e1", "model_id": "credit", "event_time": 5, "label": "yes"}')
    assert label == LabelEvent("e1", "credit", 5, "yes")


@pytest.mark.parametrize(
    "record",
    [r for r in sample_records() if not isinstance(r, (PredictionBatch, FeatureBatch, LabelBatch))],
    ids=lambda r: type(r).__name__,
)
def test_encode_json_round_trips(record) -> None:
    raw = encode_json(record)
    assert json.loads(raw)["type"] == type(record).__name__
    assert_same(decode(raw), record)
    obj = json.loads(raw)
    del obj["type"]
    assert_same(decode(json.dumps(obj).encode()), record)  # inferred from the fields alone


def test_batches_have_no_json_form() -> None:
    with pytest.raises(TypeError, match="no JSON form"):
        encode_json(_prediction_event().as_batch())
    with pytest.raises(DecodeError) as err:
        decode(b'{"type": "PredictionBatch", "model_id": "m"}')
    assert err.value.reason == "json_schema"


@pytest.mark.parametrize(
    "raw, reason, words",
    [
        (b'{"event_id": "e1", "model_id"', "json_syntax", ""),
        (b"{\xff}", "json_syntax", ""),
        (b'{"model_id": "m"}', "json_schema", "cannot tell which record"),
        (b'{"type": "Nope", "model_id": "m"}', "json_schema", "unknown record 'Nope'"),
        (b'{"type": 3}', "json_schema", "must name a record"),
        (b'{"event_id": "e", "model_id": "m", "event_time": "yesterday", "label": 1}', "json_schema", "event_time"),
        (b'{"event_id": "e", "model_id": "m", "event_time": 1.5, "label": 1}', "json_schema", "event_time"),
        (b'{"event_id": "e", "model_id": "m", "event_time": 1, "label": [1]}', "json_schema", "label"),
        (b'{"event_id": "e", "model_id": "m", "event_time": 1, "label": 1, "colour": "red"}', "json_schema", "colour"),
        (
            b'{"event_id": "e", "model_id": "m", "model_version": "1", "event_time": 1, "numeric": {"x": "1"}}',
            "json_schema",
            "numeric",
        ),
        (
            b'{"event_id": "e", "model_id": "m", "model_version": "1", "event_time": 1, "numeric": {"x": Infinity}}',
            "invalid_value",
            "'x'",
        ),
        (b'{"event_id": "e", "model_id": "m", "event_time": 1}', "json_schema", "cannot tell"),
    ],
)
def test_bad_json_gives_typed_errors(raw, reason, words) -> None:
    with pytest.raises(DecodeError) as err:
        decode(raw)
    assert err.value.reason == reason
    assert words in err.value.message


# ------------------------------------------------------------ corrupt bytes


def _label_bytes() -> bytes:
    return encode(LabelEvent("e1", "credit", T0, "approve"))


def _batch_datum(**changes) -> dict:
    codec = Codec()
    _, datum = codec.decode_datum(
        codec.encode(PredictionBatch.from_events([_prediction_event(0), _prediction_event(1)]))
    )
    datum.update(changes)
    return datum


def _raw_batch(**changes) -> bytes:
    codec = Codec()
    return codec.encode_datum(_batch_datum(**changes), codec.schemas.current("PredictionBatch"))


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "empty"),
        (b"\x01\x02\x03", "unknown_encoding"),
        (b"hello", "unknown_encoding"),
        (b"\xc3\x02" + bytes(8), "unknown_encoding"),
        (b"\xc3", "unknown_encoding"),
        (b"\xc3\x01\x8f\x5c", "truncated"),
        (b"\xc3\x01" + bytes(8) + b"\x02e", "unknown_fingerprint"),
        (b"\x00\x00\x00\x00\x01\x02", "unknown_encoding"),  # Confluent framing without a registry
        (_label_bytes()[:-3], "avro_body"),
        (_label_bytes() + b"\x00", "avro_body"),
        (_label_bytes()[:10] + b"\x02\xff\xfe" + _label_bytes()[13:], "avro_body"),
        (_label_bytes()[:10] + b"\xff" * 12, "avro_body"),
        (_raw_batch(event_times=b"\x00" * 8), "column_length"),
        (_raw_batch(numeric={"age": b"\x00" * 24}), "column_length"),
        (_raw_batch(predictions=b""), "column_length"),
        (_raw_batch(latency_ms=b"\x00" * 8), "column_length"),
        (_raw_batch(predicted_labels=["a"]), "column_length"),
        (_raw_batch(categorical={"region": ["eu"]}), "column_length"),
        (_raw_batch(attributes={"channel": ["web", "app", "x"]}), "column_length"),
        (
            _raw_batch(
                event_ids=[],
                event_times=b"",
                predictions=b"",
                latency_ms=b"",
                numeric={},
                categorical={},
                predicted_labels=[],
                attributes={},
            ),
            "column_length",
        ),
        (_raw_batch(numeric={"age": struct.pack("<2d", 1.0, float("-inf"))}), "invalid_value"),
        (_raw_batch(predictions=struct.pack("<2d", 1.0, float("inf"))), "invalid_value"),
    ],
)
def test_corrupt_bytes_give_one_typed_error(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        Codec().decode(raw)
    assert err.value.reason == reason
    assert reason in DECODE_ERROR_REASONS


def test_infinite_single_event_values_are_invalid_both_ways() -> None:
    codec = Codec()
    version = codec.schemas.current("PredictionEvent")
    for change in (
        {"numeric": {"a": 1.0, "b": float("inf")}},
        {"prediction": float("-inf")},
        {"latency_ms": float("inf")},
    ):
        datum = {**_prediction_event().__dict__, **change}
        with pytest.raises(DecodeError) as err:
            codec.decode(codec.encode_datum(datum, version))
        assert err.value.reason == "invalid_value"
        with pytest.raises(ValueError, match="inf"):
            codec.encode(_prediction_event(**change))
    # a sum that overflows is not an infinite value
    assert codec.decode(codec.encode(_prediction_event(numeric={"a": 1e308, "b": 1e308}))).numeric["b"] == 1e308


def test_encoding_a_ragged_batch_is_refused() -> None:
    batch = PredictionBatch.from_events([_prediction_event(0), _prediction_event(1)])
    batch.numeric["age"] = np.array([1.0])
    with pytest.raises(ValueError, match="numeric 'age'"):
        encode(batch)
    with pytest.raises(TypeError, match="not a driftline record"):
        encode({"event_id": "e"})  # type: ignore[arg-type]


def test_topic_check_refuses_records_of_another_topic() -> None:
    data = _label_bytes()
    assert decode(data, topic="labels") == LabelEvent("e1", "credit", T0, "approve")
    with pytest.raises(DecodeError) as err:
        decode(data, topic="predictions")
    assert err.value.reason == "unexpected_record"
    assert decode(data, topic="dlq") is not None
    assert set(TOPIC_RECORDS) == {
        "predictions",
        "features",
        "labels",
        "drift",
        "alerts",
        "retrain-requests",
        "models",
        "dlq",
    }


# ------------------------------------------------------------ schema evolution


def _prediction_event_v2() -> dict:
    schema = json.loads((AVRO_DIR / "PredictionEvent.v1.avsc").read_text())
    schema["fields"].append({"name": "explanation", "type": ["null", "string"], "default": None})
    return schema


def test_v2_writer_is_read_by_v1_reader() -> None:
    codec = Codec()
    v2 = codec.schemas.add(_prediction_event_v2())
    assert v2.version == 2 and codec.schemas.current("PredictionEvent").version == 1
    event = _prediction_event()
    data = codec.encode_datum({**event.__dict__, "explanation": "age>40"}, v2)
    assert data[2:10] == v2.fingerprint != codec.schemas.current("PredictionEvent").fingerprint
    assert_same(codec.decode(data), event)
    with pytest.raises(DecodeError) as err:
        Codec().decode(data)  # a codec that does not know v2
    assert err.value.reason == "unknown_fingerprint"


def test_v1_writer_is_read_by_v2_reader() -> None:
    codec = Codec()
    v1_bytes = codec.encode(_prediction_event())
    v2 = codec.schemas.add(_prediction_event_v2(), make_current=True)
    version, datum = codec.decode_datum(v1_bytes)
    assert version is v2
    assert datum["explanation"] is None and datum["numeric"] == {"age": 41.0, "income": -1.5e6}
    assert datum["event_time"] == T0


def test_incompatible_writer_is_a_resolution_error() -> None:
    schema = json.loads((AVRO_DIR / "LabelEvent.v1.avsc").read_text())
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "label"]  # v1 readers need label, no default
    codec = Codec()
    v2 = codec.schemas.add(schema)
    data = codec.encode_datum({"event_id": "e", "model_id": "m", "event_time": 1}, v2)
    with pytest.raises(DecodeError) as err:
        codec.decode(data)
    assert err.value.reason == "schema_resolution"


def test_adding_the_same_schema_twice_returns_the_known_version() -> None:
    schemas = SchemaSet.load()
    known = schemas.current("LabelEvent")
    assert schemas.add(json.loads((AVRO_DIR / "LabelEvent.v1.avsc").read_text())) is known
    with pytest.raises(SchemaSetError):
        schemas.add({"type": "enum", "name": "E", "symbols": ["a"]})
    assert strip_logical_types(["null", {"type": "long", "logicalType": "timestamp-millis"}]) == [
        "null",
        {"type": "long"},
    ]


# ------------------------------------------------------------ Confluent wire format


class _Registry:
    """The one endpoint of a Confluent Schema Registry that the codec calls, served locally."""

    def __init__(self, schemas: dict[int, dict]) -> None:
        self.schemas = schemas
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                registry.requests.append(self.path)
                if self.headers.get("Authorization"):
                    registry.authorizations.append(self.headers["Authorization"])
                prefix = "/schemas/ids/"
                if self.path.startswith(prefix) and int(self.path[len(prefix) :]) in registry.schemas:
                    body = json.dumps({"schema": json.dumps(registry.schemas[int(self.path[len(prefix) :])])}).encode()
                    self.send_response(200)
                else:
                    body = b'{"error_code": 40403, "message": "Schema not found"}'
                    self.send_response(404)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry() -> Iterator[_Registry]:
    schemas = {
        7: json.loads((AVRO_DIR / "PredictionEvent.v1.avsc").read_text()),
        8: _prediction_event_v2(),
        9: {"type": "record", "name": "Other", "namespace": "acme", "fields": [{"name": "x", "type": "int"}]},
    }
    server = _Registry(schemas)
    yield server
    server.close()


def _confluent(schema_id: int, schema: dict, datum: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schemaless_writer(buf, parse_schema(strip_logical_types(schema)), datum)
    return buf.getvalue()


def test_confluent_framing_fetches_each_schema_id_once(registry: _Registry) -> None:
    codec = Codec(schema_registry=registry.url)
    event = _prediction_event()
    v1 = _confluent(7, registry.schemas[7], event.__dict__)
    v2 = _confluent(8, registry.schemas[8], {**event.__dict__, "explanation": "why"})
    for _ in range(3):
        assert_same(codec.decode(v1), event)
        assert_same(codec.decode(v2), event)  # the newer writer resolves to our reader
    assert registry.requests == ["/schemas/ids/7", "/schemas/ids/8"]


def test_confluent_unknown_ids_and_foreign_records(registry: _Registry) -> None:
    codec = Codec(schema_registry=registry.url)
    for raw, reason in [
        (b"\x00\x00\x00\x00\x63\x02", "unknown_schema_id"),
        (_confluent(9, registry.schemas[9], {"x": 1}), "unknown_schema_id"),
        (b"\x00\x00\x00", "truncated"),
    ]:
        with pytest.raises(DecodeError) as err:
            codec.decode(raw)
        assert err.value.reason == reason


def test_unreachable_registry_fails_fast_after_the_first_try(registry: _Registry) -> None:
    raw = _confluent(7, registry.schemas[7], _prediction_event().__dict__)
    registry.close()
    codec = Codec(schema_registry=registry.url)
    for _ in range(3):
        started = time.monotonic()
        with pytest.raises(DecodeError) as err:
            codec.decode(raw)
        assert err.value.reason == "schema_registry"
        assert time.monotonic() - started < 2.0
    assert codec.registry.fetches == 1


# ------------------------------------------------------------ speed


def _rate(fn, events_per_call: int, seconds: float = 0.3) -> float:
    calls, started = 0, time.process_time()
    while (elapsed := time.process_time() - started) < seconds:
        fn()
        calls += 1
    return calls * events_per_call / elapsed


def test_decode_throughput_floor() -> None:
    """Far below what this machine measures (about 80k and 1.1M events/s); catches per-value Python loops."""
    rng = np.random.default_rng(0)
    events = [
        PredictionEvent(
            str(uuid.uuid4()),
            "credit",
            "3",
            T0 + i,
            numeric={f"f{j}": float(v) for j, v in enumerate(rng.normal(size=20))},
            categorical={"c1": "abc"[i % 3], "c2": "xy"[i % 2]},
            prediction=0.5,
        )
        for i in range(1000)
    ]
    codec = Codec()
    singles = [codec.encode(e) for e in events[:100]]
    batch = codec.encode(PredictionBatch.from_events(events))
    single_rate = _rate(lambda: [codec.decode(d) for d in singles], 100)
    batch_rate = _rate(lambda: codec.decode(batch), 1000)
    assert single_rate > 15_000, single_rate
    assert batch_rate > 150_000, batch_rate
    assert batch_rate > 4 * single_rate


# ------------------------------------------------------------ poison messages (issue 11)


def _label_json(**fields) -> bytes:
    base = {"type": "LabelEvent", "event_id": "e1", "model_id": "m", "event_time": T0, "label": 1}
    return json.dumps({**base, **fields}).encode()


_NESTED = (
    b'{"type":"LabelEvent","event_id":' + b"[" * 2_000 + b"]" * 2_000 + b',"model_id":"m","event_time":1,"label":1}'
)
_NESTED_OBJECT = (
    b'{"type":"LabelEvent","model_id":"m","event_time":1,"label":1,"event_id":'
    + b'{"a":' * 5_000
    + b"1"
    + b"}" * 5_000
    + b"}"
)


@pytest.mark.parametrize(
    "raw, reason, words",
    [
        (_NESTED, "json_syntax", "nested too deeply"),  # was RecursionError
        (_NESTED_OBJECT, "json_syntax", "nested too deeply"),
        (
            b'{"type":"LabelEvent","event_id":"e","model_id":"m","event_time":1,"label":' + b"9" * 400 + b"}",
            "json_schema",
            "does not fit",
        ),  # was OverflowError
        (
            b'{"type":"PredictionEvent","event_id":"e","model_id":"m","model_version":"1","event_time":1,'
            b'"numeric":{"x":1' + b"0" * 320 + b"}}",
            "json_schema",
            "does not fit",
        ),
        (
            b'{"type":"LabelEvent","event_id":"\\ud800","model_id":"m","event_time":1,"label":1}',
            "json_syntax",
            "lone surrogate",
        ),  # was UnicodeEncodeError
        (
            b'{"type":"LabelEvent","event_id":"\xed\xa0\x80","model_id":"m","event_time":1,"label":1}',
            "json_syntax",
            "UTF-8",
        ),  # the raw bytes of a surrogate: was UnicodeEncodeError
        (
            b'{"type":"PredictionEvent","event_id":"e","model_id":"m","model_version":"1","event_time":1,'
            b'"categorical":{"\\udfff":"x"}}',
            "json_syntax",
            "lone surrogate",
        ),
        (b'{\x00"\x00}\x00', "json_syntax", ""),  # UTF-16 is not taken for UTF-8
    ],
)
def test_poison_json_is_a_decode_error(raw: bytes, reason: str, words: str) -> None:
    for decoder in (lambda: decode(raw), lambda: Codec().decode(raw, topic="labels")):
        with pytest.raises(DecodeError) as err:
            decoder()
        if decoder is not None and err.value.reason != "unexpected_record":
            assert err.value.reason == reason
            assert words in err.value.message
    from driftline.streams.codec import decode_bulk

    out = decode_bulk(Codec(), [raw, _label_json()], topic=None)
    assert [(i, type(r).__name__) for i, r in out.others] == [(0, "DecodeError"), (1, "LabelEvent")]
    assert out.others[0][1].reason == reason


def test_the_issue_example_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as err:
        decode(b'{"type":"LabelEvent","event_id":"\\ud800","model_id":"m","event_time":1,"label":1}')
    assert err.value.reason == "json_syntax"


def test_a_detail_is_short_valid_utf8_whatever_the_input() -> None:
    huge = "k" * 1_000_000
    for raw in (_label_json(**{huge: 1}), _label_json(**{"\ud800" + huge: 1}), _label_json(event_time="x" * 1_000_000)):
        with pytest.raises(DecodeError) as err:
            decode(raw)
        assert err.value.reason == "json_schema"
        assert len(err.value.message) <= MAX_DETAIL_CHARS
        str(err.value).encode("utf-8")  # a Kafka header and a log line can hold it
    with pytest.raises(DecodeError) as err:
        decode(_label_json(**{"\ud800": 1}))
    assert "\\ud800" in err.value.message


def test_a_tombstone_and_other_values_are_decode_errors() -> None:
    from driftline.streams.codec import decode_bulk

    with pytest.raises(DecodeError) as err:
        decode(None)
    assert err.value.reason == "empty"
    assert decode(bytearray(_label_bytes())) == decode(_label_bytes())
    out = decode_bulk(Codec(), [None, memoryview(_label_bytes())], topic="labels")
    assert [type(r).__name__ for _, r in out.others] == ["DecodeError", "LabelEvent"]
    assert out.others[0][1].reason == "empty"


def test_an_unexpected_exception_is_malformed_with_its_class() -> None:
    # A reader schema added at run time with a field the record class does not have: LabelEvent(**datum)
    # raises TypeError, which must cost the message, not the consumer.
    schemas = SchemaSet.load()
    v2 = json.loads((AVRO_DIR / "LabelEvent.v1.avsc").read_text())
    v2["fields"].append({"name": "source", "type": "string", "default": "x"})
    schemas.add(v2, make_current=True)
    codec = Codec(schemas)
    with pytest.raises(DecodeError) as err:
        codec.decode(encode(LabelEvent("e1", "m", T0, 1.0)))
    assert err.value.reason == "malformed"
    assert "TypeError" in err.value.message


def test_a_nan_prediction_of_a_single_event_is_invalid_and_encoded_as_null() -> None:
    codec = Codec()
    version = codec.schemas.current("PredictionEvent")
    nan_event = {**_prediction_event().__dict__, "prediction": float("nan")}
    for raw in (codec.encode_datum(nan_event, version), json.dumps({"type": "PredictionEvent", **nan_event}).encode()):
        with pytest.raises(DecodeError) as err:
            codec.decode(raw)
        assert err.value.reason == "invalid_value"
        assert "prediction" in err.value.message
    event = _prediction_event(prediction=float("nan"))
    assert codec.decode(codec.encode(event)).prediction is None
    assert json.loads(codec.encode_json(event))["prediction"] is None
    # in a batch column NaN is the contract's "none"
    batch = PredictionBatch.from_events([event, _prediction_event(1)])
    assert np.isnan(codec.decode(codec.encode(batch)).predictions[0])


def _event_json(**fields) -> bytes:
    base = {"type": "PredictionEvent", "event_id": "e1", "model_id": "m", "model_version": "1", "event_time": T0}
    return json.dumps({**base, **fields}).encode()


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"numeric": {"label": 1.0}}, "reserved_feature_name"),
        ({"numeric": {"prediction": 1.0}}, "reserved_feature_name"),
        ({"categorical": {"event_time": "x"}}, "reserved_feature_name"),
        ({"numeric": {"__prediction__": 1.0}}, "reserved_feature_name"),
        ({"numeric": {"age": 1.0}, "categorical": {"age": "old"}}, "feature_kind_conflict"),
        ({"numeric": {"a" * 257: 1.0}}, "value_too_long"),
        ({"attributes": {"k" * 257: "v"}}, "value_too_long"),
    ],
)
def test_feature_names_are_checked_per_message(fields: dict, reason: str) -> None:
    codec = Codec()
    event = json.loads(_event_json(**fields))
    event.pop("type")
    avro = codec.encode_datum(
        {**PredictionEvent("e1", "m", "1", T0).__dict__, **event}, codec.schemas.current("PredictionEvent")
    )
    batch = codec.encode(PredictionBatch.from_events([PredictionEvent(**event), _prediction_event(1)]))
    for raw in (_event_json(**fields), avro, batch):
        with pytest.raises(DecodeError) as err:
            codec.decode(raw)
        assert err.value.reason == reason
    assert codec.decode(_event_json(numeric={"a" * 256: 1.0}, attributes={"label": "fine as an attribute"}))


# ------------------------------------------------------------ the schema registry keeps its secrets


def test_registry_credentials_go_in_a_header_never_in_an_error(registry: _Registry) -> None:
    port = registry.url.rsplit(":", 1)[1]
    secret_url = f"http://bob:s3cr%40t@127.0.0.1:{port}"
    codec = Codec(schema_registry=secret_url)
    event = _prediction_event()
    assert_same(codec.decode(_confluent(7, registry.schemas[7], event.__dict__)), event)
    assert registry.authorizations == ["Basic Ym9iOnMzY3JAdA=="]  # bob:s3cr@t
    assert "s3cr" not in repr(codec.registry)
    errors = []
    for raw in (b"\x00\x00\x00\x00\x63\x02",):  # an unknown id: the error names the registry
        with pytest.raises(DecodeError) as err:
            codec.decode(raw)
        errors.append(err.value)
    registry.close()
    with pytest.raises(ValueError) as bad_url:
        Codec(schema_registry="http://bob:s3cret@[::1")
    assert "s3cret" not in str(bad_url.value) and bad_url.value.__cause__ is None
    for url in (
        secret_url,
        f"http://bob:s3cret@127.0.0.1:{port}/",
        "http://bob:s3cret@no-such-host.invalid/",
        f"http://bob:s3cret@127.0.0.1:{port}x/",
    ):
        with pytest.raises(DecodeError) as err:
            Codec(schema_registry=url).decode(_confluent(7, registry.schemas[7], event.__dict__))
        errors.append(err.value)
    assert [e.reason for e in errors] == ["unknown_schema_id"] + ["schema_registry"] * 4
    for e in errors:
        assert "s3cr" not in str(e) and "s3cr" not in str(e.__cause__), str(e)
        assert "bob" in str(e) or e.reason == "schema_registry"
