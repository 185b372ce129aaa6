"""State that survives a restart: change detectors resumed from their last written window, and labels
that waited for their predictions read back from the warehouse.

The oracle is always the run that never stopped: the same events through one
monitor (or one bank), compared alarm for alarm and byte for byte of the
detectors' pickled state.
"""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest

from driftline.streams.core.batches import concat_batches, take_rows
from driftline.streams.core.detector_state import split_detector_state
from driftline.streams.core.detectors import BINARY_DETECTORS, DETECTORS, ChangeDetectorBank
from driftline.streams.core.ledger import Hold
from driftline.streams.core.monitor import LABELS, Monitor, MonitorSettings
from driftline.streams.core.outcomes import PerformanceOutcome, WindowOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
SIZE = 5_000  # window size (ms); 1,000 events per window, one every 5 ms
N_WINDOWS = 8
SHIFT_AT = 5  # the score and the error rate change from this window on


def reference() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    return ReferenceProfile.build("m", "1", {"x": rng.normal(size=5_000)}, {}, rng.random(5_000))


def settings(detectors: tuple[str, ...] = ("adwin",)) -> MonitorSettings:
    return MonitorSettings(Windowing(SIZE, 0), detectors=detectors, min_segment_size=1)


def shifted_stream() -> PredictionBatch:
    """Eight windows of predictions whose score jumps at window 5; a sentinel event closes them all."""
    rng = np.random.default_rng(7)
    n = N_WINDOWS * 1_000
    scores = np.where(np.arange(n) < SHIFT_AT * 1_000, rng.normal(0.3, 0.05, n), rng.normal(0.6, 0.05, n))
    times = T0 + np.arange(n, dtype=np.int64) * 5
    batch = PredictionBatch(
        "m",
        "1",
        [f"e{i}" for i in range(n)],
        times,
        numeric={"x": rng.normal(size=n)},
        predictions=np.clip(scores, 0, 1),
    )
    sentinel = PredictionBatch(
        "m", "1", ["sentinel"], np.array([T0 + 100 * SIZE]), numeric={"x": np.zeros(1)}, predictions=np.array([0.5])
    )
    return concat_batches([batch, sentinel])


