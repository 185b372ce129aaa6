"""The monitor's slow-drift (``trend_evidence``) and multivariate (``__multivariate__``) rows.

Oracles: a ``TrendDetector`` fed the windows' exact profiles in window order, and a
``MultivariateWindow`` of exactly each window's rows, both built apart from the monitor.
"""

from __future__ import annotations

import numpy as np
import pytest

from driftline.retrainer.reference import build_reference
from driftline.streams.core.batches import take_rows
from driftline.streams.core.detector_state import split_detector_state
from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.multivariate import MULTIVARIATE_FEATURE, MultivariateModel
from driftline.streams.core.outcomes import WindowOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.sampler import stable_seed
from driftline.streams.core.sequential import METRIC as TREND_METRIC
from driftline.streams.core.sequential import TrendDetector
from driftline.streams.core.window_profile import WindowProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PREDICTION_FEATURE, FeatureDrift, PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
SIZE = 10_000
PER_WINDOW = 1_000
FEATURES = ("a", "b", "c")


def reference(version: str = "1", seed: int = 0, n: int = 5_000, loc: float = 0.0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    return build_reference("m", version, {f: rng.normal(loc=loc, size=n) for f in FEATURES}, {}, rng.random(n))


def stream(
    windows: int, *, rho_from: int | None = None, trend_from: int | None = None, seed: int = 1
) -> PredictionBatch:
    """``windows`` windows of 1,000 events: a and b get correlation 0.8 from ``rho_from`` (marginals
    unchanged), c's mean moves by 0.05 sigma per window from ``trend_from``."""
    rng = np.random.default_rng(seed)
    n = windows * PER_WINDOW
    window = np.arange(n) // PER_WINDOW
    a, noise, c = rng.normal(size=(3, n))
    b = rng.normal(size=n)
    if rho_from is not None:
        b = np.where(window >= rho_from, 0.8 * a + 0.6 * noise, b)
    if trend_from is not None:
        c = c + 0.05 * np.clip(window - trend_from + 1, 0, None)
    times = T0 + np.arange(n, dtype=np.int64) * (SIZE // PER_WINDOW)
    return PredictionBatch(
        "m", "1", [f"e{i}" for i in range(n)], times, numeric={"a": a, "b": b, "c": c}, predictions=rng.random(n)
    )


def settings(
    detectors: tuple[str, ...] = (), trend_guarantee: str = "rate", trend_level: str = "model"
) -> MonitorSettings:
    return MonitorSettings(
        Windowing(SIZE, 0), detectors=detectors, trend_guarantee=trend_guarantee, trend_level=trend_level
    )


def pieces(batch: PredictionBatch, size: int) -> list[PredictionBatch]:
    return [take_rows(batch, np.arange(lo, min(lo + size, batch.n))) for lo in range(0, batch.n, size)]


def run(
    monitor: Monitor, batches: list[PredictionBatch], ref: ReferenceProfile | list[ReferenceProfile]
) -> list[WindowOutcome]:
    refs = ref if isinstance(ref, list) else [ref] * len(batches)
    out = []
    for b, r in zip(batches, refs, strict=True):
        if monitor.needs_recovery("m", "1"):
            monitor.recover("m", "1", None)
        monitor.ingest(b, r, source=0, now_ms=0)
        out += [o for o in monitor.close_due(0) if isinstance(o, WindowOutcome)]
    return out


def rows(outcome: WindowOutcome, *, metric: str | None = None, feature: str | None = None) -> list[FeatureDrift]:
    return [
        r for r in outcome.drift if (metric is None or r.metric == metric) and (feature is None or r.feature == feature)
    ]


def window_rows(batch: PredictionBatch, start: int) -> PredictionBatch:
    t = np.asarray(batch.event_times)
    return take_rows(batch, np.flatnonzero((t >= start) & (t < start + SIZE)))


def test_each_window_gets_trend_rows_per_numeric_stream_and_multivariate_rows_matching_the_oracles() -> None:
    ref = reference()
    batch = stream(8, rho_from=4, trend_from=2)
    outcomes = run(Monitor(lambda m: settings()), pieces(batch, 700), ref)
    assert [o.window_start for o in outcomes] == [T0 + i * SIZE for i in range(7)]  # the last waits for the watermark
    model = MultivariateModel.from_dict(ref.multivariate)
    oracle = TrendDetector.from_reference(ref)
    for i, o in enumerate(outcomes):
        part = window_rows(batch, o.window_start)
        profile = WindowProfile.empty(ref, seed=stable_seed("m", "1", o.window_start))
        profile.update(part.numeric, part.categorical, part.predictions)
        assert rows(o, metric=TREND_METRIC) == oracle.update_window(profile)
        assert [r.feature for r in rows(o, metric=TREND_METRIC)] == [*FEATURES, PREDICTION_FEATURE]
        expected_window = model.window()
        expected_window.update(model, part.numeric)
        got = rows(o, feature=MULTIVARIATE_FEATURE)
        want = model.evaluate(expected_window)
        # the window's sums are exact: the monitor's batches of 700 give the oracle's rows bit for bit
        assert got == want
        correlation = {r.metric: r for r in got}["correlation_change"]
        assert correlation.drifted == (i >= 4), (i, correlation)
    # c's trend is flagged within a few windows of its onset; a and b never
    flagged = {
        f: [i for i, o in enumerate(outcomes) if rows(o, metric=TREND_METRIC, feature=f)[0].drifted] for f in FEATURES
    }
    assert flagged["a"] == flagged["b"] == []
    assert flagged["c"] and flagged["c"][0] <= 2 + 4 and flagged["c"] == list(range(flagged["c"][0], 7))


def test_a_reference_without_a_multivariate_model_gets_no_multivariate_rows_and_old_dicts_load() -> None:
    rng = np.random.default_rng(3)
    plain = ReferenceProfile.build("m", "1", {f: rng.normal(size=2_000) for f in FEATURES}, {}, rng.random(2_000))
    stored = plain.to_dict()
    assert "multivariate" not in stored and ReferenceProfile.from_dict(stored).multivariate is None
    outcomes = run(Monitor(lambda m: settings()), [stream(3)], plain)
    assert outcomes and all(not rows(o, feature=MULTIVARIATE_FEATURE) for o in outcomes)
    assert all(len(rows(o, metric=TREND_METRIC)) == 4 for o in outcomes)
    # one feature: nothing to relate
    assert build_reference("m", "1", {"x": rng.normal(size=100)}, {}).multivariate is None


def test_a_new_reference_for_the_version_restarts_the_trend_from_the_new_baseline() -> None:
    old, new = reference("1", seed=0), reference("2", seed=5, loc=0.3)
    batch = stream(9, trend_from=1)
    batches = pieces(batch, PER_WINDOW)  # one message per window: the reference changes at window 4
    refs = [old] * 4 + [new] * 5
    outcomes = run(Monitor(lambda m: settings()), batches, refs)
    assert len(outcomes) == 8
    # windows 0-3 against the old reference; window 4 onwards (opened with the new one) from scratch
    fresh = TrendDetector.from_reference(new)
    for o in outcomes[4:]:
        part = window_rows(batch, o.window_start)
        profile = WindowProfile.empty(new, seed=stable_seed("m", "1", o.window_start))
        profile.update(part.numeric, part.categorical, part.predictions)
        assert rows(o, metric=TREND_METRIC) == fresh.update_window(profile)
    continued = TrendDetector.from_reference(old)
    for o in outcomes[:4]:
        part = window_rows(batch, o.window_start)
        profile = WindowProfile.empty(old, seed=stable_seed("m", "1", o.window_start))
        profile.update(part.numeric, part.categorical, part.predictions)
        assert rows(o, metric=TREND_METRIC) == continued.update_window(profile)


@pytest.mark.parametrize(
    ("key", "first", "then", "first_options", "first_threshold"),
    [
        # 4 streams (a, b, c, the model output) share alpha = 0.05: each alarms at 4 / 0.05
        ("trend_guarantee", "ever", "rate", {"guarantee": "ever"}, 80.0),
        # each stream on its own alpha: 1 / 0.05
        ("trend_level", "stream", "model", {"shared_by": 1}, 20.0),
    ],
)
def test_the_trend_detector_follows_the_settings_and_a_restart_under_other_ones_starts_afresh(
    key: str, first: str, then: str, first_options: dict[str, object], first_threshold: float
) -> None:
    ref = reference()
    batch = stream(9, trend_from=1)
    batches = pieces(batch, PER_WINDOW)  # one message per window

    def oracle_rows(det: TrendDetector, o: WindowOutcome) -> list[FeatureDrift]:
        part = window_rows(batch, o.window_start)
        profile = WindowProfile.empty(ref, seed=stable_seed("m", "1", o.window_start))
        profile.update(part.numeric, part.categorical, part.predictions)
        trend_rows = rows(o, metric=TREND_METRIC)
        assert {r.threshold for r in trend_rows} == {det.threshold}
        return det.update_window(profile)

    before = run(Monitor(lambda m: settings(**{key: first})), batches[:5], ref)
    assert len(before) == 4
    oracle = TrendDetector.from_reference(ref, **first_options)
    assert oracle.threshold == first_threshold
    for o in before:
        assert rows(o, metric=TREND_METRIC) == oracle_rows(oracle, o)
    written = before[-1]
    assert written.detector_state is not None
    _, saved = split_detector_state(written.detector_state)
    assert saved is not None and saved[1].to_dict() == oracle.to_dict()  # (reference key, detector)

    def restarted(value: str) -> list[WindowOutcome]:
        monitor = Monitor(lambda m: settings(**{key: value}))
        monitor.recover("m", "1", written.window_end)
        monitor.restore_detectors("m", "1", "score", written.detector_state)
        return run(monitor, batches[4:], ref)

    # the same settings after the restart: the saved evidence goes on
    for o in restarted(first):
        assert rows(o, metric=TREND_METRIC) == oracle_rows(oracle, o)
    # the policy now asks for the default: the evidence of the other mode or alarm level is not
    # reused, the detector starts afresh
    default = TrendDetector.from_reference(ref)
    after = restarted(then)
    assert len(after) == 4
    for o in after:
        assert rows(o, metric=TREND_METRIC) == oracle_rows(default, o)


@pytest.mark.parametrize("detectors", [("adwin",), ()])
def test_a_restart_from_the_last_written_window_gives_the_rows_of_a_run_without_a_crash(
    detectors: tuple[str, ...],
) -> None:
    ref = reference()
    batch = stream(10, rho_from=3, trend_from=2)
    batches = pieces(batch, 500)  # two messages per window
    clean = run(Monitor(lambda m: settings(detectors)), batches, ref)
    assert len(clean) == 9

    first = Monitor(lambda m: settings(detectors))
    before = run(first, batches[:11], ref)  # window 5 holds its first message only
    written = before[-1]
    assert written.window_end == T0 + 5 * SIZE and written.detector_state is not None
    bank, trend = split_detector_state(written.detector_state)
    assert trend is not None and trend[1].windows == 5 and (bank is None) == (not detectors)

    second = Monitor(lambda m: settings(detectors))
    second.recover("m", "1", written.window_end)
    resumed = second.restore_detectors("m", "1", "score", written.detector_state)
    assert resumed == (list(detectors) if detectors else None)
    after = run(second, batches[10:], ref)  # Kafka delivers again from window 5's first message
    assert [o.window_start for o in after] == [o.window_start for o in clean[5:]]
    for got, want in zip(after, clean[5:], strict=True):
        assert got.drift == want.drift
        assert got.detector_state == want.detector_state

    # without the restore, the trend would start over: the rows would differ
    fresh = Monitor(lambda m: settings(detectors))
    fresh.recover("m", "1", written.window_end)
    assert [rows(o, metric=TREND_METRIC) for o in run(fresh, batches[10:], ref)] != [
        rows(o, metric=TREND_METRIC) for o in clean[5:]
    ]


def test_an_unreadable_trend_state_raises_and_changes_nothing() -> None:
    ref = reference()
    outcomes = run(Monitor(lambda m: settings()), [stream(3)], ref)
    state = outcomes[-1].detector_state
    assert state is not None
    monitor = Monitor(lambda m: settings())
    monitor.recover("m", "1", outcomes[-1].window_end)
    with pytest.raises(ValueError, match="slow-drift"):
        monitor.restore_detectors("m", "1", "score", state[:40])
    assert monitor.restore_detectors("m", "1", "score", state) is None  # read now; no change detectors run


def test_a_multivariate_model_of_an_unknown_format_is_left_out_and_the_window_still_closes() -> None:
    ref = reference()
    unreadable = ReferenceProfile.from_dict({**ref.to_dict(), "multivariate": {**ref.multivariate, "format": 99}})
    outcomes = run(Monitor(lambda m: settings()), [stream(3)], unreadable)
    assert outcomes and all(not rows(o, feature=MULTIVARIATE_FEATURE) for o in outcomes)
    assert all(len(rows(o, metric=TREND_METRIC)) == 4 for o in outcomes)
