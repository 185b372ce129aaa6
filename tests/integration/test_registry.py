"""The model registry against SQLite and a real PostgreSQL server.

Every test runs on both stores. PostgreSQL is one server per module (started
with driftline.stack.postgres), and one fresh schema per test.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import math
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
from worker_harness import child_env, postgres  # noqa: F401 (postgres: the fixture)

from driftline.retrainer.registry import (
    SCHEMA_VERSION,
    ArtifactIntegrityError,
    ArtifactStore,
    InvalidNameError,
    InvalidVersionError,
    Lineage,
    ModelNotFoundError,
    Registry,
    RegistryError,
    VersionNotFoundError,
    code_version,
)
from driftline.settings import Settings
from driftline.stack.postgres import PostgresServer, start_postgres
from driftline.streams.records import Evidence, ModelEvent

REPO = Path(__file__).resolve().parents[2]
MIRROR_COLUMNS = {
    "model_id",
    "version",
    "status",
    "aliases",
    "artifact_sha256",
    "dataset_uri",
    "dataset_sha256",
    "dataset_rows",
    "code_version",
    "hyperparameters",
    "metrics",
    "parent_version",
    "request_id",
    "created_at",
    "updated_at",
}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_schema(f"reg_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def registry(registry_url: str, artifacts: ArtifactStore) -> Registry:
    return Registry(registry_url, artifacts)


def _raw_execute(url: str, statement: str, params: tuple = ()) -> None:
    """Change the database behind the registry's back (to simulate tampering)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        try:
            conn.execute(statement, params)
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(statement.replace("?", "%s"), params)


def _register(registry: Registry, model_id: str = "credit", **lineage: object):
    return registry.register(
        model_id,
        lineage=Lineage(**lineage),  # type: ignore[arg-type]
        artifact_bytes=f"weights of {model_id} {lineage}".encode(),
        reference_profile={"model_id": model_id},
        actor="ana",
        reason="test",
    )


# -- lineage ------------------------------------------------------------------------------
def test_lineage_round_trips_exactly(registry: Registry) -> None:
    _register(registry)
    lineage = Lineage(
        dataset_uri="sha256:" + "a" * 64,
        dataset_sha256="b" * 64,
        dataset_rows=123_456_789_012,
        dataset_start_ms=1_700_000_000_000,
        dataset_end_ms=1_700_003_600_000,
        code_version="0.1.0+g0123456789ab",
        trainer="river-linear",
        hyperparameters={
            "lr": 0.01,
            "l2": 1e-9,
            "layers": [64, 32],
            "name": "ünïcode ✓",
            "nested": {"a": None, "b": True},
        },
        train_metrics={"roc_auc": 0.9123456789012345, "log_loss": 0.3},
        holdout_metrics={"roc_auc": 0.9, "n": 5000},
        parent_version="1",
        request_id="req-42",
        evidence=[
            Evidence("psi", "age", 0.3141592653589793, 0.2, 1_700_000_000_000, 1_700_000_600_000),
            Evidence("ks", "__prediction__", 0.12, 0.1, 1_700_000_600_000, 1_700_001_200_000),
        ],
    )
    profile = {"features": {"age": {"mean": 41.5, "hist": [1, 2, 3], "edges": [0.0, 0.5, 1.0]}}, "n": 10, "x": None}
    registered = registry.register(
        "credit",
        lineage=lineage,
        artifact_bytes=b"\x00model\xff",
        reference_profile=profile,
        tags={"team": "risk", "stage": "canary"},
        note="retrained after drift",
        actor="retrainer",
        reason="drift",
    )
    assert registered.version == "2"
    fetched = registry.get("credit", "2")
    assert fetched == registered
    assert fetched.lineage == lineage
    assert fetched.lineage.evidence[0] == lineage.evidence[0]
    assert isinstance(fetched.lineage.evidence[0], Evidence)
    assert fetched.tags == {"team": "risk", "stage": "canary"}
    assert fetched.note == "retrained after drift"
    assert fetched.created_by == "retrainer"
    assert registry.get("credit", 2) == fetched
    assert registry.list_versions("credit")[1] == fetched
    assert registry.reference_profile("credit", "2") == profile
    assert registry.load_artifact("credit", "2") == b"\x00model\xff"
    assert fetched.artifact_sha256 == hashlib.sha256(b"\x00model\xff").hexdigest()
    assert registry.find_by_request("credit", "req-42") == [fetched]


