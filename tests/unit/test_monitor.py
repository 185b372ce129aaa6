"""The monitor: windows of drift, latency, performance and change counts, replays and idle closing."""

from __future__ import annotations

import numpy as np
import pytest

from driftline.streams.core.batches import concat_batches, take_rows
from driftline.streams.core.drift import evaluate_window
from driftline.streams.core.ledger import Hold
from driftline.streams.core.monitor import LABELS, PREDICTIONS, Monitor, MonitorSettings, ScoreLog
from driftline.streams.core.multivariate import MULTIVARIATE_FEATURE
from driftline.streams.core.outcomes import ERROR_FEATURE, NOT_IN_WINDOW, PerformanceOutcome, WindowOutcome
from driftline.streams.core.performance import compute_performance
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.sequential import METRIC as TREND_METRIC
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PREDICTION_FEATURE, PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 10_000  # window-aligned


FEATURES = ("a", "b", "c", "d")


def reference(seed: int = 0, n: int = 20_000) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    return ReferenceProfile.build(
        "m",
        "1",
        {f: rng.normal(size=n) for f in FEATURES},
        {"region": rng.choice(["north", "south", "east"], n).tolist()},
        rng.random(n),
    )


def stream(
    n: int, *, start: int = T0, step: int = 10, drift: tuple[str, ...] = (), seed: int = 1, version: str = "1"
) -> PredictionBatch:
    rng = np.random.default_rng(seed)
    numeric = {f: rng.normal(loc=2.0 if f in drift else 0.0, size=n) for f in FEATURES}
    return PredictionBatch(
        "m",
        version,
        [f"e{seed}-{i}" for i in range(n)],
        start + np.arange(n, dtype=np.int64) * step,
        numeric=numeric,
        categorical={"region": rng.choice(["north", "south", "east"], n).tolist()},
        predictions=rng.random(n),
        latency_ms=rng.gamma(2.0, 5.0, n),
        attributes={"channel": rng.choice(["web", "app"], n).tolist()},
    )


def settings(size_ms: int = 10_000, lateness_ms: int = 0, detectors: tuple[str, ...] = ()) -> MonitorSettings:
    return MonitorSettings(Windowing(size_ms, lateness_ms), detectors=detectors, min_segment_size=1)


