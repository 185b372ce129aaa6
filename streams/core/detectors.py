"""Change detectors on the prediction-score and error streams.

The detectors are river's; this module only decides which ones run on which
stream, with which parameters, and turns their alarms into records. river
updates one value at a time, so each detector is fed in order, but nothing
else is done per value: validation and bookkeeping work on whole batches.

The driftline defaults (``DEFAULT_PARAMS``) differ from river's where river's
raise many false alarms on stationary data; docs/DETECTORS.md has the
measurements behind each choice.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import itertools
import operator
import pickle
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from river.__version__ import __version__ as _RIVER_VERSION  # river's __init__ re-exports it without __all__

from driftline.unpickling import Allowlist, restricted_loads


def _river_module(name: str) -> ModuleType:
    """river's module ``name`` (``river.drift.adwin``), without running ``river.drift``'s ``__init__`` if it can.

    That ``__init__`` imports every detector of the package, KSWIN's ``scipy.stats`` and the
    river datasets among them (about 80 MiB of a worker's RSS), and Python runs a package's
    ``__init__`` before any of its modules. A detector module itself needs only ``river.base``
    and river's compiled helpers, so it is loaded from its file under its own name (the
    ``importlib`` recipe for importing a source file directly): its classes, their pickles
    and a later ``import river.drift`` are the same as with the ordinary import. If the module
    is loaded already, or ``river.drift`` is, or the module needs its package after all (a
    relative import: another river), the ordinary import serves.

    >>> _river_module("river.drift.adwin").ADWIN.__module__
    'river.drift.adwin'
    """
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    package = name.rpartition(".")[0]
    if package not in sys.modules:
        import river

        directory = Path(river.__file__).parent.joinpath(*package.split(".")[1:])
        spec = importlib.machinery.PathFinder.find_spec(name, [str(directory)])
        if spec is not None and spec.loader is not None and package not in sys.modules:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
                return module
            except ImportError:
                del sys.modules[name]  # the ordinary import below, with the package's __init__
            except BaseException:
                del sys.modules[name]
                raise
    return importlib.import_module(name)


class _RiverDetectors(Mapping[str, Callable[..., Any]]):
    """Detector name -> river's class, each module imported at its first lookup (see ``_river_module``)."""

    def __init__(self, homes: Mapping[str, str]) -> None:
        self._homes = dict(homes)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        module, _, cls = self._homes[name].rpartition(".")
        detector: Callable[..., Any] = getattr(_river_module(module), cls)
        return detector

    def __iter__(self) -> Iterator[str]:
        return iter(self._homes)

    def __len__(self) -> int:
        return len(self._homes)


# The metric names of the ClickHouse rows (drift_metrics.metric) and of the policy, and river's classes.
DETECTORS: Mapping[str, Callable[..., Any]] = _RiverDetectors(
    {
        "adwin": "river.drift.adwin.ADWIN",
        "page_hinkley": "river.drift.page_hinkley.PageHinkley",
        "kswin": "river.drift.kswin.KSWIN",
        "ddm": "river.drift.binary.ddm.DDM",
        "eddm": "river.drift.binary.eddm.EDDM",
        "hddm_a": "river.drift.binary.hddm_a.HDDMA",
        "hddm_w": "river.drift.binary.hddm_w.HDDMW",
    }
)

# These model a stream of 0/1 outcomes (error or not); they have no meaning on scores.
BINARY_DETECTORS = frozenset({"ddm", "eddm", "hddm_a", "hddm_w"})

# Parameters that override river's defaults. Why each one: docs/DETECTORS.md.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "adwin": {},
    # alpha=1 turns off the fading sum, whose stationary spread (about 70 sigma at
    # river's alpha=0.9999) exceeds any usable threshold.
    "page_hinkley": {"alpha": 1.0, "delta": 0.1, "threshold": 50.0},
    # one KS test per value: keep the per-test level tiny, and seed it for replays.
    "kswin": {"alpha": 1e-6, "window_size": 500, "stat_size": 150, "seed": 7},
    # the first few hundred values make DDM's running minimum too optimistic.
    "ddm": {"warm_start": 1000, "drift_threshold": 3.5},
    "eddm": {"warm_start": 300, "alpha": 0.85, "beta": 0.75},
    "hddm_a": {},
    "hddm_w": {},
}

_STATE_FORMAT = 1
_STREAM_STATE_FORMAT = 1


@dataclass
class ChangeEvent:
    """One alarm of one detector on one stream.

    ``index`` is the position in the array given to that ``update`` call, so that
    the caller can look up the event time; ``value`` is the stream value there.

    >>> ChangeEvent("adwin", "v1:score", 4123, 0.87)
    ChangeEvent(detector='adwin', stream='v1:score', index=4123, value=0.87)
    """

    detector: str
    stream: str
    index: int
    value: float


@dataclass
class _Stream:
    binary: bool
    detectors: dict[str, Any]


