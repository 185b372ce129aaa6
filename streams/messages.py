"""What the worker's service is handed: consumed messages, and the offsets it gives back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class Offset(NamedTuple):
    """Where one message sits: the token the worker acknowledges once the message is done.

    It holds no bytes, so the acknowledgement ledger stays small however long
    a window stays open. (A named tuple: the consumer makes one per message,
    at half the cost of a frozen dataclass.)

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