def chunks(batch: PredictionBatch, sizes: list[int]) -> list[PredictionBatch]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == batch.n
    return [take_rows(batch, np.arange(lo, hi)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def run(monitor: Monitor, batches: list[PredictionBatch], ref: ReferenceProfile, now_ms: int = 0) -> list:
    out = []
    for b in batches:
        if monitor.needs_recovery(b.model_id, b.model_version):
            monitor.recover(b.model_id, b.model_version, None)
        monitor.ingest(b, ref, source=0, now_ms=now_ms)
        out += monitor.close_due(now_ms)
    return out


def drift_table(outcome: WindowOutcome) -> dict[tuple[str, str], tuple[float, float | None, bool]]:
    # the per-window engine's rows: the slow-drift and multivariate rows come from across windows or from joint rows
    return {
        (r.feature, r.metric): (r.value, r.p_value, r.drifted)
        for r in outcome.drift
        if r.metric != TREND_METRIC and r.feature != MULTIVARIATE_FEATURE
    }


def test_two_drifted_features_are_flagged_and_match_the_drift_engine_on_the_same_rows() -> None:
    ref = reference()
    batch = stream(3_000, drift=("a", "c"))  # 30 s of events: three windows of 10 s
    monitor = Monitor(lambda m: settings())
    outcomes = run(monitor, chunks(batch, [700, 1_100, 1_200]), ref)
    assert [o.window_start for o in outcomes] == [T0, T0 + 10_000]  # the last window waits for the watermark
    for o in outcomes:
        assert isinstance(o, WindowOutcome)
        assert o.n_current == 1_000 and o.n_reference == ref.n
        assert sorted({r.feature for r in o.drift if r.drifted}) == ["a", "c"]
        assert o.report(computed_at=5).drifted_features == ["a", "c"]
        # the oracle: a profile of exactly this window's rows, with the window's seed
        rows = np.flatnonzero((batch.event_times >= o.window_start) & (batch.event_times < o.window_end))
        expected = WindowProfile.empty(ref, seed=stable_seed("m", "1", o.window_start))
        part = take_rows(batch, rows)
        expected.update(part.numeric, part.categorical, part.predictions)
        assert drift_table(o) == drift_table_of(evaluate_window(ref, expected))
        assert o.latency["latency_p50"] == pytest.approx(np.quantile(part.latency_ms, 0.5))
        assert o.n_latency == 1_000


def drift_table_of(rows: list) -> dict:
    return {(r.feature, r.metric): (r.value, r.p_value, r.drifted) for r in rows}


def test_results_do_not_depend_on_how_the_stream_was_cut_into_batches() -> None:
    ref = reference()
    batch = stream(2_500, drift=("b",))
    one = run(Monitor(lambda m: settings()), [batch], ref)
    many = run(Monitor(lambda m: settings()), chunks(batch, [1, 998, 2, 499, 1_000]), ref)
    assert [o.key for o in one] == [o.key for o in many]
    for x, y in zip(one, many):
        assert drift_table(x) == drift_table(y)
        assert same_profiles(x.profile.summary_rows(), y.profile.summary_rows())


def same_profiles(a: list[dict], b: list[dict]) -> bool:
    """Equal rows, to the bit: moments come from exact sums, whatever the batches (streams.core.exactsum)."""
    assert a == b
    return True


def test_late_events_are_counted_and_left_out() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings(lateness_ms=1_000))
    monitor.recover("m", "1", None)
    first = monitor.ingest(stream(1_200, step=10), ref, source=0, now_ms=0)  # up to T0 + 11.99 s
    assert first.late == 0 and (first.window_ends != NOT_IN_WINDOW).all()
    assert monitor.close_due(0) == [] or True  # watermark T0 + 10.99 s closes [T0, T0 + 10 s)
    late = stream(5, start=T0 + 500, seed=9)
    result = monitor.ingest(late, ref, source=0, now_ms=0)
    assert result.late == 5 and result.replayed == 0
    assert (result.window_ends == NOT_IN_WINDOW).all()
    # an event of a still-open window is not late, even if older than the newest
    ok = monitor.ingest(stream(1, start=T0 + 10_100, seed=10), ref, source=0, now_ms=0)
    assert ok.late == 0 and ok.window_ends.tolist() == [T0 + 20_000]


def test_within_lateness_an_event_still_joins_its_window() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings(lateness_ms=3_000))
    monitor.recover("m", "1", None)
    monitor.ingest(stream(1_200), ref, source=0, now_ms=0)  # watermark T0 + 8.99 s: nothing closes
    assert monitor.close_due(0) == []
    monitor.ingest(stream(3, start=T0 + 9_000, seed=4), ref, source=0, now_ms=0)
    monitor.ingest(stream(1, start=T0 + 13_000, seed=5), ref, source=0, now_ms=0)
    (o,) = monitor.close_due(0)
    assert o.window_start == T0 and o.n_current == 1_003


