"""The writes a worker owes the warehouse, gathered, and the messages that wait for them.

A message may be acknowledged only once everything it fed is in the warehouse:
its raw rows and the windows it was counted in. The :class:`Outbox` gathers
those writes while a backlog is read, hands them to two writer threads (raw
rows on one, windows on the other), and gives each message's token back once
both writes that cover it have finished.
The service thread never waits for the warehouse in between, and a backlog
costs the warehouse an insert per hundred thousand raw rows instead of one per
poll.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from operator import countOf
from typing import Any

import numpy as np

from driftline.streams.background import BackgroundWriter
from driftline.streams.records import LabelEvent, PredictionBatch
from driftline.streams.sinks import ClosedLabelWindow, ClosedWindow, combined_token


class Outbox:
    """Raw rows and closed windows written on two threads; tokens released as the writes covering them land.

    While a backlog is read, raw rows gather into inserts of about ``raw_insert_rows``, or fewer
    once they hold about ``raw_insert_bytes`` (``batch_bytes``: wide rows or long strings). Closed
    windows go to their own thread, so that their rows do not queue behind a big raw insert: at once
    when it is idle, else they gather while it writes and go together when it is done (or at the next
    flush), and a write takes every window handed over before it starts. So a window waits for at
    most the write running when it closed and its own, however many versions closed with it; and the
    inserts of windows are no more than the writer can make. (Each insert costs the server a part and,
    later, merges: a backlog that closed windows at every poll cost it five small inserts a poll.)

    A token passed to :meth:`release` waits for both writes that cover its message: on each
    thread, the last one submitted, or the next one if anything is gathered for it now.

    >>> raw, windows = [], []
    >>> outbox = Outbox(lambda batches, token: raw.append((sum(b.n for b in batches), token)),
    ...                 windows.extend, raw_insert_rows=3)
    >>> batch = PredictionBatch("m", "1", ["a", "b"], [1, 2])
    >>> outbox.add_raw([batch], "t1")
    >>> outbox.release(["offset-1"])  # its raw rows are gathered, not written yet
    >>> outbox.written()
    []
    >>> outbox.add_raw([batch], "t2")  # 4 rows: at least raw_insert_rows, so written now
    >>> outbox.drain()
    ['offset-1']
    >>> len(raw), raw[0][0], windows
    (1, 4, [])
    >>> outbox.close()
    """

    def __init__(
        self,
        write_raw: Callable[[list[PredictionBatch], str], object],
        write_windows: Callable[[list[ClosedWindow | ClosedLabelWindow]], object],
        raw_insert_rows: int,
        write_labels: Callable[[list[LabelEvent], str], object] | None = None,
        raw_insert_bytes: int | None = None,
    ) -> None:
        self._write_raw = write_raw
        self._write_windows = write_windows
        self._write_labels = write_labels
        self.raw_insert_rows = raw_insert_rows
        # None: rows alone bound an insert. Three inserts' rows may be alive at once (gathering, one
        # waiting, one running), each with its Arrow table, so this bounds most of their memory.
        self.raw_insert_bytes = raw_insert_bytes
        # One raw insert waits while another runs, which bounds the memory of the rows they hold.
        self.raw_writer = BackgroundWriter("driftline-raw-writes", max_pending=1)
        self.window_writer = BackgroundWriter("driftline-window-writes", max_pending=2)
        self._batches: list[PredictionBatch] = []
        self._tokens: list[str] = []
        self._rows = 0
        # raw labels ride with the raw predictions: one insert per flush instead of one per poll
        self._labels: list[LabelEvent] = []
        self._label_tokens: list[str] = []
        self._bytes = 0
        self._windows: list[ClosedWindow | ClosedLabelWindow] = []
        # windows handed to the window thread and not yet taken by a write (a write takes them all)
        self._handed: list[ClosedWindow | ClosedLabelWindow] = []
        self._handed_lock = threading.Lock()
        self._since: float | None = None  # when the oldest thing gathered was added (monotonic)
        # (raw insert number, window write number, tokens), in release order
        self._waiting: deque[tuple[int, int, list[Any]]] = deque()

    def add_raw(self, batches: Sequence[PredictionBatch], token: str) -> None:
        """Raw rows to insert; written at once when ``raw_insert_rows`` (or ``raw_insert_bytes``) have gathered."""
        self._gathered()
        self._batches.extend(batches)
        self._tokens.append(token)
        size = sum(batch_bytes(b) for b in batches) if self.raw_insert_bytes is not None else 0
        self._count(sum(b.n for b in batches), size)

    def add_labels(self, labels: Sequence[LabelEvent], token: str) -> None:
        """Raw label rows to insert with the next raw predictions (each counts as a row towards
        ``raw_insert_rows``); needs ``write_labels``.

        >>> written = []
        >>> outbox = Outbox(lambda b, t: None, lambda w: None, raw_insert_rows=10,
        ...                 write_labels=lambda labels, token: written.append((len(labels), token)))
        >>> outbox.add_labels([LabelEvent("a", "m", 1, 1.0)], "t1")
        >>> outbox.add_labels([LabelEvent("b", "m", 2, 0.0)], "t2")
        >>> outbox.drain() == [] and written[0][0]
        2
        >>> outbox.close()
        """
        if self._write_labels is None:
            raise ValueError("this outbox writes no labels (no write_labels given)")
        if not labels:
            return
        self._gathered()
        self._labels.extend(labels)
        self._label_tokens.append(token)
        self._count(len(labels))

    def _count(self, rows: int, size: int = 0) -> None:
        """Count gathered raw rows (and their bytes) and flush once either bound of an insert is reached."""
        self._rows += rows
        self._bytes += size
        if self._rows >= self.raw_insert_rows or (
            self.raw_insert_bytes is not None and self._bytes >= self.raw_insert_bytes
        ):
            self.flush()

    def add_windows(self, windows: Sequence[ClosedWindow | ClosedLabelWindow]) -> None:
        """Closed windows to write: handed to the window thread at once if it is idle, else gathered until it is.

        >>> import threading
        >>> gate, writes = threading.Event(), []
        >>> def write(windows):
        ...     gate.wait(10)
        ...     writes.append(len(windows))
        >>> outbox = Outbox(lambda b, t: None, write, raw_insert_rows=10)
        >>> outbox.add_windows(["w1"])  # the writer is idle: written now
        >>> outbox.add_windows(["w2"]); outbox.add_windows(["w3", "w4"])  # it writes: they gather
        >>> gate.set(); outbox.window_writer.join(); outbox.release(["m"])  # idle again: the three go together
        >>> outbox.drain(), writes
        (['m'], [1, 3])
        >>> outbox.close()
        """
        if windows:
            self._gathered()
            self._windows.extend(windows)
            self._hand_windows_if_idle()

    def _hand_windows_if_idle(self) -> None:
        writer = self.window_writer
        if self._windows and writer.completed == writer.submitted:
            self._hand_windows()

    def _hand_windows(self) -> None:
        windows, self._windows = self._windows, []
        if not self._batches and not self._labels:
            self._since = None
        with self._handed_lock:
            self._handed.extend(windows)
        self.window_writer.submit(self._write_handed)

    def _write_handed(self) -> None:
        """On the window thread: every window handed over so far, in one write (those of the writes queued
        behind this one too; theirs then find nothing left)."""
        with self._handed_lock:
            windows, self._handed = self._handed, []
        if windows:
            self._write_windows(windows)

    def waited(self) -> float:
        """Seconds the oldest gathered row or window has waited (0 when nothing is gathered)."""
        return 0.0 if self._since is None else time.monotonic() - self._since

    def release(self, tokens: Sequence[Any]) -> None:
        """Tokens of messages done with their windows; :meth:`written` returns them once their writes land."""
        self._hand_windows_if_idle()
        if tokens:
            raw_due = self.raw_writer.submitted + (1 if self._batches or self._labels else 0)
            window_due = self.window_writer.submitted + (1 if self._windows else 0)
            self._waiting.append((raw_due, window_due, list(tokens)))

    def flush(self) -> None:
        """Hand the gathered windows and raw rows to their writers."""
        if self._windows:
            self._hand_windows()
        self._since = None
        self._flush_raw()

    def written(self) -> list[Any]:
        """Tokens whose writes have all landed; raises the failure of a write (nothing after it counts)."""
        self.raw_writer.check()
        self.window_writer.check()
        raw_done, windows_done, out = self.raw_writer.completed, self.window_writer.completed, []
        while self._waiting and self._waiting[0][0] <= raw_done and self._waiting[0][1] <= windows_done:
            out.extend(self._waiting.popleft()[2])
        return out

    def drain(self) -> list[Any]:
        """Flush, wait for every write, and return every token waiting."""
        self.flush()
        self.raw_writer.wait()
        self.window_writer.wait()
        return self.written()

    def clear(self) -> int:
        """Drop what is gathered and the tokens waiting (a rebalance: Kafka delivers them again); returns
        how many tokens were dropped. Writes already handed over still finish first."""
        self.raw_writer.join()
        self.window_writer.join()
        dropped = len(self)
        self._batches, self._tokens, self._rows, self._bytes, self._windows, self._since = [], [], 0, 0, [], None
        self._labels, self._label_tokens = [], []
        self._waiting.clear()
        return dropped

    def close(self) -> None:
        self.raw_writer.close()
        self.window_writer.close()

    def __len__(self) -> int:
        """Tokens waiting for their writes."""
        return sum(len(tokens) for _, _, tokens in self._waiting)

    def _gathered(self) -> None:
        if self._since is None:
            self._since = time.monotonic()

    def _flush_raw(self) -> None:
        if not self._batches and not self._labels:
            return
        batches, token = self._batches, combined_token(self._tokens) if self._tokens else ""
        labels, label_token = self._labels, combined_token(self._label_tokens) if self._label_tokens else ""
        self._batches, self._tokens, self._rows, self._bytes, self._labels, self._label_tokens = [], [], 0, 0, [], []
        write_labels = self._write_labels

        def write() -> None:
            if batches:
                self._write_raw(batches, token)
            if labels and write_labels is not None:
                write_labels(labels, label_token)

        self.raw_writer.submit(write)


# What a Python str of an event id or a category costs beyond its characters (CPython's compact ASCII
# header), and a list slot pointing at it.
_STR_OVERHEAD = 49
_SLOT = 8


def batch_bytes(batch: PredictionBatch) -> int:
    """About how many bytes a batch's rows hold: its arrays, and its strings (ids, categories, labels).

    Strings repeated across rows (categories) are counted each time, as the raw insert's columns
    hold them; so this errs high for a batch that shares its category strings. Columns the decoder
    also read as Arrow arrays (``batch.arrow``) are counted from those: their UTF-8 bytes stand for
    the characters (as many for ASCII, more otherwise).

    >>> batch = PredictionBatch("m", "1", ["a", "b"], [1, 2], numeric={"x": [0.5, 1.5]}, predictions=[0.1, 0.9])
    >>> batch_bytes(batch)  # times, x and predictions: 3 x 16 bytes; two ids of one character: 2 x 58
    164
    """
    arrays = [batch.event_times, batch.predictions, *batch.numeric.values()]
    if batch.latency_ms is not None:
        arrays.append(batch.latency_ms)
    size = sum(int(np.asarray(a).nbytes) for a in arrays)
    columns = [(("event_ids", ""), batch.event_ids), (("predicted_labels", ""), batch.predicted_labels)]
    for field in ("categorical", "attributes"):
        columns.extend(((field, name), strings) for name, strings in getattr(batch, field).items())
    for key, strings in columns:
        array = batch.arrow.get(key)
        if array is not None:  # the decoder's Arrow copy knows its counts: no pass over the strings
            texts = len(array) - array.null_count
            characters = 0
            if len(array):  # its UTF-8 bytes, from the offsets
                offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[
                    array.offset : array.offset + len(array) + 1
                ]
                characters = int(offsets[-1] - offsets[0])
        else:  # map/filter/countOf run in C
            texts = len(strings) - countOf(strings, None)
            characters = sum(map(len, filter(None, strings)))
        size += _SLOT * len(strings) + _STR_OVERHEAD * texts + characters
    return size


__all__ = ["Outbox", "batch_bytes"]
