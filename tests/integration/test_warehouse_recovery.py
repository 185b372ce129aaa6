"""What a restarted worker reads back from ClickHouse: the change detectors' state of the last written
window, and the labels that were waiting for their predictions."""

from __future__ import annotations

import time

import numpy as np
import pytest

from driftline.settings import Settings
from driftline.streams.core.detectors import ChangeDetectorBank
from driftline.streams.records import LabelEvent, PredictionBatch
from driftline.streams.sinks import Sinks
from driftline.streams.warehouse import Warehouse, WarehouseQueries
from driftline.streams.warehouse.rows import N_LABELED, DetectorStateRow, PerformanceRow, WindowProfileRow

pytestmark = pytest.mark.warehouse

T0 = 1_735_689_600_000
HOUR = 3_600_000


@pytest.fixture
def warehouse(warehouse_url: str):
    with Warehouse.connect(warehouse_url, migrate=True) as wh:
        yield wh


def sinks(warehouse: Warehouse) -> WarehouseQueries:
    # no Kafka: these reads go to the warehouse only, retried as the worker's are
    return WarehouseQueries(warehouse, retry=Sinks(Settings(), warehouse, producer=None, attempts=1).retry)


def test_the_latest_state_at_or_before_a_window_comes_back_byte_for_byte(warehouse: Warehouse) -> None:
    bank = ChangeDetectorBank(names=("adwin", "kswin"))
    states = []
    for i in range(3):
        bank.update("1:score", np.random.default_rng(i).normal(size=600))
        states.append(bank.stream_state("1:score"))
    assert all(b"\x00" in s for s in states)  # binary, not text
    now = int(time.time() * 1000)
    rows = [
        DetectorStateRow("m", "1", "score", T0 + (i + 1) * 60_000, s, now, detectors=["adwin", "kswin"])
        for i, s in enumerate(states)
    ]
    rows.append(DetectorStateRow("m", "1", "error", T0 + 60_000, b"\xff\xfe error", now))
    rows.append(DetectorStateRow("m", "2", "score", T0 + 60_000, b"other version", now))
    assert warehouse.insert_detector_states(rows, dedup_token="t1") == 5
    assert warehouse.insert_detector_states(rows, dedup_token="t1") == 5  # a retry: counted once
    assert warehouse.query_rows("SELECT count() AS n FROM detector_states")[0]["n"] == 5

    s = sinks(warehouse)
    assert s.detector_state("m", "1", "score", T0 + 3 * 60_000) == states[2]
    # a crash after the third window's state but before its marker: the second window's state is read
    assert s.detector_state("m", "1", "score", T0 + 2 * 60_000 + 59_999) == states[1]
    assert s.detector_state("m", "1", "score", T0 + 59_999) is None
    assert s.detector_state("m", "1", "error", T0 + 10 * 60_000) == b"\xff\xfe error"
    assert s.detector_state("m", "3", "score", T0 + 10 * 60_000) is None
    resumed = ChangeDetectorBank(names=("adwin", "kswin"))
    assert resumed.restore_stream("1:score", s.detector_state("m", "1", "score", T0 + 3 * 60_000)) == ["adwin", "kswin"]


def test_waiting_labels_are_those_that_no_written_label_window_counts(warehouse: Warehouse) -> None:
    """Labels stored within the time to live, whose prediction is unknown or whose label window is unwritten."""
    s = sinks(warehouse)
    now = int(time.time() * 1000)
    # predictions of version 1 for p1..p3 and of version 2 for q1; none for w1, w2
    warehouse.insert_predictions(
        [
            PredictionBatch(
                "m", "1", ["p1", "p2", "p3"], np.array([T0, T0 + 1, T0 + 2]), predictions=np.array([0.1, 0.2, 0.3])
            ),
            PredictionBatch("m", "2", ["q1"], np.array([T0 + 3]), predictions=np.array([0.4])),
            PredictionBatch("other", "1", ["w2"], np.array([T0]), predictions=np.array([0.5])),
        ]
    )
    # version 1's label windows were written up to T0 + 1 h + 60 s; version 2 has none
    warehouse.insert_performance_metrics(
        [PerformanceRow("m", "1", N_LABELED, T0 + HOUR, T0 + HOUR + 60_000, 5.0, 5, now)]
    )
    warehouse.insert_labels(
        [
            LabelEvent("p1", "m", T0 + HOUR + 10, 1.0),  # counted in a written window: not waiting
            LabelEvent("p2", "m", T0 + HOUR + 60_000, "yes"),  # its window is not written: it may have waited
            LabelEvent("q1", "m", T0 + 10, 0.0),  # version 2 wrote no label window
            LabelEvent("w1", "m", T0 + 20, 1.0),  # no prediction yet
            LabelEvent("w2", "m", T0 + 20, 1.0),  # a prediction of another model only
            LabelEvent("x1", "other", T0 + 20, 1.0),  # another model's label
        ]
    )
    got = s.waiting_labels("m", now - HOUR, limit=100)
    assert sorted((e.event_id, e.event_time, e.label) for e in got) == [
        ("p2", T0 + HOUR + 60_000, "yes"),
        ("q1", T0 + 10, 0.0),
        ("w1", T0 + 20, 1.0),
        ("w2", T0 + 20, 1.0),
    ]
    assert all(e.model_id == "m" for e in got)
    assert s.waiting_labels("m", now + HOUR, limit=100) == []  # stored before the time to live
    assert len(s.waiting_labels("m", now - HOUR, limit=2)) == 2
    # a label sent again replaces the earlier one
    time.sleep(0.01)
    warehouse.insert_labels([LabelEvent("w1", "m", T0 + 30, 0.0)])
    (w1,) = [e for e in s.waiting_labels("m", now - HOUR, limit=100) if e.event_id == "w1"]
    assert (w1.event_time, w1.label) == (T0 + 30, 0.0)