def test_a_replay_after_a_crash_writes_the_same_windows() -> None:
    """Crash with two windows written and one open; replay from the open window's first message."""
    ref = reference()
    batch = stream(4_000, drift=("d",), step=10)  # four windows
    parts = chunks(batch, [600, 900, 700, 800, 1_000])
    clean = run(Monitor(lambda m: settings()), parts, ref)
    written = {o.key: o for o in clean}
    assert len(written) == 3

    crashed = Monitor(lambda m: settings())
    before = run(crashed, parts[:3], ref)  # windows 0 and 1 written, window 2 open (rows 2000-2199)
    assert [o.window_start for o in before] == [T0, T0 + 10_000]
    # restart: windows up to T0 + 20 s are in the warehouse; Kafka redelivers from parts[1] (it holds
    # rows of window 1 and its message was not acknowledged until window 1 was written... and parts[2]
    # holds window 2's first rows)
    restarted = Monitor(lambda m: settings())
    restarted.recover("m", "1", T0 + 20_000)
    replay = []
    for i, b in enumerate(parts[1:]):
        result = restarted.ingest(b, ref, source=0, now_ms=0)
        if i == 0:
            assert result.replayed == b.n and result.late == 0
        replay += restarted.close_due(0)
    assert [o.window_start for o in replay] == [T0 + 20_000]
    assert drift_table(replay[0]) == drift_table(written[replay[0].key])
    assert same_profiles(replay[0].profile.summary_rows(), written[replay[0].key].profile.summary_rows())


def test_needs_recovery_before_the_first_batch() -> None:
    monitor = Monitor(lambda m: settings())
    assert monitor.needs_recovery("m", "1")
    with pytest.raises(RuntimeError, match="recover"):
        monitor.ingest(stream(3), reference(), source=0, now_ms=0)
    monitor.recover("m", "1", None)
    assert not monitor.needs_recovery("m", "1") and monitor.needs_recovery("m", "2")


def test_idle_models_close_their_last_window_by_the_wall_clock() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings(lateness_ms=500), idle_ms=2_000)
    monitor.recover("m", "1", None)
    monitor.ingest(stream(500, step=10), ref, source=0, now_ms=1_000_000)  # events up to T0 + 4.99 s
    assert monitor.close_due(1_001_000) == []
    assert monitor.close_due(1_007_000) == []  # idle for 4 s past idle_ms: watermark T0 + 8.49 s
    (o,) = monitor.close_due(1_008_600)  # T0 + 10.09 s
    assert o.window_start == T0 and o.n_current == 500
    assert monitor.open_windows() == []


def test_logged_features_do_not_count_as_predictions() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings())
    monitor.recover("m", "1", None)
    batch = stream(1_000)
    monitor.ingest(batch, ref, source=0, now_ms=0, has_predictions=False)
    monitor.ingest(stream(1, start=T0 + 10_000, seed=3), ref, source=0, now_ms=0)
    (o,) = monitor.close_due(0)
    assert o.n_current == 1_000
    assert PREDICTION_FEATURE not in {r.feature for r in o.drift}
    assert o.latency == {} and o.n_latency == 0


def test_windows_of_two_versions_close_on_one_model_clock() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings())
    run(monitor, [stream(500, version="1"), stream(500, version="2", seed=2, start=T0 + 5_000)], ref)
    monitor.ingest(stream(1, start=T0 + 10_000, seed=3), ref, source=0, now_ms=0)
    out = monitor.close_due(0)
    assert sorted((o.model_version, o.n_current) for o in out) == [("1", 500), ("2", 500)]
    assert monitor.is_done(Hold(PREDICTIONS, "m", "2", T0 + 10_000))
    assert not monitor.is_done(Hold(PREDICTIONS, "m", "2", T0 + 20_000))
    assert not monitor.is_done(Hold(PREDICTIONS, "other", "1", T0))


def test_labels_join_their_predictions_and_grade_them_per_label_window() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings())
    batch = stream(1_000)
    run(monitor, [batch], ref)
    rng = np.random.default_rng(5)
    y = (rng.random(1_000) < batch.predictions).astype(int)  # a calibrated model
    label_times = T0 + 3_600_000 + np.arange(1_000) * 10  # an hour later: one label window
    result = monitor.ingest_labels("m", batch.event_ids, y.tolist(), label_times, now_ms=0)
    assert result.joined == 1_000 and result.pending == 0 and result.late == 0
    assert {h for hs in result.holds for h in hs} == {Hold(LABELS, "m", "1", T0 + 3_610_000)}
    close_labels(monitor, ref, T0 + 3_610_000)
    (perf,) = [o for o in monitor.close_due(0) if isinstance(o, PerformanceOutcome)]
    assert perf.window_start == T0 + 3_600_000 and perf.n_labeled == 1_000
    expected = compute_performance(
        np.array(y), batch.predictions, None, {"channel": batch.attributes["channel"]}, min_segment_size=1
    )
    assert {(r.segment, r.metric): r.value for r in perf.rows} == pytest.approx(
        {(r.segment, r.metric): r.value for r in expected}
    )
    assert monitor.is_done(Hold(LABELS, "m", "1", T0 + 3_610_000))


