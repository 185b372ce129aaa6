"""Labels as columns (``LabelColumns`` + ``check_labels``) against the label-by-label path they replaced:
the same refusals, the same raw labels, and a monitor fed by either writes the same label windows."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.outcomes import PerformanceOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.validation import check_label, check_label_batch, check_labels
from driftline.streams.core.windows import Windowing
from driftline.streams.records import LabelBatch, LabelColumns, LabelEvent, PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
NOW = T0 + 4 * 3_600_000
FUTURE_MS = 60_000
EARLIEST = T0 - 86_400_000


def predictions(model_id: str, n: int, seed: int) -> PredictionBatch:
    rng = np.random.default_rng(seed)
    return PredictionBatch(
        model_id,
        "1",
        [f"{model_id}-{i}" for i in range(n)],
        T0 + np.arange(n, dtype=np.int64) * 20,
        numeric={"a": rng.normal(size=n)},
        predictions=rng.random(n),
        attributes={"channel": rng.choice(["web", "app"], n).tolist()},
    )


def reference(model_id: str) -> ReferenceProfile:
    rng = np.random.default_rng(0)
    return ReferenceProfile.build(model_id, "1", {"a": rng.normal(size=5_000)}, {}, rng.random(5_000))


def traffic(seed: int) -> list[list[LabelEvent | LabelBatch]]:
    """Three polls of single labels and label batches of two models, in a shuffled order, an hour after their
    predictions (a few for predictions never made), with refusals of every kind among them."""
    rng = np.random.default_rng(seed)
    labels = [
        LabelEvent(f"{m}-{i}", m, T0 + 3_600_000 + i * 20 + int(rng.integers(0, 20)), float(rng.random() < 0.4))
        for m in ("m", "n")
        for i in range(600)
    ]
    labels += [LabelEvent(f"m-none-{i}", "m", T0 + 3_600_000 + i, 1.0) for i in range(10)]
    order = rng.permutation(len(labels))
    labels = [labels[i] for i in order]
    records: list[LabelEvent | LabelBatch] = []
    at = 0
    while at < len(labels):
        size = int(rng.choice([1, 1, 1, 7, 40]))
        chunk = labels[at : at + size]
        at += size
        if size == 1 or len({e.model_id for e in chunk}) > 1:
            records += chunk
        else:
            records.append(LabelBatch.from_events(chunk))
    bad = [
        LabelEvent("nan", "m", T0 + 3_600_000, float("nan")),
        LabelEvent("old", "m", EARLIEST - 1, 1.0),
        LabelEvent("ahead", "n", NOW + FUTURE_MS + 1, 0.0),
        LabelEvent("x" * 300, "m", T0 + 3_600_000, 1.0),
        LabelEvent("long", "m", T0 + 3_600_000, "y" * 2_000),
        LabelBatch("m", ["b1", "b2"], np.array([T0 + 3_600_000, NOW + FUTURE_MS + 5]), np.array([1.0, 0.0])),
        LabelBatch("n", ["b3", "z" * 300], np.array([T0 + 3_600_000] * 2), np.array([1.0, 0.0])),
        LabelBatch("m", ["b5", "b6"], np.array([T0 + 3_600_000] * 2), np.array([np.nan, 1.0]), ["q" * 2_000, None]),
    ]
    for record in bad:
        records.insert(int(rng.integers(0, len(records))), record)
    cuts = sorted(rng.choice(np.arange(1, len(records)), 2, replace=False).tolist())
    return [records[: cuts[0]], records[cuts[0] : cuts[1]], records[cuts[1] :]]


def label_by_label(records: list[LabelEvent | LabelBatch]):
    """The worker's former path: each record checked alone, a batch expanded to one LabelEvent a label."""
    refused: dict[int, tuple[str, str]] = {}
    by_model: dict[str, list[LabelEvent]] = defaultdict(list)
    for k, record in enumerate(records):
        if isinstance(record, LabelBatch):
            problem = check_label_batch(record, NOW, FUTURE_MS, EARLIEST)
            events = record.events()
        else:
            problem = check_label(record, NOW, FUTURE_MS, EARLIEST)
            events = [record]
        if problem is not None:
            refused[k] = (problem.reason, problem.detail)
        else:
            by_model[record.model_id] += events
    return refused, dict(by_model)


