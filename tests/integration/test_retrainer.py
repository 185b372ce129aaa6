"""The retrainer service end to end: real Kafka, the embedded ClickHouse server, a SQLite registry.

Model A's champion (version 1, trained elsewhere, no artifact) logged
predictions of a relation that has since flipped; model B's policy names a
trainer that raises. One run of the service handles, in this order:

1. B's request: the trainer fails, the request is marked failed, the service goes on;
2. A's drift request: version 2 is trained, beats the champion's logged
   predictions on the holdout and is promoted, with its full lineage;
3. the same request again: a duplicate, nothing registered;
4. a request whose range holds no data: rejected, with the reason;
5. a manual request made with ``driftline retrain``: version 3 learns the same
   snapshot, ties with version 2 (scored from its artifact) and, the policy
   asking for a margin, is kept as challenger.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from driftline.cli import main as cli
from driftline.retrainer.registry import CHALLENGER, CHAMPION, Lineage, Registry, code_version
from driftline.retrainer.service import Progress, Retrainer, RetrainerOptions, RetrainerService
from driftline.retrainer.trainers import DEFAULT_RIVER_PARAMS
from driftline.settings import Settings
from driftline.streams import kafka
from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.records import (
    PREDICTION_FEATURE,
    Evidence,
    LabelEvent,
    ModelEvent,
    PredictionBatch,
    RetrainRequest,
)
from driftline.streams.warehouse import Warehouse

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

HOUR = 3_600_000
N_A = 2_000
N_B = 300

FAILING_TRAINER = """
def explode(data, params):
    raise RuntimeError(f"out of memory on {data.n} rows")
