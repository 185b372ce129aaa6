"""Rows judged late in the order their messages arrived, whatever the message kind (issue 11, finding 9).

A model fed by single events and by batches: read as a backlog (one poll, where
the worker gathers batches before single events) or live (one message at a
time), the same log must give the same windows, and late rows are counted in
the first window of their version to close after they arrived.
"""

from __future__ import annotations

import numpy as np
import pytest

from driftline.streams.core.batches import concat_batches, in_arrival_order, take_rows
from driftline.streams.core.monitor import Monitor, MonitorSettings
from driftline.streams.core.outcomes import Arrival
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.core.windows import Windowing
from driftline.streams.records import PredictionBatch

T0 = 1_700_000_000_000 - 1_700_000_000_000 % 1_000
SIZE = 1_000


def reference() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    return ReferenceProfile.build(
        "m", "1", {"x": rng.normal(size=5_000)}, {"c": rng.choice(["a", "b"], 5_000).tolist()}, rng.random(5_000)
    )


def message(times: list[int], seed: int, version: str = "1") -> PredictionBatch:
    rng = np.random.default_rng(seed)
    n = len(times)
    return PredictionBatch(
        "m",
        version,
        [f"e{seed}-{i}" for i in range(n)],
        np.array(times, dtype=np.int64),
        numeric={"x": rng.normal(size=n)},
        categorical={"c": rng.choice(["a", "b"], n).tolist()},
        predictions=rng.random(n),
    )


def log(n_messages: int, seed: int = 1, late_every: int = 0) -> list[PredictionBatch]:
    """Messages in time order: single events and batches of 20 to 200 rows interleaved; every
    ``late_every``-th message is a single event 3 windows in the past."""
    rng = np.random.default_rng(seed)
    out, t = [], T0
    for i in range(n_messages):
        if late_every and i % late_every == late_every - 1:
            out.append(message([t - 3 * SIZE], seed=1_000 + i))
            continue
        n = 1 if rng.random() < 0.6 else int(rng.integers(20, 200))
        times = (t + np.cumsum(rng.integers(0, 4, n))).tolist()
        t = times[-1] + 1
        out.append(message(times, seed=1_000 + i))
    return out


def settings(model_id: str) -> MonitorSettings:
    return MonitorSettings(Windowing(SIZE, 0), detectors=())


def outcome_table(outcomes: list) -> list[tuple]:
    return [
        (
            o.key,
            o.n_current,
            o.late_events,
            o.profile.summary_rows(),
            [(m.feature, m.metric, m.value, m.p_value, m.drifted) for m in o.drift],
        )
        for o in outcomes
    ]


def live(messages: list[PredictionBatch], ref: ReferenceProfile) -> tuple[list, int]:
    monitor = Monitor(settings, idle_ms=1)
    monitor.recover("m", "1", None)
    out, late = [], 0
    for b in messages:
        late += monitor.ingest(b, ref, source=0, now_ms=0).late
        out += monitor.close_due(now_ms=0)
    return out + monitor.close_due(now_ms=10**13), late


def backlog(
    messages: list[PredictionBatch], ref: ReferenceProfile, poll: int, reorder: bool = True
) -> tuple[list, int]:
    """Polls of ``poll`` messages, gathered as the worker does: batches first, then the single events
    in one batch; ``reorder=False`` leaves them so (the behaviour before the fix)."""
    monitor = Monitor(settings, idle_ms=1)
    monitor.recover("m", "1", None)
    out, late = [], 0
    for lo in range(0, len(messages), poll):
        part = list(enumerate(messages[lo : lo + poll]))
        gathered = [(i, b) for i, b in part if b.n > 1] + [(i, b) for i, b in part if b.n == 1]
        batch = concat_batches([b for _, b in gathered])
        owners = np.concatenate([np.full(b.n, i) for i, b in gathered])
        if reorder:
            batch, owners = in_arrival_order(batch, owners)
            late += monitor.ingest_all("m", [Arrival(batch, ref, owners)], source=0, now_ms=0)[0].late
        else:
            late += monitor.ingest(batch, ref, source=0, now_ms=0).late
        out += monitor.close_due(now_ms=0)
    return out + monitor.close_due(now_ms=10**13), late


