"""Where a worker's memory goes after Zipf traffic: ``python bench/memory_traffic.py``.

In process, with ``tracemalloc``: a ``Monitor`` with ``--models`` model
versions of ``--features`` numeric features each (one reference profile per
version, built from ``--reference-rows`` rows), fed ``--seconds`` of event
time at ``--rate`` events per second, spread over the models with a Zipf
skew (weight 1/rank), in batches of one second of each model's events. The
windows are ``--window-seconds`` long, so the fed traffic stays in one open
window per model. Prints the memory traced after the references are built,
after the traffic, by source file, and the costs per model version, per
feature and per event; ``RESULT`` lines are for the sizing table in
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

MIB = 1024 * 1024
T0 = 1_700_000_040_000 - 1_700_000_040_000 % 60_000


def traced() -> int:
    return tracemalloc.get_traced_memory()[0]


def by_file(snapshot: tracemalloc.Snapshot, top: int = 12) -> list[str]:
    """Traced memory by the innermost driftline file that allocated it (numpy's own frames skipped)."""
    sizes: dict[str, int] = {}
    for trace in snapshot.traces:
        frames = [f.filename for f in reversed(trace.traceback)]
        name = next((f for f in frames if "/streams/" in f), frames[0])
        name = name.split("/streams/")[-1] if "/streams/" in name else name.rsplit("/", 1)[-1]
        sizes[name] = sizes.get(name, 0) + trace.size
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])[:top]
    return [f"  {size / MIB:9.1f} MiB  {name}" for name, size in ranked]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--features", type=int, default=30)
    p.add_argument("--reference-rows", type=int, default=5000)
    p.add_argument("--sample-size", type=int, default=5000, help="the references' sample size")
    p.add_argument("--rate", type=int, default=100_000, help="events per second of event time, all models")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--window-seconds", type=int, default=60)
    p.add_argument("--index-max-entries", type=int, default=200_000)
    p.add_argument("--detectors", default="adwin", help="comma-separated; '' for none")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    rng = np.random.default_rng(a.seed)
    names = [f"f{i}" for i in range(a.features)]
    detectors = tuple(d for d in a.detectors.split(",") if d)
    settings = MonitorSettings(Windowing(a.window_seconds * 1000), detectors=detectors)
    tracemalloc.start(10)
    base = traced()
    refs = []
    for m in range(a.models):
        rows = {f: rng.normal(size=a.reference_rows) for f in names}
        refs.append(
            ReferenceProfile.build(f"m{m}", "1", rows, {}, rng.random(a.reference_rows), sample_size=a.sample_size)
        )
    ref_bytes = traced() - base

    monitor = Monitor(lambda model_id: settings, index_max_entries=a.index_max_entries)
    for m in range(a.models):
        monitor.recover(f"m{m}", "1", None)
    weights = 1.0 / np.arange(1, a.models + 1)
    weights /= weights.sum()
    before = traced()
    started = time.perf_counter()
    events = 0
    for s in range(a.seconds):
        counts = rng.multinomial(a.rate, weights)
        for m in np.flatnonzero(counts).tolist():
            n = int(counts[m])
            times = T0 + s * 1000 + np.sort(rng.integers(0, 1000, n))
            batch = PredictionBatch(
                f"m{m}",
                "1",
                [f"{m}-{s}-{i}" for i in range(n)],
                times,
                numeric={f: rng.normal(size=n) for f in names},
                predictions=rng.random(n),
            )
            monitor.ingest(batch, refs[m], source=0, now_ms=0)
            events += n
    elapsed = time.perf_counter() - started
    state_bytes = traced() - before
    snapshot = tracemalloc.take_snapshot()
    open_models = len({k[0] for k in monitor.open_windows()})
    index_entries = sum(len(t.index) for t in monitor._tracks.values())
    print(f"{a.models} model versions x {a.features} features, {events:,} events in {elapsed:.1f} s")
    print(f"references: {ref_bytes / MIB:.1f} MiB; state after the traffic: {state_bytes / MIB:.1f} MiB")
    print("traced by file (references included):")
    print("\n".join(by_file(snapshot)))
    numeric = a.features + 1  # the model output is a numeric feature too
    print(
        f"RESULT models={a.models} features={a.features} events={events} open_windows={open_models} "
        f"index_entries={index_entries} reference_mib={ref_bytes / MIB:.1f} state_mib={state_bytes / MIB:.1f} "
        f"reference_kib_per_feature={ref_bytes / 1024 / a.models / numeric:.1f} "
        f"state_kib_per_version={state_bytes / 1024 / max(open_models, 1):.1f} "
        f"peak_mib={tracemalloc.get_traced_memory()[1] / MIB:.1f}"
    )


if __name__ == "__main__":
    main()
