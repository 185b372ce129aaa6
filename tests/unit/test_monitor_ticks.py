"""An idle tick visits only the models with something due, and closes exactly what a visit of every model closes.

The reference below visits every model on every tick (as close_due did before its
wake-up heap); both monitors get the same events, touches, labels and ticks, with
models that differ in window size, lateness and traffic, sources that go idle,
labels in their own windows, predictions and labels that expire from the index,
and a wall clock that sometimes steps back; and versions released by release_idle at the same ticks.
"""

from __future__ import annotations

import numpy as np
import pytest

from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.outcomes import PerformanceOutcome, WindowOutcome
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

T0 = 1_700_000_000_000
RELEASE_MS = 30_000  # release_idle's silence
# model -> (window size, allowed lateness): different window ends and lateness deadlines
SETTINGS = {
    "a": (10_000, 0),
    "b": (7_000, 3_000),
    "c": (30_000, 12_000),
    "d": (5_000, 1_000),
    "e": (20_000, 0),
}


class ScanAll(Monitor):
    """The reference: every model and version visited on every tick."""

    def _due(self, now_ms: int) -> list[str]:
        return sorted(self._tracks)

    def _schedule(self, track: object, now_ms: int) -> None:
        pass

    def release_idle(self, now_ms: int, idle_ms: int) -> list[tuple[str, str]]:
        released = []
        for model_id, track in sorted(self._tracks.items()):
            busy = {k[1] for k in track.predictions.windows.keys()}  # noqa: SIM118 - a WindowStore, not a dict
            for version, seen in sorted(track.last_seen.items()):
                if now_ms - seen < idle_ms or version in busy or track.late.get(version):
                    continue
                del track.last_seen[version]
                track.released[version] = track.predictions.recovered.pop(version, None)
                track.trends.pop(version, None)
                released.append((model_id, version))
        return released


def settings_for(model_id: str) -> MonitorSettings:
    size, lateness = SETTINGS[model_id]
    # no detectors: the reference has none to forget on release
    return MonitorSettings(Windowing(size, lateness), detectors=(), min_segment_size=1)


def key(outcome: WindowOutcome | PerformanceOutcome) -> tuple:
    if isinstance(outcome, WindowOutcome):
        return ("w", outcome.model_id, outcome.model_version, outcome.window_start, outcome.n_current,
                outcome.late_events)  # fmt: skip
    return ("p", outcome.model_id, outcome.model_version, outcome.window_start, outcome.n_labeled)


def run(monitor_type: type[Monitor], idle_ms: int | None, seed: int) -> tuple[list[list[tuple]], dict, int, int]:
    rng = np.random.default_rng(seed)
    scores = np.linspace(0, 1, 1_000)
    refs = {
        m: ReferenceProfile.build(m, "1", {"x": np.random.default_rng(k).normal(size=1_000)}, {}, scores)
        for k, m in enumerate(SETTINGS)
    }
    monitor = monitor_type(settings_for, idle_ms=idle_ms, index_ttl_ms=45_000)
    ticks: list[list[tuple]] = []
    visits = 0
    now = 0
    sent: dict[str, list[tuple[str, int]]] = {m: [] for m in SETTINGS}
    for step in range(700):
        # the wall clock runs on, sometimes steps back; each model is busy or silent in phases of its own
        now += int(rng.integers(0, 4_000)) if rng.random() > 0.03 else -2_000
        for k, model_id in enumerate(SETTINGS):
            busy = (step // (40 + 17 * k)) % 3 != 2 and rng.random() < 0.6
            if busy:
                if monitor.needs_recovery(model_id, "1"):
                    monitor.recover(model_id, "1", None)
                    monitor.recover_labels(model_id, "1", None)
                n = int(rng.integers(1, 20))
                source = int(rng.integers(0, 2))
                times = T0 + now - rng.integers(0, 15_000, n)  # some late
                ids = [f"{model_id}-{step}-{i}" for i in range(n)]
                batch = PredictionBatch(
                    model_id, "1", ids, times.astype(np.int64), numeric={"x": rng.normal(size=n)},
                    predictions=rng.random(n),
                )  # fmt: skip
                monitor.ingest(batch, refs[model_id], source=source, now_ms=now)
                monitor.touch(model_id, source, now + int(rng.integers(0, 50)))
                sent[model_id].extend(zip(ids, times.tolist()))
            if rng.random() < 0.3 and sent[model_id]:
                # labels of earlier predictions, also while the model is silent, and of some never
                # predicted (they wait, then expire)
                picks = rng.choice(len(sent[model_id]), size=min(5, len(sent[model_id])), replace=False)
                label_ids = [sent[model_id][i][0] for i in picks] + [f"{model_id}-ghost-{step}"]
                label_times = np.full(len(label_ids), T0 + now - int(rng.integers(0, 5_000)), dtype=np.int64)
                monitor.ingest_labels(model_id, label_ids, [int(x) for x in rng.integers(0, 2, len(label_ids))],
                                      label_times, now_ms=now)  # fmt: skip
                monitor.touch(model_id, 0, now, labels=True)
        closed = [key(o) for o in monitor.close_due(now)]
        stats = monitor.index_stats()
        released = [("released", *v) for v in monitor.release_idle(now, RELEASE_MS)]
        ticks.append(
            [*closed, *released, ("index", monitor.pending_labels(), stats["expired"], stats["pending_expired"])]
        )
        visits += len(monitor._visited)  # the reference never sets it: 0
    return ticks, monitor.index_stats(), monitor.pending_labels(), visits


@pytest.mark.parametrize("idle_ms", [20_000, None])
@pytest.mark.parametrize("seed", [1, 2])
def test_the_same_windows_close_at_the_same_ticks_as_visiting_every_model(idle_ms: int | None, seed: int) -> None:
    got, got_stats, got_pending, visits = run(Monitor, idle_ms, seed)
    want, want_stats, want_pending, _ = run(ScanAll, idle_ms, seed)
    closed = [k for tick in want for k in tick if k[0] in ("w", "p")]
    # the schedule exercises what it means to: both kinds of window, late rows, expiry of both kinds
    assert {k[0] for k in closed} == {"w", "p"} and {k[1] for k in closed} == set(SETTINGS)
    assert any(k[0] == "w" and k[5] > 0 for k in closed)
    # without idle sources a silent model's last window stays open: it is never released
    assert len({k[1] for tick in want for k in tick if k[0] == "released"}) >= (0 if idle_ms is None else 3)
    assert want_stats["expired"] > 0 and want_stats["pending_expired"] > 0
    for tick, (g, w) in enumerate(zip(got, want)):
        assert g == w, f"tick {tick}"
    assert len(got) == len(want)
    assert (got_stats, got_pending) == (want_stats, want_pending)
    # and it did not visit every model on every tick
    assert visits < 0.8 * len(SETTINGS) * len(want)
