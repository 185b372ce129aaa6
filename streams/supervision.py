"""What keeps the worker up: poison messages isolated, threads restarted, outages waited out.

Three small mechanisms, each plain Python without I/O of its own:

- :func:`isolate` runs a step over a run of messages and, when it raises, splits the run in
  halves until the message at fault is alone; that message is handed to ``on_poison`` and the
  others go through the step as if it had never been there. The step must be pure (it may
  raise, it must not change state), so that a failed attempt leaves nothing behind;
- :func:`error_detail` describes an exception for a DLQ header, a log line or ``/metrics``:
  its class and its message, redacted (``driftline.redaction``) and cut short;
- :class:`Supervisor` runs background threads and restarts one whose body raised, with
  backoff, and :class:`Outage` tracks how long a dependency (the warehouse) has been down.
  Both say what they know in :meth:`Supervisor.health` and in the worker's ``/metrics``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from driftline.redaction import redact

log = logging.getLogger("driftline.worker")

R = TypeVar("R")

INTERNAL_ERROR = "internal_error"  # the DLQ reason of a message whose handling raised
DETAIL_LIMIT = 1000  # characters of an error's message kept in a header, a log line or a row


def error_detail(exc: BaseException, limit: int = DETAIL_LIMIT) -> tuple[str, str]:
    """An exception's class name and its message, redacted and cut to ``limit`` characters.

    >>> error_detail(ValueError("cannot reach http://u:pw@h/x"))
    ('ValueError', 'cannot reach http://u:***@h/x')
    >>> error_detail(RecursionError("x" * 50), limit=10)
    ('RecursionError', 'xxxxxxxxxx… (50 characters)')
    """
    text = redact(str(exc))
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters)"
    return type(exc).__name__, text


def clip(data: bytes, limit: int) -> tuple[bytes, dict[str, str]]:
    """``data`` cut to ``limit`` bytes, and what a reader needs to know it was: its size and sha256.

    >>> clip(b"abc", 10)
    (b'abc', {})
    >>> value, about = clip(b"abcdef", 2)
    >>> value, about["size"], about["sha256"][:12]
    (b'ab', '6', 'bef57ec7f53a')
    """
    if len(data) <= limit:
        return data, {}
    return data[:limit], {"size": str(len(data)), "sha256": hashlib.sha256(data).hexdigest()}


def isolate(
    n: int,
    attempt: Callable[[int, int], R],
    on_poison: Callable[[int, Exception], R],
    merge: Callable[[list[R]], R],
    *,
    passes: tuple[type[BaseException], ...] = (),
) -> R:
    """``attempt(0, n)``; if it raises, the halves ``[lo, mid)`` and ``[mid, hi)`` are attempted
    in turn (and so on down), and a single message that still raises goes to ``on_poison``.

    Exceptions in ``passes`` are not the message's fault (an outage, a stop): they propagate.
    The results of the parts that worked are combined by ``merge``, in message order.

    >>> def attempt(lo, hi):
    ...     if lo <= 5 < hi:
    ...         raise ValueError("bad")
    ...     return list(range(lo, hi))
    >>> isolate(8, attempt, lambda i, exc: [f"poison {i}: {exc}"], lambda parts: sum(parts, []))
    [0, 1, 2, 3, 4, 'poison 5: bad', 6, 7]
    """

    def run(lo: int, hi: int) -> R:
        try:
            return attempt(lo, hi)
        except passes:
            raise
        except Exception as exc:
            if hi - lo == 1:
                return on_poison(lo, exc)
            mid = (lo + hi) // 2
            return merge([run(lo, mid), run(mid, hi)])

    return run(0, n)


# ---------------------------------------------------------------------------------- threads


@dataclass
class ThreadHealth:
    """One supervised thread as operators see it.

    >>> ThreadHealth("driftline-models").as_dict()
    {'state': 'running', 'restarts': 0, 'last_error': ''}
    """

    name: str
    state: str = "running"  # running, restarting, stopped, or a state the thread reports (e.g. waiting)
    restarts: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "restarts": self.restarts, "last_error": self.last_error}


class Supervisor:
    """Background threads that come back when their body raises: logged, counted, restarted with backoff.

    ``body(stop)`` is the thread's loop; it returns when ``stop`` is set. If it raises, the
    supervisor logs the error, counts a restart, waits (``backoff_s``, doubling up to
    ``max_backoff_s``, back to the start after ``healthy_s`` of running well) and runs it again.

    >>> sup = Supervisor(backoff_s=0.01)
    >>> calls = []
    >>> def body(stop):
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise RuntimeError("flaky")
    ...     stop.wait()
    >>> sup.start("doc-thread", body)
    >>> sup.wait_for("doc-thread", lambda h: h.restarts == 2 and h.state == "running", timeout=5)
    True
    >>> sup.health()["doc-thread"]["last_error"]
    'RuntimeError: flaky'
    >>> sup.stop()
    >>> sup.health()["doc-thread"]["state"]
    'stopped'
    """

    def __init__(
        self,
        *,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        healthy_s: float = 60.0,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.healthy_s = healthy_s
        self.on_restart = on_restart
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._health: dict[str, ThreadHealth] = {}
        self._probes: dict[str, Callable[[], str | None]] = {}

    def start(self, name: str, body: Callable[[threading.Event], None]) -> None:
        """Run ``body(stop)`` on a daemon thread named ``name``, restarted whenever it raises."""
        with self._lock:
            self._health[name] = ThreadHealth(name)
            thread = threading.Thread(target=self._run, args=(name, body), name=name, daemon=True)
            self._threads[name] = thread
        thread.start()

    def watch(self, name: str, probe: Callable[[], str | None]) -> None:
        """Show a thread that someone else runs: ``probe()`` returns its state (None: not running)."""
        with self._lock:
            self._health.setdefault(name, ThreadHealth(name))
            self._probes[name] = probe

    def set_state(self, name: str, state: str) -> None:
        """What a supervised thread is doing, when it is not simply running (e.g. ``waiting``)."""
        with self._lock:
            health = self._health.setdefault(name, ThreadHealth(name))
            health.state = state

    def failed(self, name: str, exc: BaseException) -> None:
        """Count a failure that the thread itself recovered from (it goes on without a restart)."""
        with self._lock:
            health = self._health.setdefault(name, ThreadHealth(name))
            health.restarts += 1
            health.last_error = ": ".join(error_detail(exc))
        if self.on_restart is not None:
            self.on_restart(name)

    def health(self) -> dict[str, dict[str, Any]]:
        """Every thread's state, restarts and last error (redacted), by name."""
        with self._lock:
            probes = dict(self._probes)
            out = {name: h.as_dict() for name, h in self._health.items()}
        for name, probe in probes.items():
            try:
                state = probe()
            except Exception as exc:  # a probe must never take the health page down
                state = f"unknown ({error_detail(exc)[0]})"
            out[name]["state"] = state or "stopped"
        return out

    def wait_for(self, name: str, check: Callable[[ThreadHealth], bool], timeout: float) -> bool:
        """Wait until ``check`` holds for the thread's health (for tests); returns whether it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                health = self._health.get(name)
                if health is not None and check(health):
                    return True
            time.sleep(0.01)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in list(self._threads.values()):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout)

    def _run(self, name: str, body: Callable[[threading.Event], None]) -> None:
        backoff = self.backoff_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                body(self._stop)
            except Exception as exc:
                kind, message = error_detail(exc)
                with self._lock:
                    health = self._health[name]
                    health.state, health.restarts, health.last_error = (
                        "restarting",
                        health.restarts + 1,
                        f"{kind}: {message}",
                    )
                log.error(
                    "thread %s failed (%s: %s); restarting it in %.1f s",
                    name,
                    kind,
                    message,
                    backoff,
                    exc_info=exc,
                    extra={"supervised_thread": name, "restarts": health.restarts},
                )
                if self.on_restart is not None:
                    self.on_restart(name)
                if time.monotonic() - started >= self.healthy_s:
                    backoff = self.backoff_s
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff_s)
                with self._lock:
                    health.state = "running"
                continue
            break
        with self._lock:
            self._health[name].state = "stopped"


# ---------------------------------------------------------------------------------- outages


class Outage:
    """Whether a dependency answers, and since when it has not: one warning when it goes down,
    a progress line every ``report_every_s``, one info line when it is back.

    >>> now = [0.0]
    >>> o = Outage("warehouse", clock=lambda: now[0])
    >>> o.up, o.down_seconds()
    (True, 0.0)
    >>> o.failed(RuntimeError("connection refused")); now[0] = 12.5
    >>> o.up, o.down_seconds(), o.failures
    (False, 12.5, 1)
    >>> o.recovered()
    >>> o.up, o.down_seconds(), o.outages
    (True, 0.0, 1)
    """

    def __init__(self, name: str, *, report_every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.report_every_s = report_every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._reported: float = 0.0
        self.failures = 0  # failed attempts during the current outage
        self.outages = 0  # outages ridden out so far
        self.last_error = ""

    @property
    def up(self) -> bool:
        return self._since is None

    def down_seconds(self) -> float:
        since = self._since
        return 0.0 if since is None else self._clock() - since

    def failed(self, exc: BaseException, what: str = "") -> None:
        """An attempt failed for want of the dependency; the caller retries."""
        now = self._clock()
        kind, message = error_detail(exc)
        with self._lock:
            self.last_error = f"{kind}: {message}"
            self.failures += 1
            if self._since is None:
                self._since, self._reported = now, now
                log.warning(
                    "%s unreachable (%s: %s); waiting for it, nothing is acknowledged meanwhile%s",
                    self.name,
                    kind,
                    message,
                    f" ({what})" if what else "",
                    extra={"dependency": self.name, "outage": "start"},
                )
            elif now - self._reported >= self.report_every_s:
                self._reported = now
                log.warning(
                    "%s still unreachable after %.0f s and %d attempts (%s: %s)",
                    self.name,
                    now - self._since,
                    self.failures,
                    kind,
                    message,
                    extra={"dependency": self.name, "outage": "ongoing", "seconds": now - self._since},
                )

    def recovered(self) -> None:
        """An attempt worked: if the dependency was down, the outage is over."""
        if self._since is None:
            return
        with self._lock:
            if self._since is None:
                return
            seconds, attempts = self._clock() - self._since, self.failures
            self._since, self.failures = None, 0
            self.outages += 1
        log.info(
            "%s reachable again after %.1f s (%d failed attempts)",
            self.name,
            seconds,
            attempts,
            extra={"dependency": self.name, "outage": "end", "seconds": seconds},
        )


__all__ = ["DETAIL_LIMIT", "INTERNAL_ERROR", "Outage", "Supervisor", "ThreadHealth", "clip", "error_detail", "isolate"]