def labels_for(batch: PredictionBatch) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Labels an hour after their predictions: right before window 5, wrong from it on (the error stream jumps)."""
    n = batch.n
    right = (batch.predictions >= 0.5).astype(int)
    y = np.where(np.arange(n) < SHIFT_AT * 1_000, right, 1 - right)
    rng = np.random.default_rng(3)
    noisy = rng.random(n) < 0.1
    y = np.where(noisy, 1 - y, y)
    return list(batch.event_ids), y, np.asarray(batch.event_times) + 3_600_000


def parts(batch: PredictionBatch, sizes: list[int]) -> list[PredictionBatch]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == batch.n
    return [take_rows(batch, np.arange(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def alarms(outcomes: list) -> dict[tuple[str, int], int]:
    out = {}
    for o in outcomes:
        kind = "error" if isinstance(o, PerformanceOutcome) else "score"
        out[(kind, o.window_start)] = sum(c.alarms for c in o.changes)
    return out


# -- the bank -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_resumes_from_its_stream_state_as_if_it_never_stopped(name: str) -> None:
    rng = np.random.default_rng(11)
    binary = name in BINARY_DETECTORS
    n = 6_000 if name != "kswin" else 1_500
    if binary:
        x = (rng.random(n) < np.where(np.arange(n) < n // 2, 0.1, 0.5)).astype(float)
    else:
        x = rng.normal(np.where(np.arange(n) < n // 2, 0.0, 1.5), 1.0)
    cut = n // 3
    whole = ChangeDetectorBank(names=(name,))
    expected = [e.index for e in whole.update("v:s", x, binary=binary)]
    assert expected  # the change is found, so the comparison below means something

    first = ChangeDetectorBank(names=(name,))
    first.update("v:s", x[:cut], binary=binary)
    state = first.stream_state("v:s")
    resumed = ChangeDetectorBank(names=(name,))
    assert resumed.restore_stream("v:s", state) == [name]
    got = [e.index + cut for e in resumed.update("v:s", x[cut:], binary=binary)]
    assert got == [i for i in expected if i >= cut]
    assert resumed.stream_state("v:s") == whole.stream_state("v:s")


def test_a_restored_stream_keeps_only_the_detectors_the_bank_runs_with_their_parameters() -> None:
    rng = np.random.default_rng(1)
    old = ChangeDetectorBank(names=("adwin", "page_hinkley", "kswin"))
    old.update("v:score", rng.normal(size=2_000))
    state = old.stream_state("v:score")
    assert old.stream_state("v:nothing") is None

    new = ChangeDetectorBank(names=("adwin", "page_hinkley", "ddm"), page_hinkley={"threshold": 80.0})
    # kswin is no longer run; page_hinkley has another threshold, so it starts afresh; ddm is binary only
    assert new.restore_stream("v:score", state) == ["adwin"]
    assert new.detector_names("v:score") == ["adwin", "page_hinkley"]
    assert pickle.dumps(new._streams["v:score"].detectors["adwin"]) == pickle.dumps(
        old._streams["v:score"].detectors["adwin"]
    )
    assert new._streams["v:score"].detectors["page_hinkley"].threshold == 80.0
    with pytest.raises(ValueError, match="binary"):  # the stream stays what it was: a score stream
        new.update("v:score", np.zeros(3), binary=True)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


class _EvilMethod:
    # a bound method of an allowed class that is not river's
    def __reduce__(self):
        return (getattr, (random.Random(0), "seed"))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (pickle.dumps(_Evil()), "system is not allowed"),
        (
            pickle.dumps({"format": 1, "binary": False, "params": {}, "detectors": {"adwin": _Evil()}}),
            "system is not allowed",
        ),
        (
            pickle.dumps({"format": 1, "binary": False, "params": {}, "detectors": {"adwin": _EvilMethod()}}),
            r"getattr\(Random, 'seed'\) is not allowed",
        ),
        (b"not a pickle", "cannot restore"),
        (pickle.dumps({"format": 2}), "format 2"),
    ],
)
def test_a_state_that_is_not_river_detectors_is_refused_and_changes_nothing(payload: bytes, why: str) -> None:
    bank = ChangeDetectorBank()
    bank.update("v:score", np.linspace(0, 1, 100))
    before = bank.stream_state("v:score")
    with pytest.raises(ValueError, match=why):
        bank.restore_stream("v:score", payload)
    assert bank.stream_state("v:score") == before


def test_a_bank_state_naming_other_globals_is_refused() -> None:
    bank = ChangeDetectorBank()
    bank.update("v:score", np.linspace(0, 1, 100))
    state = bank.state_dict()
    assert ChangeDetectorBank.from_state(state).stream_state("v:score") == bank.stream_state("v:score")
    state["streams"]["v:score"]["detectors"]["adwin"] = pickle.dumps(_Evil())
    with pytest.raises(ValueError, match="posix.system is not allowed|os.system is not allowed"):
        ChangeDetectorBank.from_state(state)


# -- the monitor: order ---------------------------------------------------------------------------------


def test_the_detectors_see_a_window_in_event_order_whatever_the_arrival_order() -> None:
    ref = reference()
    rng = np.random.default_rng(5)
    n = 1_000
    times = T0 + np.sort(rng.integers(0, SIZE, n))  # one window, with ties in time
    scores = np.where(times < T0 + SIZE // 2, rng.normal(0.2, 0.05, n), rng.normal(0.8, 0.05, n))
    scores[::97] = np.nan
    batch = PredictionBatch(
        "m", "1", [f"e{i}" for i in range(n)], times, numeric={"x": rng.normal(size=n)}, predictions=scores
    )
    sentinel = PredictionBatch(
        "m", "1", ["s"], np.array([T0 + 3 * SIZE]), numeric={"x": np.zeros(1)}, predictions=np.array([0.5])
    )

    def close(order: np.ndarray, sizes: list[int]) -> WindowOutcome:
        monitor = Monitor(lambda m: settings())
        monitor.recover("m", "1", None)
        shuffled = take_rows(batch, order)
        for part in parts(shuffled, sizes) + [sentinel]:
            monitor.ingest(part, ref, source=0, now_ms=0)
        (outcome,) = [o for o in monitor.close_due(0) if o.window_start == T0]
        return outcome

    in_order = close(np.arange(n), [n])
    # the oracle: a bank fed the window's values sorted by time, then value
    oracle = ChangeDetectorBank()
    keyed = sorted(zip(times.tolist(), scores.tolist()), key=lambda tv: (tv[0], np.inf if np.isnan(tv[1]) else tv[1]))
    expected = len(oracle.update("1:score", np.array([s for _, s in keyed])))
    assert expected >= 1
    assert [c.alarms for c in in_order.changes] == [expected]
    # the state also carries the slow-drift detector (split_detector_state): the change detectors' part is the oracle's
    assert split_detector_state(in_order.detector_state)[0] == oracle.stream_state("1:score")
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(n)
        other = close(order, [300, 1, 450, 249])
        assert other.changes == in_order.changes
        assert other.detector_state == in_order.detector_state


# -- the monitor: restarts ------------------------------------------------------------------------------


def run_all(monitor: Monitor, batches: list[PredictionBatch], ref: ReferenceProfile, *, labels: bool) -> list:
    """Each batch, then the labels of its events (as if they came right after it), closing what is due."""
    ids, y, t = labels_for(shifted_stream())
    label_of = {e: (int(v), int(when)) for e, v, when in zip(ids, y.tolist(), t.tolist())}
    out = []
    for b in batches:
        if monitor.needs_recovery("m", "1"):
            monitor.recover("m", "1", None)
            monitor.recover_labels("m", "1", None)
        monitor.ingest(b, ref, source=0, now_ms=0)
        out += monitor.close_due(0)
        if labels:
            mine = [label_of[e] for e in b.event_ids]
            monitor.ingest_labels("m", b.event_ids, [v for v, _ in mine], np.array([w for _, w in mine]), now_ms=0)
            out += monitor.close_due(0)
    return out


@pytest.mark.parametrize("resume", [True, False])
def test_a_restart_resumes_the_detectors_of_both_streams_from_the_last_written_windows(resume: bool) -> None:
    """Crash with five windows of each kind written and the sixth open; the successor replays from it."""
    ref = reference()
    stream = shifted_stream()
    batches = parts(stream, [500] * 16 + [1])  # two messages per window, then the sentinel
    clean = run_all(Monitor(lambda m: settings()), batches, ref, labels=True)
    expected = alarms(clean)
    assert len([o for o in clean if isinstance(o, WindowOutcome)]) == N_WINDOWS
    assert len([o for o in clean if isinstance(o, PerformanceOutcome)]) == N_WINDOWS
    # the change is seen in both streams at window 5, and only there
    assert {k for k, v in expected.items() if v} == {
        ("score", T0 + SHIFT_AT * SIZE),
        ("error", T0 + 3_600_000 + SHIFT_AT * SIZE),
    }

    first = Monitor(lambda m: settings())
    before = run_all(first, batches[:11], ref, labels=True)  # window 5 holds its first message only
    written = {type(o): o for o in before}  # the last of each kind
    score_written, error_written = written[WindowOutcome], written[PerformanceOutcome]
    assert score_written.window_end == error_written.window_end - 3_600_000 == T0 + SHIFT_AT * SIZE

    second = Monitor(lambda m: settings())
    second.recover("m", "1", score_written.window_end)
    second.recover_labels("m", "1", error_written.window_end)
    if resume:
        assert second.restore_detectors("m", "1", "score", score_written.detector_state) == ["adwin"]
        assert second.restore_detectors("m", "1", "error", error_written.detector_state) == ["adwin"]
    # Kafka delivers again from the oldest unacknowledged message: window 5's first
    after = run_all(second, batches[10:], ref, labels=True)
    got = {k: v for k, v in alarms(after).items()}
    assert set(got) == {k for k in expected if (k[1] - T0) % 3_600_000 >= SHIFT_AT * SIZE}  # windows 5 to 7
    if resume:
        assert got == {k: expected[k] for k in got}
        assert [o.detector_state for o in after][-1] == [o.detector_state for o in clean][-1]
    else:  # fresh detectors see no change: the test above would fail without the restore
        assert sum(got.values()) == 0


def test_restoring_detectors_does_not_overwrite_a_stream_that_already_ran() -> None:
    monitor = Monitor(lambda m: settings())
    with pytest.raises(ValueError, match="cannot restore"):
        monitor.restore_detectors("m", "1", "score", b"")
    bank = ChangeDetectorBank()
    bank.update("1:score", np.zeros(10))
    assert monitor.restore_detectors("m", "1", "score", bank.stream_state("1:score")) == ["adwin"]
    assert monitor.restore_detectors("m", "1", "score", bank.stream_state("1:score")) is None
    assert Monitor(lambda m: settings(detectors=())).restore_detectors("m", "1", "score", b"") is None
    with pytest.raises(ValueError, match="stream"):
        monitor.restore_detectors("m", "1", "latency", b"")


# -- the monitor: labels read back ----------------------------------------------------------------------


def test_labels_restored_after_a_restart_wait_and_join_their_predictions_once() -> None:
    ref = reference()
    batch = take_rows(shifted_stream(), np.arange(200))
    ids, y, t = labels_for(batch)
    monitor = Monitor(lambda m: settings())
    assert monitor.needs_label_restore("m")
    assert monitor.restore_labels("m", ids[:150], y[:150].tolist(), t[:150], now_ms=0) == 150
    assert not monitor.needs_label_restore("m") and monitor.pending_labels() == 150

    monitor.recover("m", "1", None)
    ingested = monitor.ingest(batch, ref, source=0, now_ms=0)
    assert ingested.joined_labels == 150
    assert ingested.holds == [Hold(LABELS, "m", "1", T0 + 3_600_000 + SIZE)]  # held by the predictions' message
    # Kafka delivers some of them again (they had joined before the crash, their window unwritten): not twice
    again = monitor.ingest_labels("m", ids[100:200], y[100:200].tolist(), t[100:200], now_ms=0)
    assert again.replayed == 50 and again.joined == 50 and again.holds[:50] == [[]] * 50
    # a label sent once more after that is an ordinary label again
    assert monitor.ingest_labels("m", ids[100:101], [1], t[100:101], now_ms=0).replayed == 0
    monitor.ingest(
        PredictionBatch(
            "m", "1", ["s"], np.array([T0 + 3_700_000]), numeric={"x": np.zeros(1)}, predictions=np.array([0.5])
        ),
        ref,
        source=0,
        now_ms=0,
    )
    monitor.ingest_labels("m", ["s"], [1], np.array([T0 + 3_700_000]), now_ms=0)
    perf = [o for o in monitor.close_due(0) if isinstance(o, PerformanceOutcome)]
    assert [(o.window_start, o.n_labeled) for o in perf] == [(T0 + 3_600_000, 200)]
    monitor.reset()
    assert monitor.needs_label_restore("m")


@pytest.mark.parametrize("case", ["in order", "out of order", "ties", "ties out of order", "one", "none"])
def test_a_window_s_values_go_to_the_detectors_sorted_by_time_then_value(case: str) -> None:
    from driftline.streams.core.monitor import _in_event_order

    rng = np.random.default_rng(len(case))
    n = {"one": 1, "none": 0}.get(case, 2_000)
    times = np.arange(n, dtype=np.int64) * 3 if "ties" not in case else np.sort(rng.integers(0, n // 4 + 1, n))
    if "out of order" in case:
        swap = rng.integers(0, n - 1, n // 20)
        times[swap], times[swap + 1] = times[swap + 1].copy(), times[swap].copy()
    values = rng.random(n).round(2)  # equal values at equal times too
    values[::37] = np.nan
    # the oracle: Python's sort of (time, value) pairs, NaN after every number
    pairs = sorted((t, np.isnan(v), 0.0 if np.isnan(v) else v) for t, v in zip(times.tolist(), values.tolist()))
    expected = [np.nan if nan else v for _, nan, v in pairs]
    got = _in_event_order(values, times)
    assert np.array_equal(got, np.array(expected, dtype=float), equal_nan=True)
    # and the same whatever the order they came in
    shuffle = rng.permutation(n)
    assert np.array_equal(_in_event_order(values[shuffle], times[shuffle]), got, equal_nan=True)