"""


def _seed(warehouse: Warehouse, model: str, n: int, now: int, seed: int) -> tuple[dict, dict, np.ndarray, np.ndarray]:
    """n labelled predictions of version 1 in the two hours before ``now``; version 1 scores the old relation."""
    rng = np.random.default_rng(seed)
    numeric = {"x1": rng.normal(size=n), "x2": rng.normal(size=n)}
    segment = rng.choice(["a", "b"], size=n).tolist()
    logit = 2.0 * numeric["x1"] - 1.5 * numeric["x2"] + np.where(np.array(segment) == "b", 1.0, 0.0)
    label = (logit + rng.logistic(size=n) * 0.5 > 0).astype(float)
    stale = 1.0 / (1.0 + np.exp(logit))  # the relation the champion learnt, before it flipped
    times = np.sort(now - 2 * HOUR + rng.integers(0, 2 * HOUR - 60_000, size=n)).astype(np.int64)
    ids = [f"{model}-{i}" for i in range(n)]
    warehouse.insert_predictions(
        PredictionBatch(model, "1", ids, times, numeric=numeric, categorical={"segment": segment}, predictions=stale)
    )
    warehouse.insert_labels([LabelEvent(e, model, int(t) + 1_000, float(y)) for e, t, y in zip(ids, times, label)])
    return numeric, {"segment": segment}, stale, times


@pytest.fixture
def env(kafka_settings: Settings, warehouse_url: str, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / f"failing_{unique}.py").write_text(FAILING_TRAINER)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the test broker's jar cache; load_settings would take it for a Kafka client setting ("jars")
    monkeypatch.delenv("DRIFTLINE_KAFKA_JARS", raising=False)
    a, b = f"credit-{unique}", f"churn-{unique}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        textwrap.dedent(f"""
        defaults:
          retraining:
            min_rows: 100
        models:
          {a}:
            manual: {{cooldown_minutes: 60}}
            retraining:
              min_rows: 500
              promotion: {{metric: accuracy, min_improvement: 0.01}}
          {b}:
            retraining:
              trainer: "failing_{unique}:explode"
    """)
    )
    settings = kafka_settings.replace(
        warehouse=warehouse_url,
        registry=f"sqlite:///{tmp_path / 'registry.db'}",
        artifacts=str(tmp_path / "artifacts"),
        policy=str(policy),
    )
    kafka.ensure_topics(settings, ["retrain-requests", "models", "dlq"])
    warehouse = Warehouse.connect(warehouse_url, migrate=True)
    try:
        yield settings, warehouse, a, b
    finally:
        warehouse.close()


def _cli(settings: Settings, *args: str) -> list[str]:
    return [
        "--kafka",
        settings.kafka_bootstrap,
        "--topic-prefix",
        settings.topic_prefix,
        "--warehouse",
        settings.warehouse,
        "--registry",
        settings.registry,
        "--artifacts",
        settings.artifacts,
        "--policy",
        str(settings.policy),
        *args,
    ]


def test_retrain_requests_become_versions_with_lineage(env, unique: str, capsys: pytest.CaptureFixture) -> None:
    settings, warehouse, a, b = env
    now = int(np.datetime64("now", "ms").astype(np.int64))
    numeric, categorical, stale, times = _seed(warehouse, a, N_A, now, seed=1)
    _seed(warehouse, b, N_B, now, seed=2)
    registry = Registry.from_settings(settings)
    registry.register(
        a,
        lineage=Lineage(dataset_rows=N_A, trainer="external"),
        actor="test",
        reference_profile=ReferenceProfile.build(a, "1", numeric, categorical, stale).to_dict(),
    )
    registry.promote(a, "1", actor="test")

    drift = [
        Evidence("psi", "x1", 0.41, 0.2, now - 2 * 60_000, now - 60_000),
        Evidence("psi", "x2", 0.33, 0.2, now - 2 * 60_000, now - 60_000),
    ]
    failing = RetrainRequest(f"rb-{unique}", b, "1", "drift", now, drift[:1])
    request = RetrainRequest(f"ra-{unique}", a, "1", "drift", now, drift)
    empty = RetrainRequest(f"r0-{unique}", a, "1", "schedule", now - 30 * 24 * HOUR)
    producer = kafka.producer(settings)
    for r in (failing, request, request, empty):
        kafka.publish(producer, settings.topic("retrain-requests"), r.model_id, r)
    assert producer.flush(30) == 0
    assert cli(_cli(settings, "retrain", "--model", a, "--requested-by", "ana")) == 0
    manual_id = re.search(r"request (\S+)$", capsys.readouterr().out.strip()).group(1)
    assert _status(warehouse, manual_id)["status"] == "requested"

    progress: list[Progress] = []
    group = f"retrainer-{unique}"
    service = RetrainerService(
        settings, RetrainerOptions(group_id=group, max_requests=5, idle_exit_seconds=60), progress=progress.append
    )
    summary = service.run()
    assert summary.stopped_because.startswith("handled 5")
    outcomes = summary.outcomes
    assert [(o.request_id, o.status, o.version, o.promoted) for o in outcomes] == [
        (failing.request_id, "failed", None, False),
        (request.request_id, "registered", "2", True),
        (request.request_id, "duplicate", None, False),
        (empty.request_id, "rejected", None, False),
        (manual_id, "registered", "3", False),
    ]

    # 1. the failing trainer: failed with its error, nothing registered
    assert outcomes[0].reason == (
        f"TrainerError: trainer 'failing_{unique}:explode' failed: RuntimeError: out of memory on 240 rows"
    )
    assert _status(warehouse, failing.request_id) == {
        "status": "failed",
        "error": outcomes[0].reason,
        "registered_version": None,
    }
    assert registry.find_by_request(b, failing.request_id) == []

    # 2. version 2: full lineage, promoted over the champion's logged predictions
    v2 = registry.get(a, "2")
    lin = v2.lineage
    stored = registry.artifacts.get_table(lin.dataset_sha256)
    assert lin.dataset_uri == f"sha256:{lin.dataset_sha256}" and lin.dataset_rows == stored.num_rows == N_A
    assert (lin.dataset_start_ms, lin.dataset_end_ms) == (int(times.min()), int(times.max()))
    assert lin.code_version == code_version() and lin.trainer == "river-linear"
    assert lin.hyperparameters == DEFAULT_RIVER_PARAMS
    assert lin.parent_version == "1" and lin.request_id == request.request_id and lin.evidence == drift
    assert {"accuracy", "roc_auc", "log_loss"} <= set(lin.train_metrics) & set(lin.holdout_metrics)
    assert lin.holdout_metrics["accuracy"] > 0.85 and lin.train_metrics["accuracy"] > 0.85
    assert v2.artifact_sha256 is not None and v2.tags["champion_scored_by"] == "logged predictions"
    assert (v2.tags["train_rows"], v2.tags["holdout_rows"]) == ("1600", "400")
    assert "champion v1 (logged predictions; it has no artifact) 0." in v2.note and ": promote:" in v2.note
    assert registry.alias(a, CHAMPION).version == "2" and registry.get(a, "1").status == "archived"
    profile = ReferenceProfile.from_dict(registry.reference_profile(a, "2"))
    assert (profile.model_version, profile.n) == ("2", N_A)
    assert profile.features == ["x1", "x2", "segment", PREDICTION_FEATURE]
    assert profile.calibrator is not None and profile.calibrator["n"] == 400  # fitted on the holdout only
    # the challenger's reference carries the multivariate model of its numeric features
    assert profile.multivariate is not None and profile.multivariate["features"] == ["x1", "x2"]
    assert _status(warehouse, request.request_id) == {"status": "registered", "error": None, "registered_version": "2"}

    # 4. no data in range: rejected with the reason
    rejected = _status(warehouse, empty.request_id)
    assert rejected["status"] == "rejected"
    assert "has 0 labelled predictions" in rejected["error"] and "fewer than the 500" in rejected["error"]

    # 5. the manual request: same snapshot, ties with version 2's artifact, kept as challenger
    v3 = registry.get(a, "3")
    assert v3.lineage.dataset_sha256 == lin.dataset_sha256 and v3.lineage.parent_version == "2"
    assert v3.lineage.request_id == manual_id and v3.lineage.evidence[0].feature == "ana"
    assert v3.lineage.holdout_metrics == lin.holdout_metrics
    assert v3.status == "challenger" and registry.alias(a, CHALLENGER).version == "3"
    assert v3.tags["champion_scored_by"] == "artifact" and "needed 0.01" in v3.note
    assert registry.alias(a, CHAMPION).version == "2"

    # the registry mirror in ClickHouse
    mirror = warehouse.query_rows(
        "SELECT version, status, aliases, parent_version, request_id, dataset_rows, metrics['holdout.accuracy'] AS acc "
        "FROM model_versions FINAL WHERE model_id = {m:String} ORDER BY version",
        {"m": a},
    )
    assert [(r["version"], r["status"], r["aliases"], r["parent_version"]) for r in mirror] == [
        ("1", "archived", [], None),
        ("2", "champion", ["champion"], "1"),
        ("3", "challenger", ["challenger"], "2"),
    ]
    assert mirror[1]["acc"] == pytest.approx(lin.holdout_metrics["accuracy"]) and mirror[1]["dataset_rows"] == N_A

    # progress: every stage, training to 100%
    mine = [p for p in progress if p.request_id == request.request_id]
    stages = list(dict.fromkeys(p.stage for p in mine))
    assert stages == ["snapshot", "training", "evaluating", "registering", "done"]
    batches = [p for p in mine if p.stage == "training" and p.message.startswith("batch")]
    assert batches[-1].done == batches[-1].total == 35  # 7 batches of 256 over 1,600 rows, 5 epochs

    # `driftline registry show` prints the lineage
    capsys.readouterr()
    assert cli(_cli(settings, "registry", "show", a, "--version", "2")) == 0
    shown = capsys.readouterr().out
    for expected in (
        f"sha256   {lin.dataset_sha256}",
        f"rows     {N_A}",
        f"request    {request.request_id}",
        "parent     1",
        f"code       {code_version()}",
        "trainer    river-linear",
        '"epochs": 5',
        "psi x1 = 0.41 (threshold 0.2)",
        '"accuracy": ',
    ):
        assert expected in shown, expected

    # committed offsets: a later run of the same group sees only what came after, here one more duplicate
    kafka.publish(producer, settings.topic("retrain-requests"), a, request)
    assert producer.flush(30) == 0
    assert cli(_cli(settings, "retrainer", "--group-id", group, "--once")) == 0
    assert capsys.readouterr().out.strip() == "retrainer: 1 duplicate; handled every request that was waiting (--once)"
    assert [v.version for v in registry.list_versions(a)] == ["1", "2", "3"]

    # an interrupted request (registered, decision stored, nothing else done) is finished, not trained again
    interrupted = RetrainRequest(f"ri-{unique}", b, "1", "manual", now)
    registry.register(
        b,
        lineage=Lineage(request_id=interrupted.request_id),
        reference_profile={},
        tags={"decision": "promote"},
        actor="test",
    )
    retrainer = Retrainer.from_settings(settings)
    try:
        finished = retrainer.handle(interrupted)
    finally:
        retrainer.close()
    assert (finished.status, finished.version, finished.promoted) == ("registered", "1", True)
    assert registry.alias(b, CHAMPION).version == "1" and len(registry.list_versions(b)) == 1

    events = [r.record for r in kafka.consume_records(settings, settings.topic("models"), 6, timeout=5)]
    assert all(isinstance(e, ModelEvent) for e in events)
    assert [(e.event, e.model_id, e.version, e.alias, e.request_id) for e in events] == [
        ("registered", a, "2", None, request.request_id),
        ("promoted", a, "2", CHAMPION, request.request_id),
        ("registered", a, "3", CHALLENGER, manual_id),
        ("registered", b, "1", None, interrupted.request_id),
        ("promoted", b, "1", CHAMPION, interrupted.request_id),
    ]


def _status(warehouse: Warehouse, request_id: str) -> dict:
    rows = warehouse.query_rows(
        "SELECT toString(status) AS status, error, registered_version FROM retrain_requests FINAL "
        "WHERE request_id = {r:String}",
        {"r": request_id},
    )
    assert len(rows) == 1, rows
    return rows[0]


def test_an_outcome_that_cannot_be_recorded_is_retried_and_manual_requests_keep_their_cooldown(
    env, unique: str
) -> None:
    settings, warehouse, a, _ = env
    now = int(np.datetime64("now", "ms").astype(np.int64))
    request = RetrainRequest(f"rr-{unique}", a, "1", "manual", now)
    too_soon = RetrainRequest(f"rs-{unique}", a, "1", "manual", now + 60_000)  # the policy wants 60 minutes
    producer = kafka.producer(settings)
    for r in (request, too_soon):
        kafka.publish(producer, settings.topic("retrain-requests"), a, r)
    assert producer.flush(30) == 0

    retrainer = Retrainer.from_settings(settings)
    working = retrainer.warehouse
    broken = Warehouse.connect(settings.warehouse)
    broken.close()  # every call now fails, as with a warehouse that went away
    retrainer.warehouse = broken

    class RepairAfterTwoRetries(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.retries = getattr(self, "retries", 0) + ("trying again" in record.getMessage())
            if self.retries == 2:
                retrainer.warehouse = working

    repair = RepairAfterTwoRetries()
    service_log = logging.getLogger("driftline.retrainer.service")
    service_log.addHandler(repair)
    try:
        summary = RetrainerService(
            settings,
            RetrainerOptions(
                group_id=f"retry-{unique}", max_requests=2, idle_exit_seconds=60, retry_initial_seconds=0.2
            ),
            retrainer=retrainer,
        ).run()
    finally:
        service_log.removeHandler(repair)
        retrainer.close()
        broken.close()
    assert summary.retries == 2
    assert [(o.request_id, o.status) for o in summary.outcomes] == [
        (request.request_id, "rejected"),
        (too_soon.request_id, "rejected"),
    ]
    assert "has 0 labelled predictions" in _status(warehouse, request.request_id)["error"]
    assert _status(warehouse, too_soon.request_id)["error"].startswith(
        f"manual requests of {a} are 60 minutes apart (manual.cooldown_minutes); try again after "
    )
