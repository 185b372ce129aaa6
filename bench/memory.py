"""Where a worker's memory goes, per model version and per feature: ``tracemalloc`` in process.

The script builds the worker's ``Monitor`` (its settings from the default
policy and ``WorkerOptions``, 10-s windows, lateness 0) for ``--models N``
model versions with ``--features F`` each, loads every reference profile
from its registered JSON form as the worker does, and feeds each model two
windows of ``--events-per-window`` predictions in batches of 1,000; the
second window's events close the first, so the monitor ends as a worker
does in the steady state: one open window per model version, the change
detectors and slow-drift detector fed once, the references' cached
calibrations made, and the label index holding both windows' predictions.

Live memory is traced by ``tracemalloc`` (everything this script builds
before tracing starts, such as its pool of rows, is not counted) and split
by component:

- **reference**: blocks allocated under ``ReferenceProfile``,
  ``NumericReference`` or ``CategoricalReference`` code (loading the
  profile, and the derived data cached on it: binned CDF grids, calibrated
  thresholds);
- **samples**: always 0 since Session 7 (windows and references keep no
  sample; the column stays for comparison with older runs);
- **detector states**: blocks allocated under ``streams/core/detectors.py``
  or ``streams/core/sequential.py``;
- **label index**: the difference between this run and the same run with
  ``index_max_entries=1`` (it also owns event-id strings the input batches
  allocated, so no allocation site names all of it);
- **open windows (rest)**: everything else the monitor keeps: the window
  profiles' histograms, moments and category counts, the scores and event
  times kept for the change detectors until the window closes, latency,
  estimation state, and the monitor's bookkeeping.

Each component is printed per model version, and per feature from two
feature counts (``--features 10,30``: the slope between them). Lines start
with ``RESULT``; run ``python bench/memory.py`` (a minute or two), or
``--quick``.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import scale  # noqa: E402
import window_compute  # noqa: E402

from driftline.retrainer.policy import load_policy  # noqa: E402
from driftline.streams.core import detectors, reference, sequential  # noqa: E402
from driftline.streams.core.monitor import Monitor  # noqa: E402
from driftline.streams.core.reference import ReferenceProfile  # noqa: E402
from driftline.streams.records import PredictionBatch  # noqa: E402
from driftline.streams.worker import WorkerOptions, monitor_settings  # noqa: E402

WINDOW_MS = 10_000
BATCH = 1_000
TRACE_FRAMES = 30  # deep enough to reach the component's frame from any allocation under it
COMPONENTS = ("reference", "samples", "detector states", "label index", "open windows (rest)")


# ----------------------------------------------------------------------------- attribution


@dataclass(frozen=True)
class Site:
    """Source lines that make an allocation part of one component when any frame of its traceback is among them."""

    component: str
    filename: str
    first: int
    last: int

    def holds(self, filename: str, lineno: int) -> bool:
        return filename == self.filename and self.first <= lineno <= self.last


def _site(component: str, obj: type | ModuleType) -> Site:
    lines, first = inspect.getsourcelines(obj)
    return Site(component, inspect.getsourcefile(obj) or "", max(first, 1), max(first, 1) + len(lines) - 1)


def sites() -> list[Site]:
    """The allocation sites of each component, in the order they are tried (the first that holds wins).

    >>> [s.component for s in sites()][:3]
    ['detector states', 'detector states', 'reference']
    """
    return [
        _site("detector states", detectors),
        _site("detector states", sequential),
        _site("reference", reference.ReferenceProfile),
        _site("reference", reference.NumericReference),
        _site("reference", reference.CategoricalReference),
    ]


def classify(snapshot: tracemalloc.Snapshot, rules: Sequence[Site]) -> dict[str, int]:
    """Live bytes of a snapshot by component (``other`` when no rule holds for any frame)."""
    out: dict[str, int] = {}
    for trace in snapshot.traces:
        component = "other"
        frames = [(f.filename, f.lineno) for f in trace.traceback]
        for rule in rules:
            if any(rule.holds(name, line) for name, line in frames):
                component = rule.component
                break
        out[component] = out.get(component, 0) + trace.size
    return out


# ----------------------------------------------------------------------------- the workload


def load_references(base: dict[str, Any], n: int) -> list[ReferenceProfile]:
    """Every model version's profile read from its JSON form, as the worker reads it from the registry."""
    return [ReferenceProfile.from_dict({**base, "model_id": f"m{i:04d}", "model_version": "1"}) for i in range(n)]


