"""A poll handed over as columns (``Messages``): what the service keeps of it, the messages it skips as
already seen, and the raw rows' token, the same as for the messages one by one."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.settings import Settings
from driftline.streams.messages import Incoming, Messages, Offset
from driftline.streams.references import StaticReferences
from driftline.streams.sinks import Sinks
from driftline.streams.worker import WorkerOptions, WorkerService, batch_token


def _service() -> WorkerService:
    sinks = Sinks(Settings(), warehouse=None, producer=None)  # nothing is written here
    return WorkerService(Settings(), WorkerOptions(), references=StaticReferences({}), sinks=sinks)


def _columns(partitions: list[int], offsets: list[int], topic: str = "t.predictions") -> Messages:
    n = len(offsets)
    return Messages(
        "predictions",
        topic,
        np.array(partitions, dtype=np.int64),
        np.array(offsets, dtype=np.int64),
        [b"k"] * n,
        [bytes([o % 256]) for o in offsets],
    )


def _one_by_one(seen: dict[tuple[str, int], int], ms: Messages) -> list[int]:
    """What the worker did message by message before: skip one at or below the last offset seen."""
    kept = []
    for i in range(len(ms)):
        topic, partition, offset = ms.position(i)
        last = seen.get((topic, partition))
        if last is not None and offset <= last:
            continue
        seen[(topic, partition)] = offset
        kept.append(i)
    return kept


@pytest.mark.parametrize("seed", range(10))
def test_fresh_skips_what_was_seen_as_message_by_message(seed: int) -> None:
    rng = np.random.default_rng(seed)
    service = _service()
    seen: dict[tuple[str, int], int] = {}
    for _ in range(5):  # polls, some delivered again in part
        n = int(rng.integers(1, 40))
        partitions = rng.integers(0, 3, n)
        offsets = rng.integers(0, 60, n)
        ms = _columns(partitions.tolist(), offsets.tolist())
        want = _one_by_one(seen, ms)
        got = service._fresh(ms)
        assert got.offsets.tolist() == offsets[want].tolist()
        assert got.partitions.tolist() == partitions[want].tolist()
        assert got.values == [ms.values[i] for i in want]
    service.outbox.close()


def test_a_message_taken_alone_carries_its_offset_and_bytes() -> None:
    ms = _columns([2, 2, 3], [10, 11, 4])
    m = ms[2]
    assert (m.topic, m.full_topic, m.partition, m.offset, m.key, m.value) == (
        "predictions",
        "t.predictions",
        3,
        4,
        b"k",
        bytes([4]),
    )
    assert m.token == Offset("t.predictions", 3, 4) and m.token.next == 5
    assert ms.slice(1, 3).offsets.tolist() == [11, 4] and ms.take(np.array([2, 0])).values == [b"\x04", b"\n"]


def test_the_token_of_columns_is_the_token_of_the_messages() -> None:
    ms = _columns([1, 0, 0, 0], [9, 3, 5, 4])
    ms.keys[1] = None  # a message without a key adds only its bytes
    one_by_one = [ms[i] for i in range(len(ms))]
    assert batch_token(ms) == batch_token(one_by_one)
    assert batch_token(ms).startswith("t.predictions:0:3-5;t.predictions:1:9-9:")
    assert batch_token(ms) != batch_token(_columns([1, 0, 0, 0], [9, 3, 5, 4]))
    with pytest.raises(ValueError, match="no full topic name"):
        batch_token(_columns([0], [1], topic=""))


def test_messages_of_several_topics_are_refused_as_one_poll() -> None:
    mixed = [Incoming("labels", 0, 1, None, b"", full_topic=t) for t in ("a.labels", "b.labels")]
    with pytest.raises(ValueError, match="one topic"):
        Messages.of("labels", mixed, "a.labels")
    assert Messages.of("labels", [], "a.labels").full_topic == "a.labels"
