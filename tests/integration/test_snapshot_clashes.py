"""One odd event never fails a training snapshot (issue 11, finding 7), through the real ClickHouse engine.

A feature named like a snapshot column, a name used as numeric by one event and categorical by
another, or a label of the other kind used to make ``Warehouse.training_snapshot`` raise for every
range holding the event. Now the odd part is left out deterministically and the snapshot says so.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from driftline.retrainer.registry import ArtifactStore
from driftline.retrainer.snapshot import DroppedFeature, Snapshot
from driftline.retrainer.trainers import score, train_river_linear
from driftline.streams.records import LabelEvent, PredictionBatch, PredictionEvent
from driftline.streams.warehouse import Warehouse

pytestmark = pytest.mark.warehouse

NOW = 1_764_000_000_123
N = 400


@pytest.fixture
def warehouse(warehouse_url: str) -> Iterator[Warehouse]:
    wh = Warehouse.connect(warehouse_url, migrate=True)
    try:
        yield wh
    finally:
        wh.command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": wh.database})
        wh.close()


def _good_events(rng: np.random.Generator) -> list[PredictionEvent]:
    return [
        PredictionEvent(
            f"g{i:04d}",
            "credit",
            "1",
            NOW + i,
            numeric={"income": float(x), "age": float(30 + i % 40)},
            categorical={"region": "eu" if i % 3 else "us"},
            prediction=0.5,
        )
        for i, x in enumerate(rng.normal(size=N))
    ]


def test_odd_events_leave_out_only_what_clashes(warehouse: Warehouse, tmp_path) -> None:
    rng = np.random.default_rng(3)
    good = _good_events(rng)
    odd = [
        # a feature named like the label column: a leak, and a clash with the snapshot's own column
        PredictionEvent("bad-label", "credit", "1", NOW + 10, numeric={"income": 0.1, "label": 1.0}, prediction=0.5),
        PredictionEvent("bad-pred", "credit", "1", NOW + 11, categorical={"prediction": "x"}, prediction=0.5),
        # 'income' as text in one event, numeric in all others; 'region' numeric in two, text in the others
        PredictionEvent("bad-kind", "credit", "1", NOW + 12, categorical={"income": "lots"}, prediction=0.5),
        PredictionEvent("bad-kind2", "credit", "1", NOW + 13, numeric={"region": 1.0}, prediction=0.5),
        PredictionEvent("bad-kind3", "credit", "1", NOW + 14, numeric={"region": 2.0}, prediction=0.5),
        PredictionEvent("word-label", "credit", "1", NOW + 15, numeric={"income": 0.3}, prediction=0.5),
    ]
    warehouse.insert_predictions(PredictionBatch.from_events(good + odd))
    labels = [
        LabelEvent(e.event_id, "credit", NOW + 1_000, float(e.numeric.get("income", 0.0) > 0))
        for e in good + odd
        if e.event_id != "word-label"
    ]
    labels.append(LabelEvent("word-label", "credit", NOW + 1_000, "yes"))  # a class where all others are numbers
    warehouse.insert_labels(labels)

    table = warehouse.training_snapshot("credit", NOW, NOW + 10 * N)
    assert table.num_rows == N + len(odd)
    snap = Snapshot.from_table(table)
    assert snap.n == N + len(odd) - 1
    assert sorted(snap.data.numeric) == ["age", "income"] and sorted(snap.data.categorical) == ["region"]
    assert snap.dropped_features == (
        DroppedFeature("income", "categorical", "feature_kind_conflict", 1),
        DroppedFeature("region", "numeric", "feature_kind_conflict", 2),
        DroppedFeature("label", "numeric", "reserved_feature_name", 1),
        DroppedFeature("prediction", "categorical", "reserved_feature_name", 1),
        DroppedFeature("label", "label_class", "label_kind_conflict", 1),
    )
    assert snap.dropped_unlabelled == 1 and "word-label" not in snap.event_ids.tolist()
    ids = snap.event_ids.tolist()
    income = dict(zip(ids, snap.data.numeric["income"].tolist()))
    assert income["bad-label"] == 0.1 and np.isnan(income["bad-kind"])  # the text value is the one left out
    region = dict(zip(ids, snap.data.categorical["region"].tolist()))
    assert region["bad-kind2"] is None and region["g0001"] == "eu"

    # the stored snapshot keeps the record of what was left out, and still trains a model
    store = ArtifactStore(tmp_path)
    again = Snapshot.from_table(store.get_table(store.put_table(table)))
    assert again.dropped_features == snap.dropped_features
    trained = train_river_linear(snap.data, {"epochs": 2})
    assert not np.isnan(score(trained.model, snap.data)).any()


def test_a_clean_range_has_no_record_of_left_out_features(warehouse: Warehouse) -> None:
    good = _good_events(np.random.default_rng(4))
    warehouse.insert_predictions(PredictionBatch.from_events(good))
    warehouse.insert_labels([LabelEvent(e.event_id, "credit", NOW + 1_000, 1.0) for e in good])
    table = warehouse.training_snapshot("credit", NOW, NOW + 10 * N)
    assert table.schema.metadata is None
    assert Snapshot.from_table(table).dropped_features == ()


@pytest.mark.kafka
def test_the_retrainer_trains_past_odd_events_and_the_version_says_what_was_left_out(
    kafka_settings, warehouse_url: str, tmp_path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from driftline.retrainer.registry import Registry
    from driftline.retrainer.service import Retrainer
    from driftline.streams import kafka
    from driftline.streams.records import RetrainRequest

    monkeypatch.delenv("DRIFTLINE_KAFKA_JARS", raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text("defaults:\n  retraining:\n    min_rows: 100\n")
    settings = kafka_settings.replace(
        warehouse=warehouse_url,
        registry=f"sqlite:///{tmp_path / 'registry.db'}",
        artifacts=str(tmp_path / "artifacts"),
        policy=str(policy),
    )
    kafka.ensure_topics(settings, ["retrain-requests", "models", "dlq"])
    now = int(np.datetime64("now", "ms").astype(np.int64))
    rng = np.random.default_rng(5)
    events = [
        PredictionEvent(
            f"g{i:04d}", "credit", "1", now - 3_600_000 + 1_000 * i, numeric={"income": float(x)}, prediction=0.5
        )
        for i, x in enumerate(rng.normal(size=N))
    ]
    events.append(
        PredictionEvent(
            "odd", "credit", "1", now - 1_000, numeric={"label": 1.0}, categorical={"income": "lots"}, prediction=0.5
        )
    )
    wh = Warehouse.connect(warehouse_url, migrate=True)
    retrainer = None
    try:
        wh.insert_predictions(PredictionBatch.from_events(events))
        wh.insert_labels(
            [LabelEvent(e.event_id, "credit", now, float(e.numeric.get("income", 0.0) > 0)) for e in events]
        )
        retrainer = Retrainer.from_settings(settings)
        outcome = retrainer.handle(RetrainRequest(f"r-{unique}", "credit", "1", "manual", now))
        assert (outcome.status, outcome.version) == ("registered", "1"), outcome
        version = Registry.from_settings(settings).get("credit", "1")
        assert version.tags["dropped_features"] == (
            "categorical feature 'income' (feature_kind_conflict, 1 values); "
            "numeric feature 'label' (reserved_feature_name, 1 values)"
        )
        stored = Registry.from_settings(settings).artifacts.get_table(version.lineage.dataset_sha256)
        assert [str(d) for d in Snapshot.from_table(stored).dropped_features] == version.tags["dropped_features"].split(
            "; "
        )
    finally:
        if retrainer is not None:
            retrainer.close()
        wh.command("DROP DATABASE IF EXISTS {db:Identifier}", {"db": wh.database})
        wh.close()