def test_missing_code_version_is_filled_in_and_profiles_keep_nan(registry: Registry) -> None:
    mv = registry.register("m", lineage=Lineage(), reference_profile={"std": float("nan")}, artifact_bytes=None)
    assert mv.lineage.code_version == code_version()
    assert registry.get("m", "1").lineage.code_version == code_version()
    assert math.isnan(registry.reference_profile("m", "1")["std"])
    with pytest.raises(RegistryError, match="no artifact"):
        registry.load_artifact("m", "1")


def test_lineage_json_must_be_finite(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="holdout metrics must be JSON with finite numbers"):
        registry.register("m", lineage=Lineage(holdout_metrics={"auc": float("nan")}), reference_profile={})
    with pytest.raises(ModelNotFoundError):
        registry.list_versions("m")  # nothing half-registered


def test_a_profile_can_be_built_for_the_allocated_version(registry: Registry) -> None:
    _register(registry)
    seen = []

    def profile_for(version: str) -> dict:
        seen.append(version)
        return {"model_version": version}

    mv = registry.register("credit", lineage=Lineage(), reference_profile=profile_for)
    assert seen == ["2"]
    assert registry.reference_profile("credit", mv.version) == {"model_version": "2"}


def test_versions_are_numbered_per_model(registry: Registry) -> None:
    assert [_register(registry, "a").version for _ in range(3)] == ["1", "2", "3"]
    assert _register(registry, "b").version == "1"
    summary = {m.model_id: m for m in registry.list_models()}
    assert summary["a"].latest_version == "3" and summary["a"].versions == 3
    assert summary["b"].latest_version == "1"


def test_parent_must_exist(registry: Registry) -> None:
    _register(registry)
    with pytest.raises(VersionNotFoundError, match="parent version 5"):
        _register(registry, parent_version="5")
    assert _register(registry, parent_version="1").version == "2"


def test_mirror_rows_fit_the_warehouse_model_versions_table(registry: Registry) -> None:
    from driftline.streams.warehouse.rows import ModelVersionRow, columns

    _register(registry)
    _register(
        registry,
        hyperparameters={"lr": 0.1},
        train_metrics={"auc": 0.8, "note": "text"},
        holdout_metrics={"auc": 0.7, "n": 12},
        parent_version="1",
        request_id="r1",
        dataset_rows=10,
        dataset_uri="sha256:" + "d" * 64,
        dataset_sha256="d" * 64,
    )
    registry.promote("credit", "2", actor="ana")
    rows = registry.mirror_rows()
    assert [r["version"] for r in rows] == ["1", "2"]
    first, second = rows
    assert set(second) == MIRROR_COLUMNS
    assert second["status"] == "champion" and second["aliases"] == ["champion"]
    assert json.loads(second["hyperparameters"]) == {"lr": 0.1}
    assert second["metrics"] == {"train.auc": 0.8, "holdout.auc": 0.7, "holdout.n": 12.0}
    assert (second["parent_version"], second["request_id"], second["dataset_rows"]) == ("1", "r1", 10)
    assert second["created_at"] == registry.get("credit", 2).created_at
    assert first["updated_at"] == second["updated_at"] >= second["created_at"]
    # absent lineage becomes the table's empty values, not NULLs its columns refuse
    assert (first["dataset_uri"], first["dataset_rows"], first["parent_version"]) == ("", 0, None)
    assert first["code_version"] == code_version()
    inserted = columns(rows, ModelVersionRow)  # exactly what Warehouse.upsert_model_versions inserts
    assert inserted["version"] == ["1", "2"] and inserted["metrics"][1]["holdout.auc"] == 0.7


