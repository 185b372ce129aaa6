"""Where drift comes from, through real Kafka and the real ClickHouse engine.

- A stream whose drift is confined to one segment (``channel=mobile``: feature ``a`` shifted
  by 1.5 standard deviations; ``channel=web`` unchanged), with ``monitoring.segments:
  [channel]``: ``drift_metrics`` gets per-segment rows, ``root_causes`` one row per drifted
  window, the retrain request's evidence names the segment, and ``driftline explain``, run as
  the CLI, names ``channel=mobile`` first and ``a`` first.
- Migration 0007 on a table with rows written before it: they stay (as the population,
  ``segment = ''``), and every cookbook query over ``drift_metrics`` gives the same answers
  before the migration, after it, and after segment rows are added.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from worker_harness import FEATURES, REGIONS, REPO, T0, WINDOW_MS, WorkerEnv, _score, env  # noqa: F401 (env: fixture)

from driftline.report import render_report
from driftline.schemas import CLICKHOUSE_DIR, QUERIES_DIR
from driftline.streams import kafka
from driftline.streams.cookbook import Query
from driftline.streams.records import PredictionBatch, RetrainRequest
from driftline.streams.warehouse import Warehouse

pytestmark = [pytest.mark.kafka, pytest.mark.warehouse]

PER_WINDOW = 2_000  # one event per millisecond in 2-second windows
STEADY = 3
WINDOWS = 8
CHUNK = 500
SHIFT = 1.5  # standard deviations, feature a, channel=mobile only


def _batch(model: str, version: str, w: int, rng: np.random.Generator) -> list[PredictionBatch]:
    numeric = {f: rng.normal(size=PER_WINDOW) for f in FEATURES}
    channel = rng.choice(["web", "mobile"], PER_WINDOW)
    if w >= STEADY:
        numeric["a"] = numeric["a"] + SHIFT * (channel == "mobile")
    score = _score(numeric)
    times = T0 + w * WINDOW_MS + np.arange(PER_WINDOW, dtype=np.int64)
    return [
        PredictionBatch(
            model,
            version,
            [f"w{w}-{i}" for i in range(lo, lo + CHUNK)],
            times[lo : lo + CHUNK],
            numeric={f: v[lo : lo + CHUNK] for f, v in numeric.items()},
            categorical={"region": rng.choice(REGIONS, CHUNK).tolist()},
            predictions=score[lo : lo + CHUNK],
            attributes={"channel": channel[lo : lo + CHUNK].tolist()},
        )
        for lo in range(0, PER_WINDOW, CHUNK)
    ]


def _explain_cli(env: WorkerEnv, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "driftline.cli", "--warehouse", env.settings.warehouse, "explain", *args]
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=environ, cwd=env.tmp)


def test_drift_confined_to_one_segment_is_found_there(env: WorkerEnv, unique: str) -> None:
    model = f"segments-{unique}"
    version = env.register(model)
    policy = {"monitoring": {"segments": ["channel"]}, "drift": {"min_features": 1, "consecutive_windows": 1}}
    rng = np.random.default_rng(7)
    for w in range(WINDOWS):
        for batch in _batch(model, version, w, rng):
            env.publish("predictions", model, batch)
    env.flush()
    worker = env.start_worker("w1", f"app-{unique}", idle_seconds=2.0, policy=policy)
    env.wait(lambda: env.windows_written(model) >= WINDOWS, 180, "every prediction window")
    assert worker.stop() == 0

    # per-segment rows: the model output and the top features, for both channels, in every window
    rows = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, segment, feature, metric, drifted, n_current "
        "FROM drift_metrics FINAL WHERE model_id = {m:String} AND kind = 'drift'",
        m=model,
    )
    segments = {r["segment"] for r in rows}
    assert segments == {"", "channel=mobile", "channel=web"}
    starts = [T0 + w * WINDOW_MS for w in range(WINDOWS)]
    for ws in starts:
        mine = [r for r in rows if r["ws"] == ws]
        for seg in ("channel=mobile", "channel=web"):
            features = {r["feature"] for r in mine if r["segment"] == seg}
            assert "__prediction__" in features and "a" in features, (ws, seg, features)
            assert len(features) <= 6  # the model output and the top 5 features by effect
        n = {r["segment"]: r["n_current"] for r in mine}
        assert n["channel=mobile"] + n["channel=web"] == n[""] == PER_WINDOW

    def drifted(seg: str, feature: str) -> list[int]:
        return sorted({r["ws"] for r in rows if r["segment"] == seg and r["feature"] == feature and r["drifted"]})

    assert drifted("channel=mobile", "a") == starts[STEADY:]
    assert drifted("channel=mobile", "__prediction__") == starts[STEADY:]
    assert len(drifted("channel=web", "a")) <= 1  # unchanged there: at most a false alarm
    # the population's rows are those of a run without segments: one per feature, metric and window
    population = [r for r in rows if r["segment"] == ""]
    assert len(population) == len({(r["ws"], r["feature"], r["metric"]) for r in population})
    assert {r["feature"] for r in population} >= set(FEATURES) | {"__prediction__"}

    # one root cause per drifted window, naming the segment and the feature
    causes = env.query(
        "SELECT toUnixTimestamp64Milli(window_start) AS ws, top_feature, top_segment, top_segment_share, root_cause "
        "FROM root_causes FINAL WHERE model_id = {m:String} ORDER BY ws",
        m=model,
    )
    by_start = {c["ws"]: c for c in causes}
    assert set(starts[STEADY:]) <= set(by_start)
    for ws in starts[STEADY:]:
        c = by_start[ws]
        assert (c["top_feature"], c["top_segment"]) == ("a", "channel=mobile"), c
        assert 0.4 < c["top_segment_share"] < 0.6
        assert json.loads(c["root_cause"])["segments"][0]["segment"] == "channel=mobile"

    # the retrain request's evidence carries the root cause
    requests = [
        r.record for r in kafka.consume_records(env.settings, env.settings.topic("retrain-requests"), 5, timeout=15)
    ]
    mine = [r for r in requests if isinstance(r, RetrainRequest) and r.model_id == model]
    assert mine and mine[0].reason == "drift"
    evidence = [(e.metric, e.feature) for e in mine[0].evidence]
    assert ("segment_share", "channel=mobile") in evidence
    assert [f for m, f in evidence if m == "effect"][0] == "a"

    # driftline explain, as people run it: the latest drifted window, then one named window
    latest = _explain_cli(env, "--model", model)
    assert latest.returncode == 0, latest.stderr
    lines = latest.stdout.splitlines()
    assert lines[1].startswith("drift is in channel=mobile"), latest.stdout
    first_segment = next(i for i, line in enumerate(lines) if line.startswith("segments where"))
    assert lines[first_segment + 1].split()[1] == "channel=mobile"
    first_feature = next(i for i, line in enumerate(lines) if line.startswith("features by effect"))
    assert lines[first_feature + 1].split()[1] == "a"
    assert f"window_start {starts[-1]}" in lines[0]

    named = _explain_cli(env, "--model", model, "--version", version, "--window", str(starts[STEADY]), "--json")
    assert named.returncode == 0, named.stderr
    got = json.loads(named.stdout)
    assert got["window_start"] == starts[STEADY]
    assert got["root_cause"]["segments"][0]["segment"] == "channel=mobile"
    assert got["root_cause"]["features"][0]["feature"] == "a"
    assert got["segment_drift"][0]["segment"] == "channel=mobile"
    assert "a" in got["segment_drift"][0]["drifted_features"]

    none = _explain_cli(env, "--model", model, "--window", str(starts[0] - WINDOW_MS))
    assert none.returncode == 1 and "no drifted window" in none.stderr

    # the report's root-cause section: the latest drifted windows, the segment named first
    html = render_report(env.warehouse, env.registry, model, days=None)
    section = html[html.index('<section id="root-cause">') :]
    section = section[: section.index("</section>")]
    windows = section.split("<h3>")[1:]
    assert len(windows) == WINDOWS - STEADY
    for text in windows:
        assert "<strong>drift is in channel=mobile" in text
        assert text.split("<tbody>")[1].startswith("<tr><td><code>channel=mobile</code>")  # segments first
        assert text.split("<tbody>")[2].startswith("<tr><td>a</td>")  # then features, a first


# ---- migration 0007 on rows written before it ------------------------------------------------------------

DRIFT_QUERIES = ("drift_by_window", "drifted_windows", "models", "prediction_drift", "top_drifting_features")


def _old_rows(now_ms: int) -> dict[str, list[Any]]:
    """drift_metrics rows as the worker wrote them before migration 0007 (no segment), one window replayed."""
    rng = np.random.default_rng(3)
    rows: list[dict[str, Any]] = []
    for w in range(6):
        start = now_ms - (6 - w) * 60_000
        for feature in ("__prediction__", "income", "age"):
            for metric, threshold in (("psi", 0.2), ("ks", 0.1), ("wasserstein", 0.5)):
                value = float(rng.uniform(0, 0.4))
                for computed_at in (start + 61_000, start + 62_000) if w == 2 else (start + 61_000,):
                    rows.append(
                        {
                            "model_id": "old",
                            "model_version": "1" if w < 4 else "2",
                            "feature": feature,
                            "metric": metric,
                            "window_start": start,
                            "window_end": start + 60_000,
                            "value": value,
                            "p_value": None,
                            "threshold": threshold,
                            "drifted": int(value > threshold),
                            "n_reference": 5_000,
                            "n_current": 900,
                            "computed_at": computed_at,
                        }
                    )
    return {k: [r[k] for r in rows] for k in rows[0]}


def _queries(old: bool) -> dict[str, Query]:
    """The cookbook's drift_metrics queries; ``old``: as they were before migration 0007, without the
    ``segment = ''`` line it added to each."""
    out = {}
    for name in DRIFT_QUERIES:
        text = (QUERIES_DIR / f"{name}.sql").read_text()
        lines = text.splitlines()
        kept = [line for line in lines if line.strip() not in ("AND segment = ''", "WHERE segment = ''")]
        assert len(kept) == len(lines) - 1, name
        out[name] = Query.parse(name, "\n".join(kept) if old else text)
    return out


def _answers(wh: Warehouse, now_ms: int, *, old: bool = False) -> dict[str, list[dict[str, Any]]]:
    params = {
        "model_id": "old",
        "since": datetime.fromtimestamp(now_ms / 1000 - 3_600, UTC),
        "until": datetime.fromtimestamp(now_ms / 1000 + 3_600, UTC),
        "days": 1,
    }
    return {name: q.run(wh, **{p: params[p] for p in q.parameters}) for name, q in _queries(old).items()}


def test_migration_keeps_old_rows_and_the_queries_answers(warehouse_url: str, tmp_path: Path) -> None:
    before_0007 = tmp_path / "migrations"
    before_0007.mkdir()
    for path in sorted(CLICKHOUSE_DIR.glob("*.sql")):
        if int(path.name[:4]) < 7:
            shutil.copy(path, before_0007 / path.name)
    now_ms = (int(time.time() * 1000) // 60_000) * 60_000
    with Warehouse.connect(warehouse_url) as wh:
        wh.migrate(before_0007)
        assert "segment" not in {r["name"] for r in wh.query_rows("DESCRIBE TABLE drift_metrics")}
        old = _old_rows(now_ms)
        wh.insert("drift_metrics", old)
        before = _answers(wh, now_ms, old=True)
        assert all(before[name] for name in DRIFT_QUERIES), before
        n_before = wh.query_rows("SELECT count() AS n FROM drift_metrics FINAL")[0]["n"]

        applied = wh.migrate()
        assert [m.version for m in applied] == [7, 8]
        kept = wh.query_rows("SELECT segment, count() AS n FROM drift_metrics FINAL GROUP BY segment")
        assert kept == [{"segment": "", "n": n_before}]
        assert _answers(wh, now_ms, old=True) == before
        assert _answers(wh, now_ms) == before

        # segment rows of the same windows, features and metrics (other values, all drifted): the
        # population's rows stay (the segment is in the sorting key) and every answer stays the same
        segment_rows = {**old, "segment": ["channel=web"] * len(old["model_id"])}
        segment_rows["value"] = [9.0] * len(old["model_id"])
        segment_rows["drifted"] = [1] * len(old["model_id"])
        segment_rows["computed_at"] = [t + 5_000 for t in old["computed_at"]]
        wh.insert("drift_metrics", segment_rows)
        assert wh.query_rows("SELECT count() AS n FROM drift_metrics FINAL WHERE segment = ''")[0]["n"] == n_before
        assert wh.query_rows("SELECT count() AS n FROM drift_metrics FINAL")[0]["n"] == 2 * n_before
        assert _answers(wh, now_ms) == before
        assert _answers(wh, now_ms, old=True) != before  # without the filter, the segments would count
        wh.command("OPTIMIZE TABLE drift_metrics FINAL")
        assert _answers(wh, now_ms) == before
