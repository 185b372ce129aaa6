"""The demo: its verdict logic, the simulated service, v1's registration, ``driftline simulate``, and the
whole loop end to end against the session's Kafka broker and embedded ClickHouse.

The end-to-end test runs ``python -m driftline.demo_cli`` (what ``make demo`` runs) as a subprocess,
which starts its own worker and retrainer, and then checks what they left in ClickHouse and the registry.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from driftline import demo, service_sim, simulation
from driftline.demo import (
    AlertRow,
    Champion,
    Context,
    DriftWindow,
    LabelWindow,
    LoopFacts,
    ProgressView,
    RequestRow,
    VersionInfo,
    judge,
    summary_table,
)
from driftline.retrainer.policy import load_policy
from driftline.retrainer.registry import CHAMPION, ArtifactStore, Registry
from driftline.service_sim import ServiceStats, SimulatedService, Switch, oracle_scorer
from driftline.settings import Settings
from driftline.streams.kafka import consume_records, ensure_topics
from driftline.streams.records import PREDICTION_FEATURE, LabelBatch, LabelEvent, ModelEvent, PredictionBatch
from driftline.streams.sdk import PredictionLogger
from driftline.streams.warehouse import SNAPSHOT_COLUMNS, Warehouse

REPO = Path(__file__).resolve().parents[2]
DEMO_POLICY = REPO / "driftline" / "demo-policy.yaml"


# ---------------------------------------------------------------------------- the verdict (pure)

D = 1_000_000  # the drift, in ms
W = 5_000


def _closed_loop() -> tuple[LoopFacts, Champion, ServiceStats, Context]:
    """Facts of a run in which every step happened (hand-made, with numbers easy to check)."""
    v1_before = [DriftWindow("1", D - 2 * W + i * W, D - W + i * W, 2000, (), D - W + i * W + 2500) for i in range(2)]
    v1_after = [
        DriftWindow("1", D + i * W, D + (i + 1) * W, 2000, ("channel", "debt_ratio", "income"), D + (i + 1) * W + 2500)
        for i in range(3)
    ]
    v2 = [
        DriftWindow("2", D + 3 * W, D + 4 * W, 900, ("income",), D + 4 * W + 2500),  # partial: the switch window
        DriftWindow("2", D + 4 * W, D + 5 * W, 2000, ("income",), D + 5 * W + 2500),
        DriftWindow("2", D + 5 * W, D + 6 * W, 2000, (), D + 6 * W + 2500),
    ]
    labels = [
        LabelWindow("1", D - W, D, 2000, 0.74, 0.55, D + 2500),
        LabelWindow("1", D + W, D + 2 * W, 2000, 0.66, 0.64, D + 2 * W + 2500),
        LabelWindow("1", D + 2 * W, D + 3 * W, 1000, 0.67, 0.61, D + 3 * W + 2500),
        LabelWindow("2", D + 4 * W, D + 5 * W, 2000, 0.70, 0.59, D + 5 * W + 2500),
        LabelWindow("2", D + 5 * W, D + 6 * W, 2000, 0.69, 0.57, D + 6 * W + 2500),
    ]
    request = RequestRow(
        "req-1",
        "1",
        "drift",
        "registered",
        D + 2 * W,
        D + 2 * W + 4000,
        "2",
        None,
        (("psi", "income", 0.4, 0.2), ("psi", "debt_ratio", 0.3, 0.2)),
    )
    facts = LoopFacts(
        drift_windows=tuple(v1_before + v1_after + v2),
        label_windows=tuple(labels),
        requests=(request,),
        versions=(VersionInfo("1", "archived", (), None), VersionInfo("2", "champion", ("champion",), "req-1")),
        alerts=(AlertRow("a1", "1", "warning", "drift", "drift on 3 features", D + 2 * W),),
        predictions={"1": 20_000, "2": 5_000},
        labels=24_000,
    )
    champion = Champion("2", "req-1", D + 2 * W + 6000, "1", 3500, {"log_loss": 0.5712})
    service = ServiceStats(
        predictions=25_000,
        labels=24_000,
        by_version={"1": 20_000, "2": 5_000},
        version="2",
        drift_at_ms=D,
        switches=(Switch(D + 2 * W + 6500, "1", "2", "models event"),),
    )
    ctx = Context("1", D, W, 2, 2000.0, 3000, 3000, "log_loss")
    return facts, champion, service, ctx


def test_judge_sees_every_step_of_a_closed_loop() -> None:
    facts, champion, service, ctx = _closed_loop()
    steps = judge(facts, champion, service, ctx)
    assert [s.done for s in steps] == [True] * 6
    assert steps[0].at_ms == D + W + 2500  # when the worker wrote the first drifted window
    assert (
        "channel, debt_ratio, income drifted (3 features; 0 of 2 windows before the drift flagged)" in steps[0].evidence
    )
    assert steps[1].at_ms == D + 2 * W + 2500  # requested_at is the window's end; the worker decided when writing it
    assert steps[2].name == "v2 registered and promoted" and steps[2].at_ms == D + 2 * W + 6000
    assert "3,500 snapshot rows, holdout log_loss 0.571; model_versions: v2 champion" in steps[2].evidence
    assert steps[3].at_ms == D + 2 * W + 6500 and "5,000 v2 predictions" in steps[3].evidence
    # pooled over windows by labels: v1 after the drift (label windows from D + 3 s on) (0.64*2000 + 0.61*1000) / 3000
    assert steps[4].evidence == (
        "log loss v1 before drift 0.550, after 0.630 (n=3,000) -> v2 0.580 (n=4,000); accuracy 0.740 -> 0.663 -> 0.695"
    )
    # the partial switch window does not count; the latest complete v2 window has no drift
    assert "v2 [1, 0] (v1 after drift [3, 3, 3])" in steps[5].evidence
    table = summary_table(steps, D)
    assert table.splitlines()[0].split() == ["STEP", "WHEN", "EVIDENCE"]
    assert len(table.splitlines()) == 7 and "not seen" not in table


def test_judge_fails_the_steps_that_did_not_happen() -> None:
    facts, champion, service, ctx = _closed_loop()
    worse = LoopFacts(
        **{
            **facts.__dict__,
            "label_windows": tuple(
                LabelWindow(
                    w.version,
                    w.start_ms,
                    w.end_ms,
                    w.n_labeled,
                    w.accuracy,
                    0.64 if w.version == "2" else w.log_loss,
                    w.computed_ms,
                )
                for w in facts.label_windows
            ),
        }
    )
    assert [s.done for s in judge(worse, champion, service, ctx)] == [True] * 4 + [False, True]

    still_drifting = LoopFacts(
        **{
            **facts.__dict__,
            "drift_windows": facts.drift_windows[:-1]
            + (DriftWindow("2", D + 5 * W, D + 6 * W, 2000, ("age", "income"), D + 6 * W + 2500),),
        }
    )
    assert [s.done for s in judge(still_drifting, champion, service, ctx)][-1] is False

    other_request = Champion("2", "req-other", D + 2 * W + 6000, "1", 3500)
    steps = judge(facts, other_request, service, ctx)
    assert [s.done for s in steps[:4]] == [True, True, False, False]
    assert "was not trained for request req-1" in steps[2].evidence

    no_switch = ServiceStats(**{**service.__dict__, "switches": ()})
    assert [s.done for s in judge(facts, champion, no_switch, ctx)][3] is False

    early_request = LoopFacts(
        **{
            **facts.__dict__,
            "requests": (RequestRow("req-0", "1", "drift", "registered", D - W, D - W, "2", None, ()),),
        }
    )
    assert [s.done for s in judge(early_request, champion, service, ctx)][1] is False  # before the drift: not ours

    assert [s.done for s in judge(facts, champion, service, Context("1", None, W, 2, 2000.0, 3000, 3000))][0] is False


def test_progress_view_reports_each_change_once() -> None:
    facts, _, _, _ = _closed_loop()
    view = ProgressView("1", 2)
    lines = view.news(facts)
    kinds = [line.split()[0] for line in lines]
    assert kinds.count("window") == 8 and kinds.count("labels") == 5
    assert kinds.count("alert") == 1 and kinds.count("request") == 1 and kinds.count("registry") == 2
    assert sum("DRIFT drifted: channel, debt_ratio, income" in line for line in lines) == 3
    assert view.news(facts) == []
    moved = LoopFacts(
        **{
            **facts.__dict__,
            "requests": (RequestRow("req-1", "1", "drift", "failed", D + 2 * W, D + 2 * W + 9000, None, "boom", ()),),
        }
    )
    assert [line.split("evidence): ")[-1] for line in view.news(moved)] == ["failed: boom"]


# ---------------------------------------------------------------------------- v1 and the service


def test_first_version_learns_the_world_before_the_drift() -> None:
    policy = load_policy(str(DEMO_POLICY)).for_model("credit-test")
    end_ms = 1_800_000_000_000
    first = demo.train_first_version(policy, 4_000, seed=3, end_ms=end_ms)
    # the dataset has the shape of a training snapshot, so the retrainer's lineage and v1's read alike
    assert set(SNAPSHOT_COLUMNS) <= set(first.dataset.column_names)
    assert {"income", "age", "debt_ratio", "region", "channel"} <= set(first.dataset.column_names)
    assert first.end_ms <= end_ms and first.end_ms - first.start_ms > 3_500_000
    assert first.holdout_metrics["accuracy"] > 0.7 and first.holdout_metrics["roc_auc"] > 0.7
    # the score column is v1's own score of each row
    assert np.allclose(first.dataset.column("prediction").to_numpy(), first.scores)
    # on the changed world the same model does worse: the drift the demo shows is real
    after = simulation.draw(simulation.AFTER, 4_000, np.random.default_rng(4))
    from driftline.retrainer.evaluation import score_metrics
    from driftline.retrainer.trainers import score

    on_after = score_metrics(
        after.default.astype(float), score(first.trained.model, service_sim.training_set(after)), "classification"
    )
    assert on_after["accuracy"] < first.holdout_metrics["accuracy"] - 0.04


class _Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@pytest.mark.kafka
def test_simulated_service_logs_predictions_then_late_labels_and_drifts_on_time(kafka_settings: Settings) -> None:
    ensure_topics(kafka_settings, ["predictions", "labels"])
    t0 = 1_800_000_000_000
    clock = _Clock(t0)
    with PredictionLogger(kafka_settings, linger_ms=10) as logger:
        service = SimulatedService(
            logger, "credit-sim", oracle_scorer("1"), rate=100.0, label_delay_s=2.0, seed=1, clock=clock
        )
        service.inject_drift(t0 + 10_000)
        service.start()
        for ms in range(0, 20_000, 100):  # 20 s of simulated time, in ticks
            clock.ms = t0 + ms
            service.step()
        service.step(t0 + 19_999)  # the last requests of the 20 s, none after
        served = service.stats()
        service.drain_labels()
        assert logger.flush(20).delivered == served.predictions + service.stats().labels
    assert served.predictions == 2000 and served.after_drift == 1000 and served.by_version == {"1": 2000}

    batches = [
        r.record for r in consume_records(kafka_settings, kafka_settings.topic("predictions"), 10_000, timeout=4)
    ]
    assert all(isinstance(b, PredictionBatch) for b in batches)
    times = np.concatenate([b.event_times for b in batches])
    income = np.concatenate([b.numeric["income"] for b in batches])
    channel = np.concatenate([np.asarray(b.categorical["channel"], dtype=object) for b in batches])
    ids = [i for b in batches for i in b.event_ids]
    assert len(ids) == len(set(ids)) == 2000
    assert times.min() == t0 and times.max() == t0 + 19_990
    before, after = times < t0 + 10_000, times >= t0 + 10_000
    # BEFORE: log-income mean 10.8 and 20% mobile; AFTER: 10.45 and 70% mobile (simulation.py)
    assert abs(np.log(income[before]).mean() - 10.8) < 0.06 and abs(np.log(income[after]).mean() - 10.45) < 0.06
    assert (
        abs((channel[before] == "mobile").mean() - 0.2) < 0.05 and abs((channel[after] == "mobile").mean() - 0.7) < 0.05
    )
    assert all(set(b.attributes) == {"region", "channel"} for b in batches)
    assert all(np.isfinite(b.latency_ms).all() for b in batches)

    label_batches = [
        r.record for r in consume_records(kafka_settings, kafka_settings.topic("labels"), 2000, timeout=10)
    ]
    assert all(isinstance(b, LabelBatch) for b in label_batches)  # the SDK packs a model's labels
    labels = [e for b in label_batches for e in b.events()]
    assert len(labels) == 2000 and all(isinstance(e, LabelEvent) for e in labels)
    assert {e.event_id for e in labels} == set(ids)
    by_id = dict(zip(ids, times.tolist()))
    delays = np.array([e.event_time - by_id[e.event_id] for e in labels])
    assert (delays == 2000).all()  # 2 s late in event time, exactly
    assert {e.label for e in labels} == {0.0, 1.0}


def _env(settings: Settings, tmp_path: Path, warehouse_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    env.update(
        {
            "DRIFTLINE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "DRIFTLINE_TOPIC_PREFIX": settings.topic_prefix,
            "DRIFTLINE_WAREHOUSE": warehouse_url,
            "DRIFTLINE_REGISTRY": f"sqlite:///{tmp_path / 'registry.db'}",
            "DRIFTLINE_ARTIFACTS": str(tmp_path / "artifacts"),
            "DRIFTLINE_STATE_DIR": str(tmp_path / "state"),
            # as `make test` sets it: the broker's jar cache, which must not reach the Kafka clients
            "DRIFTLINE_KAFKA_JARS": os.environ.get("DRIFTLINE_KAFKA_JARS", str(REPO / ".driftline" / "kafka-jars")),
        }
    )
    return env


@pytest.mark.kafka
def test_simulate_verb_produces_predictions_and_labels(kafka_settings: Settings, tmp_path: Path) -> None:
    env = _env(kafka_settings, tmp_path, "http://127.0.0.1:1/unused")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.cli",
            "simulate",
            "--model",
            "credit-cli",
            "--rate",
            "200",
            "--duration",
            "2",
            "--drift-at",
            "1",
            "--label-delay",
            "0.5",
            "--seed",
            "5",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "oracle: the BEFORE world" in run.stdout  # the registry does not know the model
    assert "400 predictions (v1 400; 200 after the drift), 400 labels; delivered 800, failed 0, dropped 0" in run.stdout
    batches = [
        r.record for r in consume_records(kafka_settings, kafka_settings.topic("predictions"), 10_000, timeout=4)
    ]
    assert sum(b.n for b in batches) == 400 and {b.model_id for b in batches} == {"credit-cli"}
    labels = consume_records(kafka_settings, kafka_settings.topic("labels"), 400, timeout=10)
    assert sum(r.record.n for r in labels) == 400


@pytest.mark.kafka
@pytest.mark.warehouse
def test_first_version_is_registered_promoted_announced_and_mirrored(
    kafka_settings: Settings, warehouse_url: str, tmp_path: Path
) -> None:
    settings = kafka_settings.replace(
        warehouse=warehouse_url, registry=f"sqlite:///{tmp_path / 'r.db'}", artifacts=str(tmp_path / "artifacts")
    )
    ensure_topics(settings, ["models"])
    policy = load_policy(str(DEMO_POLICY)).for_model("credit-reg")
    first = demo.train_first_version(policy, 2_000, seed=1, end_ms=1_800_000_000_000)
    registry = Registry(settings.registry, ArtifactStore(settings.artifacts))
    from driftline.streams import kafka

    with Warehouse.connect(warehouse_url, migrate=True) as warehouse:
        v1 = demo.register_first_version(
            settings, registry, warehouse, kafka.producer(settings), "credit-reg", policy, first
        )
        mirror = warehouse.query_rows(
            "SELECT version, status, aliases, dataset_rows, metrics FROM model_versions FINAL "
            "WHERE model_id = 'credit-reg'"
        )
    assert v1.version == "1" and v1.status == "champion" and registry.alias("credit-reg", CHAMPION).version == "1"
    lineage = v1.lineage
    assert lineage.dataset_rows == 2000 and lineage.trainer == "river-linear"
    assert (lineage.dataset_start_ms, lineage.dataset_end_ms) == (first.start_ms, first.end_ms)
    stored = registry.artifacts.get_table(ArtifactStore.sha256_of_uri(lineage.dataset_uri))
    assert stored.equals(first.dataset) and lineage.dataset_sha256 == ArtifactStore.sha256_of_uri(lineage.dataset_uri)
    assert lineage.holdout_metrics == first.holdout_metrics and lineage.hyperparameters == first.trained.params
    profile = registry.reference_profile("credit-reg", "1")
    features = {f["name"]: f for f in profile["features"]}
    assert set(features) == {"income", "age", "debt_ratio", "region", "channel", PREDICTION_FEATURE}
    assert profile["n"] == 2000 and profile["settings"]["sample_size"] == 5000  # the demo policy's reference settings
    assert features[PREDICTION_FEATURE]["min"] == pytest.approx(first.scores.min())
    assert mirror == [
        {
            "version": "1",
            "status": "champion",
            "aliases": ["champion"],
            "dataset_rows": 2000,
            "metrics": mirror[0]["metrics"],
        }
    ]
    assert mirror[0]["metrics"]["holdout.accuracy"] == pytest.approx(first.holdout_metrics["accuracy"])
    events = [r.record for r in consume_records(settings, settings.topic("models"), 2, timeout=10)]
    assert [(e.event, e.version, e.alias) for e in events] == [("registered", "1", None), ("promoted", "1", "champion")]
    assert all(isinstance(e, ModelEvent) and e.model_id == "credit-reg" for e in events)


# ---------------------------------------------------------------------------- the whole loop


@pytest.mark.kafka
@pytest.mark.warehouse
@pytest.mark.timeout(900)
def test_demo_closes_the_loop_end_to_end(
    kafka_settings: Settings, warehouse_url: str, tmp_path: Path, unique: str
) -> None:
    model_id = f"credit-e2e-{unique}"
    report = tmp_path / "report.html"
    env = _env(kafka_settings, tmp_path, warehouse_url)
    # what `make demo` runs, without `stack up` (the session's broker and warehouse are used instead);
    # patience doubles every deadline, for a loaded machine
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftline.demo_cli",
            "--no-stack",
            "--model",
            model_id,
            "--patience",
            "2",
            "--report",
            str(report),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    logs = tmp_path / "state" / "demo" / model_id
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-3000:]}\nlogs in {logs}"
    out = run.stdout
    assert "the loop closed in" in out
    for step in (
        "1 drift detected",
        "2 retrain requested",
        "3 v2 registered and promoted",
        "4 service switched to v2",
        "5 performance recovered",
        "6 drift subsided against the new reference",
    ):
        assert step in out
    assert "not seen" not in out.split("STEP", 1)[1]
    assert (logs / "worker.log").is_file() and (logs / "driftline.retrainer.log").is_file()
    assert not (logs / "worker.pid").exists() and not (logs / "driftline.retrainer.pid").exists()  # both stopped

    with Warehouse.connect(warehouse_url) as wh:
        p = {"m": model_id}
        drifted = wh.query_rows(
            "SELECT count() AS n FROM drift_reports FINAL WHERE model_id = {m:String} "
            "AND model_version = '1' AND length(drifted_features) >= 2",
            p,
        )[0]["n"]
        drifted_rows = wh.query_rows(
            "SELECT DISTINCT feature FROM drift_metrics FINAL WHERE model_id = {m:String} "
            "AND model_version = '1' AND drifted = 1",
            p,
        )
        requests = wh.query_rows(
            "SELECT request_id, toString(reason) AS reason, toString(status) AS status, "
            "registered_version FROM retrain_requests FINAL WHERE model_id = {m:String}",
            p,
        )
        versions = wh.query_rows(
            "SELECT version, status, aliases, request_id, parent_version FROM model_versions FINAL "
            "WHERE model_id = {m:String} ORDER BY version",
            p,
        )
        served = {
            r["model_version"]: r["n"]
            for r in wh.query_rows(
                "SELECT model_version, count() AS n FROM predictions WHERE model_id = {m:String} "
                "GROUP BY model_version",
                p,
            )
        }
        accuracy = {
            r["model_version"]: r["n"]
            for r in wh.query_rows(
                "SELECT model_version, count() AS n FROM performance_metrics FINAL WHERE model_id = {m:String} "
                "AND metric = 'accuracy' AND segment = '' GROUP BY model_version",
                p,
            )
        }
    assert drifted >= 1
    assert {"income", "debt_ratio", "channel"} <= {r["feature"] for r in drifted_rows}
    assert len(requests) == 1 and requests[0]["status"] == "registered" and requests[0]["registered_version"] == "2"
    assert requests[0]["reason"] == "drift"  # the demo policy lets drift, the earlier signal, ask first
    assert [(v["version"], v["status"], v["aliases"]) for v in versions] == [
        ("1", "archived", []),
        ("2", "champion", ["champion"]),
    ]
    assert versions[1]["request_id"] == requests[0]["request_id"] and versions[1]["parent_version"] == "1"
    assert served.get("1", 0) > 0 and served.get("2", 0) > 0
    assert accuracy.get("1", 0) >= 2 and accuracy.get("2", 0) >= 1

    registry = Registry(env["DRIFTLINE_REGISTRY"], ArtifactStore(env["DRIFTLINE_ARTIFACTS"]))
    champion = registry.alias(model_id, CHAMPION)
    assert champion is not None and champion.version == "2"
    assert champion.lineage.request_id == requests[0]["request_id"] and champion.lineage.dataset_rows >= 1000
    assert report.is_file() and model_id in report.read_text()

    # issue "done when": `driftline registry show M --version 2` prints the complete lineage of the
    # version that the drift trigger retrained
    show = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "registry", "show", model_id, "--version", "2"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert show.returncode == 0, show.stderr
    lineage = champion.lineage
    text = show.stdout
    assert f"sha256   {lineage.dataset_sha256}" in text and f"rows     {lineage.dataset_rows}" in text
    assert f"code       {lineage.code_version}" in text and lineage.code_version.startswith("0.1.0")
    assert "trainer    river-linear" in text and '"learning_rate":0.1' in text.replace(" ", "")
    assert "holdout" in text and "log_loss" in text
    assert "parent     1" in text and f"request    {requests[0]['request_id']}" in text
    evidence = text.split("evidence", 1)[1]
    assert len(lineage.evidence) >= 2 and evidence.count("threshold") == len(lineage.evidence)
    assert "income" in evidence and "debt_ratio" in evidence
