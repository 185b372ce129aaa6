"""LabelBatch: the codec's round trip and rejection reasons, decode_labels, the worker's check
(the SDK's packing is tested against a real broker in tests/integration/test_sdk_label_batches.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.streams.codec import DecodeError, default_codec
from driftline.streams.codec.label_parser import MIN_BULK_LABELS, decode_labels
from driftline.streams.core.validation import check_label, check_label_batch
from driftline.streams.records import LabelBatch, LabelEvent

CODEC = default_codec()
WRITER = CODEC.schemas.current("LabelBatch")
T0 = 1_700_000_000_000


def raw(**fields: object) -> bytes:
    """A LabelBatch message written field by field, however wrong its columns are."""
    datum = {
        "model_id": "m",
        "event_ids": ["a", "b", "c"],
        "event_times": np.array([T0, T0 + 1, T0 + 2], "<i8").tobytes(),
        "numeric_labels": np.array([1.0, 0.0, np.nan], "<f8").tobytes(),
        "string_labels": [None, None, "fraud"],
    }
    datum.update(fields)
    buf = io.BytesIO()
    buf.write(WRITER.header)
    schemaless_writer(buf, WRITER.parsed, datum)
    return buf.getvalue()


def reason(value: bytes) -> str:
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(value, topic="labels")
    return caught.value.reason


labels = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30), st.sampled_from([0.0, 1.0, "a", "b"])
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(max_size=20), st.integers(0, 2**62), labels), min_size=1, max_size=40))
def test_a_batch_round_trips_to_the_same_labels_as_single_events(rows: list[tuple[str, int, float | str]]) -> None:
    events = [LabelEvent(event_id, "m", time, label) for event_id, time, label in rows]
    batch = CODEC.decode(CODEC.encode(LabelBatch.from_events(events)), topic="labels")
    assert isinstance(batch, LabelBatch)
    singles = [CODEC.decode(CODEC.encode(e), topic="labels") for e in events]
    got = batch.events()
    assert got == singles
    assert [type(e.label) for e in got] == [type(e.label) for e in singles]
    # no strings: string_labels goes empty; all strings: numeric_labels all NaN
    assert bool(batch.string_labels) == any(isinstance(label, str) for _, _, label in rows)


def test_the_columns_are_as_the_contract_says() -> None:
    batch = CODEC.decode(raw(), topic="labels")
    assert isinstance(batch, LabelBatch)
    assert batch.labels() == [1.0, 0.0, "fraud"]
    assert batch.event_times.tolist() == [T0, T0 + 1, T0 + 2]
    numeric_only = CODEC.decode(raw(numeric_labels=np.array([1.0, 0.0, 1.0]).tobytes(), string_labels=[]))
    assert isinstance(numeric_only, LabelBatch) and numeric_only.labels() == [1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"event_ids": [], "event_times": b"", "numeric_labels": b"", "string_labels": []}, "column_length"),
        ({"event_times": np.array([T0, T0 + 1], "<i8").tobytes()}, "column_length"),
        ({"numeric_labels": np.array([1.0, 0.0, np.nan, 1.0]).tobytes()}, "column_length"),
        ({"numeric_labels": b"\x00" * 23}, "column_length"),
        ({"string_labels": [None, "x"]}, "column_length"),
        ({"numeric_labels": np.array([1.0, np.inf, np.nan]).tobytes()}, "invalid_value"),
        ({"numeric_labels": np.array([1.0, 0.0, 2.0]).tobytes()}, "invalid_value"),  # a number and a string
        ({"numeric_labels": np.array([np.nan, 0.0, np.nan]).tobytes()}, "invalid_value"),  # neither
        ({"string_labels": []}, "invalid_value"),  # row 2: NaN and no string
    ],
)
def test_a_bad_batch_gets_the_reason_of_a_bad_prediction_batch(fields: dict, expected: str) -> None:
    assert reason(raw(**fields)) == expected


def test_bad_batches_are_left_to_the_codec_by_decode_labels() -> None:
    good, bad = raw(), raw(string_labels=[None, "x"])
    single = CODEC.encode(LabelEvent("e", "m", T0, 1.0))
    got = decode_labels(CODEC, [good, bad, single, b"{}", None])
    assert isinstance(got[0], LabelBatch) and got[0].labels() == [1.0, 0.0, "fraud"]
    assert got[1:] == [None, None, None, None]  # the bad batch goes to codec.decode, which names its reason
    # among many single labels, a batch keeps its place
    values = [single] * MIN_BULK_LABELS + [good]
    got = decode_labels(CODEC, values)
    assert got[:MIN_BULK_LABELS] == [LabelEvent("e", "m", T0, 1.0)] * MIN_BULK_LABELS
    assert isinstance(got[-1], LabelBatch)


def test_encoding_refuses_what_decoding_would() -> None:
    with pytest.raises(ValueError, match="both"):
        CODEC.encode(LabelBatch("m", ["a"], np.array([T0]), np.array([1.0]), ["x"]))
    with pytest.raises(ValueError, match="no label"):
        CODEC.encode(LabelBatch("m", ["a"], np.array([T0]), np.array([np.nan])))
    with pytest.raises(ValueError, match="one model"):
        LabelBatch.from_events([LabelEvent("a", "m", T0, 1.0), LabelEvent("b", "n", T0, 1.0)])
    with pytest.raises(TypeError, match="no JSON form"):
        CODEC.encode_json(LabelBatch.from_events([LabelEvent("a", "m", T0, 1.0)]))
    assert reason(b'{"type": "LabelBatch", "model_id": "m"}') == "json_schema"


@pytest.mark.parametrize(
    "event",
    [
        LabelEvent("e1", "m", T0 - 10, 1.0),  # before the earliest allowed
        LabelEvent("e1", "m", T0 + 10**9, 1.0),  # in the future
        LabelEvent("e1" * 200, "m", T0, 1.0),
        LabelEvent("e1", "m", T0, "x" * 1_025),
    ],
)
def test_the_worker_check_of_a_batch_is_that_of_its_worst_label(event: LabelEvent) -> None:
    fine = [LabelEvent(f"ok{i}", "m", T0, "y" if i % 2 else 0.0) for i in range(5)]
    batch = LabelBatch.from_events([*fine, event])
    expected = check_label(event, T0, min_event_time_ms=T0 - 1)
    assert expected is not None
    got = check_label_batch(batch, T0, min_event_time_ms=T0 - 1)
    assert got is not None and got.reason == expected.reason
    assert check_label_batch(LabelBatch.from_events(fine), T0, min_event_time_ms=T0 - 1) is None