def test_the_reads_of_many_versions_at_once_answer_as_one_read_per_version(warehouse: Warehouse) -> None:
    """A fresh worker meets many versions in one poll: one read per kind answers for all of them."""
    s = sinks(warehouse)
    now = int(time.time() * 1000)
    ends = {("a", "1"): [T0 + 60_000, T0 + 120_000], ("a", "2"): [T0 + 60_000], ("b", "1"): [T0 + 180_000]}
    warehouse.insert_window_profiles(
        [
            WindowProfileRow(m, v, "x", end - 60_000, end, count=1, missing=0, computed_at=now)
            for (m, v), window_ends in ends.items()
            for end in window_ends
        ]
    )
    warehouse.insert_performance_metrics(
        [
            PerformanceRow("a", "2", N_LABELED, T0, T0 + 60_000, 3.0, 3, now),
            PerformanceRow("a", "2", N_LABELED, T0 + 60_000, T0 + 120_000, 3.0, 3, now),
            PerformanceRow("a", "2", "accuracy", T0 + 120_000, T0 + 180_000, 0.5, 3, now),  # not the marker
            PerformanceRow("c", "1", N_LABELED, T0, T0 + 60_000, 3.0, 3, now),
        ]
    )
    keys = [("a", "1"), ("a", "2"), ("b", "1"), ("b", "9"), ("c", "1"), ("nobody", "1")]
    latest = s.latest_windows(keys)
    assert latest == {k: s.latest_window(*k) for k in keys}
    assert latest[("a", "1")] == T0 + 120_000 and latest[("b", "9")] is None
    labelled = s.latest_label_windows(keys)
    assert labelled == {k: s.latest_label_window(*k) for k in keys}
    assert labelled[("a", "2")] == T0 + 120_000 and labelled[("c", "1")] == T0 + 60_000 and labelled[("a", "1")] is None
    assert s.latest_windows([]) == {} and s.latest_label_windows([]) == {}

    # waiting labels: model a's prediction a1 is counted by version 2's label windows, a2 is not
    warehouse.insert_predictions(
        [PredictionBatch("a", "2", ["a1", "a2"], np.array([T0, T0 + 1]), predictions=np.array([0.1, 0.2]))]
    )
    warehouse.insert_labels(
        [
            LabelEvent("a1", "a", T0 + 10, 1.0),
            LabelEvent("a2", "a", T0 + 120_000, 0.0),
            LabelEvent("b1", "b", T0 + 20, "yes"),
            LabelEvent("b2", "b", T0 + 30, "no"),
            LabelEvent("b3", "b", T0 + 40, "no"),
        ]
    )
    models = ["a", "b", "nobody"]
    for limit in (100, 2):
        many = s.waiting_labels_of(models, now - HOUR, limit)
        assert many == {m: s.waiting_labels(m, now - HOUR, limit) for m in models}
        assert [e.event_id for e in many["a"]] == ["a2"] and many["nobody"] == []
        assert len(many["b"]) == min(3, limit)


def test_predictions_of_many_models_are_looked_up_in_one_read(warehouse: Warehouse) -> None:
    s = sinks(warehouse)
    warehouse.insert_predictions(
        [
            PredictionBatch("a", "1", ["e1", "e2"], np.array([T0, T0 + 1]), predictions=np.array([0.1, 0.2])),
            PredictionBatch("a", "2", ["e3"], np.array([T0 + 2]), predictions=np.array([0.3])),
            PredictionBatch("b", "1", ["e1", "e4"], np.array([T0 + 3, T0 + 4]), predictions=np.array([0.4, 0.5])),
        ]
    )
    # e1 of model a and e4 of model b only: an id of one model never brings another model's row
    wanted = {"a": ["e1", "e3", "e9", "e1"], "b": ["e4"], "c": ["e1"]}
    for chunk in (10_000, 1):
        many = s.lookup_predictions_of(wanted, chunk=chunk)
        assert set(many) == {"a", "b", "c"} and many["c"] == []
        for model_id, ids in wanted.items():
            one = s.lookup_predictions(model_id, ids, chunk=chunk)
            assert [(b.model_version, b.event_ids, b.predictions.tolist()) for b in many[model_id]] == [
                (b.model_version, b.event_ids, b.predictions.tolist()) for b in one
            ]
        assert [(b.model_version, sorted(b.event_ids)) for b in many["a"]] == [("1", ["e1"]), ("2", ["e3"])]
        assert [(b.model_version, b.event_ids, b.predictions.tolist()) for b in many["b"]] == [("1", ["e4"], [0.5])]
