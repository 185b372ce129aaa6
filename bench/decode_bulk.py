"""Decoding single Avro events into columns: ``decode_bulk`` against the per-message slow path.

The slow path is what the streams worker does per message: ``Codec.decode(value,
topic="predictions")`` (fastavro), then per model version ``PredictionBatch.from_events``.
``decode_bulk`` does both at once over all messages (``streams/codec/bulk.py``).

Each scenario encodes N PredictionEvents (20 numeric features f0..f19, 2 categorical
features, a prediction and a latency) and times both paths in the same process, in rounds
(slow then fast on the same messages), so that a change in the machine's load falls on both.
It first checks that both give the same columns. Lines starting with ``RESULT`` and
``RATIO`` are the results; ``--quick`` is a smoke run of a second.

The batched scenarios do the same for messages of PredictionBatches (``--batch-events``
events each, the same features and one attribute): the slow path is ``Codec.decode`` per
message (fastavro), the fast path ``decode_bulk``, which reads batch messages in step across
the messages of a poll: 200 messages, 80 (what a 16 MiB poll holds of these), 16 (the fewest
it reads so) and 8 (which it leaves to ``Codec.decode``: the cost of asking, no target).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driftline.streams.codec import Codec, DecodeError, decode_bulk  # noqa: E402
from driftline.streams.codec.bulk import _MIN_BATCH_MESSAGES  # noqa: E402
from driftline.streams.records import PredictionBatch, PredictionEvent  # noqa: E402

TARGET = 4.0
BATCH_TARGET = 1.5
T0 = 1_700_000_000_000


def events(n: int, attributes: int, missing: float, seed: int = 0) -> list[PredictionEvent]:
    """Events of one model version; ``missing`` is the share of numeric keys each event leaves out."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, 20))
    keep = rng.random((n, 20)) >= missing
    scores = rng.random(n)
    regions, channels = ["eu", "us", "apac", "latam"], ["web", "app", "branch"]
    out = []
    for i in range(n):
        out.append(
            PredictionEvent(
                event_id=f"evt-{i:010d}",
                model_id="credit",
                model_version="3",
                event_time=T0 + i,
                numeric={f"f{k}": float(values[i, k]) for k in range(20) if keep[i, k]},
                categorical={"region": regions[i % 4], "channel": channels[i % 3]},
                prediction=float(scores[i]),
                latency_ms=2.5 + i % 7,
                attributes={f"a{k}": "gold" for k in range(attributes)},
            )
        )
    return out


def batch_messages(codec: Codec, k: int, n: int, labels: bool = False, seed: int = 0) -> list[bytes]:
    """k PredictionBatch messages of n events of one model version."""
    rng = np.random.default_rng(seed)
    regions, channels = ["eu", "us", "apac", "latam"], ["web", "app", "branch"]
    out = []
    for j in range(k):
        out.append(
            codec.encode(
                PredictionBatch(
                    model_id="credit",
                    model_version="3",
                    event_ids=[f"evt-{j * n + i:010d}" for i in range(n)],
                    event_times=T0 + j * n + np.arange(n, dtype=np.int64),
                    numeric={f"f{f}": rng.normal(size=n) for f in range(20)},
                    categorical={
                        "region": [regions[i % 4] for i in range(n)],
                        "channel": [channels[i % 3] for i in range(n)],
                    },
                    predictions=rng.random(n),
                    predicted_labels=[["approve", "deny"][i % 2] for i in range(n)] if labels else [],
                    latency_ms=2.5 + np.arange(n) % 7,
                    attributes={"tier": [["gold", "silver"][i % 2] for i in range(n)]},
                )
            )
        )
    return out


def slow_batches(codec: Codec, values: Sequence[bytes]) -> list[object]:
    return [codec.decode(value, topic="predictions") for value in values]


def fast_batches(codec: Codec, values: Sequence[bytes]) -> list[object]:
    return [record for _, record in decode_bulk(codec, values, topic="predictions").others]


def same_batches(a: list[object], b: list[object]) -> bool:
    return len(a) == len(b) and all(
        type(x) is PredictionBatch
        and type(y) is PredictionBatch
        and same([x], [y])
        and x.model_id == y.model_id
        and x.model_version == y.model_version
        and x.predicted_labels == y.predicted_labels
        and x.event_times.dtype == y.event_times.dtype
        for x, y in zip(a, b)
    )


def slow_path(codec: Codec, values: Sequence[bytes]) -> list[PredictionBatch]:
    singles: dict[tuple[str, str], list[PredictionEvent]] = {}
    for value in values:
        try:
            record = codec.decode(value, topic="predictions")
        except DecodeError:
            continue
        singles.setdefault((record.model_id, record.model_version), []).append(record)
    return [PredictionBatch.from_events(group) for group in singles.values()]


def fast_path(codec: Codec, values: Sequence[bytes]) -> list[PredictionBatch]:
    return [g.batch for g in decode_bulk(codec, values, topic="predictions").groups]