def test_a_backlog_and_a_live_read_of_singles_and_batches_give_the_same_windows() -> None:
    ref = reference()
    messages = log(400)
    expected, late = live(messages, ref)
    assert late == 0 and len(expected) >= 10
    assert sum(o.n_current for o in expected) == sum(b.n for b in messages)
    for poll in (7, 50, 400):
        got, late = backlog(messages, ref, poll)
        assert late == 0
        assert outcome_table(got) == outcome_table(expected)
    # the scenario of the finding: gathered kind by kind, single events before a batch of a later
    # window were declared late and left out
    _, late = backlog(messages, ref, 400, reorder=False)
    assert late > 0


def test_late_rows_are_counted_in_the_first_window_to_close_after_them_whatever_the_pace() -> None:
    ref = reference()
    messages = log(300, seed=2, late_every=25)
    expected, late = live(messages, ref)
    assert late == sum(o.late_events for o in expected) == 12
    for poll in (3, 40, 300):
        got, late_b = backlog(messages, ref, poll)
        assert late_b == late
        assert outcome_table(got) == outcome_table(expected)


def test_a_late_row_goes_to_the_window_above_the_watermark_of_its_arrival() -> None:
    ref = reference()
    monitor = Monitor(settings)
    monitor.recover("m", "1", None)
    # window 0 closes when 1500 arrives; 200 comes after it: late, and counted in [1000, 2000), the first
    # window to close after it, not in [2000, 3000) opened later
    arrivals = [message([T0 + 100, T0 + 1_500], 1), message([T0 + 200], 2), message([T0 + 2_100, T0 + 3_100], 3)]
    got = monitor.ingest_all(
        "m", [Arrival(b, ref, np.full(b.n, i)) for i, b in enumerate(arrivals)], source=0, now_ms=0
    )
    assert [g.late for g in got] == [0, 1, 0]
    assert got[1].late_rows.tolist() == [0] and got[0].late_rows is None
    assert [(o.window_start - T0, o.n_current, o.late_events) for o in monitor.close_due(0)] == [
        (0, 1, 0),
        (1_000, 1, 1),
        (2_000, 1, 0),
    ]


def test_versions_of_one_model_are_judged_in_the_order_of_their_messages() -> None:
    ref1, ref2 = reference(), reference()
    ref2.model_version = "2"
    monitor = Monitor(settings)
    monitor.recover("m", "1", None)
    monitor.recover("m", "2", None)
    # message 0: version 1 at window 0; message 1: version 2 two windows later. Taken version by version
    # in the wrong order, version 1's row would look late.
    v2 = message([T0 + 2_500], 2, version="2")
    v1 = message([T0 + 100], 1)
    got = monitor.ingest_all(
        "m", [Arrival(v2, ref2, np.array([1])), Arrival(v1, ref1, np.array([0]))], source=0, now_ms=0
    )
    assert [g.late for g in got] == [0, 0]


def test_in_arrival_order_keeps_each_message_whole_and_in_order() -> None:
    batch = concat_batches([message([5, 6, 7], 1), message([1], 2), message([9], 3)])
    sorted_batch, owners = in_arrival_order(batch, np.array([2, 2, 2, 0, 4]))
    assert sorted_batch.event_times.tolist() == [1, 5, 6, 7, 9]
    assert owners.tolist() == [0, 2, 2, 2, 4]
    assert sorted_batch.numeric["x"].tolist() == take_rows(batch, np.array([3, 0, 1, 2, 4])).numeric["x"].tolist()


def test_arrivals_of_another_model_are_refused() -> None:
    monitor = Monitor(settings)
    monitor.recover("m", "1", None)
    other = PredictionBatch("n", "1", ["a"], np.array([T0]))
    with pytest.raises(ValueError, match="given with the batches of 'm'"):
        monitor.ingest_all("m", [Arrival(other, reference(), np.array([0]))], source=0, now_ms=0)
