"""The dedup token of a batch of raw messages names the data, whoever consumed it."""

from __future__ import annotations

import pytest

from driftline.streams.worker import Incoming, batch_token


def message(offset: int, value: bytes, *, full_topic: str = "prod.predictions", partition: int = 0) -> Incoming:
    return Incoming("predictions", partition, offset, b"credit", value, full_topic=full_topic)


def test_the_same_messages_make_the_same_token() -> None:
    # a redelivery after a crash, in another consumer generation: the retried insert must count once
    assert batch_token([message(7, b"x"), message(8, b"y")]) == batch_token([message(7, b"x"), message(8, b"y")])


def test_deployments_with_other_topic_prefixes_make_other_tokens() -> None:
    prod = batch_token([message(7, b"x"), message(8, b"y")])
    staging = batch_token([message(o, v, full_topic="staging.predictions") for o, v in ((7, b"x"), (8, b"y"))])
    assert prod != staging
    assert prod.startswith("prod.predictions:0:7-8:") and staging.startswith("staging.predictions:0:7-8:")


def test_a_recreated_topic_with_other_data_at_the_same_offsets_makes_another_token() -> None:
    before = batch_token([message(0, b"old"), message(1, b"data")])
    assert before != batch_token([message(0, b"new"), message(1, b"data")])
    assert batch_token([message(0, b"x")]) != batch_token([message(0, b"x", partition=1)])


def test_offset_ranges_per_partition() -> None:
    token = batch_token([message(9, b"a", partition=1), message(3, b"b"), message(5, b"c"), message(4, b"d")])
    assert token.startswith("prod.predictions:0:3-5;prod.predictions:1:9-9:")


def test_a_message_without_its_full_topic_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no full topic name"):
        batch_token([message(0, b"x", full_topic="")])