# -- concurrency -------------------------------------------------------------------------
def test_concurrent_registrations_in_threads_get_distinct_versions(registry: Registry) -> None:
    threads, per_thread = 8, 5
    barrier = threading.Barrier(threads)

    def work(t: int) -> list[str]:
        barrier.wait()
        return [_register(registry, request_id=f"t{t}-{i}").version for i in range(per_thread)]

    with ThreadPoolExecutor(threads) as pool:
        versions = [v for vs in pool.map(work, range(threads)) for v in vs]
    assert sorted(versions, key=int) == [str(i) for i in range(1, threads * per_thread + 1)]
    stored = registry.list_versions("credit")
    assert len({v.lineage.request_id for v in stored}) == threads * per_thread
    assert len([e for e in registry.audit_log("credit") if e.action == "register"]) == threads * per_thread


_PROCESS_WORKER = """
import sys, time
from pathlib import Path
from driftline.retrainer.registry import ArtifactStore, Lineage, Registry
url, root, go, tag, n = sys.argv[1:]
while not Path(go).exists():
    time.sleep(0.005)
registry = Registry(url, ArtifactStore(root))  # the first call also races to create the schema
for i in range(int(n)):
    mv = registry.register("shared", lineage=Lineage(request_id=f"{tag}-{i}"),
                           artifact_bytes=f"{tag}-{i}".encode(), reference_profile={"tag": tag}, actor=tag)
    print(mv.version, flush=True)
"""


def test_subprocesses_import_this_checkout_under_driftline_only() -> None:
    """The subprocesses of the tests (registry writers here, workers, the CLI) run this checkout's code,
    and reach its folders only as ``driftline.*``: no module is importable under two names."""
    probe = (
        "import importlib.util, driftline.retrainer.registry as r; print(r.__file__, importlib.util.find_spec('%s'))"
    )
    for name in ("streams", "retrainer", "schemas"):
        done = subprocess.run(
            [sys.executable, "-c", probe % name], env=child_env(), cwd="/", capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        path, spec = done.stdout.split()
        assert Path(path).resolve() == REPO / "retrainer" / "registry" / "__init__.py" and spec == "None", done.stdout


def test_concurrent_registrations_in_processes_get_distinct_versions(registry_url: str, tmp_path: Path) -> None:
    # a fresh store per process, so the schema migration races as well
    processes, per_process = 4, 6
    go = tmp_path / "go"
    env = child_env()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PROCESS_WORKER,
                registry_url,
                str(tmp_path / "artifacts"),
                str(go),
                f"p{p}",
                str(per_process),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in range(processes)
    ]
    time.sleep(0.5)  # let the interpreters import, so they start together
    go.touch()
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    versions = [int(line) for out, _ in outputs for line in out.split()]
    assert sorted(versions) == list(range(1, processes * per_process + 1))
    registry = Registry(registry_url, ArtifactStore(tmp_path / "artifacts"))
    for mv in registry.list_versions("shared"):
        # each version's row and artifact belong to the same registration
        assert registry.load_artifact("shared", mv.version).decode() == mv.lineage.request_id
    assert registry.schema_version() == SCHEMA_VERSION


