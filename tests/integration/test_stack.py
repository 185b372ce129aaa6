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
    """Up, status, up again, down; the warehouse `up` starts is locked (issue 11's done-when check)."""
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

        from driftline.settings import load_settings, local_warehouse_password_file, warehouse_url

        settings = load_settings(env=stack_env)
        url = warehouse_url(settings)  # the password from the state directory, nothing configured
        assert url != stack_env["DRIFTLINE_WAREHOUSE"]
        client = clickhouse_connect.get_client(dsn=url.rsplit("/", 1)[0])
        tables = {r[0] for r in client.query("SELECT name FROM system.tables WHERE database = 'driftline'").result_rows}
        assert {"drift_metrics", "performance_metrics", "retrain_requests", "model_versions"} <= tables
        password_file = local_warehouse_password_file(settings)
        assert password_file.stat().st_mode & 0o777 == 0o600 and password_file.parent.stat().st_mode & 0o077 == 0
        assert len(password_file.read_text().strip()) >= 24
        assert_locked_down(stack_env, password_file.read_text().strip(), Path(settings.state_dir))
    finally:
        down = run(["stack", "down"], stack_env)
    assert down.returncode == 0, down.stderr
    assert "kafka" in down.stdout and "clickhouse" in down.stdout
    after = run(["stack", "status"], stack_env)
    assert after.returncode == 1
    assert all(" down" in line for line in after.stdout.splitlines())


def assert_locked_down(env: dict[str, str], password: str, state: Path) -> None:
    """file(), url(), INTO OUTFILE, an Origin, a zstd bomb and no password all fail cleanly; RSS < 600 MiB."""
    import base64
    import http.client

    import zstandard

    port = int(env["DRIFTLINE_WAREHOUSE"].rsplit(":", 1)[1].split("/")[0])
    secret = state / "outside.txt"
    secret.write_text("not for the network\n")
    outfile = state / "appended.txt"
    auth = {"Authorization": "Basic " + base64.b64encode(f"default:{password}".encode()).decode()}

    def post(sql: str, headers: dict[str, str], body: bytes | None = None, query: str = "") -> tuple[int, str, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request(
            "POST", "/" + (f"?query={query}" if query else ""), body=body if body is not None else sql, headers=headers
        )
        reply = conn.getresponse()
        text = reply.read().decode()
        conn.close()
        return reply.status, reply.getheader("X-ClickHouse-Exception-Code") or "", text

    post("CREATE TABLE IF NOT EXISTS default.sink (a String) ENGINE = Memory", auth)
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 30))
    attacks = {
        "file": post(f"SELECT * FROM file('{secret}', 'LineAsString')", auth),
        "url": post("SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')", auth),
        "outfile": post(f"SELECT 1 INTO OUTFILE '{outfile}' APPEND", auth),
        "origin": post(
            "CREATE TABLE default.evil (a UInt8) ENGINE = Memory", {**auth, "Origin": "http://evil.example"}
        ),
        "bomb": post("", {**auth, "Content-Encoding": "zstd"}, bomb, "INSERT+INTO+default.sink+FORMAT+TSV"),
        "no password": post("SELECT 1", {}),
    }
    for name, (status, code, text) in attacks.items():
        assert 400 <= status < 500 and code and text.startswith(f"Code: {code}. DB::Exception: "), (name, status, text)
        assert "not for the network" not in text, name
    assert not outfile.exists()
    pid = int((state / "warehouse" / "server.pid").read_text())
    peak = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    assert peak / 1024 < 600, f"the server peaked at {peak / 1024:.0f} MiB"
    assert post("SELECT 'still serving'", auth)[2] == "still serving\n"


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
