"""Writes that run on their own thread, in order, while the caller goes on with its work.

The streams worker hands its raw-row inserts to a :class:`BackgroundWriter`:
most of an insert is waiting for ClickHouse's answer, which the worker can
spend decoding and monitoring its next messages. The caller must
:meth:`~BackgroundWriter.wait` for the writes before it acknowledges the
messages they came from; ``wait`` raises a write's failure, so nothing whose
write failed is ever acknowledged. :meth:`~BackgroundWriter.check` raises a
failure without waiting, and :attr:`~BackgroundWriter.completed` tells, without
waiting, how many of the writes submitted so far are done, so that the caller
acknowledges messages as their writes finish.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class BackgroundWriter:
    """One thread that runs submitted writes in order, with at most ``max_pending`` waiting.

    ``submit`` blocks while ``max_pending`` writes wait, which bounds the memory
    the queued data may take. ``wait`` returns when every write submitted so far
    is done, and raises the first failure among them (once).

    >>> done = []
    >>> writer = BackgroundWriter("doc-writer", max_pending=2)
    >>> writer.submit(lambda: done.append("a"))
    >>> writer.submit(lambda: done.append("b"))
    >>> writer.wait()
    >>> done
    ['a', 'b']
    >>> writer.submit(lambda: 1 / 0)
    >>> writer.wait()
    Traceback (most recent call last):
    ...
    ZeroDivisionError: division by zero
    >>> writer.wait()  # the failure was reported once
    >>> writer.submit(lambda: [][0])
    >>> writer.join()  # (a write fails while the caller works on)
    >>> writer.check()
    Traceback (most recent call last):
    ...
    IndexError: list index out of range
    >>> writer.close()

    ``submitted`` numbers the writes; ``completed`` counts those done, in order, and stops
    at the first failure, so a write after a failed one never counts as done:

    >>> writer = BackgroundWriter("doc-counter")
    >>> writer.submit(lambda: None); writer.submit(lambda: 1 / 0); writer.submit(lambda: None)
    >>> writer.join()
    >>> writer.submitted, writer.completed
    (3, 1)
    >>> writer.close()
    """

    def __init__(self, name: str, max_pending: int = 2) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.name = name
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.submitted = 0
        self._completed = 0
        self._failed = False

    @property
    def completed(self) -> int:
        """How many writes are done, counted in submission order up to the first failure."""
        return self._completed

    @property
    def alive(self) -> bool:
        """Whether its thread runs (it starts with the first write)."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, write: Callable[[], object]) -> None:
        """Queue ``write`` behind the writes submitted before it."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put(write)
        self.submitted += 1

    def wait(self) -> None:
        """Block until every submitted write is done; raise the first failure since the last ``wait``."""
        self.join()
        self.check()

    def join(self) -> None:
        """Block until every submitted write is done, raising nothing (``check`` or ``wait`` still will)."""
        self._queue.join()

    def check(self) -> None:
        """Raise the first failure since the last ``wait`` or ``check``, without waiting for anything."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Finish the submitted writes and stop the thread (failures are not raised: call ``wait`` first)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if write is None:
                    return
                write()
                if not self._failed:
                    self._completed += 1
            except BaseException as exc:  # handed to the caller's wait(), which stops the worker
                self._failed = True
                if self._error is None:
                    self._error = exc
            finally:
                self._queue.task_done()


__all__ = ["BackgroundWriter"]