def as_columns(records: list[LabelEvent | LabelBatch]):
    columns = LabelColumns.of(records)
    problems = check_labels(records, columns, NOW, FUTURE_MS, EARLIEST)
    kept = columns.take(np.flatnonzero(~np.isin(columns.message, list(problems))))
    return {k: (p.reason, p.detail) for k, p in problems.items()}, {
        m: kept.events(r) for m, r in kept.by_model().items()
    }


def monitor_rows(polls, path) -> tuple[list, list]:
    monitor = Monitor(lambda m: MonitorSettings(Windowing(600_000, 0), min_segment_size=1))
    for m in ("m", "n"):
        monitor.recover(m, "1", None)
        monitor.recover_labels(m, "1", None)
    refs = {m: reference(m) for m in ("m", "n")}
    batches = {m: predictions(m, 600, seed) for m, seed in (("m", 1), ("n", 2))}
    # the predictions of "m" come first, those of "n" after the first poll of labels (which then wait)
    monitor.ingest(batches["m"], refs["m"], source=0, now_ms=NOW)
    results = []
    for p, poll in enumerate(polls):
        refused, by_model = path(poll)
        results.append(refused)
        for model_id, events in by_model.items():
            got = monitor.ingest_labels(
                model_id,
                [e.event_id for e in events],
                [e.label for e in events],
                np.array([e.event_time for e in events], dtype=np.int64),
                now_ms=NOW,
            )
            results.append((model_id, events, got.holds, got.joined, got.pending, got.late, got.unmatched))
        if p == 0:
            monitor.ingest(batches["n"], refs["n"], source=0, now_ms=NOW)
    for m in ("m", "n"):  # the label clocks past every label window
        probe = dataclasses.replace(predictions(m, 1, 9), event_ids=[f"{m}-probe"])
        monitor.ingest(probe, refs[m], source=0, now_ms=NOW)
        monitor.ingest_labels(m, [f"{m}-probe"], [0.0], np.array([T0 + 9 * 3_600_000]), now_ms=NOW)
    windows = [
        (o.model_id, o.window_start, o.n_labeled, [(r.segment, r.metric, r.value) for r in o.rows])
        for o in monitor.close_due(NOW)
        if isinstance(o, PerformanceOutcome)
    ]
    return results, windows


def test_labels_as_columns_refuse_and_write_what_the_label_by_label_path_did() -> None:
    for seed in range(3):
        polls = traffic(seed)
        expected, expected_windows = monitor_rows(polls, label_by_label)
        got, got_windows = monitor_rows(polls, as_columns)
        refused = [r for poll in expected if isinstance(poll, dict) for r, _ in poll.values()]
        assert sorted(refused) == sorted(
            ["invalid_value", "invalid_event_time", "future_event_time", "value_too_long", "value_too_long"]
            + ["future_event_time", "value_too_long", "value_too_long"]
        )
        assert got == expected
        assert sum(n for _, _, n, _ in expected_windows) > 1_000 and {m for m, *_ in expected_windows} == {"m", "n"}
        assert got_windows == expected_windows


def test_columns_keep_message_order_and_a_batch_s_row_order() -> None:
    records: list[LabelEvent | LabelBatch] = [
        LabelBatch("m", ["a", "b"], np.array([5, 4]), np.array([np.nan, 1.0]), ["cat", None]),
        LabelEvent("c", "n", 3, 0.0),
        LabelBatch("m", ["d"], np.array([2]), np.array([0.0])),
        LabelEvent("e", "m", 1, "dog"),
    ]
    columns = LabelColumns.of(records)
    assert columns.message.tolist() == [0, 0, 1, 2, 3]
    assert columns.events(np.arange(5)) == [
        e for r in records for e in (r.events() if isinstance(r, LabelBatch) else [r])
    ]
    assert {m: r.tolist() for m, r in columns.by_model().items()} == {"m": [0, 1, 3, 4], "n": [2]}
