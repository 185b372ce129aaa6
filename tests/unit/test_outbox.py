"""The outbox: a message is released only once the writes covering its raw rows and windows have landed."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from driftline.streams.outbox import Outbox, batch_bytes
from driftline.streams.records import PredictionBatch
from driftline.streams.sinks import ClosedWindow


def _batch(n: int) -> PredictionBatch:
    return PredictionBatch("m", "1", [f"e{i}" for i in range(n)], np.arange(n, dtype=np.int64))


class Gate:
    """A write that blocks until opened, and records what it wrote."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()  # a write has started
        self.calls: list[object] = []

    def raw(self, batches: list[PredictionBatch], token: str) -> None:
        assert self.open.wait(10)
        self.calls.append((sum(b.n for b in batches), token))

    def windows(self, windows: list[ClosedWindow]) -> None:
        self.entered.set()
        assert self.open.wait(10)
        self.calls.append(len(windows))


def test_a_token_waits_for_the_raw_insert_and_the_window_write_that_cover_it() -> None:
    raw, windows = Gate(), Gate()
    outbox = Outbox(raw.raw, windows.windows, raw_insert_rows=1000)
    outbox.add_raw([_batch(10)], "t1")
    outbox.add_windows([ClosedWindow(outcome=None)])
    outbox.release(["m1"])
    outbox.flush()
    windows.open.set()
    outbox.window_writer.join()
    assert outbox.written() == []  # the window is in, the raw rows are not
    raw.open.set()
    outbox.raw_writer.join()
    assert outbox.written() == ["m1"]
    assert raw.calls == [(10, "t1")] and windows.calls == [1]
    outbox.close()


def test_raw_rows_gather_while_a_backlog_is_read_and_tokens_keep_their_order() -> None:
    raw, windows = Gate(), Gate()
    raw.open.set(), windows.open.set()
    outbox = Outbox(raw.raw, windows.windows, raw_insert_rows=25)
    for i in range(5):
        outbox.add_raw([_batch(10)], f"t{i}")
        outbox.release([f"m{i}"])
        # a backlog: nothing is flushed but by the threshold
    outbox.raw_writer.join()
    assert raw.calls == [(30, raw.calls[0][1])]  # three messages' rows in one insert, the last two gathered
    assert outbox.written() == ["m0", "m1", "m2"]
    assert len(outbox) == 2
    assert outbox.drain() == ["m3", "m4"]
    assert [rows for rows, _ in raw.calls] == [30, 20]
    outbox.close()


def test_a_failed_write_is_raised_and_nothing_after_it_is_released() -> None:
    def fail(batches: list[PredictionBatch], token: str) -> None:
        if token.startswith("bad"):
            raise RuntimeError("the warehouse refused the insert")

    outbox = Outbox(fail, lambda windows: None, raw_insert_rows=1)
    outbox.add_raw([_batch(1)], "bad")
    outbox.release(["m1"])
    outbox.add_raw([_batch(1)], "good")
    outbox.release(["m2"])
    outbox.raw_writer.join()
    with pytest.raises(RuntimeError, match="refused"):
        outbox.written()
    assert outbox.written() == []  # the later insert landed, but it comes after the failed one
    outbox.close()


def test_clear_drops_gathered_rows_and_waiting_tokens() -> None:
    raw = Gate()
    raw.open.set()
    outbox = Outbox(raw.raw, lambda windows: None, raw_insert_rows=100)
    outbox.add_raw([_batch(5)], "t1")
    outbox.release(["m1", "m2"])
    assert outbox.clear() == 2
    assert outbox.drain() == [] and raw.calls == []
    outbox.close()


def test_closed_windows_go_at_once_to_an_idle_writer_and_gather_while_it_writes() -> None:
    raw, windows = Gate(), Gate()
    raw.open.set()
    outbox = Outbox(raw.raw, windows.windows, raw_insert_rows=15)
    outbox.add_windows([ClosedWindow(outcome=None)])  # the window writer is idle: handed over now
    outbox.add_raw([_batch(10)], "t1")
    outbox.release(["m1"])
    # a backlog: the raw rows gather; the windows closed while the first write runs gather too
    for _ in range(3):
        outbox.add_windows([ClosedWindow(outcome=None), ClosedWindow(outcome=None)])
    outbox.release(["m2"])
    assert outbox.window_writer.submitted == 1 and raw.calls == []
    windows.open.set()
    outbox.window_writer.join()
    assert windows.calls == [1] and outbox.written() == []  # m1's raw rows are still gathered
    outbox.add_raw([_batch(10)], "t2")  # the threshold flushes the raw rows; the six windows go together
    outbox.release(["m3"])
    outbox.raw_writer.join(), outbox.window_writer.join()
    assert windows.calls == [1, 6] and raw.calls == [(20, raw.calls[0][1])]
    assert outbox.written() == ["m1", "m2", "m3"]
    outbox.close()


def test_a_window_write_takes_every_window_handed_over_before_it_starts() -> None:
    windows = Gate()
    outbox = Outbox(lambda batches, token: None, windows.windows, raw_insert_rows=100)
    outbox.add_windows([ClosedWindow(outcome=None)])  # written first, held at the gate
    assert windows.entered.wait(10)
    for _ in range(2):  # flushes queue writes behind it, each handing its windows over
        outbox.add_windows([ClosedWindow(outcome=None)] * 3)
        outbox.flush()
    outbox.release(["m1"])
    windows.open.set()
    assert outbox.drain() == ["m1"]
    assert outbox.window_writer.submitted == 3
    assert windows.calls == [1, 6]  # the second write took the third's windows; the third found none
    outbox.close()


def test_raw_rows_are_written_once_their_bytes_reach_the_bound_before_the_row_count() -> None:
    # 10 rows of 8-byte times and 2-character ids: 10 x (8 + 8 + 49 + 2) bytes, worked by hand
    assert batch_bytes(_batch(10)) == 670
    raw = Gate()
    raw.open.set()
    outbox = Outbox(raw.raw, lambda windows: None, raw_insert_rows=1_000, raw_insert_bytes=1_000)
    outbox.add_raw([_batch(10)], "t1")
    outbox.raw_writer.join()
    assert raw.calls == []  # 670 bytes, 10 rows: both under their bounds
    outbox.add_raw([_batch(10)], "t2")  # 1,340 bytes: over the byte bound, far under the row bound
    outbox.raw_writer.join()
    assert [n for n, _ in raw.calls] == [20]  # type: ignore[misc]
    outbox.add_raw([_batch(10)], "t3")  # counted afresh after the flush
    outbox.raw_writer.join()
    assert [n for n, _ in raw.calls] == [20]  # type: ignore[misc]
    outbox.close()
