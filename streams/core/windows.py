"""Event-time tumbling windows: arithmetic, watermarks and the open-window store.

Time is the events' own ``event_time`` (epoch milliseconds), never the arrival
time or the Kafka message timestamp, so that a backfill of a day of events
closes a day of windows. Windows are aligned to the epoch: ``[k * size, (k + 1) * size)``.

A window closes once the watermark of its model reaches its end. The watermark
of a model is the largest event time seen from each of its sources (Kafka
topic partitions), taken at the slowest source, minus the allowed lateness; it
never moves back. A source silent for more than ``idle_ms`` of wall-clock time
no longer holds the others back, and when all of a model's sources are
silent, its clock runs on with the wall clock from the latest event time seen,
so that the last window of a stream that stopped still closes. Wall-clock time is always passed in
(``now_ms``), which keeps all of this deterministic under test.

All arithmetic stays inside int64, whatever the event times (validation keeps them
near the present, but nothing here relies on it): a window is always a whole
aligned window whose start and end are int64, so the times of the partial
windows at either end of the int64 range join the nearest whole one, and
watermarks saturate at the int64 ends instead of wrapping.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

WindowKey = tuple[str, str, int]  # (model_id, model_version, window_start)

INT64_MIN = int(np.iinfo(np.int64).min)
INT64_MAX = int(np.iinfo(np.int64).max)


def clamp_int64(value: int) -> int:
    """A Python int saturated to the int64 range.

    >>> clamp_int64(2**70) == INT64_MAX, clamp_int64(-5)
    (True, -5)
    """
    return min(max(int(value), INT64_MIN), INT64_MAX)


S = TypeVar("S")


@dataclass(frozen=True)
class Windowing:
    """Tumbling event-time windows of ``size_ms`` with ``lateness_ms`` of allowed lateness.

    >>> w = Windowing(size_ms=60_000, lateness_ms=5_000)
    >>> w.starts(np.array([0, 59_999, 60_000, -1])).tolist()
    [0, 0, 60000, -60000]
    >>> w.end(60_000)
    120000
    >>> [(start, rows.tolist()) for start, rows in w.split(np.array([61_000, 1_000, 62_000, 2_000]))]
    [(0, [1, 3]), (60000, [0, 2])]
    >>> top = w.start(np.iinfo(np.int64).max)  # the last whole window, not one that ends past int64
    >>> top + w.size_ms <= np.iinfo(np.int64).max < top + 2 * w.size_ms
    True
    """

    size_ms: int = 60_000
    lateness_ms: int = 0

    def __post_init__(self) -> None:
        if self.size_ms <= 0:
            raise ValueError(f"window size must be positive, got {self.size_ms} ms")
        if self.lateness_ms < 0:
            raise ValueError(f"allowed lateness cannot be negative, got {self.lateness_ms} ms")

    @property
    def _window_numbers(self) -> tuple[int, int]:
        """The first and last k whose whole window [k * size, (k + 1) * size) lies inside int64."""
        return -(-INT64_MIN // self.size_ms), (INT64_MAX - self.size_ms) // self.size_ms

    def starts(self, event_times: NDArray[np.integer]) -> NDArray[np.int64]:
        """The start of the window of each event time (floor division, also before 1970).

        Floor division cannot overflow; the window number is clipped to the whole windows
        inside int64 (module docstring), so neither the start nor the end can wrap.
        """
        t = np.asarray(event_times, dtype=np.int64)
        first, last = self._window_numbers
        return np.clip(t // self.size_ms, first, last) * self.size_ms

    def start(self, event_time: int) -> int:
        first, last = self._window_numbers
        return min(max(int(event_time) // self.size_ms, first), last) * self.size_ms

    def end(self, start: int) -> int:
        return min(int(start) + self.size_ms, INT64_MAX)

    def split(self, event_times: NDArray[np.integer]) -> list[tuple[int, NDArray[np.intp]]]:
        """Row positions grouped by window, windows in time order, rows in arrival order."""
        starts = self.starts(event_times)
        if starts.size == 0:
            return []
        order = np.argsort(starts, kind="stable")
        uniq, first = np.unique(starts[order], return_index=True)
        groups = np.split(order, first[1:])
        return [(int(s), g) for s, g in zip(uniq.tolist(), groups)]

    def late_mask(self, event_times: NDArray[np.integer], watermark: int | None) -> NDArray[np.bool_]:
        """Which events, in arrival order, fall in a window already closed when they arrive.

        An event is late when its window's end is at or below the watermark in
        force at its arrival: the watermark before the batch, raised by every
        earlier event of the batch (the batch's own events count in order, so
        an in-order batch that spans two windows has no late events).

        >>> w = Windowing(size_ms=10, lateness_ms=2)
        >>> w.late_mask(np.array([5, 15, 25, 7, 21]), watermark=None).tolist()
        [False, False, False, True, False]
        """
        t = np.asarray(event_times, dtype=np.int64)
        if t.size == 0:
            return np.zeros(0, dtype=bool)
        return self.starts(t) + self.size_ms <= self.in_force(t, watermark)

    def in_force(self, event_times: NDArray[np.integer], watermark: int | None) -> NDArray[np.int64]:
        """The watermark in force at each event's arrival (see ``late_mask``); int64 min where there is none.

        >>> Windowing(size_ms=10, lateness_ms=2).in_force(np.array([5, 15, 7]), watermark=None).tolist()[1:]
        [3, 13]
        """
        t = np.asarray(event_times, dtype=np.int64)
        floor = INT64_MIN if watermark is None else clamp_int64(watermark)
        running = np.empty_like(t)
        if t.size == 0:
            return running
        running[0] = INT64_MIN
        if t.size > 1:
            running[1:] = np.maximum.accumulate(t[:-1])
        # saturating: subtracting lateness from near int64 min would wrap around
        lateness = min(self.lateness_ms, INT64_MAX)
        running = np.maximum(running, INT64_MIN + lateness) - lateness
        return np.maximum(running, floor)


@dataclass
class _Source:
    max_event_time: int
    last_seen_ms: int


@dataclass
class EventClock:
    """Watermarks per model from the event times of its sources.

    ``observe`` is called once per batch with the batch's largest event time;
    ``watermark`` is the point up to which the model's windows may close.

    >>> clock = EventClock(lateness_ms=1_000, idle_ms=5_000)
    >>> clock.observe("credit", source=0, max_event_time=10_000, now_ms=0)
    >>> clock.watermark("credit", now_ms=0)
    9000
    >>> clock.watermark("credit", now_ms=5_000)  # silent, but not yet idle
    9000
    >>> clock.watermark("credit", now_ms=8_000)  # idle for 3 s past idle_ms: runs on with the wall clock
    12000
    >>> clock.observe("credit", source=0, max_event_time=10_500, now_ms=8_000)
    >>> clock.watermark("credit", now_ms=8_000)  # never moves back
    12000
    """

    lateness_ms: int = 0
    idle_ms: int | None = None
    _sources: dict[str, dict[Hashable, _Source]] = field(default_factory=dict, repr=False)
    _floor: dict[str, int] = field(default_factory=dict, repr=False)
    _last: dict[str, int] = field(default_factory=dict, repr=False)

    def observe(self, model_id: str, source: Hashable, max_event_time: int, now_ms: int) -> None:
        sources = self._sources.setdefault(model_id, {})
        s = sources.get(source)
        if s is None:
            sources[source] = _Source(int(max_event_time), int(now_ms))
        else:
            s.max_event_time = max(s.max_event_time, int(max_event_time))
            s.last_seen_ms = int(now_ms)

    def touch(self, model_id: str, source: Hashable, now_ms: int) -> None:
        """The source was being read at ``now_ms`` (e.g. when its batch was done): it is not idle.

        Idleness is about a quiet stream, not a slow reader: a batch that takes
        longer than ``idle_ms`` to process must not make its source look idle.
        """
        s = self._sources.get(model_id, {}).get(source)
        if s is not None:
            s.last_seen_ms = max(s.last_seen_ms, int(now_ms))

    def hold(self, now_ms: int) -> None:
        """Nothing was read up to ``now_ms`` because the reader was held back (paused, or the broker
        unreachable): no source may look idle for that, so every source counts as seen at ``now_ms``.

        >>> clock = EventClock(lateness_ms=0, idle_ms=5_000)
        >>> clock.observe("credit", source=0, max_event_time=10_000, now_ms=0)
        >>> clock.hold(now_ms=60_000)  # a minute paused, e.g. while the warehouse was down
        >>> clock.watermark("credit", now_ms=62_000)  # silent for 2 s since, not 62
        10000
        """
        for sources in self._sources.values():
            for s in sources.values():
                s.last_seen_ms = max(s.last_seen_ms, int(now_ms))

    def raise_floor(self, model_id: str, watermark: int) -> None:
        """The watermark is at least this (e.g. the end of the last window already written)."""
        self._floor[model_id] = max(self._floor.get(model_id, watermark), int(watermark))

    def watermark(self, model_id: str, now_ms: int) -> int | None:
        candidates = []
        sources = self._sources.get(model_id)
        if sources:
            candidates.append(self._event_time(sources.values(), int(now_ms)) - self.lateness_ms)
        if model_id in self._floor:
            candidates.append(self._floor[model_id])
        if model_id in self._last:
            candidates.append(self._last[model_id])
        if not candidates:
            return None
        wm = clamp_int64(max(candidates))
        self._last[model_id] = wm
        return wm

    def _event_time(self, sources: Iterable[_Source], now_ms: int) -> int:
        # The slowest active source sets the pace; idle sources do not hold it back.
        # When every source is idle, the latest one runs on with the wall clock.
        if self.idle_ms is None:
            return min(s.max_event_time for s in sources)
        active: list[tuple[int, int]] = []  # (max event time, ms silent beyond idle_ms)
        idle: list[tuple[int, int]] = []
        for s in sources:
            silent = now_ms - s.last_seen_ms - self.idle_ms
            (idle if silent > 0 else active).append((s.max_event_time, silent))
        if active:
            return min(t for t, _ in active)
        return max(t + silent for t, silent in idle)

    def models(self) -> list[str]:
        return sorted(set(self._sources) | set(self._floor))

    def clear(self) -> None:
        self._sources.clear()
        self._floor.clear()
        self._last.clear()


class WindowStore(Generic[S]):
    """The open windows' states, and how far each model version has been closed.

    A state is created on first use by ``get``'s ``create(key)``, else by ``factory(key)``. ``close`` pops every
    window of a model whose end is at or below the watermark, oldest first,
    and remembers the largest end closed so that a window is never opened
    again: events for it are late.

    >>> store = WindowStore(lambda key: [])
    >>> store.get(("m", "1", 0)).append(1.0)
    >>> store.get(("m", "1", 60_000)).append(2.0)
    >>> [(key, state) for key, state in store.close("m", watermark=60_000, size_ms=60_000)]
    [(('m', '1', 0), [1.0])]
    >>> store.closed_through("m", "1")
    60000
    >>> store.is_closed(("m", "1", 0), size_ms=60_000)
    True
    """

    def __init__(self, factory: Callable[[WindowKey], S] | None = None) -> None:
        self._factory = factory
        self._open: dict[WindowKey, S] = {}
        self._closed_through: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: object) -> bool:
        return key in self._open

    def keys(self) -> list[WindowKey]:
        return sorted(self._open)

    def get(self, key: WindowKey, create: Callable[[WindowKey], S] | None = None) -> S:
        state = self._open.get(key)
        if state is None:
            make = create or self._factory
            if make is None:
                raise KeyError(f"window {key} is not open and no factory was given")
            state = self._open[key] = make(key)
        return state

    def peek(self, key: WindowKey) -> S | None:
        return self._open.get(key)

    def closed_through(self, model_id: str, model_version: str) -> int | None:
        return self._closed_through.get((model_id, model_version))

    def mark_closed(self, model_id: str, model_version: str, window_end: int) -> None:
        """Treat every window of this version ending at or before ``window_end`` as closed."""
        key = (model_id, model_version)
        self._closed_through[key] = max(self._closed_through.get(key, window_end), int(window_end))

    def is_closed(self, key: WindowKey, size_ms: int) -> bool:
        through = self._closed_through.get((key[0], key[1]))
        return through is not None and key[2] + size_ms <= through

    def close(self, model_id: str, watermark: int | None, size_ms: int) -> list[tuple[WindowKey, S]]:
        if watermark is None:
            return []
        due = sorted(k for k in self._open if k[0] == model_id and k[2] + size_ms <= watermark)
        closed = []
        for key in due:
            closed.append((key, self._open.pop(key)))
            self.mark_closed(key[0], key[1], clamp_int64(key[2] + size_ms))
        return closed

    def models(self) -> list[str]:
        return sorted({k[0] for k in self._open})

    def clear(self) -> None:
        self._open.clear()
        self._closed_through.clear()