def same(a: list[PredictionBatch], b: list[PredictionBatch]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.event_ids != y.event_ids or not np.array_equal(x.event_times, y.event_times):
            return False
        if list(x.numeric) != list(y.numeric) or x.categorical != y.categorical or x.attributes != y.attributes:
            return False
        if not all(np.array_equal(x.numeric[k].view(np.uint64), y.numeric[k].view(np.uint64)) for k in x.numeric):
            return False
        if not np.array_equal(x.predictions.view(np.uint64), y.predictions.view(np.uint64)):
            return False
        if (x.latency_ms is None) != (y.latency_ms is None) or (
            x.latency_ms is not None and not np.array_equal(x.latency_ms.view(np.uint64), y.latency_ms.view(np.uint64))
        ):
            return False
    return True


def per_event_us(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1e6


def machine_line() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"machine: {os.cpu_count()} cpu(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"python {platform.python_version()}, numpy {np.__version__}"
    )


def run(n: int, repeats: int, out: Callable[[str], None] = print) -> int:
    codec = Codec()
    out(machine_line())
    failures = 0
    for attributes, missing in ((0, 0.0), (1, 0.0), (1, 0.2)):
        label = f"n={n:,} numeric=20 categorical=2 attributes={attributes} missing={missing:.0%}"
        values = [codec.encode(e) for e in events(n, attributes, missing)]
        if not same(fast_path(codec, values), slow_path(codec, values)):
            out(f"MISMATCH {label}: decode_bulk and the slow path disagree")
            failures += 1
            continue
        slow, fast = [], []
        for _ in range(repeats):
            slow.append(per_event_us(lambda: slow_path(codec, values), n))  # noqa: B023 - called at once, within this iteration
            fast.append(per_event_us(lambda: fast_path(codec, values), n))  # noqa: B023 - called at once, within this iteration
        ratios = [s / f for s, f in zip(slow, fast)]
        out(
            f"RESULT {label} slow_us_per_event={min(slow):.2f}..{max(slow):.2f} "
            f"bulk_us_per_event={min(fast):.2f}..{max(fast):.2f} repeats={repeats}"
        )
        ratio = statistics.median(ratios)
        out(
            f"RATIO decode {label} slow/bulk={ratio:.1f}x (range {min(ratios):.1f}..{max(ratios):.1f}) "
            f"target>={TARGET:g}x {'MET' if ratio >= TARGET else 'NOT MET'}"
        )
    out(machine_line())
    return 1 if failures else 0


def run_batches(messages: Sequence[int], n: int, repeats: int, out: Callable[[str], None] = print) -> int:
    codec = Codec()
    out(machine_line())
    failures = 0
    for k in messages:
        for labels in (False, True):
            label = (
                f"batches={k} events_per_batch={n:,} numeric=20 categorical=2 attributes=1 "
                f"labels={'yes' if labels else 'no'}"
            )
            values = batch_messages(codec, k, n, labels)
            if not same_batches(fast_batches(codec, values), slow_batches(codec, values)):
                out(f"MISMATCH {label}: decode_bulk and Codec.decode disagree")
                failures += 1
                continue
            slow, fast = [], []
            for _ in range(repeats):
                slow.append(per_event_us(lambda: slow_batches(codec, values), k * n))  # noqa: B023 - called at once, within this iteration
                fast.append(per_event_us(lambda: fast_batches(codec, values), k * n))  # noqa: B023 - called at once, within this iteration
            ratios = [s / f for s, f in zip(slow, fast)]
            out(
                f"RESULT {label} slow_us_per_event={min(slow):.3f}..{max(slow):.3f} "
                f"bulk_us_per_event={min(fast):.3f}..{max(fast):.3f} repeats={repeats}"
            )
            ratio = statistics.median(ratios)
            verdict = (
                f"target>={BATCH_TARGET:g}x {'MET' if ratio >= BATCH_TARGET else 'NOT MET'}"
                if k >= _MIN_BATCH_MESSAGES
                else "no target: Codec.decode per message inside decode_bulk"
            )
            out(f"RATIO decode {label} slow/bulk={ratio:.2f}x (range {min(ratios):.2f}..{max(ratios):.2f}) {verdict}")
    out(machine_line())
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="events per scenario")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per scenario")
    parser.add_argument("--batch-events", type=int, default=1000, help="events per batch message")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="*",
        default=[200, 80, 16, 8],
        help="batch messages per scenario (none: skip the batched scenarios)",
    )
    parser.add_argument("--no-singles", action="store_true", help="skip the single-event scenarios")
    parser.add_argument("--quick", action="store_true", help="a smoke run: --n 2000 --repeats 2, batches of 100")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.batch_events = 2_000, 2, 100
    failed = 0 if args.no_singles else run(args.n, args.repeats)
    if args.batches:
        failed |= run_batches(args.batches, args.batch_events, args.repeats)
    return failed


if __name__ == "__main__":
    sys.exit(main())
