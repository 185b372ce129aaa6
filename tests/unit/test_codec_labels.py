"""decode_labels gives what Codec.decode gives, or leaves the message to it (None)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.streams.codec import DecodeError, default_codec, encode_json
from driftline.streams.codec.label_parser import MIN_BULK_LABELS, decode_labels
from driftline.streams.records import LabelEvent

CODEC = default_codec()
texts = st.text(max_size=40) | st.text(alphabet="ab\x00é€😀", max_size=300)
labels = st.builds(
    LabelEvent,
    texts,
    texts,
    st.integers(min_value=-(2**62), max_value=2**62 - 1),  # 9 varint bytes: the fast path's longest
    st.floats(allow_nan=True, allow_infinity=True) | texts,
)


def same(a: LabelEvent, b: LabelEvent) -> bool:
    if isinstance(a.label, float) and math.isnan(a.label):
        return (
            isinstance(b.label, float)
            and np.float64(a.label).tobytes() == np.float64(b.label).tobytes()
            and (a.event_id, a.model_id, a.event_time) == (b.event_id, b.model_id, b.event_time)
        )
    return a == b and type(a.label) is type(b.label) and type(a.event_time) is type(b.event_time)


def slow(value: object) -> LabelEvent | DecodeError:
    try:
        record = CODEC.decode(value, topic="labels")  # type: ignore[arg-type]
    except DecodeError as exc:
        return exc
    assert isinstance(record, LabelEvent)
    return record


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(labels, min_size=1, max_size=30), st.data())
def test_valid_labels_decode_fast_and_equal(events: list[LabelEvent], data: st.DataObject) -> None:
    values = [CODEC.encode(e) for e in events]
    fast = decode_labels(CODEC, values * (1 + MIN_BULK_LABELS // len(values)))
    for event, got in zip(events, fast):
        assert got is not None, event
        assert same(got, event) and same(got, slow(CODEC.encode(event)))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(labels, min_size=1, max_size=20), st.data())
def test_damaged_messages_are_left_to_the_codec(events: list[LabelEvent], data: st.DataObject) -> None:
    values: list[bytes | None] = []
    for e in events:
        raw = bytearray(CODEC.encode(e))
        how = data.draw(st.sampled_from(["cut", "extra", "flip", "tag", "none", "json", "keep"]))
        if how == "cut":
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        elif how == "extra":
            raw += b"\x00"
        elif how == "flip":
            at = data.draw(st.integers(10, len(raw) - 1))
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "tag":
            raw[raw.rfind(b"\x00") if isinstance(e.label, float) else 10] ^= 0x04
        values.append(
            None
            if how == "none"
            else encode_json(e)
            if how == "json" and not isinstance(e.label, float)
            else bytes(raw)
        )
    for value, got in zip(values, decode_labels(CODEC, values * (1 + MIN_BULK_LABELS // len(values)))):
        expected = slow(value)
        if got is not None:
            assert isinstance(expected, LabelEvent) and same(got, expected), (value, got, expected)


def test_many_labels_in_one_call_keep_their_order() -> None:
    events = [
        LabelEvent(f"e{i}", f"m{i % 3}", 1_700_000_000_000 + i, float(i % 2) if i % 5 else "x") for i in range(500)
    ]
    values = [CODEC.encode(e) for e in events]
    values[7] = values[7][:-1]  # truncated: left to the codec
    got = decode_labels(CODEC, values)
    assert got[7] is None and isinstance(slow(values[7]), DecodeError)
    assert [g for i, g in enumerate(got) if i != 7] == [e for i, e in enumerate(events) if i != 7]
    assert decode_labels(CODEC, values[: MIN_BULK_LABELS - 1]) == [None] * (MIN_BULK_LABELS - 1)
