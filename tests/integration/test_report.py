"""The HTML report: its charts, built from a seeded warehouse and registry, drawn by headless Chromium.

The report is rendered from a demo-sized history (tests/seed_warehouse.py)
read over HTTP from the embedded ClickHouse server, then opened in Debian's
``chromium`` with scripts on: the DOM after the scripts ran must hold the
SVG marks that the data calls for, and a screenshot must be a real picture.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from seed_warehouse import MISSING_ALARM, NUMERIC, QUALITY_AT, Seeded, seeded_once

from driftline import report_cli
from driftline.report import collect, drift_heatmap, render, render_report, write_report
from driftline.report_svg import DAY, HOUR, Domain, Series, format_time, heat_colors, line_chart, nice_ticks, time_ticks
from driftline.retrainer.registry import Registry
from driftline.settings import Settings
from driftline.stack.process import free_port
from driftline.streams.warehouse import Warehouse

pytestmark = pytest.mark.warehouse

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--mute-audio",
)
WINDOW = (1100, 2400)


@pytest.fixture(scope="module")
def seeded(warehouse_server, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    return seeded_once(warehouse_server, tmp_path_factory.getbasetemp() / "seeded-registry")


@pytest.fixture(scope="module")
def warehouse(seeded: Seeded) -> Iterator[Warehouse]:
    with Warehouse.connect(seeded.url) as wh:
        yield wh


@pytest.fixture(scope="module")
def html(seeded: Seeded, warehouse: Warehouse) -> str:
    return render_report(warehouse, seeded.run.registry, seeded.run.model_id)


def _count(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text))


# ---- pure parts ----------------------------------------------------------------------------------------------


def test_ticks_by_hand() -> None:
    assert nice_ticks(0.0, 137.0, target=4).tolist() == [0.0, 50.0, 100.0, 150.0]
    # span 0.051 / 5 = 0.0102 rounds up to a step of 0.02
    assert nice_ticks(-0.03, 0.021, target=5).tolist() == [-0.04, -0.02, 0.0, 0.02, 0.04]
    ticks = time_ticks(Domain(10 * 60_000, 3 * HOUR + 10 * 60_000), target=7)
    assert [label for _, label in ticks] == ["00:30", "01:00", "01:30", "02:00", "02:30", "03:00"]
    assert time_ticks(Domain(0, 10 * DAY), target=5)[1] == (2 * DAY, "01-03")
    with pytest.raises(ValueError, match="end_ms > start_ms"):
        Domain(5, 5)


def test_heat_colours_jump_at_the_threshold_and_saturate() -> None:
    colors = heat_colors(np.array([[0.0, 0.5], [1.0, 7.0]]))
    assert colors.shape == (2, 2)
    assert colors[0, 0] == "#f1f5f9" and colors[1, 0] == "#fb923c" and colors[1, 1] == "#991b1b"
    # halfway from #f1f5f9 to #fcd34d: (241+252)/2 = 246.5 -> 246 (half to even), 228, 163
    assert heat_colors(np.array([0.5]))[0] == "#f6e4a3"


def test_a_line_breaks_where_a_version_stopped_serving() -> None:
    xs = np.array([0, 1, 2, 10, 11]) * 60_000
    svg = line_chart([Series("v1", "v1", xs, np.array([1.0, 2.0, np.nan, 4.0, 5.0]), "#000")], Domain(0, 11 * 60_000))
    (path,) = re.findall(r'class="mark line" d="([^"]+)"', svg)
    assert path.count("M") == 2 and path.count("L") == 2  # 0-1, then 10-11; the NaN and the gap split it
    assert svg.count('class="mark point"') == 4


def test_heatmap_merges_neighbouring_windows_beyond_its_width() -> None:
    n = 600
    starts = np.arange(n, dtype=np.int64) * 300_000
    scores = np.full(n, 0.2)
    scores[301] = 3.0
    table = pa.table(
        {
            "model_version": ["1"] * n,
            "feature": ["income"] * n,
            "window_start": pa.array(starts, pa.timestamp("ms", tz="UTC")),
            "window_end": pa.array(starts + 300_000, pa.timestamp("ms", tz="UTC")),
            "score": scores,
            "any_drifted": pa.array((scores > 1).astype(np.uint8)),
            "metrics": [[{"1": "psi", "2": float(x) * 0.2, "3": 0.2, "4": int(x > 1)}] for x in scores],
        }
    )
    grid = drift_heatmap(table, {"1": "#000"})
    assert grid.scores.shape == (1, 200)  # 600 windows, 3 to a column
    assert np.flatnonzero(grid.flags[0]).tolist() == [100] and grid.scores[0, 100] == 3.0
    assert grid.starts[100] == starts[300] and grid.ends[100] == starts[302] + 300_000
    assert grid.tips[0][100].splitlines()[1] == "worst value / threshold: 3  ⚠ drifted"


# ---- the report from seeded data ---------------------------------------------------------------------------------


def test_report_is_self_contained(html: str) -> None:
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    assert "<script src" not in html


def test_report_draws_what_the_data_holds(html: str, seeded: Seeded, warehouse: Warehouse) -> None:
    run = seeded.run
    cells = warehouse.query_rows(
        "SELECT count() AS n FROM (SELECT DISTINCT model_version, feature, window_start FROM drift_metrics "
        "WHERE model_id = {m:String})",
        {"m": run.model_id},
    )[0]["n"]
    assert _count(r'class="mark cell(?: flagged)?"', html) == cells
    assert _count(r'class="mark cell flagged"', html) == sum(run.drifted_windows.values())
    # prediction drift: psi, ks, wasserstein, adwin; performance: five metrics; latency: three percentiles;
    # multivariate: two statistics; trend evidence: three numeric features and the prediction; a line per
    # version; estimated and realized: accuracy and roc_auc, two lines per version
    assert _count(r'class="mark line"', html) == 2 * (4 + 5 + 3 + 2 + 4) + 2 * 2 * 2
    assert _count(r'class="mark bar"', html) > 0
    for label in ("retrain (drift)", "v2 registered", "v2 promoted", "v2 serves"):
        assert f">{label}</text>" in html, label
    assert '>Champion</div><div class="value">v2<' in html


def _section_of(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start : html.index("</section>", start)]


def test_report_shows_the_other_alarm_classes_and_the_estimates(html: str, seeded: Seeded) -> None:
    quality = _section_of(html, "data-quality")
    rows = re.findall(r"<tr><td>.*?</tr>", quality.split("<tbody>")[1])
    assert len(rows) == len(QUALITY_AT)  # income's two alarms, the replayed windows counted once
    assert all("income" in r and "<code>missing_rate</code>" in r and f">{MISSING_ALARM:g}<" in r for r in rows)
    assert '<div class="label">Data-quality alarms</div><div class="value">2<' in html

    multivariate = _section_of(html, "multivariate")
    assert multivariate.count("<svg") == 2 and ">threshold</text>" in multivariate
    assert "reconstruction_error" in multivariate and "correlation_change" in multivariate
    assert "all numeric (multivariate)" in _section_of(html, "drift")  # a heatmap row of its own

    trend = _section_of(html, "trend")
    assert trend.count("<svg") == len(NUMERIC) + 1 and trend.count(">alarm level</text>") == len(NUMERIC) + 1
    # a log axis: decades as tick labels (the seeded evidence reaches 1e8), not a linear scale from 0
    assert ">1e+10</text>" in trend or ">1e+08</text>" in trend
    assert 'class="tick-label" x="50" y="' in trend and ">0</text>" not in trend
    assert trend.index("prediction (output)") < trend.index("income")  # the model output first
    assert "trend_evidence" not in _section_of(html, "prediction-drift")

    estimates = _section_of(html, "estimates")
    assert estimates.count("<svg") == 2 and estimates.count('class="band"') == 2 * 2  # per metric and version
    assert estimates.count('stroke-dasharray="7 4"') == 2 * 2  # the estimates are dashed
    assert "v1 realized" in estimates and "v2 estimated" in estimates
    assert "estimated_" not in _section_of(html, "performance")  # the estimates have their own section
    order = [html.index(f'<section id="{a}">') for a in ("drift", "data-quality", "multivariate", "trend")]
    assert order == sorted(order)


def test_report_estimates_are_realized_on_the_same_predictions(seeded: Seeded, warehouse: Warehouse) -> None:
    run = seeded.run
    data = collect(warehouse, run.registry, run.model_id)
    assert data.estimates is not None
    rows = [r for r in data.estimates.to_pylist() if r["metric"] == "accuracy"]
    assert len(rows) == len(run.raw)  # every version's prediction window has its estimate
    labelled = 0
    for r in rows:
        window = (int(r["window_start"].timestamp() * 1000) - run.start_ms) // run.window_ms
        truth = run.raw[(r["model_version"], window)]
        # the labels' own event time is an hour later: they still grade this window
        assert r["n_labeled"] == truth.n_labeled
        if truth.n_labeled:
            labelled += 1
            assert r["realized"] == pytest.approx(truth.realized("accuracy"), abs=1e-12)
        else:
            assert r["realized"] is None
    assert 0 < labelled < len(rows)
    assert "realized on the same window's predictions" in render(data)


def test_report_lineage_and_timeline(html: str, seeded: Seeded) -> None:
    v1, v2 = seeded.run.registry.list_versions(seeded.run.model_id)
    for version in (v1, v2):
        assert version.lineage.dataset_sha256[:12] in html
        assert version.artifact_sha256[:12] in html
    assert seeded.run.retrain_request_id in html
    assert "river-linear" in html and "learning_rate = 0.05" in html and "champion_roc_auc = 0.742" in html
    assert "psi(income) = " in html and "psi(debt_ratio) = " in html
    assert "Champions, oldest first (rollbacks walk back along this list): v1 → v2" in html
    order = [
        html.index(s)
        for s in (
            "retrain requested (manual)",
            "retrain requested (drift)",
            "v2 registered</span>",
            "v2 promoted to champion",
            "info alert: performance_recovered",
        )
    ]
    assert order == sorted(order)
    assert "not enough labelled rows: 812 &lt; 2000" in html


def test_days_leave_out_older_windows(seeded: Seeded, warehouse: Warehouse) -> None:
    run = seeded.run
    html = render_report(warehouse, run.registry, run.model_id, days=1 / 24)
    cutoff = run.end_ms - HOUR  # the model's latest window ends at end_ms
    cells = warehouse.query_rows(
        "SELECT count() AS n FROM (SELECT DISTINCT model_version, feature, window_start FROM drift_metrics "
        "WHERE model_id = {m:String} AND window_start >= fromUnixTimestamp64Milli({c:Int64}, 'UTC'))",
        {"m": run.model_id, "c": cutoff},
    )[0]["n"]
    assert 0 < _count(r'class="mark cell', html) == cells
    assert f"Windows before {format_time(cutoff)} UTC are left out" in html
    assert "v1 registered" in html  # the timeline and lineage are not cut


def test_report_without_a_registry_reads_the_mirror(seeded: Seeded, warehouse: Warehouse) -> None:
    html = render_report(warehouse, None, seeded.run.model_id)
    assert "No registry was given" in html
    assert (
        "the warehouse&#x27;s <code>model_versions</code> mirror" not in html
    )  # the intro is markup, not escaped text
    assert "the warehouse's <code>model_versions</code> mirror" in html
    assert "learning_rate = 0.05" in html and "holdout" in html
    assert ">v2 promoted</text>" not in html  # promotions live in the registry's audit log only
    assert ">v2 serves</text>" in html


def test_report_of_an_unknown_model_explains_instead_of_failing(seeded: Seeded, warehouse: Warehouse) -> None:
    html = render_report(warehouse, seeded.run.registry, "nobody")
    assert "Nothing is known about model nobody" in html and seeded.run.model_id in html
    for headline in (
        "No drift metrics for nobody yet.",
        "No prediction drift yet.",
        "No performance metrics yet.",
        "No latency reported.",
        "No registered versions.",
    ):
        assert headline in html
    assert 'class="mark cell' not in html and 'class="mark line"' not in html


def test_report_on_an_empty_and_on_an_unmigrated_warehouse(warehouse_server, unique: str) -> None:
    with Warehouse.connect(warehouse_server.url(f"dl_{unique}_empty"), migrate=True) as wh:
        html = render_report(wh, None, "credit")
    assert "This warehouse holds no monitoring data yet." in html
    assert "No rejected messages." in html and "Nothing happened yet." in html
    with Warehouse.connect(warehouse_server.url(f"dl_{unique}_bare")) as wh:
        html = render_report(wh, None, "credit")
    assert "has no table drift_metrics" in html and "has no table rejected_events" in html
    assert "Drift metrics are unavailable." in html and "DLQ counts are unavailable." in html


# ---- headless Chromium ----------------------------------------------------------------------------------------


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    done = subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_chromium_runs_the_scripts_and_draws_every_chart(html: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=2000", "--dump-dom", page.as_uri()).stdout
    assert 'data-ready="true"' in dom  # the inline script ran to its end
    marks = int(re.search(r'data-marks="(\d+)"', dom).group(1))
    assert marks == _count(r'class="mark ', html) > 0
    svgs = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    # heatmap, multivariate, trend, prediction drift, performance, estimates, latency, DLQ
    assert len(svgs) == 1 + 2 + 4 + 4 + 5 + 2 + 3 + 1
    for svg in svgs:
        assert re.search(r'<(?:rect|path|circle) class="mark', svg), svg[:200]
    assert _count(r'<rect class="mark cell', dom) == _count(r'class="mark cell', html)
    assert _count(r'<path class="mark line"', dom) == 44


def _png_size_and_pixels(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    chunks, i = [], 8
    while i < len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        if data[i + 4 : i + 8] == b"IDAT":
            chunks.append(data[i + 8 : i + 8 + length])
        i += 12 + length
    return width, height, zlib.decompress(b"".join(chunks))


def test_chromium_screenshot_is_a_real_picture(html: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(html, encoding="utf-8")
    shot = tmp_path / "report.png"
    _chromium(tmp_path, f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", page.as_uri())
    width, height, pixels = _png_size_and_pixels(shot)
    assert (width, height) == WINDOW
    assert shot.stat().st_size > 60_000  # a blank page of this size compresses to a few kB
    raw = np.frombuffer(pixels, dtype=np.uint8)
    # filtered scanlines of a uniform picture are nearly all zero; charts leave many distinct bytes
    assert len(np.unique(raw)) > 128 and np.count_nonzero(raw) > 0.02 * raw.size


# ---- write_report and the CLI ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftline")
    report_cli.add_commands(parser.add_subparsers(dest="command"))
    return parser


def test_cli_writes_the_report(seeded: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry: Registry = seeded.run.registry
    settings = Settings(warehouse=seeded.url, registry=registry.url, artifacts=str(tmp_path / "artifacts"))
    out = tmp_path / "out" / "credit.html"
    args = _parser().parse_args(["report", "--model", seeded.run.model_id, "--out", str(out)])
    assert args.handler(args, settings) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    text = out.read_text(encoding="utf-8")
    assert "v2 promoted to champion" in text and not list(out.parent.glob(".*.partial"))


def test_write_report_does_not_create_a_missing_sqlite_registry(seeded: Seeded, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "registry.db"
    settings = Settings(warehouse=seeded.url, registry=f"sqlite:///{missing}")
    path = write_report(settings, seeded.run.model_id, tmp_path / "r.html")
    assert not missing.exists()
    assert "No registry was given" in path.read_text(encoding="utf-8")


def test_cli_errors(seeded: Seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser()
    args = parser.parse_args(["report", "--model", "../etc", "--out", str(tmp_path / "x.html")])
    assert args.handler(args, Settings(warehouse=seeded.url)) == 2
    assert "invalid model id '../etc'" in capsys.readouterr().err
    down = Settings(warehouse=f"http://127.0.0.1:{free_port()}/driftline", registry=f"sqlite:///{tmp_path}/none.db")
    args = parser.parse_args(["report", "--model", "credit", "--out", str(tmp_path / "y.html")])
    assert args.handler(args, down) == 1
    assert "driftline report: " in capsys.readouterr().err
    assert not (tmp_path / "y.html").exists()
