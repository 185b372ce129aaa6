"""`driftline stack up|status|down` as a user runs them: separate processes, real services."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.stack.process import free_port


def run(args: list[str], env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def stack_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DRIFTLINE_STATE_DIR=str(tmp_path / "state"),
        DRIFTLINE_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}",
        DRIFTLINE_WAREHOUSE=f"http://127.0.0.1:{free_port()}/driftline",
    )
    return env


def test_up_status_down(stack_env: dict[str, str]) -> None:
    try:
        # the broker's controller listener goes next to its port, unless that port is held (here by
        # a squatter; in a busy machine, by some client connection's local end)
        host, port = stack_env["DRIFTLINE_KAFKA_BOOTSTRAP"].split(":")
        with socket.socket() as squatter:
            squatter.bind((host, int(port) + 1))
            squatter.listen()
            up = run(["stack", "up"], stack_env)
        assert up.returncode == 0, up.stderr
        assert "starting a KRaft broker" in up.stderr and "starting the embedded server" in up.stderr

        status = run(["stack", "status"], stack_env)
        assert status.returncode == 0, status.stdout + status.stderr
        lines = status.stdout.splitlines()
        assert any(line.startswith("kafka") and " alive" in line for line in lines)
        assert any(line.startswith("clickhouse") and " alive" in line for line in lines)

        again = run(["stack", "up"], stack_env)  # each service starts only where nothing answers
        assert again.returncode == 0, again.stderr
        assert "already answering" in again.stderr and "starting" not in again.stderr.replace("not starting", "")

        # the warehouse was migrated by `up`: the contract tables exist
        import clickhouse_connect

        url = stack_env["DRIFTLINE_WAREHOUSE"]
        client = clickhouse_connect.get_client(dsn=url.rsplit("/", 1)[0])
        tables = {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'driftline'").result_rows}
        assert {"drift_metrics", "performance_metrics", "retrain_requests", "model_versions"} <= tables
    finally:
        down = run(["stack", "down"], stack_env)
    assert down.returncode == 0, down.stderr
    assert "kafka" in down.stdout and "clickhouse" in down.stdout
    after = run(["stack", "status"], stack_env)
    assert after.returncode == 1
    assert all(" down" in line for line in after.stdout.splitlines())


def test_port_taken_is_a_clear_error(stack_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        host, port = stack_env["DRIFTLINE_KAFKA_BOOTSTRAP"].split(":")
        squatter.bind((host, int(port)))
        squatter.listen()
        result = run(["stack", "up"], stack_env, timeout=60)
    assert result.returncode == 2
    assert "is taken by something that is not a Kafka broker" in result.stderr


def test_missing_java_is_a_clear_error(stack_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(stack_env, PATH=str(tmp_path / "empty-bin"), DRIFTLINE_KAFKA_JARS=str(tmp_path / "no-jars"))
    result = run(["stack", "up"], env, timeout=60)
    assert result.returncode == 2
    assert "is not installed" in result.stderr and ("mvn" in result.stderr or "java" in result.stderr)
