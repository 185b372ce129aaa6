"""The benchmark scripts still run and still print their result lines (no timing is asserted).

``bench/window_compute.py`` needs no service. ``bench/throughput.py`` runs on
the session's Kafka broker and embedded ClickHouse server (given through
``DRIFTLINE_KAFKA_BOOTSTRAP`` and ``DRIFTLINE_WAREHOUSE``, as a user would
point it at ``driftline stack up``), with N = 5,000.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def _run(script: str, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{script} exited with {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


def test_window_compute_prints_its_ratios_and_false_alarms() -> None:
    out = _run("window_compute.py", "--quick", "--sizes", "150")
    assert re.search(rf"^window 150: driftline {NUMBER} ms/window .* scipy {NUMBER} ms/window", out, re.M), out
    assert re.search(rf"^RATIO window=150 scipy/driftline={NUMBER}x target>=10x (MET|NOT MET)$", out, re.M), out
    assert re.search(rf"^FALSE-ALARMS window=150 driftline over 20 windows: \d+/20 = {NUMBER}%", out, re.M), out
    assert re.search(
        rf"^RATIO window=150 evaluate_window cpu={NUMBER} ms target<=1.5 ms \(22 features \+ score, .*process CPU "
        r"time\) \(informational: the target is at 1000 events\)$",
        out,
        re.M,
    ), out
    if importlib.util.find_spec("evidently") is not None:
        assert re.search(rf"^RATIO window=150 evidently/driftline={NUMBER}x target>=100x (MET|NOT MET)$", out, re.M), (
            out
        )
        assert re.search(
            r"^FALSE-ALARMS window=150 windows=1 driftline=[01]/1 evidently-dataset-drift=[01]/1 "
            r"evidently-any-column=[01]/1",
            out,
            re.M,
        ), out
    else:
        assert "evidently: not installed" in out, out


@pytest.mark.kafka
@pytest.mark.warehouse
def test_throughput_prints_its_results_and_ratios(kafka_bootstrap: str, warehouse_server) -> None:
    env = {**os.environ, "DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_WAREHOUSE": warehouse_server.url()}
    out = _run("throughput.py", "--quick", env=env, timeout=280)
    assert re.search(
        rf"^warm-up: 1000 batched events through a first worker, not measured: {NUMBER} events/s$", out, re.M
    ), out
    for mode, n in (("batched", 5_000), ("batched", 20_000), ("single", 1_000)):
        assert re.search(
            rf"^RESULT mode={mode} n={n} messages=\d+ events_per_s={NUMBER} .* peak_rss_mib=\d+$", out, re.M
        ), out
        assert re.search(rf"^RESULT mode={mode} n={n} close_to_row_ms p50={NUMBER} p99={NUMBER} ", out, re.M), out
    assert re.search(
        rf"^RESULT mode=live rate=5,000 seconds=6 events=\d+ window_ms=1000 windows=\d+ "
        rf"window_end_to_row_ms p50=({NUMBER}|nan) p99=({NUMBER}|nan) ",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^RESULT per-window compute \(driftline core, 1000 events, in this process\): {NUMBER} ms", out, re.M
    ), out
    for mode in ("batched", "single"):
        assert re.search(
            rf"^RATIO throughput mode={mode} n=\d+ {NUMBER}/{NUMBER} events/s = {NUMBER}x of target", out, re.M
        ), out
    assert re.search(rf"^RATIO rss batched 4N/N = \d+/\d+ MiB = {NUMBER} target<=", out, re.M), out


def test_decode_bulk_prints_its_ratios() -> None:
    out = _run("decode_bulk.py", "--quick")
    assert re.search(
        rf"^RESULT n=2,000 numeric=20 categorical=2 attributes=0 missing=0% "
        rf"slow_us_per_event={NUMBER}\.\.{NUMBER} bulk_us_per_event={NUMBER}\.\.{NUMBER}",
        out,
        re.M,
    ), out
    assert re.search(
        rf"^RATIO decode n=2,000 .* slow/bulk={NUMBER}x \(range {NUMBER}\.\.{NUMBER}\) target>=4x (MET|NOT MET)$",
        out,
        re.M,
    ), out


@pytest.mark.kafka
@pytest.mark.warehouse
def test_service_profile_prints_its_result(kafka_bootstrap: str, warehouse_server) -> None:
    env = {**os.environ, "DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_WAREHOUSE": warehouse_server.url()}
    out = _run("service_profile.py", "--n", "2000", "--per-window", "1000", "--repeats", "1", "--warmup", "0", env=env)
    assert re.search(
        rf"^RESULT WorkerService.handle mode=batched n=2000 per_window=1000 raw=yes label_share=0 labels_ahead=no "
        rf"runs=1 events_per_s median={NUMBER} min={NUMBER} max={NUMBER} cpu_s median={NUMBER} .*"
        rf"cpu_s_per_million={NUMBER} server_cpu_s_per_million={NUMBER}",
        out,
        re.M,
    ), out


@pytest.mark.kafka
@pytest.mark.warehouse
def test_service_profile_runs_the_whole_service_at_many_versions(kafka_bootstrap: str, warehouse_server) -> None:
    """``--models 6 --features 4`` without ``--core``: the service with its registry and sinks, labels included."""
    env = {**os.environ, "DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_WAREHOUSE": warehouse_server.url()}
    out = _run(
        "service_profile.py",
        *("--models", "6", "--features", "4", "--n", "3000", "--event-rate", "1000", "--window-seconds", "1"),
        *("--mode", "mixed", "--label-share", "0.1", "--repeats", "1", "--warmup", "0"),
        env=env,
    )
    result = re.search(
        rf"^RESULT shell models=6 features=4 mode=mixed n=3000 labels=(?P<labels>\d+) take=1000 runs=1 "
        rf"windows=(?P<windows>\d+) cpu_s_per_million median={NUMBER} first_poll_cpu_s median={NUMBER} "
        rf"rest_cpu_s_per_million median={NUMBER} server_cpu_s_per_million={NUMBER} "
        rf"close_to_written_ms_p99 median=(?P<p99>\d+) write_cpu_ms_per_window median={NUMBER}$",
        out,
        re.M,
    )
    assert result, out
    # 3,000 events at 1,000/s of event time: three 1-s windows, each with events of the busiest models
    assert 6 <= int(result["windows"]) <= 18 and 150 <= int(result["labels"]) <= 450, out


@pytest.mark.kafka
@pytest.mark.warehouse
def test_throughput_many_models_writes_every_window(kafka_bootstrap: str, warehouse_server) -> None:
    """``--models 20 --features 5`` through the real worker, Kafka and ClickHouse: the RESULT line, every window."""
    env = {**os.environ, "DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_WAREHOUSE": warehouse_server.url()}
    out = _run(
        "throughput.py",
        *("--models", "20", "--features", "5", "--events", "6000", "--warm-up", "0", "--timeout", "120"),
        env=env,
        timeout=170,  # about 30 s on a quiet machine; the shared 2-core machines may be far from quiet
    )
    result = re.search(
        rf"^RESULT mode=models models=20 features=5 events_per_s=(?P<rate>{NUMBER}) close_to_row_ms_p99=(?P<p99>\d+) "
        rf"peak_rss_mib=(?P<rss>\d+) worker_cpu_s_per_million=(?P<worker>{NUMBER}) "
        rf"server_cpu_s_per_million=(?P<server>{NUMBER})$",
        out,
        re.M,
    )
    assert result, out
    assert int(result["rss"]) > 0 and float(result["worker"]) > 0 and float(result["server"]) > 0, out
    windows = re.search(r"^RESULT mode=models windows_expected=(\d+) windows_written=(\d+) ", out, re.M)
    assert windows, out
    # 6,000 events at 20,000/s of event time: 0.3 s, so one or two 10-s windows per model with events
    assert 20 <= int(windows[1]) <= 40 and windows[1] == windows[2], out
    assert re.search(
        r"^RATIO models=20 features=5 mode=mixed workers=1 windows_written/expected = (\d+)/\1 .* MET$", out, re.M
    ), out
    assert re.search(
        r"^RATIO models=20 features=5 mode=mixed workers=1 peak_rss_mib=\d+ target<=1024 (MET|NOT MET)$", out, re.M
    ), out


@pytest.mark.kafka
@pytest.mark.warehouse
def test_throughput_group_of_workers_writes_the_same_rows(kafka_bootstrap: str, warehouse_server) -> None:
    """``--workers 1,2 --partitions 2``: one worker and a group of two write the same drift rows, and the
    benchmark says so; each run prints its workers' CPU and idle rates."""
    env = {**os.environ, "DRIFTLINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "DRIFTLINE_WAREHOUSE": warehouse_server.url()}
    out = _run(
        "throughput.py",
        *("--models", "12", "--features", "5", "--events", "4000", "--rate", "20000"),
        *("--workers", "1,2", "--partitions", "2", "--warm-up", "0", "--timeout", "150"),
        env=env,
        timeout=330,
    )
    head = "RATIO models=12 features=5 mode=mixed"
    rows = re.search(rf"^{head} rows workers=2 vs 1: identical=(yes|no) \(rows (.*)\) (MET|NOT MET)$", out, re.M)
    assert rows, out
    # every window of the twelve models is written by both runs, and the rows are the same
    assert rows[1] == "yes" and rows[3] == "MET", out
    assert re.search(rf"^{head} group_cpu workers=2 vs 1: {NUMBER}/{NUMBER} s per million = {NUMBER} ", out, re.M), out
    for k, rates in ((1, r"\d+"), (2, r"\d+,\d+")):
        assert re.search(
            rf"^RESULT mode=models workers={k} worker_cpu_s_each=[0-9.,]+ idle_cpu_ms_per_s_each={rates} "
            rf"idle_share_s_per_million={NUMBER}$",
            out,
            re.M,
        ), out