def test_concurrent_promotions_leave_exactly_one_champion(registry: Registry) -> None:
    candidates = [_register(registry).version for _ in range(6)]
    registry.promote("credit", "1", actor="ana")
    done = threading.Event()
    violations: list[str] = []

    def promoter(version: str) -> None:
        for _ in range(4):
            event = registry.promote("credit", version, actor=f"p{version}")
            assert event.event == "promoted" and event.version == version and event.alias == "champion"

    def reader() -> None:
        while not done.is_set():
            snapshot = registry.list_versions("credit")
            by_status = [v.version for v in snapshot if v.status == "champion"]
            by_alias = [v.version for v in snapshot if "champion" in v.aliases]
            if len(by_status) != 1 or by_status != by_alias:
                violations.append(f"status {by_status}, alias {by_alias}")
            if registry.alias("credit", "champion") is None:
                violations.append("no champion")

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        with ThreadPoolExecutor(len(candidates)) as pool:
            list(pool.map(promoter, candidates))
    finally:
        done.set()
        watcher.join()
    assert violations == []
    champion = registry.alias("credit", "champion")
    assert champion is not None
    history = registry.champion_history("credit")
    assert history[-1] == champion.version
    promotions = [e for e in registry.audit_log("credit") if e.action == "promote"]
    assert len(promotions) == len(history)
    # every recorded move starts where the previous one ended: no lost update
    for before, after in zip(promotions, promotions[1:]):
        assert after.details["from"] == before.details["to"]
    assert sum(v.status == "champion" for v in registry.list_versions("credit")) == 1


# -- promotion, rollback, rejection ---------------------------------------------------------
def test_rollback_restores_the_previous_champions_in_turn(registry: Registry) -> None:
    for _ in range(3):
        _register(registry, request_id="r")
    for v in ("1", "2", "3"):
        registry.promote("credit", v, actor="ana", reason=f"v{v} is better")
    assert registry.champion_history("credit") == ["1", "2", "3"]

    event = registry.rollback("credit", actor="oncall", reason="v3 misbehaves")
    assert isinstance(event, ModelEvent)
    assert (event.event, event.model_id, event.version, event.alias) == ("rolled_back", "credit", "2", "champion")
    assert registry.alias("credit", "champion").version == "2"
    assert registry.get("credit", "3").status == "archived"
    assert registry.get("credit", "2").status == "champion"

    assert registry.rollback("credit").version == "1"
    assert [v.status for v in registry.list_versions("credit")] == ["champion", "archived", "archived"]
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback("credit")
    assert registry.alias("credit", "champion").version == "1"

    registry.promote("credit", "3")
    assert registry.rollback("credit").version == "1"


def test_rollback_skips_champions_rejected_since(registry: Registry) -> None:
    for _ in range(3):
        _register(registry)
    for v in ("1", "2", "3"):
        registry.promote("credit", v)
    registry.reject("credit", "2", reason="leaks a feature")
    assert registry.rollback("credit").version == "1"
    assert registry.champion_history("credit") == ["1"]


def test_rollback_without_history_is_refused(registry: Registry) -> None:
    _register(registry)
    with pytest.raises(RegistryError, match="no champion to roll back"):
        registry.rollback("credit")
    registry.promote("credit", "1")
    with pytest.raises(RegistryError, match="no previous champion"):
        registry.rollback("credit")


def test_promote_returns_events_and_is_idempotent(registry: Registry) -> None:
    _register(registry, request_id="req-1")
    first = registry.promote("credit", "1", actor="ana")
    assert (first.event, first.version, first.alias, first.request_id) == ("promoted", "1", "champion", "req-1")
    again = registry.promote("credit", 1, actor="ana")
    assert again.version == "1"
    assert [e.action for e in registry.audit_log("credit")].count("promote") == 1


def test_challenger_alias_and_rejection(registry: Registry) -> None:
    for _ in range(3):
        _register(registry)
    registry.promote("credit", "1")
    registry.set_alias("credit", "challenger", "2", actor="retrainer", reason="new candidate")
    assert registry.get("credit", "2").status == "challenger"
    registry.set_alias("credit", "challenger", "3")
    assert registry.get("credit", "2").status == "registered"
    assert registry.alias("credit", "challenger").version == "3"
    registry.set_alias("credit", "shadow", "3")
    assert registry.get("credit", "3").aliases == ("challenger", "shadow")

    event = registry.reject("credit", "3", actor="retrainer", reason="worse holdout auc")
    assert (event.event, event.version, event.alias) == ("rejected", "3", None)
    rejected = registry.get("credit", "3")
    assert rejected.status == "rejected" and rejected.aliases == ()
    assert registry.alias("credit", "challenger") is None
    with pytest.raises(RegistryError, match="is the champion"):
        registry.reject("credit", "1")
    with pytest.raises(RegistryError, match="rejected"):
        registry.set_alias("credit", "challenger", "3")
    with pytest.raises(RegistryError, match="promote"):
        registry.set_alias("credit", "champion", "2")

    registry.set_alias("credit", "challenger", "2")
    registry.promote("credit", "2")
    promoted = registry.get("credit", "2")
    assert promoted.status == "champion" and promoted.aliases == ("champion",)
    assert registry.get("credit", "1").status == "archived"