def close_labels(monitor: Monitor, ref: ReferenceProfile, until: int) -> None:
    """Move the label clock to ``until`` with one more labelled prediction (waiting labels do not move it)."""
    probe = stream(1, start=T0 + 9_999, seed=99)
    probe.event_ids = ["probe"]
    monitor.ingest(probe, ref, source=0, now_ms=0)
    monitor.ingest_labels("m", ["probe"], [0], np.array([until]), now_ms=0)


def test_labels_that_come_first_wait_for_their_prediction() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings())
    batch = stream(100)
    result = monitor.ingest_labels("m", batch.event_ids[:40], [1] * 40, np.full(40, T0 + 1_000), now_ms=0)
    assert result.joined == 0 and result.pending == 40 and result.holds == [[]] * 40
    assert monitor.pending_labels() == 40
    monitor.recover("m", "1", None)
    ingested = monitor.ingest(batch, ref, source=0, now_ms=0)
    assert ingested.joined_labels == 40
    assert ingested.holds == [Hold(LABELS, "m", "1", T0 + 10_000)]
    assert monitor.pending_labels() == 0


def test_predictions_from_before_a_restart_join_waiting_labels() -> None:
    old = stream(50)
    restarted = Monitor(lambda m: settings())  # its index is empty: the predictions came before the restart
    result = restarted.ingest_labels("m", old.event_ids[:20], [1] * 20, np.full(20, T0 + 60_000), now_ms=0)
    assert result.pending == 20 and result.unmatched == old.event_ids[:20]
    restarted.recover("m", "1", None)
    holds = restarted.remember(take_rows(old, np.arange(30)), now_ms=0)  # as found in the warehouse
    assert sorted(holds) == sorted(old.event_ids[:20])
    assert set(holds[old.event_ids[0]]) == {Hold(LABELS, "m", "1", T0 + 70_000)}
    assert restarted.open_windows() == []  # remembered predictions are not measured again
    assert restarted.open_label_windows() == [("m", "1", T0 + 60_000)]
    assert restarted.pending_labels() == 0


def test_change_detectors_count_alarms_on_the_score_and_error_streams() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings(size_ms=5_000, detectors=("adwin",)))
    rng = np.random.default_rng(3)
    batch = stream(6_000, step=5)  # six windows of 1,000 events; the last stays open
    scores = np.where(np.arange(6_000) < 3_000, rng.normal(0.2, 0.05, 6_000), rng.normal(0.8, 0.05, 6_000))
    batch.predictions = scores
    out = run(monitor, [batch], ref)
    counts = [(o.window_start, c.alarms) for o in out for c in o.changes]
    assert all(c.detector == "adwin" and c.feature == PREDICTION_FEATURE for o in out for c in o.changes)
    assert len(out) == 5
    assert sum(a for s, a in counts if s < T0 + 15_000) == 0  # stationary first half: quiet
    assert sum(a for s, a in counts if s == T0 + 15_000) >= 1  # the jump at T0 + 15 s
    assert all(c.n_values == 1_000 for o in out for c in o.changes)
    report = out[3].report(0)
    assert any(m.metric == "adwin" and m.drifted for m in report.metrics)

    # errors: a classifier that becomes wrong
    y = np.where(np.arange(6_000) < 3_000, scores > 0.5, scores < 0.5).astype(int)
    label_times = T0 + 100_000 + np.arange(6_000) * 5
    monitor.ingest_labels("m", batch.event_ids, y.tolist(), label_times, now_ms=0)
    close_labels(monitor, ref, T0 + 200_000)
    perf = [o for o in monitor.close_due(0) if isinstance(o, PerformanceOutcome)]
    assert len(perf) == 6
    errors = {o.window_start: sum(c.alarms for c in o.changes if c.feature == ERROR_FEATURE) for o in perf}
    assert sum(n for s, n in errors.items() if s < T0 + 115_000) == 0
    assert sum(n for s, n in errors.items() if s >= T0 + 115_000) >= 1


