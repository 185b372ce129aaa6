"""Idle versions release their state (issue 15, item 4) and resume it as a restart would, with identical rows."""

from __future__ import annotations

import numpy as np

from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.outcomes import WindowOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 10_000
SIZE = 10_000
IDLE = 60_000  # the release time, wall clock


def reference(model_id: str, seed: int) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    return ReferenceProfile.build(
        model_id,
        "1",
        {"a": rng.normal(size=5_000), "b": rng.exponential(size=5_000)},
        {"region": rng.choice(["north", "south"], 5_000).tolist()},
        rng.random(5_000),
    )


def batch(model_id: str, start: int, n: int, seed: int, shift: float = 0.0) -> PredictionBatch:
    rng = np.random.default_rng(seed)
    return PredictionBatch(
        model_id,
        "1",
        [f"{model_id}-{seed}-{i}" for i in range(n)],
        start + np.arange(n, dtype=np.int64) * (SIZE // n),
        numeric={"a": rng.normal(shift, size=n), "b": rng.exponential(size=n)},
        categorical={"region": rng.choice(["north", "south"], n).tolist()},
        # a score that shifts: the change detectors and the slow-drift detector carry state across windows
        predictions=np.clip(rng.normal(0.3 + shift / 10, 0.1, n), 0.0, 1.0),
    )


# (wall clock ms, model, first event time, seed, shift), event time following the wall clock: every 10 s a
# window's batch of "busy"; "quiet" stops for 300 s, far longer than IDLE, then resumes with a shifted score
SCHEDULE = [
    (step * SIZE, model_id, T0 + step * SIZE, 2 * step + k, 0.0 if step < 20 else 1.0)
    for step in range(40)
    for k, model_id in enumerate(("busy", "quiet"))
    if model_id == "busy" or not 5 <= step < 35
]


def key(outcome: object) -> tuple:
    if not isinstance(outcome, WindowOutcome):
        return (type(outcome).__name__,)
    report = outcome.report(computed_at=0)
    return (
        outcome.model_id,
        outcome.window_start,
        outcome.n_current,
        outcome.late_events,
        outcome.detector_state,
        [(c.detector, c.alarms, c.n_values) for c in outcome.changes],
        repr(report),
    )


def run(release: bool) -> tuple[list[tuple], list[list[str]]]:
    refs = {m: reference(m, seed) for seed, m in enumerate(("busy", "quiet"))}
    settings = MonitorSettings(Windowing(SIZE, 0), detectors=("adwin", "page_hinkley"), min_segment_size=1)
    monitor = Monitor(lambda model_id: settings, idle_ms=30_000)
    written: dict[tuple[str, str], WindowOutcome] = {}  # what the warehouse holds: the last window of each
    rows: list[tuple] = []
    tracked: list[list[str]] = []
    for now, model_id, start, seed, shift in SCHEDULE:
        if monitor.needs_recovery(model_id, "1"):
            last = written.get((model_id, "1"))
            monitor.recover(model_id, "1", None if last is None else last.window_end)
            if last is not None and last.detector_state is not None:
                monitor.restore_detectors(model_id, "1", "score", last.detector_state)
        monitor.ingest(batch(model_id, start, 200, seed, shift), refs[model_id], source=0, now_ms=now)
        for outcome in monitor.close_due(now):
            rows.append(key(outcome))
            if isinstance(outcome, WindowOutcome):
                written[(outcome.model_id, outcome.model_version)] = outcome
        if release:
            monitor.release_idle(now, IDLE)
        tracked.append(sorted(m for m in ("busy", "quiet") if not monitor.needs_recovery(m, "1")))
    for outcome in monitor.close_due(10**15):
        rows.append(key(outcome))
    return rows, tracked


def test_a_released_version_resumes_with_identical_rows() -> None:
    kept, always = run(release=False)
    released, tracked = run(release=True)
    assert len(kept) == len(released) == 40 + 10
    assert released == kept
    assert all(t == ["busy", "quiet"] for t in always[1:])
    # "quiet" was silent for 300 s of wall clock: released while "busy" went on, tracked again on its return
    assert ["busy"] in tracked
    assert tracked[-1] == ["busy", "quiet"]


def test_release_waits_for_closed_windows_and_silence_then_drops_the_detectors() -> None:
    settings = MonitorSettings(Windowing(SIZE, 0), detectors=("adwin",), min_segment_size=1)
    monitor = Monitor(lambda model_id: settings, idle_ms=30_000)
    ref = reference("m", 0)
    monitor.recover("m", "1", None)
    for w in range(3):
        monitor.ingest(batch("m", T0 + w * SIZE, 100, w), ref, source=0, now_ms=0)
    assert [o.window_start for o in monitor.close_due(0)] == [T0, T0 + SIZE]
    # silent long enough, but its last window is open
    assert monitor.release_idle(now_ms=IDLE, idle_ms=IDLE) == []
    track = monitor._tracks["m"]
    assert "1:score" in track.detectors.keys() and "1" in track.trends  # noqa: SIM118 - a bank, not a dict
    assert [o.window_start for o in monitor.close_due(IDLE)] == [T0 + 2 * SIZE]  # the idle clock closes it
    assert monitor.release_idle(now_ms=IDLE - 1, idle_ms=IDLE) == []  # not silent long enough yet
    assert monitor.release_idle(now_ms=IDLE, idle_ms=IDLE) == [("m", "1")]
    assert monitor.needs_recovery("m", "1")
    assert "1:score" not in track.detectors.keys() and "1" not in track.trends  # noqa: SIM118 - a bank
    # resumed: a replayed event of a written window is still a replay, not a late event
    monitor.recover("m", "1", T0 + 3 * SIZE)
    ingested = monitor.ingest(batch("m", T0, 10, 9), ref, source=0, now_ms=IDLE + 1)
    assert (ingested.late, ingested.replayed) == (10, 0)  # as without release: never recovered from a restart