def feed(monitor: Monitor, refs: Sequence[ReferenceProfile], pool: window_compute.Columns, window: int, n: int) -> None:
    """``n`` predictions per model version in window ``window``, in batches of at most 1,000, then close what is due."""
    for ref in refs:
        model_id = ref.model_id
        if window == 0:
            monitor.recover(model_id, "1", None)
        for lo in range(0, n, BATCH):
            count = min(BATCH, n - lo)
            rows = pool.rows(lo % (pool.n - BATCH), lo % (pool.n - BATCH) + count)
            seq = window * n + lo
            batch = PredictionBatch(
                model_id,
                "1",
                [f"{model_id}-{i}" for i in range(seq, seq + count)],
                window * WINDOW_MS + (np.arange(lo, lo + count) * (WINDOW_MS / n)).astype(np.int64),
                numeric=rows.numeric,
                categorical=rows.categorical,
                predictions=rows.predictions,
                latency_ms=np.full(count, 5.0),
            )
            monitor.ingest(batch, ref, source=0, now_ms=0)
    for _ in monitor.close_due(now_ms=0):
        pass


@dataclass
class Measured:
    models: int
    features: int
    events_per_window: int
    bytes: dict[str, int]  # per component, all models together
    index_entries: int

    def per_model(self, component: str) -> float:
        return self.bytes.get(component, 0) / self.models

    @property
    def total(self) -> int:
        return sum(self.bytes.values())


def traced(models: int, features: int, events: int, index_max_entries: int) -> tuple[dict[str, int], int]:
    """Live bytes by component (allocation site) once the monitor has seen two windows per model, and index entries."""
    base = window_compute.build_reference(scale.feature_columns(scale.REFERENCE_ROWS, features, seed=0)).to_dict()
    pool = scale.feature_columns(max(events, 2 * BATCH) + BATCH, features, seed=1)
    options = WorkerOptions(window_seconds=WINDOW_MS / 1000, lateness_seconds=0.0, index_max_entries=index_max_entries)
    policy = load_policy(None)
    rules = sites()
    gc.collect()
    tracemalloc.start(TRACE_FRAMES)
    try:
        monitor = Monitor(
            lambda model_id: monitor_settings(policy, options, model_id),
            idle_ms=None,
            index_ttl_ms=int(options.index_ttl_hours * 3_600_000),
            index_max_entries=options.index_max_entries,
        )
        refs = load_references(base, models)
        feed(monitor, refs, pool, 0, events)
        feed(monitor, refs, pool, 1, events)
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        entries = sum(len(t.index) for t in monitor._tracks.values())
        # the script's own frames and objects (base, pool, rules) were made before tracing: not counted
        del monitor, refs
    finally:
        tracemalloc.stop()
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    return classify(snapshot, rules), entries


def measure(models: int, features: int, events: int) -> Measured:
    full, entries = traced(models, features, events, WorkerOptions().index_max_entries)
    bare, _ = traced(models, features, events, 1)
    index = sum(full.values()) - sum(bare.values())
    parts = {c: full.get(c, 0) for c in ("reference", "samples", "detector states")}
    parts["label index"] = index
    parts["open windows (rest)"] = sum(full.values()) - sum(parts.values())
    return Measured(models, features, events, parts, entries)


# ----------------------------------------------------------------------------- report


def lines(results: Sequence[Measured]) -> list[str]:
    """RESULT lines: each component per model version at each feature count, and per feature between the two."""
    out = []
    for m in results:
        kib = " ".join(
            f"{c.replace(' ', '_').replace('(', '').replace(')', '')}={m.per_model(c) / 1024:.1f}" for c in COMPONENTS
        )
        out.append(
            f"RESULT memory models={m.models} features={m.features} events_per_window={m.events_per_window} "
            f"kib_per_model_version total={m.total / m.models / 1024:.1f} {kib}"
        )
        if m.index_entries:
            out.append(
                f"RESULT memory features={m.features} label_index entries={m.index_entries} "
                f"bytes_per_entry={m.bytes['label index'] / m.index_entries:.0f}"
            )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        df = b.features - a.features
        if df:
            per_feature = " ".join(
                f"{c.replace(' ', '_').replace('(', '').replace(')', '')}="
                f"{(b.per_model(c) - a.per_model(c)) / df / 1024:.2f}"
                for c in COMPONENTS
            )
            out.append(
                f"RESULT memory per_feature (features {a.features} to {b.features}) kib_per_model_version_per_feature "
                f"total={(b.total / b.models - a.total / a.models) / df / 1024:.2f} {per_feature}"
            )
    return out


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=50, help="model versions in the monitor")
    parser.add_argument("--features", default="10,30", help="feature counts to measure, comma-separated")
    parser.add_argument("--events-per-window", type=int, default=2_000, help="predictions per model and window")
    parser.add_argument("--quick", action="store_true", help="10 models, 1,000 events per window")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.events_per_window = 10, 1_000
    counts = [int(f) for f in args.features.split(",") if f.strip()]
    out(window_compute.machine_line())
    results = [measure(args.models, f, args.events_per_window) for f in counts]
    for line in lines(results):
        out(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