def test_rows_without_a_predicted_label_are_graded_by_their_score() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings(detectors=("adwin",)))
    batch = stream(1_000)
    by_score = np.where(batch.predictions >= 0.5, "1", "0")
    # every other row carries a predicted label, the opposite of what its score says; the rest carry none
    batch.predicted_labels = [None if i % 2 else ("0" if c == "1" else "1") for i, c in enumerate(by_score.tolist())]
    run(monitor, [batch], ref)
    y = by_score.astype(int)  # right wherever the score decides, wrong wherever the predicted label does
    monitor.ingest_labels("m", batch.event_ids, y.tolist(), T0 + 3_600_000 + np.arange(1_000) * 10, now_ms=0)
    close_labels(monitor, ref, T0 + 3_610_000)
    (perf,) = [o for o in monitor.close_due(0) if isinstance(o, PerformanceOutcome)]
    (errors,) = [c for c in perf.changes if c.feature == ERROR_FEATURE]
    assert errors.n_values == 1_000  # rows without a predicted label are in the error stream too
    accuracy = {r.metric: r.value for r in perf.rows if r.segment == ""}["accuracy"]
    assert accuracy == 0.5


def test_reset_forgets_everything() -> None:
    ref = reference()
    monitor = Monitor(lambda m: settings())
    run(monitor, [stream(500)], ref)
    assert monitor.open_windows() == [("m", "1", T0)]
    monitor.reset()
    assert monitor.open_windows() == [] and monitor.needs_recovery("m", "1")


def test_concat_and_take_keep_columns_aligned() -> None:
    a = stream(5, seed=1)
    b = PredictionBatch(
        "m",
        "1",
        ["x", "y"],
        np.array([T0, T0 + 1]),
        numeric={"a": np.array([1.0, 2.0])},
        predictions=np.array([0.1, 0.2]),
        predicted_labels=["1", "0"],
    )
    c = concat_batches([a, b])
    assert c.n == 7 and c.event_ids[-2:] == ["x", "y"]
    assert np.isnan(c.numeric["b"][-2:]).all() and c.numeric["a"][-2:].tolist() == [1.0, 2.0]
    assert c.categorical["region"][-2:] == [None, None]
    assert c.attributes["channel"][-2:] == ["", ""]
    assert c.predicted_labels == [None] * 5 + ["1", "0"]
    assert np.isnan(c.latency_ms[-2:]).all() and c.latency_ms[:5].tolist() == a.latency_ms.tolist()
    t = take_rows(c, np.array([6, 0]))
    assert t.event_ids == ["y", a.event_ids[0]] and t.predicted_labels == ["0", None]
    assert t.event_times.tolist() == [T0 + 1, a.event_times[0]]