class ChangeDetectorBank:
    """One set of river change detectors per stream key.

    The key is the caller's choice, typically ``f"{model_version}:score"`` or
    ``f"{model_version}:error"``; an event's ``stream`` is that key. Detectors
    for a key are created at its first update. Binary detectors (``ddm``,
    ``eddm``, ``hddm_a``, ``hddm_w``) run only on keys updated with
    ``binary=True``, whose values must then be 0 or 1. NaN means "no value"
    and is skipped; infinite values are an error.

    Parameters override ``DEFAULT_PARAMS`` per detector, by name.

    >>> import numpy as np
    >>> bank = ChangeDetectorBank(names=("adwin", "ddm"))
    >>> rng = np.random.default_rng(0)
    >>> errors = (rng.random(6000) < np.where(np.arange(6000) < 3000, 0.1, 0.4)).astype(float)
    >>> events = bank.update("v1:error", errors, binary=True)
    >>> sorted({e.detector for e in events})
    ['adwin', 'ddm']
    >>> 3000 <= min(e.index for e in events) < 3500
    True
    >>> bank.update("v1:score", rng.normal(size=1000))
    []
    >>> sorted(bank.detector_names("v1:score"))
    ['adwin']
    """

    def __init__(self, names: Iterable[str] = ("adwin",), **params: Mapping[str, Any]) -> None:
        self.names = tuple(names)
        if not self.names:
            raise ValueError("a ChangeDetectorBank needs at least one detector name")
        unknown = [n for n in self.names if n not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown change detector(s) {unknown}; known: {', '.join(DETECTORS)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate change detector names in {self.names}")
        unused = sorted(set(params) - set(self.names))
        if unused:
            raise ValueError(f"parameters given for detector(s) {unused} that are not in names={self.names}")
        self.params: dict[str, dict[str, Any]] = {
            n: {**DEFAULT_PARAMS[n], **dict(params.get(n, {}))} for n in self.names
        }
        for n in self.names:  # fail at configuration time, not on the first batch
            self._make(n)
        self._streams: dict[str, _Stream] = {}

    def _make(self, name: str) -> Any:
        try:
            return DETECTORS[name](**self.params[name])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid parameters for change detector {name!r}: {self.params[name]}: {exc}") from exc

    def keys(self) -> list[str]:
        return list(self._streams)

    def detector_names(self, key: str) -> list[str]:
        """The detectors that run on ``key`` (empty if the key was never updated)."""
        stream = self._streams.get(key)
        return [] if stream is None else list(stream.detectors)

    def forget(self, key: str) -> bool:
        """Drop the detectors of ``key``, e.g. of a retired model version."""
        return self._streams.pop(key, None) is not None

    def update(self, key: str, values: np.ndarray, *, binary: bool = False) -> list[ChangeEvent]:
        """Feed ``values`` in order to every detector of ``key``; return the alarms."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ValueError(f"values for stream {key!r} must be one-dimensional, got shape {x.shape}")
        present = ~np.isnan(x)
        if np.isinf(x[present]).any():
            raise ValueError(f"values for stream {key!r} contain infinite values")
        positions = None if present.all() else np.flatnonzero(present)
        x = x[present]
        if binary and not np.isin(x, (0.0, 1.0)).all():
            bad = x[~np.isin(x, (0.0, 1.0))][:3].tolist()
            raise ValueError(f"binary stream {key!r} must hold 0/1 values, got e.g. {bad}")
        stream = self._stream(key, binary)
        if x.size == 0:
            return []
        xs = x.tolist()
        events: list[ChangeEvent] = []
        for name, detector in stream.detectors.items():
            hits = _feed(detector, xs)
            for i in hits:
                index = i if positions is None else int(positions[i])
                events.append(ChangeEvent(name, key, index, xs[i]))
        events.sort(key=lambda e: e.index)
        return events

    def _stream(self, key: str, binary: bool) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            names = [n for n in self.names if binary or n not in BINARY_DETECTORS]
            stream = _Stream(binary, {n: self._make(n) for n in names})
            self._streams[key] = stream
        elif stream.binary != binary:
            raise ValueError(f"stream {key!r} was first updated with binary={stream.binary}, now with binary={binary}")
        return stream

    def stream_state(self, key: str) -> bytes | None:
        """The state of ``key``'s detectors as bytes, to resume them elsewhere (None: never updated).

        The worker stores it with each closed window (``detector_states``), so
        that a restarted worker resumes the detectors where that window left them.
        """
        stream = self._streams.get(key)
        if stream is None:
            return None
        return pickle.dumps(
            {
                "format": _STREAM_STATE_FORMAT,
                "river": _RIVER_VERSION,
                "binary": stream.binary,
                "params": {n: self.params[n] for n in stream.detectors},
                "detectors": stream.detectors,
            },
            protocol=pickle.HIGHEST_PROTOCOL,
        )

    def restore_stream(self, key: str, state: bytes) -> list[str]:
        """Resume ``key``'s detectors from ``stream_state`` bytes; return the names resumed.

        A detector that this bank no longer runs is dropped; one it runs with
        other parameters than the state's, or that the state lacks, starts
        afresh. Only river's classes are unpickled (see ``_loads``),
        yet the bytes must come from a trusted store. Raises ValueError on
        bytes it cannot read, leaving ``key`` as it was.

        >>> import numpy as np
        >>> x = np.r_[np.zeros(2_000), np.ones(2_000)]
        >>> whole = ChangeDetectorBank()
        >>> [e.index for e in whole.update("v1:score", x)]
        [2015]
        >>> first = ChangeDetectorBank()
        >>> first.update("v1:score", x[:1_000])
        []
        >>> resumed = ChangeDetectorBank()
        >>> resumed.restore_stream("v1:score", first.stream_state("v1:score"))
        ['adwin']
        >>> [e.index + 1_000 for e in resumed.update("v1:score", x[1_000:])]
        [2015]
        """
        try:
            saved = _loads(state)
            if not isinstance(saved, dict) or saved.get("format") != _STREAM_STATE_FORMAT:
                found = saved.get("format") if isinstance(saved, dict) else type(saved).__name__
                raise ValueError(f"unsupported change-detector stream state format {found!r}")
            binary = bool(saved["binary"])
            params, detectors = dict(saved["params"]), dict(saved["detectors"])
        except Exception as exc:
            raise ValueError(
                f"cannot restore the change detectors of stream {key!r} (running river {_RIVER_VERSION}): {exc}"
            ) from exc
        names = [n for n in self.names if binary or n not in BINARY_DETECTORS]
        resumed = [n for n in names if n in detectors and params.get(n) == self.params[n]]
        self._streams[key] = _Stream(binary, {n: detectors[n] if n in resumed else self._make(n) for n in names})
        return resumed

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain data (detectors pickled).

        Only load states this process or a trusted peer wrote: they hold pickles.
        """
        return {
            "format": _STATE_FORMAT,
            "river": _RIVER_VERSION,
            "names": list(self.names),
            "params": self.params,
            "streams": {
                key: {"binary": s.binary, "detectors": {n: pickle.dumps(d) for n, d in s.detectors.items()}}
                for key, s in self._streams.items()
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ChangeDetectorBank:
        """The bank that ``state_dict`` described."""
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(f"unsupported ChangeDetectorBank state format {state.get('format')!r}")
        bank = cls(names=state["names"], **state["params"])
        try:
            for key, s in state["streams"].items():
                bank._streams[key] = _Stream(bool(s["binary"]), {n: _loads(blob) for n, blob in s["detectors"].items()})
        except Exception as exc:
            raise ValueError(
                f"cannot restore change detectors written with river {state.get('river')} "
                f"(running {_RIVER_VERSION}): {exc}"
            ) from exc
        return bank


# What a detector's pickle may name besides river's own classes (river 0.26: KSWIN keeps a deque,
# numpy scalars and a random.Random; PageHinkley a bound method of itself).
_DETECTOR_STATE = Allowlist.parse(
    [
        "river",
        "collections:deque",
        "random:Random",
        "numpy:dtype",
        "numpy:ndarray",
        "numpy._core.multiarray:scalar",
        "numpy._core.multiarray:_reconstruct",
        "numpy.core.multiarray:scalar",
        "numpy.core.multiarray:_reconstruct",
    ],
    what="a change-detector state",
    bound_methods_of=["river"],
)


def _loads(data: bytes) -> Any:
    """``pickle.loads`` restricted to river detectors (see ``driftline.unpickling``).

    States are read back from the warehouse, so this narrows what a forged row could do;
    it does not make untrusted bytes safe.
    """
    return restricted_loads(data, _DETECTOR_STATE)


def _feed(detector: Any, xs: list[float]) -> list[int]:
    """Feed ``xs`` in order; return the positions after which the detector signalled a drift."""
    if type(detector) is DETECTORS["adwin"] and hasattr(detector, "_helper"):
        return _feed_adwin(detector, xs)
    # The one per-value loop: river detectors take one value at a time.
    update = detector.update
    hits = []
    for i, v in enumerate(xs):
        update(v)
        if detector.drift_detected:
            hits.append(i)
    return hits


def _feed_adwin(detector: Any, xs: list[float]) -> list[int]:
    """What ``_feed`` does, for river's ADWIN, without a Python step per value.

    ``ADWIN.update(x)`` resets the detector if the previous value signalled a
    drift, then hands ``x`` to its Rust helper, whose ``update`` returns
    whether ``x`` completes a drift. So between drifts the values can go
    straight to the helper's bound method, mapped in C, stopping at the first
    True; after a drift the detector is reset exactly where ``update`` would
    have, and it is left as ``update`` would leave it (``drift_detected`` of
    the last value, the reset of a drift on the last value still to come).
    """
    hits: list[int] = []
    n = len(xs)
    start = 0
    if n and detector.drift_detected:
        detector._reset()
    while start < n:
        try:
            # index, relative to start, of the first value whose update returns True
            found = operator.indexOf(map(detector._helper.update, itertools.islice(xs, start, None)), True)
        except ValueError:
            detector._drift_detected = False
            break
        start += found + 1
        hits.append(start - 1)
        if start < n:
            detector._reset()
        else:
            detector._drift_detected = True
    return hits
