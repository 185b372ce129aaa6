"""Semantic checks of decoded input: event-time bounds, finite values, string lengths, feature names."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import numpy as np
import pytest

from driftline.streams.core.validation import (
    DEFAULT_MAX_FUTURE_MS,
    MAX_ID_LENGTH,
    MAX_VALUE_LENGTH,
    MIN_EVENT_TIME_MS,
    RESERVED_FEATURE_NAMES,
    check_batch,
    check_feature_names,
    check_label,
)
from driftline.streams.records import PREDICTION_FEATURE, LabelEvent, PredictionBatch, PredictionEvent

NOW = 1_764_000_000_000  # 2025-11-24
I64 = np.iinfo(np.int64)


def test_the_earliest_time_is_2000_01_01_utc() -> None:
    assert datetime.fromtimestamp(MIN_EVENT_TIME_MS / 1000, UTC) == datetime(2000, 1, 1, tzinfo=UTC)


def batch(times: list[int], **changes) -> PredictionBatch:
    n = len(times)
    values = dict(
        model_id="credit",
        model_version="3",
        event_ids=[f"e{i}" for i in range(n)],
        event_times=np.array(times, dtype=np.int64),
        numeric={"age": np.arange(n, dtype=float)},
        categorical={"region": ["eu"] * n},
        predictions=np.full(n, 0.5),
        predicted_labels=["approve"] * n,
        attributes={"channel": ["web"] * n},
    )
    values.update(changes)
    return PredictionBatch(**values)


@pytest.mark.parametrize(
    "t, reason",
    [
        (I64.min, "invalid_event_time"),  # the window that never closed
        (-1, "invalid_event_time"),  # negative event times opened a window in 1969
        (0, "invalid_event_time"),
        (MIN_EVENT_TIME_MS - 1, "invalid_event_time"),
        (MIN_EVENT_TIME_MS, None),
        (NOW, None),
        (NOW + DEFAULT_MAX_FUTURE_MS, None),
        (NOW + DEFAULT_MAX_FUTURE_MS + 1, "future_event_time"),
        (I64.max, "future_event_time"),
    ],
)
def test_event_times_are_bounded_on_both_sides(t: int, reason: str | None) -> None:
    for got in (check_batch(batch([NOW, t]), NOW), check_label(LabelEvent("e", "m", t, 1.0), NOW)):
        assert (got and got.reason) == reason
    if reason == "invalid_event_time":
        assert str(t) in check_batch(batch([t]), NOW).detail


def test_the_earliest_time_is_a_parameter() -> None:
    assert check_batch(batch([-5]), NOW, min_event_time_ms=-10) is None
    assert check_batch(batch([-5]), NOW, min_event_time_ms=0).reason == "invalid_event_time"
    assert check_label(LabelEvent("e", "m", 5, 1.0), NOW, min_event_time_ms=0) is None
    assert check_label(LabelEvent("e", "m", 5, 1.0), NOW, min_event_time_ms=6).reason == "invalid_event_time"


def test_infinite_values_stay_invalid_and_nan_predictions_in_a_batch_mean_none() -> None:
    assert check_batch(batch([NOW, NOW], predictions=np.array([np.inf, 0.5])), NOW).reason == "invalid_value"
    assert check_batch(batch([NOW, NOW], predictions=np.array([np.nan, 0.5])), NOW) is None  # CONTRACTS: NaN = none
    assert check_label(LabelEvent("e", "m", NOW, float("inf")), NOW).reason == "invalid_value"


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"model_id": "m" * (MAX_ID_LENGTH + 1)}, "model_id"),
        ({"model_version": "v" * (MAX_ID_LENGTH + 1)}, "model_version"),
        ({"event_ids": ["e0", "e" * (MAX_ID_LENGTH + 1)]}, "event_id"),
        ({"event_ids": ["e0", "é" * 1_000_000]}, "event_id"),  # the 1 MB values
        ({"categorical": {"region": ["eu", "x" * (MAX_VALUE_LENGTH + 1)]}}, "categorical value of 'region'"),
        ({"categorical": {"region": [None, "x" * 1_000_000]}}, "categorical value"),
        ({"attributes": {"channel": ["web", "w" * (MAX_VALUE_LENGTH + 1)]}}, "attribute value of 'channel'"),
        ({"predicted_labels": [None, "p" * (MAX_VALUE_LENGTH + 1)]}, "predicted_label"),
    ],
)
def test_strings_longer_than_their_limit_are_value_too_long(changes: dict, words: str) -> None:
    problem = check_batch(batch([NOW, NOW], **changes), NOW)
    assert problem.reason == "value_too_long"
    assert words in problem.detail
    assert len(problem.detail) < 200  # the value is quoted, cut


def test_strings_at_their_limit_pass() -> None:
    at_limit = batch(
        [NOW, NOW],
        model_id="m" * MAX_ID_LENGTH,
        event_ids=["e" * MAX_ID_LENGTH, "f"],
        categorical={"region": ["x" * MAX_VALUE_LENGTH, None]},
        attributes={"channel": ["w" * MAX_VALUE_LENGTH, ""]},
        predicted_labels=[None, "p" * MAX_VALUE_LENGTH],
    )
    assert check_batch(at_limit, NOW) is None


@pytest.mark.parametrize(
    "label, reason",
    [
        (LabelEvent("e" * (MAX_ID_LENGTH + 1), "m", NOW, 1.0), "value_too_long"),
        (LabelEvent("e", "m" * 1_000_000, NOW, 1.0), "value_too_long"),
        (LabelEvent("e", "m", NOW, "fraud" * 300), "value_too_long"),
        (LabelEvent("e", "m", NOW, "f" * MAX_VALUE_LENGTH), None),
    ],
)
def test_labels_get_the_same_length_checks(label: LabelEvent, reason: str | None) -> None:
    got = check_label(label, NOW)
    assert (got and got.reason) == reason


def test_reserved_feature_names_are_the_snapshot_columns_and_the_event_fields() -> None:
    from driftline.retrainer.snapshot import SNAPSHOT_COLUMNS
    from driftline.streams.warehouse import SNAPSHOT_COLUMNS as WAREHOUSE_COLUMNS

    assert set(SNAPSHOT_COLUMNS) | set(WAREHOUSE_COLUMNS) <= RESERVED_FEATURE_NAMES
    assert {"model_id", "latency_ms", "predicted_label", PREDICTION_FEATURE} <= RESERVED_FEATURE_NAMES
    for name in sorted(RESERVED_FEATURE_NAMES):
        assert check_feature_names([name], []).reason == "reserved_feature_name"
        assert check_feature_names([], [name]).reason == "reserved_feature_name"
    assert check_feature_names(["age"], [], attributes=["label"]) is None  # attributes are not features


def test_one_name_numeric_and_categorical_is_a_conflict() -> None:
    problem = check_feature_names({"age": 1.0, "x": 2.0}, {"age": "old"})
    assert problem.reason == "feature_kind_conflict" and "'age'" in problem.detail
    assert check_feature_names({"age": 1.0}, {"Age": "old"}) is None


def test_feature_names_and_attribute_keys_have_the_id_limit() -> None:
    assert check_feature_names(["a" * MAX_ID_LENGTH], ["b" * MAX_ID_LENGTH], ["c" * MAX_ID_LENGTH]) is None
    for args in ((["a" * (MAX_ID_LENGTH + 1)], []), ([], ["b" * 1_000_000]), ([], [], ["c" * (MAX_ID_LENGTH + 1)])):
        problem = check_feature_names(*args)
        assert problem.reason == "value_too_long" and len(problem.detail) < 200


def test_the_worker_passes_its_earliest_time_option() -> None:
    from driftline.streams.worker import WorkerOptions
    from driftline.streams.worker_cli import add_worker_arguments, options_from_args

    assert WorkerOptions().min_event_time_ms == MIN_EVENT_TIME_MS
    parser = argparse.ArgumentParser()
    add_worker_arguments(parser)
    assert options_from_args(parser.parse_args([])).min_event_time_ms == MIN_EVENT_TIME_MS
    assert options_from_args(parser.parse_args(["--min-event-time-ms", "-5"])).min_event_time_ms == -5


def test_single_events_grouped_by_the_worker_are_judged_row_by_row() -> None:
    # decode_bulk merges single events into one batch per model version; a bad value in one row must
    # not make the others look bad when the worker checks them one by one (streams.worker._handle_inputs)
    from driftline.streams.core.batches import take_rows

    merged = PredictionBatch.from_events(
        [
            PredictionEvent("a", "m", "1", NOW, categorical={"region": "eu"}),
            PredictionEvent("b", "m", "1", NOW, categorical={"region": "x" * 5_000}),
            PredictionEvent("c", "m", "1", NOW, numeric={"age": 3.0}),
        ]
    )
    assert check_batch(merged, NOW).reason == "value_too_long"
    assert [check_batch(take_rows(merged, np.array([i])), NOW) is None for i in range(3)] == [True, False, True]
