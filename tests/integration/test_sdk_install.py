"""The base install is the SDK: build the wheel, install it without extras into a fresh venv, log there.

A service that only logs predictions installs ``driftline`` with no extras: confluent-kafka,
fastavro, numpy and pyyaml. This test builds the wheel from the working tree, installs it (pinned
by constraints.txt) into a new virtual environment, measures site-packages, and logs 10,000
predictions there with no broker listening: they are buffered, then counted as dropped, without
an exception and without waiting on the network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIMIT_MB = 150
# what the extras bring; none of it may come with the base install, or be imported by the SDK
HEAVY = ("faust", "pyarrow", "chdb", "scipy", "pandas", "river", "pydantic", "psycopg", "clickhouse_connect")

LOG_10K = r"""
import json, socket, sys, time

started = time.perf_counter()
from driftline import PredictionLogger, Settings
import_s = time.perf_counter() - started
settings = Settings()  # the settings record is part of the SDK

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()  # nothing listens there now

logger = PredictionLogger(f"127.0.0.1:{port}", linger_ms=20)
features = {f"f{j}": float(j) for j in range(10)} | {"region": "eu"}
started = time.perf_counter()
for i in range(10_000):
    logger.log_prediction("credit", "1", features=features, prediction=0.5)
log_s = time.perf_counter() - started
logged = logger.stats()
started = time.perf_counter()
closed = logger.close(timeout=0.5)
close_s = time.perf_counter() - started
print(json.dumps({
    "driftline": sys.modules["driftline"].__file__,
    "modules": sorted({name.split(".")[0] for name in sys.modules}),
    "settings": type(settings).__module__,
    "import_s": import_s, "log_s": log_s, "close_s": close_s,
    "logged": logged.__dict__, "closed": closed.__dict__,
}))
"""


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


@pytest.mark.timeout(900)
def test_base_wheel_is_the_light_sdk_and_logs_without_a_broker(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".driftline", "*.egg-info", "build")
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in ("driftline", "streams", "retrainer", "schemas", "deploy"):
        shutil.copytree(REPO / package, source / package, ignore=skip)
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("driftline-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt", wheel, cwd=tmp_path)

    (site,) = (venv / "lib").glob("python3.*/site-packages")
    size = _size_mb(site)
    top = sorted(p.name for p in site.iterdir() if not p.name.endswith(("__pycache__", ".dist-info", ".pth")))
    largest = sorted(((_size_mb(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:6]
    print(
        f"\nbase install: {size:.1f} MB in site-packages ({', '.join(f'{n} {mb:.1f}' for mb, n in largest)}); "
        f"top level: {', '.join(top)}"
    )
    assert size < LIMIT_MB, (size, largest)
    assert "driftline" in top and not set(HEAVY) & set(top), top
    assert not {"streams", "retrainer", "schemas", "deploy"} & set(top), top  # one namespace: driftline

    report = json.loads(_run(python, "-I", "-c", LOG_10K, cwd=tmp_path, timeout=60).splitlines()[-1])
    assert report["driftline"].startswith(str(site)), report["driftline"]  # the wheel, not the working tree
    assert report["settings"] == "driftline.settings", report
    assert not set(HEAVY) & set(report["modules"]), report["modules"]
    logged, closed = report["logged"], report["closed"]
    # every event accepted and held: nothing delivered, nothing lost yet
    assert (logged["logged"], logged["delivered"], logged["dropped"]) == (10_000, 0, 0), logged
    assert logged["buffered"] == 10_000, logged
    # closing gives up on the unreachable broker and counts what it held as dropped
    assert (closed["logged"], closed["buffered"], closed["delivered"]) == (10_000, 0, 0), closed
    assert closed["dropped"] + closed["failed"] == 10_000 and closed["dropped"] > 0, closed
    assert report["log_s"] < 2.0 and report["close_s"] < 3.0, report  # never waits on the network