def test_segments_named_in_the_settings_get_their_drift_and_the_window_its_root_cause() -> None:
    ref = reference()
    batch = stream(3_000)
    app = np.asarray(batch.attributes["channel"]) == "app"
    batch.numeric["b"] = batch.numeric["b"] + 1.5 * app  # drift in channel=app only
    segmented = MonitorSettings(Windowing(10_000, 0), detectors=(), min_segment_size=1, segments=("channel",))
    outcomes = run(Monitor(lambda m: segmented), chunks(batch, [700, 1_100, 1_200]), ref)
    again = run(Monitor(lambda m: segmented), [batch], ref)
    plain = run(Monitor(lambda m: settings()), [batch], ref)
    for o, o2, p in zip(outcomes, again, plain, strict=True):
        # the population's rows are those of a monitor without segments
        assert drift_table(o) == drift_table(p) and p.segment_drift == []
        assert [s.segment for s in o.segment_drift] == ["channel=app", "channel=web"]
        rows = np.flatnonzero((batch.event_times >= o.window_start) & (batch.event_times < o.window_end))
        part = take_rows(batch, rows)
        for s in o.segment_drift:
            assert s.n == sum(c == s.segment.split("=")[1] for c in part.attributes["channel"])
            # the model output and the window's top 5 features by effect, every metric of each
            top = [e.feature for e in o.root_cause.features[:5]]
            assert {m.feature for m in s.drift} == {PREDICTION_FEATURE, *top} and "b" in top
        by = {s.segment: s for s in o.segment_drift}
        assert by["channel=app"].drifted == ["b"] and by["channel=web"].drifted == []
        assert o.root_cause is not None and o.root_cause.features[0].feature == "b"
        assert o.root_cause.segments[0].segment == "channel=app"
        # the batching does not change them
        assert [(s.segment, s.n, [(m.feature, m.metric, m.value) for m in s.drift]) for s in o.segment_drift] == [
            (s.segment, s.n, [(m.feature, m.metric, m.value) for m in s.drift]) for s in o2.segment_drift
        ]
        assert o.root_cause == o2.root_cause


def test_without_drift_or_segments_a_window_has_no_root_cause() -> None:
    outcomes = run(Monitor(lambda m: settings()), [stream(3_000)], reference())
    assert outcomes and all(o.root_cause is None and o.segment_drift == [] for o in outcomes)


def test_the_label_index_bound_is_shared_by_every_model() -> None:
    # two models, 300 predictions each, a bound of 400 for both: the first model's earliest
    # 200 predictions make room for the second's; the labels of those find no prediction
    ref = reference()
    monitor = Monitor(lambda m: settings(), index_max_entries=400)
    for model in ("m", "n"):
        batch = stream(300, seed=ord(model))
        batch.model_id = model
        monitor.recover(model, "1", None)
        monitor.ingest(batch, ref, source=0, now_ms=0)
    assert monitor.index_stats()["evicted"] == 200
    first = [f"e{ord('m')}-{i}" for i in range(300)]
    got = monitor.ingest_labels("m", first, [1] * 300, np.full(300, T0 + 60_000), now_ms=0)
    assert (got.joined, got.pending) == (100, 200)
    second = [f"e{ord('n')}-{i}" for i in range(300)]
    assert monitor.ingest_labels("n", second, [1] * 300, np.full(300, T0 + 60_000), now_ms=0).joined == 300


def test_the_score_log_gives_the_raw_event_order_in_less_room() -> None:
    # chunks in time order with repeated times (kept as runs), out of order, and views of a larger
    # buffer: the detectors see exactly the order the raw scores and times give
    rng = np.random.default_rng(3)
    start = T0
    log = ScoreLog(start)
    scores, times = [], []
    for k in range(40):
        n = int(rng.integers(1, 300))
        t = start + rng.integers(0, 60_000, n)
        if k % 2:
            t = np.sort(rng.integers(0, 50, n) + start + 1_000 * k)  # many events per millisecond
        buffer = np.round(rng.random((3, n)), 2)  # rounded: ties in time and value
        log.append(buffer[1], t)
        scores.append(buffer[1].copy())
        times.append(t)
    raw = np.concatenate(scores), np.concatenate(times)
    assert log.in_event_order().tolist() == raw[0][np.lexsort((raw[0], raw[1]))].tolist()
    kept = sum(s.nbytes for s in log._scores) + sum(t.nbytes + (0 if r is None else r.nbytes) for t, r in log._times)
    assert kept < 12 * log.n and all(s.base is None for s in log._scores)
