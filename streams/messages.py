"""What the worker's service is handed: consumed messages, and the offsets it gives back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


class Offset(NamedTuple):
    """Where one message sits: the token the worker acknowledges once the message is done.

    It holds no bytes, so the acknowledgement ledger stays small however long
    a window stays open. (A named tuple: cheaper than a frozen dataclass, and
    made only when the ledger releases a run of messages.)

    >>> Offset("prod.predictions", 3, 41).next
    42
    """

    topic: str  # the full name on the broker
    partition: int
    offset: int

    @property
    def next(self) -> int:
        return self.offset + 1


@dataclass(slots=True)
class Incoming:
    """One consumed message, as the service sees it; ``token`` is what the caller acknowledges.

    >>> Incoming("predictions", 0, 42, b"credit", b"{}").offset
    42
    """

    topic: str  # the contract name: predictions, features, labels
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    token: Any = None
    full_topic: str = ""  # the name on the broker, prefix included; empty: this deployment's


@dataclass(slots=True)
class Messages:
    """A poll's messages of one topic, as columns: what the service is handed.

    The fetch thread reads each message's partition, offset, key and value
    once into these columns; no object is made per message. An
    :class:`Incoming` is made only where a path needs one message whole (a
    dead letter, a log line), and an :class:`Offset` only when a message may
    be acknowledged, so nothing holds a message's bytes once its poll is done.

    >>> ms = Messages.of("predictions", [Incoming("predictions", 1, o, b"k", b"v") for o in (5, 6, 7)],
    ...                  full_topic="prod.predictions")
    >>> len(ms), ms.offsets.tolist(), ms.partitions.tolist()
    (3, [5, 6, 7], [1, 1, 1])
    >>> ms[2].token, ms[2].value
    (Offset(topic='prod.predictions', partition=1, offset=7), b'v')
    >>> ms.slice(1, 3).offsets.tolist(), ms.position(0)
    ([6, 7], ('prod.predictions', 1, 5))
    """

    topic: str  # the contract name: predictions, features, labels
    full_topic: str  # the name on the broker, prefix included
    partitions: np.ndarray  # int64, per message
    offsets: np.ndarray  # int64, per message
    keys: list[bytes | None]
    values: list[bytes]

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: int) -> Incoming:
        """Message ``i`` alone, with its :class:`Offset` as token."""
        partition, offset = int(self.partitions[i]), int(self.offsets[i])
        token = Offset(self.full_topic, partition, offset)
        return Incoming(self.topic, partition, offset, self.keys[i], self.values[i], token, self.full_topic)

    def position(self, i: int) -> tuple[str, int, int]:
        """Where message ``i`` sits: ``(full topic, partition, offset)``."""
        return (self.full_topic, int(self.partitions[i]), int(self.offsets[i]))

    def slice(self, lo: int, hi: int) -> Messages:
        """Messages ``[lo, hi)`` (the columns are views or shallow copies)."""
        return Messages(
            self.topic,
            self.full_topic,
            self.partitions[lo:hi],
            self.offsets[lo:hi],
            self.keys[lo:hi],
            self.values[lo:hi],
        )

    def take(self, indices: np.ndarray) -> Messages:
        """The messages at ``indices``, in that order.

        >>> ms = Messages.of("labels", [Incoming("labels", 0, o, None, b"") for o in (1, 2, 3)], full_topic="labels")
        >>> ms.take(np.array([0, 2])).offsets.tolist()
        [1, 3]
        """
        picked = indices.tolist()
        return Messages(
            self.topic,
            self.full_topic,
            self.partitions[indices],
            self.offsets[indices],
            [self.keys[i] for i in picked],
            [self.values[i] for i in picked],
        )

    @classmethod
    def of(cls, topic: str, messages: Sequence[Incoming], full_topic: str) -> Messages:
        """Messages given one by one (tests, benchmarks, tools), as columns; ``full_topic`` stands for
        a message without one. They must all be of one topic on the broker.

        >>> Messages.of("labels", [Incoming("labels", 0, 1, None, b"", full_topic="a.labels"),
        ...                        Incoming("labels", 0, 2, None, b"", full_topic="b.labels")], "a.labels")
        Traceback (most recent call last):
        ...
        ValueError: messages of one topic expected, got ['a.labels', 'b.labels']
        """
        names = sorted({m.full_topic or full_topic for m in messages})
        if len(names) > 1:
            raise ValueError(f"messages of one topic expected, got {names}")
        n = len(messages)
        return cls(
            topic,
            names[0] if names else full_topic,
            np.fromiter((m.partition for m in messages), dtype=np.int64, count=n),
            np.fromiter((m.offset for m in messages), dtype=np.int64, count=n),
            [m.key for m in messages],
            [m.value for m in messages],
        )