# -- integrity and validation ----------------------------------------------------------------
def test_a_tampered_artifact_is_refused(registry: Registry, artifacts: ArtifactStore) -> None:
    mv = _register(registry)
    path = artifacts.path(mv.artifact_sha256)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b" backdoor")
    with pytest.raises(ArtifactIntegrityError, match="corrupted or was modified"):
        registry.load_artifact("credit", "1")


def test_a_tampered_reference_profile_is_refused(registry: Registry, registry_url: str) -> None:
    _register(registry)
    _raw_execute(
        registry_url, "UPDATE reference_profiles SET body = ? WHERE model_id = ?", ('{"model_id":"x"}', "credit")
    )
    with pytest.raises(ArtifactIntegrityError, match="reference profile"):
        registry.reference_profile("credit", "1")


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "a/b", "", ".hidden", "-flag", "x" * 129, "with space", "new\nline", "ünï", None]
)
def test_invalid_model_names_are_refused(registry: Registry, name: object) -> None:
    with pytest.raises(InvalidNameError, match="invalid model id"):
        registry.register(name, lineage=Lineage(), reference_profile={})  # type: ignore[arg-type]
    assert registry.list_models() == []


def test_invalid_aliases_tags_and_versions_are_refused(registry: Registry) -> None:
    _register(registry)
    with pytest.raises(InvalidNameError, match="invalid alias"):
        registry.set_alias("credit", "../x", "1")
    with pytest.raises(InvalidNameError, match="invalid tag key"):
        registry.set_tag("credit", "1", "a b", "v")
    for bad in ("v1", "0", "-1", "1.0", ""):
        with pytest.raises(InvalidVersionError):
            registry.get("credit", bad)
    assert _register(registry, "x" * 128).model_id == "x" * 128


def test_unknown_models_and_versions_are_reported(registry: Registry) -> None:
    with pytest.raises(ModelNotFoundError, match="'nope'"):
        registry.get("nope", "1")
    with pytest.raises(ModelNotFoundError):
        registry.promote("nope", "1")
    with pytest.raises(ModelNotFoundError):
        registry.alias("nope", "champion")
    _register(registry)
    with pytest.raises(VersionNotFoundError, match="no version 7"):
        registry.get("credit", "7")
    with pytest.raises(VersionNotFoundError):
        registry.promote("credit", "7")
    assert registry.alias("credit", "champion") is None


# -- audit and schema -----------------------------------------------------------------------
def test_the_audit_log_records_every_change(registry: Registry) -> None:
    _register(registry)
    registry.register("credit", lineage=Lineage(request_id="r2"), reference_profile={}, actor="bob", reason="drift")
    registry.set_alias("credit", "challenger", "2", actor="retrainer", reason="candidate")
    registry.promote("credit", "1", actor="ana", reason="baseline")
    registry.promote("credit", "2", actor="ana", reason="better auc")
    registry.rollback("credit", actor="oncall", reason="latency")
    registry.set_tag("credit", "2", "incident", "INC-7", actor="oncall", reason="postmortem")
    registry.remove_tag("credit", "2", "incident", actor="oncall", reason="closed")
    registry.reject("credit", "2", reason="rolled back for latency")  # no actor: the OS user

    log = registry.audit_log("credit")
    assert [(e.action, e.version, e.actor, e.reason) for e in log] == [
        ("create_model", None, "ana", "test"),
        ("register", "1", "ana", "test"),
        ("register", "2", "bob", "drift"),
        ("set_alias", "2", "retrainer", "candidate"),
        ("promote", "1", "ana", "baseline"),
        ("promote", "2", "ana", "better auc"),
        ("rollback", "1", "oncall", "latency"),
        ("set_tag", "2", "oncall", "postmortem"),
        ("remove_tag", "2", "oncall", "closed"),
        ("reject", "2", getpass.getuser(), "rolled back for latency"),
    ]
    assert log[3].details == {"alias": "challenger", "from": None, "to": "2"}
    assert log[5].details["from"] == "1" and log[5].details["removed_aliases"] == ["challenger"]
    assert log[6].details == {"from": "2", "to": "1"}
    assert log[2].details["request_id"] == "r2"
    assert all(b.occurred_at >= a.occurred_at for a, b in zip(log, log[1:]))
    assert [e.model_id for e in registry.audit_log()] == ["credit"] * len(log)


