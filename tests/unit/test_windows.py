"""Event-time window arithmetic, watermarks, the window store and the ack ledger."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driftline.streams.core.ledger import AckLedger, Hold
from driftline.streams.core.windows import EventClock, Windowing, WindowStore

DAY_MS = 86_400_000


def test_window_starts_are_epoch_aligned_floors() -> None:
    w = Windowing(size_ms=60_000)
    t = np.array([0, 1, 59_999, 60_000, 119_999, -1, -60_000, -60_001, 1_699_999_992_345])
    assert w.starts(t).tolist() == [0, 0, 0, 60_000, 60_000, -60_000, -60_000, -120_000, 1_699_999_980_000]
    assert w.start(1_699_999_992_345) == 1_699_999_980_000
    assert w.end(60_000) == 120_000


@given(
    st.lists(st.integers(min_value=-(10**13), max_value=10**13), min_size=1, max_size=200),
    st.integers(min_value=1, max_value=10**7),
)
@settings(max_examples=200, deadline=None)
def test_every_event_lies_in_its_window(times: list[int], size: int) -> None:
    w = Windowing(size_ms=size)
    t = np.array(times, dtype=np.int64)
    starts = w.starts(t)
    assert ((starts <= t) & (t < starts + size)).all()
    assert (starts % size == 0).all()


def test_split_groups_rows_by_window_in_time_then_arrival_order() -> None:
    w = Windowing(size_ms=10)
    groups = w.split(np.array([25, 3, 27, 9, 11, 21]))
    assert [(s, rows.tolist()) for s, rows in groups] == [(0, [1, 3]), (10, [4]), (20, [0, 2, 5])]
    assert w.split(np.array([], dtype=np.int64)) == []


def test_a_backfill_of_a_day_closes_a_day_of_windows() -> None:
    """Time comes from event_time: a day of events read in one go closes 1,440 one-minute windows."""
    w = Windowing(size_ms=60_000, lateness_ms=0)
    clock = EventClock(lateness_ms=w.lateness_ms)
    store: WindowStore[list[int]] = WindowStore(lambda key: [])
    start = 1_700_006_400_000 - 1_700_006_400_000 % DAY_MS
    times = start + np.arange(0, DAY_MS, 15_000)  # one event every 15 s
    closed = []
    for chunk in np.array_split(times, 37):  # batches do not line up with windows
        for s, rows in w.split(chunk):
            store.get(("m", "1", s)).append(len(rows))
        clock.observe("m", source=0, max_event_time=int(chunk.max()), now_ms=0)
        closed += store.close("m", clock.watermark("m", now_ms=0), w.size_ms)
    # the last window waits for a later event (or the idle timer)
    assert len(closed) == 1_439
    assert [sum(c) for _, c in closed] == [4] * 1_439
    assert closed[0][0] == ("m", "1", start)
    assert store.keys() == [("m", "1", start + DAY_MS - 60_000)]


def test_late_mask_counts_the_batch_in_arrival_order() -> None:
    w = Windowing(size_ms=10, lateness_ms=0)
    # 12 closes [0, 10) for the events after it, not for 5 before it
    assert w.late_mask(np.array([5, 12, 7, 15]), watermark=None).tolist() == [False, False, True, False]
    # with lateness 5, event time 12 only brings the watermark to 7: [0, 10) stays open
    assert Windowing(10, 5).late_mask(np.array([5, 12, 7, 15]), None).tolist() == [False, False, False, False]
    # the watermark from before the batch applies to every event
    assert w.late_mask(np.array([9, 10]), watermark=10).tolist() == [True, False]
    assert w.late_mask(np.array([], dtype=np.int64), watermark=5).tolist() == []


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=100),
    st.integers(min_value=1, max_value=500),
    st.integers(min_value=0, max_value=500),
)
@settings(max_examples=200, deadline=None)
def test_late_mask_matches_one_event_at_a_time(times: list[int], size: int, lateness: int) -> None:
    w = Windowing(size_ms=size, lateness_ms=lateness)
    expected = []
    running = None
    for t in times:
        wm = None if running is None else running - lateness
        expected.append(wm is not None and w.start(t) + size <= wm)
        running = t if running is None else max(running, t)
    assert w.late_mask(np.array(times), watermark=None).tolist() == expected


def test_watermark_is_the_slowest_source_minus_lateness_and_never_moves_back() -> None:
    clock = EventClock(lateness_ms=100)
    assert clock.watermark("m", now_ms=0) is None
    clock.observe("m", source=0, max_event_time=5_000, now_ms=0)
    clock.observe("m", source=1, max_event_time=3_000, now_ms=0)
    assert clock.watermark("m", now_ms=0) == 2_900
    clock.observe("m", source=1, max_event_time=9_000, now_ms=0)
    assert clock.watermark("m", now_ms=0) == 4_900
    clock.observe("m", source=0, max_event_time=4_000, now_ms=0)  # an older batch does not pull it back
    assert clock.watermark("m", now_ms=0) == 4_900
    clock.raise_floor("m", 8_000)  # e.g. windows already written before a restart
    assert clock.watermark("m", now_ms=0) == 8_000
    assert clock.watermark("other", now_ms=0) is None


def test_idle_sources_follow_the_wall_clock_after_idle_ms() -> None:
    clock = EventClock(lateness_ms=1_000, idle_ms=2_000)
    clock.observe("m", source=0, max_event_time=60_500, now_ms=100_000)
    assert clock.watermark("m", now_ms=101_999) == 59_500
    assert clock.watermark("m", now_ms=102_000) == 59_500
    assert clock.watermark("m", now_ms=103_000) == 60_500  # [0, 60 s) closes 1 s after going idle
    assert clock.watermark("m", now_ms=162_000) == 119_500
    # without idle_ms the clock only moves with events
    still = EventClock(lateness_ms=1_000)
    still.observe("m", source=0, max_event_time=60_500, now_ms=0)
    assert still.watermark("m", now_ms=10**9) == 59_500


def test_store_closes_oldest_first_and_remembers_what_it_closed() -> None:
    store: WindowStore[list[int]] = WindowStore(lambda key: [])
    for start in (20, 0, 10, 30):
        store.get(("m", "1", start)).append(start)
    store.get(("m", "2", 0)).append(-1)
    store.get(("n", "1", 0)).append(-2)
    closed = store.close("m", watermark=25, size_ms=10)
    assert [k for k, _ in closed] == [("m", "1", 0), ("m", "1", 10), ("m", "2", 0)]
    assert store.closed_through("m", "1") == 20
    assert store.closed_through("m", "2") == 10
    assert store.is_closed(("m", "1", 10), 10) and not store.is_closed(("m", "1", 20), 10)
    assert store.keys() == [("m", "1", 20), ("m", "1", 30), ("n", "1", 0)]
    assert store.close("m", watermark=None, size_ms=10) == []
    store.mark_closed("n", "1", 5)
    assert store.closed_through("n", "1") == 5
    store.mark_closed("n", "1", 3)  # never moves back
    assert store.closed_through("n", "1") == 5


def test_store_get_with_create() -> None:
    store: WindowStore[str] = WindowStore()
    with pytest.raises(KeyError):
        store.get(("m", "1", 0))
    assert store.get(("m", "1", 0), lambda key: f"made for {key[2]}") == "made for 0"
    assert store.get(("m", "1", 0), lambda key: "not again") == "made for 0"


def test_invalid_windowing_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        Windowing(size_ms=0)
    with pytest.raises(ValueError, match="negative"):
        Windowing(size_ms=10, lateness_ms=-1)


def test_ledger_releases_only_finished_prefixes_per_partition() -> None:
    ledger: AckLedger[str] = AckLedger(lambda partition, offset: f"p{partition[1]}-{offset}")
    a = Hold("predictions", "m", "1", 60_000)
    b = Hold("predictions", "m", "1", 120_000)
    ledger.add(("t", 0), 1, [a])
    ledger.add(("t", 0), 2, [])
    ledger.add(("t", 0), 3, [b])
    ledger.add(("t", 1), 7, [])
    done: set[Hold] = set()
    assert ledger.release(done.__contains__) == ["p1-7"]
    assert ledger.oldest_offsets() == {("t", 0): 1}
    done.add(a)
    assert ledger.release(done.__contains__) == ["p0-1", "p0-2"]
    assert len(ledger) == 1
    with pytest.raises(ValueError, match="increase"):
        ledger.add(("t", 0), 3, [])
    assert ledger.clear() == 1
    assert len(ledger) == 0 and ledger.release(lambda h: True) == []


def test_ledger_keeps_runs_of_messages_waiting_for_the_same_windows() -> None:
    ledger: AckLedger[int] = AckLedger(lambda partition, offset: offset)
    a = Hold("predictions", "m", "1", 60_000)
    b = Hold("predictions", "m", "1", 120_000)
    for offset in range(1000):
        ledger.add(("t", 0), offset, [a] if offset < 600 else [b])
    ledger.add(("t", 0), 1000, [a, b])  # a message with events in both windows
    ledger.add(("t", 0), 1001, [b])
    assert len(ledger) == 1002 and ledger.runs == 4
    # the run of window a releases as its last message: acknowledging 599 acknowledges 0..599
    assert ledger.release({a}.__contains__) == [599]
    assert len(ledger) == 402 and ledger.oldest_offsets() == {("t", 0): 600}
    with pytest.raises(ValueError, match="increase"):
        ledger.add(("t", 0), 1001, [b])
    assert ledger.release({a, b}.__contains__) == [999, 1000, 1001]
    assert len(ledger) == 0 and ledger.runs == 0


def test_ledger_waits_for_every_hold_of_a_message() -> None:
    ledger: AckLedger[tuple[object, int]] = AckLedger()
    holds = [Hold("predictions", "m", "1", 10), Hold("labels", "m", "1", 10)]
    ledger.add(0, 0, holds)
    assert ledger.release(lambda h: h.stream == "predictions") == []
    assert ledger.release(lambda h: True) == [(0, 0)]


def test_an_idle_source_stops_holding_the_others_back() -> None:
    clock = EventClock(lateness_ms=0, idle_ms=1_000)
    clock.observe("m", source=("features", 0), max_event_time=5_000, now_ms=0)
    clock.observe("m", source=("predictions", 0), max_event_time=9_000, now_ms=0)
    assert clock.watermark("m", now_ms=500) == 5_000  # both active: the slowest
    clock.observe("m", source=("predictions", 0), max_event_time=20_000, now_ms=1_500)
    # features silent for 1.5 s > idle_ms: excluded, predictions alone set the pace
    assert clock.watermark("m", now_ms=1_500) == 20_000
    # everything silent: the latest event time runs on with the wall clock
    assert clock.watermark("m", now_ms=4_500) == 22_000


def test_a_slow_batch_does_not_make_its_source_idle() -> None:
    clock = EventClock(lateness_ms=0, idle_ms=1_000)
    clock.observe("m", source=0, max_event_time=5_000, now_ms=0)  # a batch starts at 0...
    clock.touch("m", source=0, now_ms=3_000)  # ...and takes 3 s
    assert clock.watermark("m", now_ms=3_500) == 5_000  # not idle: it was being read until 3 s
    assert clock.watermark("m", now_ms=4_500) == 5_500  # idle since 3 s + 1 s
    clock.touch("m", source=1, now_ms=9_000)  # an unknown source is not created by a touch
    assert clock.watermark("m", now_ms=4_500) == 5_500


# ------------------------------------------------------------ the ends of int64 (issue 11)

I64 = np.iinfo(np.int64)


@pytest.mark.parametrize("size", [1, 7, 60_000, 3_600_000, 2**40 + 3])
def test_window_arithmetic_at_the_int64_extremes_never_wraps(size: int) -> None:
    w = Windowing(size_ms=size, lateness_ms=5_000)
    t = np.array([I64.min, I64.min + 1, -1, 0, 1_700_000_000_000, I64.max - 1, I64.max], dtype=np.int64)
    with np.errstate(over="raise"):
        starts = w.starts(t)
    ends = [w.end(int(s)) for s in starts]
    # every window is a whole aligned one inside int64, in time order: none wraps to the other end
    assert all(I64.min <= s and e <= I64.max for s, e in zip(starts.tolist(), ends))
    assert all(e - s == size and s % size == 0 for s, e in zip(starts.tolist(), ends))
    assert (np.diff(starts) >= 0).all()
    assert starts.tolist() == [w.start(int(x)) for x in t]
    # times inside int64's own partial windows join the nearest whole one, by hand:
    first, last = -(2**63 // size) * size, (I64.max - size) // size * size
    assert starts[0] == first and starts[-1] == last
    assert w.start(0) == 0 and w.start(-1) == -size
    # the late rule and the split work there too
    late = w.late_mask(t, watermark=I64.min)
    assert late.dtype == bool and len(late) == len(t)
    assert [s for s, _ in w.split(t)] == sorted(set(starts.tolist()))


def test_lateness_and_watermarks_saturate_at_the_int64_ends() -> None:
    w = Windowing(size_ms=60_000, lateness_ms=10**18)
    t = np.array([I64.min + 5, I64.min + 10, I64.max], dtype=np.int64)
    with np.errstate(over="raise"):
        assert w.late_mask(t, watermark=None).tolist() == [False, False, False]
    clock = EventClock(lateness_ms=10**18, idle_ms=1_000)
    clock.observe("m", 0, I64.min + 1, now_ms=0)
    assert clock.watermark("m", now_ms=0) == I64.min  # not below int64
    idle = EventClock(lateness_ms=0, idle_ms=1_000)
    idle.observe("m", 0, I64.max - 10, now_ms=0)
    assert idle.watermark("m", now_ms=10**15) == I64.max  # idle: runs on with the wall clock, up to int64 max
    store: WindowStore[list] = WindowStore(lambda key: [])
    top = w.start(I64.max)
    store.get(("m", "1", top)).append(1)
    assert [k for k, _ in store.close("m", watermark=I64.max, size_ms=w.size_ms)] == [("m", "1", top)]
    assert store.closed_through("m", "1") == top + w.size_ms <= I64.max