def test_schema_is_created_once_and_newer_schemas_are_refused(registry_url: str, artifacts: ArtifactStore) -> None:
    for _ in range(3):
        assert Registry(registry_url, artifacts).schema_version() == SCHEMA_VERSION
    _raw_execute(
        registry_url,
        "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
        (SCHEMA_VERSION + 1, "from the future", 0),
    )
    with pytest.raises(RegistryError, match="newer than this driftline understands"):
        Registry(registry_url, artifacts)


def test_from_settings_uses_the_configured_locations(tmp_path: Path) -> None:
    settings = Settings(registry=f"sqlite:///{tmp_path}/reg/r.db", artifacts=str(tmp_path / "objects"))
    registry = Registry.from_settings(settings)
    mv = registry.register("m", lineage=Lineage(), artifact_bytes=b"a", reference_profile={})
    assert (tmp_path / "reg" / "r.db").is_file()
    assert registry.artifacts.path(mv.artifact_sha256).is_file()
    assert str(tmp_path / "objects") in str(registry.artifacts.path(mv.artifact_sha256))
    with pytest.raises(RegistryError, match="not supported"):
        Registry("mysql://x", registry.artifacts)


def test_postgres_helper_reuses_a_running_server(postgres: PostgresServer, tmp_path: Path) -> None:
    again = start_postgres(tmp_path / "unused", postgres.port)
    assert again.started is False and again.url == postgres.url
    assert again.stop() is False
    with psycopg.connect(postgres.url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


# -- command line (runs last: it needs streams.core.reference) ------------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.events: list[ModelEvent] = []

    def __call__(self, event: ModelEvent, settings: Settings) -> None:
        self.events.append(event)


def _cli(settings: Settings, argv: list[str], capsys: pytest.CaptureFixture[str], publish: _Recorder | None = None):
    from driftline.retrainer.registry_cli import add_commands

    parser = argparse.ArgumentParser(prog="driftline")
    add_commands(parser.add_subparsers(dest="command"), publish=publish)
    args = parser.parse_args(argv)
    code = args.handler(args, settings)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_settings(registry_url: str, tmp_path: Path) -> Settings:
    return Settings(registry=registry_url, artifacts=str(tmp_path / "artifacts"))


def _training_frame(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "income": rng.lognormal(10, 1, n).round(2),
            "city": rng.choice(["lisbon", "porto", "faro"], n),
            "label": rng.integers(0, 2, n),
            "prediction": rng.random(n),
            "event_time": np.arange(n, dtype=np.int64) * 1000 + 1_700_000_000_000,
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_cli_registers_an_external_model_with_its_reference_profile(
    cli_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    from dataclasses import replace

    from driftline.streams.core import calibration
    from driftline.streams.core.estimation import ScoreCalibrator
    from driftline.streams.core.multivariate import MultivariateModel
    from driftline.streams.core.reference import ReferenceProfile

    frame = _training_frame()
    dataset = tmp_path / f"train.{fmt}"
    frame.to_csv(dataset, index=False) if fmt == "csv" else frame.to_parquet(dataset, index=False)
    model_file = tmp_path / "model.bin"
    model_file.write_bytes(b"external model bytes")
    published = _Recorder()

    code, out, err = _cli(
        cli_settings,
        [
            "registry",
            "register",
            "--model",
            "credit",
            "--dataset",
            str(dataset),
            "--artifact",
            str(model_file),
            "--params",
            '{"max_depth": 6, "eta": 0.3}',
            "--metrics",
            '{"roc_auc": 0.81}',
            "--promote",
            "--version-note",
            "trained in the notebook",
            "--actor",
            "ana",
        ],
        capsys,
        published,
    )
    assert code == 0, err
    assert "registered credit version 1" in out and "promoted" in out
    assert [(e.event, e.version) for e in published.events] == [("registered", "1"), ("promoted", "1")]

    registry = Registry.from_settings(cli_settings)
    mv = registry.get("credit", "1")
    assert mv.status == "champion" and mv.created_by == "ana" and mv.note == "trained in the notebook"
    assert mv.lineage.dataset_sha256 == hashlib.sha256(dataset.read_bytes()).hexdigest()
    assert registry.artifacts.get_bytes(mv.lineage.dataset_sha256) == dataset.read_bytes()
    assert mv.lineage.dataset_rows == 200
    assert (mv.lineage.dataset_start_ms, mv.lineage.dataset_end_ms) == (1_700_000_000_000, 1_700_000_199_000)
    assert mv.lineage.hyperparameters == {"max_depth": 6, "eta": 0.3}
    assert mv.lineage.holdout_metrics == {"roc_auc": 0.81}
    assert registry.load_artifact("credit", "1") == b"external model bytes"

    stored = registry.reference_profile("credit", "1")
    read_back = pd.read_csv(dataset) if fmt == "csv" else pd.read_parquet(dataset)
    numeric = {"age": read_back["age"].to_numpy(np.float64), "income": read_back["income"].to_numpy(np.float64)}
    expected = ReferenceProfile.build(
        "credit",
        "1",
        numeric=numeric,
        categorical={"city": read_back["city"].astype(str).tolist()},
        predictions=read_back["prediction"].to_numpy(np.float64),
        multivariate=MultivariateModel.fit(numeric).to_dict(),  # of the raw numeric columns, seed 0
    )
    # label and prediction columns: the score calibrator of the label-free estimate travels with the profile
    calibrator = ScoreCalibrator.fit(
        read_back["prediction"].to_numpy(np.float64), read_back["label"].to_numpy(np.float64), threshold=0.5
    ).to_dict()
    # and the drift thresholds' calibration, computed at registration (the worker's would be identical)
    expected = calibration.with_calibration(replace(expected, calibrator=calibrator)).to_dict()
    assert json.dumps(stored, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert stored["multivariate"]["features"] == ["age", "income"]
    restored = ReferenceProfile.from_dict(stored)  # what the worker does when it re-baselines
    assert (restored.model_version, restored.n, restored.features) == (
        "1",
        200,
        ["age", "income", "city", "__prediction__"],
    )


def test_cli_show_list_promote_and_rollback(
    cli_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "train.csv"
    _training_frame(50).to_csv(dataset, index=False)
    published = _Recorder()
    for params in ('{"lr": 0.1}', '{"lr": 0.05}'):
        code, _, err = _cli(
            cli_settings,
            [
                "registry",
                "register",
                "--model",
                "credit",
                "--dataset",
                str(dataset),
                "--params",
                params,
                "--tag",
                "team=risk",
            ],
            capsys,
            published,
        )
        assert code == 0, err
    registry = Registry.from_settings(cli_settings)
    registry.register(
        "credit",
        lineage=Lineage(
            parent_version="2",
            request_id="req-9",
            dataset_rows=50,
            evidence=[Evidence("psi", "age", 0.42, 0.2, 1_700_000_000_000, 1_700_000_600_000)],
        ),
        reference_profile={},
    )

    code, out, _ = _cli(
        cli_settings, ["registry", "promote", "credit", "--version", "1", "--reason", "first"], capsys, published
    )
    assert code == 0 and "version 1 is the champion" in out
    code, out, _ = _cli(cli_settings, ["registry", "promote", "credit", "--version", "3"], capsys, published)
    assert code == 0
    code, out, _ = _cli(cli_settings, ["registry", "rollback", "credit", "--reason", "latency"], capsys, published)
    assert code == 0 and "version 1 is the champion again" in out
    assert [(e.event, e.version) for e in published.events] == [
        ("registered", "1"),
        ("registered", "2"),
        ("promoted", "1"),
        ("promoted", "3"),
        ("rolled_back", "1"),
    ]

    code, out, _ = _cli(cli_settings, ["registry", "show", "credit", "--version", "3"], capsys)
    assert code == 0
    for expected in (
        "parent     2",
        "request    req-9",
        "psi age = 0.42 (threshold 0.2)",
        "rows     50",
        f"code       {code_version()}",
        "status     archived",
    ):
        assert expected in out, out
    code, out, _ = _cli(cli_settings, ["registry", "show", "credit"], capsys)
    assert "version    1" in out and "aliases    champion" in out and '"lr": 0.1' in out
    assert hashlib.sha256(dataset.read_bytes()).hexdigest() in out and "team=risk" in out
    code, out, _ = _cli(cli_settings, ["registry", "show", "credit", "--version", "3", "--json"], capsys)
    shown = json.loads(out)
    assert shown["lineage"]["evidence"][0]["value"] == 0.42 and shown["lineage"]["parent_version"] == "2"

    code, out, _ = _cli(cli_settings, ["registry", "list"], capsys)
    assert code == 0 and out.splitlines()[1].split() == ["credit", "3", "3", "1", "-"]
    code, out, _ = _cli(cli_settings, ["registry", "list", "--model", "credit"], capsys)
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["1", "champion"],
        ["2", "registered"],
        ["3", "archived"],
    ]
    code, out, _ = _cli(cli_settings, ["registry", "list", "--json"], capsys)
    assert json.loads(out)[0]["aliases"] == {"champion": "1"}


def test_cli_bad_input_exits_2_with_one_line(
    cli_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = tmp_path / "train.csv"
    _training_frame(20).to_csv(dataset, index=False)
    (tmp_path / "notes.txt").write_text("x")
    cases = [
        (["registry", "register", "--model", "m", "--dataset", str(tmp_path / "missing.csv")], "no such file"),
        (["registry", "register", "--model", "m", "--dataset", str(dataset), "--params", "{lr: 1}"], "not valid JSON"),
        (["registry", "register", "--model", "m", "--dataset", str(dataset), "--params", "[1]"], "JSON object"),
        (["registry", "register", "--model", "../m", "--dataset", str(dataset)], "invalid model id"),
        (["registry", "register", "--model", "m", "--dataset", str(tmp_path / "notes.txt")], "unknown format"),
        (
            ["registry", "register", "--model", "m", "--dataset", str(dataset), "--artifact", str(tmp_path / "no.bin")],
            "no such file",
        ),
        (["registry", "show", "nope"], "not registered"),
        (["registry", "promote", "nope", "--version", "1"], "not registered"),
        (["registry", "rollback", "nope"], "not registered"),
    ]
    for argv, message in cases:
        code, out, err = _cli(cli_settings, argv, capsys)
        assert code == 2, (argv, out, err)
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    code, _, err = _cli(cli_settings, ["registry", "register", "--model", "m", "--dataset", str(dataset)], capsys)
    assert code == 0, err
    for argv, message in [
        (["registry", "show", "m", "--version", "9"], "no version 9"),
        (["registry", "promote", "m", "--version", "x"], "invalid version"),
        (["registry", "rollback", "m"], "no champion"),
    ]:
        code, _, err = _cli(cli_settings, argv, capsys)
        assert code == 2 and message in err, (argv, err)
    assert [v.version for v in Registry.from_settings(cli_settings).list_versions("m")] == ["1"]
