"""The embedded ClickHouse server is safe by default: attacks from the network or a web page fail cleanly.

Every test talks to ``python -m driftline.stack.chserver`` as a separate process, the way
``driftline stack up`` runs it, with a password; the hostile requests come as raw HTTP.
"""

from __future__ import annotations

import functools
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError
from test_chserver import (
    AUTH,
    PASSWORD,
    Reply,
    ServerProcess,
    password_file,
    request,
    start_server,
)

pytestmark = pytest.mark.warehouse

SECRET = "driftline-secret-" + uuid.uuid4().hex
FLAT = "LAYOUT(FLAT()) LIFETIME(0)"  # the dictionary layout every hostile dictionary below uses


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A readable file outside the server's data folder, which no request may read."""
    path = tmp_path_factory.mktemp("outside") / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("locked")
    srv = start_server(root, "--password-file", password_file(root), "--max-execution-time", "5",
                       "--max-query-bytes", "65536", "--max-body-bytes", str(8 << 20))  # fmt: skip
    yield srv
    assert srv.stop() == 0, srv.log.read_text()[-3000:]


class Listener:
    """A TCP port that records whether anything connected: url(), remote(), ... must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def refused(reply: Reply, code: int) -> None:
    assert 400 <= reply.status < 500, (reply.status, reply.text)
    assert reply.headers["X-ClickHouse-Exception-Code"] == str(code), reply.text
    assert reply.text.startswith(f"Code: {code}. DB::Exception: "), reply.text
    assert SECRET not in reply.text


def hostile_statements(secret: Path, outfile: Path, port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/x"
    return [
        f"SELECT * FROM file('{secret}', 'LineAsString')",
        f"select * from FILE('{secret}', 'LineAsString')",
        f"SELECT * FROM `file`('{secret}', 'LineAsString')",
        f"SELECT * FROM \"file\"('{secret}', 'LineAsString')",
        f"SELECT * FROM file /* a comment */ ('{secret}', 'LineAsString')",
        f"SELECT * FROM file -- line comment\n('{secret}', 'LineAsString')",
        f"SELECT $$ ' $$, c1 FROM file('{secret}', 'LineAsString')",  # a heredoc hiding the call from a naive lexer
        f"SELECT file('{secret}')",
        f"SELECT count() FROM (SELECT * FROM (SELECT * FROM file('{secret}', 'LineAsString')))",
        f"WITH x AS (SELECT * FROM file('{secret}', 'LineAsString')) SELECT * FROM x",
        f"SELECT 1 WHERE 1 IN (SELECT length(line) FROM file('{secret}', 'LineAsString') AS t(line))",
        f"SELECT * FROM url('{url}', 'LineAsString')",
        f"SELECT * FROM urlCluster('c', '{url}', 'LineAsString')",
        f"SELECT * FROM remote('127.0.0.1:{port}', system.one)",
        f"SELECT * FROM remoteSecure('127.0.0.1:{port}', system.one)",
        f"SELECT * FROM s3('{url}/a.csv', 'CSV')",
        f"SELECT * FROM hdfs('hdfs://127.0.0.1:{port}/a', 'TSV', 'a String')",
        f"SELECT * FROM mysql('127.0.0.1:{port}', 'db', 't', 'u', 'p')",
        f"SELECT * FROM postgresql('127.0.0.1:{port}', 'db', 't', 'u', 'p')",
        "SELECT * FROM jdbc('jdbc:x', 't')",
        "SELECT * FROM odbc('DSN=x', 't')",
        "SELECT * FROM executable('cat /etc/passwd', 'TSV', 'a String')",
        "SELECT * FROM python('x')",
        f"SELECT * FROM sqlite('{secret}', 't')",
        f"SELECT 1 INTO OUTFILE '{outfile}'",
        f"SELECT 1 INTO OUTFILE '{outfile}' APPEND",
        f"select 1 into /* x */ outfile '{outfile}' TRUNCATE",
        f"INSERT INTO t FROM INFILE '{secret}' FORMAT LineAsString",
        f"INSERT INTO FUNCTION file('{outfile}', 'TSV') SELECT 1",
        f"INSERT INTO FUNCTION url('{url}', 'TSV') SELECT 1",
        f"CREATE TABLE leak (line String) ENGINE = File(LineAsString, '{secret}')",
        f"CREATE TABLE leak (line String) ENGINE=URL('{url}', LineAsString)",
        f"CREATE TABLE leak (line String) ENGINE = S3('{url}/a', 'LineAsString')",
        "CREATE TABLE leak (line String) ENGINE = Executable('cat', 'TSV')",
        "CREATE TABLE leak (a UInt8) ENGINE = MergeTree ORDER BY a "
        f"SETTINGS disk = disk(type = local, path = '{outfile.parent}/')",
        f"CREATE TABLE leak AS file('{secret}', 'LineAsString')",
        f"CREATE DATABASE leak ENGINE = Filesystem('{secret.parent}')",
        f"CREATE DICTIONARY d (line String) PRIMARY KEY line SOURCE(HTTP(url '{url}' format 'TSV')) {FLAT}",
        f"CREATE DICTIONARY d (line String) PRIMARY KEY line SOURCE(FILE(path '{secret}' format 'TSV')) {FLAT}",
        f"CREATE DICTIONARY d (a UInt64) PRIMARY KEY a SOURCE(EXECUTABLE(command 'cat' format 'TSV')) {FLAT}",
        "CREATE DICTIONARY d (a UInt64) PRIMARY KEY a "
        f"SOURCE(CLICKHOUSE(HOST '127.0.0.1' PORT {port} TABLE 't')) {FLAT}",
        f"CREATE DICTIONARY d (a UInt64) PRIMARY KEY a SOURCE(CLICKHOUSE(QUERY 'SELECT 1')) {FLAT}",
        "SYSTEM RELOAD CONFIG",
        "system flush logs",
        f"BACKUP TABLE system.one TO File('{outfile}')",
        f"SELECT 1 FORMAT Template SETTINGS format_template_resultset = '{secret}'",
        f"SELECT 1 FORMAT Protobuf SETTINGS format_schema = '{secret}:X'",
        f"SET format_template_row = '{secret}'",
        "CREATE NAMED COLLECTION nc AS url = 'http://x'",
    ]


def test_no_request_reaches_files_network_or_programs(locked: ServerProcess, secret_file: Path, tmp_path: Path) -> None:
    listener = Listener()
    outfile = tmp_path / "written.txt"
    try:
        request(locked.port, "POST", body="CREATE TABLE t (line String) ENGINE = Memory")
        for sql in hostile_statements(secret_file, outfile, listener.port):
            for method, params, body in (
                ("POST", None, sql),
                ("POST", {"query": sql}, None),
                ("GET", {"query": sql}, None),
            ):
                reply = request(locked.port, method, params, body)
                assert 400 <= reply.status < 500, (sql, reply.status, reply.text)
                assert reply.headers["X-ClickHouse-Exception-Code"] in ("497", "164"), (sql, reply.text)
                assert SECRET not in reply.text, sql
        # a whole statement in a multipart form, and a settings override in the URL
        reply = request(
            locked.port, "POST", {"format_template_resultset": str(secret_file)}, "SELECT 1 FORMAT Template"
        )
        refused(reply, 497)
        # two statements, the second one hostile: refused as a whole
        reply = request(locked.port, "POST", body=f"SELECT 1; SELECT * FROM file('{secret_file}', 'LineAsString')")
        assert reply.status == 400 and SECRET not in reply.text
        assert not outfile.exists(), "INTO OUTFILE wrote a file"
        assert listener.connections == 0, "the server made a network connection"
        # what legitimate clients do still works
        assert (
            request(locked.port, "POST", body="SELECT count() FROM numbers(10) SETTINGS max_threads = 1").text == "10\n"
        )
        assert (
            request(locked.port, "POST", body="SELECT 'file(x)', `file` FROM (SELECT 1 AS `file`)").text
            == "file(x)\t1\n"
        )
    finally:
        listener.close()
    assert "ACCESS_DENIED" in locked.log.read_text()  # refusals are logged


def test_readonly_is_the_engines_and_cannot_be_lifted(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--password-file", password_file(tmp_path), "--readonly", "1")
    try:
        port = srv.port
        for reply in (
            request(port, "POST", body="CREATE TABLE x (a UInt8) ENGINE = Memory"),
            request(port, "POST", {"readonly": "0"}, "CREATE TABLE x (a UInt8) ENGINE = Memory"),
            request(port, "POST", {"readonly": "0"}, "CREATE TABLE x (a UInt8) ENGINE = Memory SETTINGS readonly = 0"),
            request(port, "POST", body="SELECT 1 SETTINGS readonly = 0"),
            request(port, "POST", {"session_id": "s1"}, "SET readonly = 0"),
            request(port, "POST", {"session_id": "s1"}, "CREATE TABLE x (a UInt8) ENGINE = Memory"),
            request(port, "POST", {"session_id": "s1"}, "/* hide the keyword */ INSERT INTO system.one SELECT 1"),
        ):
            refused(reply, 164)
        assert request(port, "POST", body="SELECT getSetting('readonly')").text == "1\n"
        assert "x" not in request(port, "POST", body="SHOW TABLES").text.split()
        reader = clickhouse_connect.get_client(host="127.0.0.1", port=port, password=PASSWORD)
        assert reader.command("SELECT 40 + 2") == 42
        with pytest.raises(DatabaseError, match="164"):
            reader.command("CREATE TABLE y (a UInt8) ENGINE = Memory")
    finally:
        assert srv.stop() == 0


def test_get_and_readonly_requests_are_readonly_in_the_engine(locked: ServerProcess) -> None:
    # the first keyword says SELECT; the engine sees that it writes
    refused(request(locked.port, "GET", {"query": "CREATE TABLE g (a UInt8) ENGINE = Memory"}), 164)
    refused(request(locked.port, "POST", {"readonly": "2"}, "CREATE TABLE g (a UInt8) ENGINE = Memory"), 164)
    refused(request(locked.port, "POST", {"readonly": "2"}, "SELECT 1 SETTINGS readonly = 0"), 164)
    assert request(locked.port, "GET", {"query": "SELECT 1", "max_threads": "2"}).text == "1\n"


def test_origin_host_and_cors(locked: ServerProcess) -> None:
    port = locked.port
    from_page = request(
        port, "POST", body="CREATE TABLE evil (a UInt8) ENGINE = Memory", headers={"Origin": "http://evil.example"}
    )
    refused(from_page, 497)
    assert "Origin" in from_page.text and "Access-Control-Allow-Origin" not in from_page.headers
    assert "evil" not in request(port, "POST", body="SHOW TABLES").text.split()
    refused(request(port, path="/ping", headers={"Origin": "null"}), 497)
    rebound = request(port, "POST", body="SELECT 1", headers={"Host": f"evil.example:{port}"})
    refused(rebound, 497)
    assert "Host" in rebound.text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert request(port, "POST", body="SELECT 1", headers={"Host": host}).text == "1\n"
    cors = request(port, "POST", {"add_http_cors_header": "1"}, "SELECT 1")
    assert cors.text == "1\n" and "Access-Control-Allow-Origin" not in cors.headers
    preflight = request(port, "OPTIONS", headers={"Access-Control-Request-Method": "POST"})
    assert preflight.status >= 400 and not any(h.lower().startswith("access-control") for h in preflight.headers)


def test_password_required(locked: ServerProcess) -> None:
    refused(request(locked.port, "POST", body="SELECT 1", auth=False), 516)
    refused(request(locked.port, "POST", {"user": "default", "password": "guess"}, "SELECT 1", auth=False), 516)
    assert (
        request(locked.port, "POST", body="SELECT 1", headers={"X-ClickHouse-Key": PASSWORD}, auth=False).text == "1\n"
    )
    assert request(locked.port, path="/ping", auth=False).text == "Ok.\n"  # health checks stay open


@functools.cache
def zstd_bomb() -> bytes:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 30))
    assert len(bomb) <= 33_000  # about 32 KB on the wire, 1 GiB once decompressed
    return bomb


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def test_body_decompression_query_limits(locked: ServerProcess) -> None:
    port = locked.port
    request(port, "POST", body="CREATE TABLE sink (a String) ENGINE = Memory")
    body = zstd_bomb()
    started = time.perf_counter()
    bomb = request(port, "POST", {"query": "INSERT INTO sink FORMAT TSV"}, body, {"Content-Encoding": "zstd"})
    refused(bomb, 396)
    assert bomb.status == 413 and "decompresses to more than 8388608 bytes" in bomb.text
    assert time.perf_counter() - started < 2
    assert rss_mib(locked.proc.pid, "VmHWM") < 600
    # a Content-Length past the limit is refused before the body is read
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(
            f"POST /?query=INSERT+INTO+sink+FORMAT+TSV HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {AUTH['Authorization']}\r\nContent-Length: {10 << 20}\r\n\r\n".encode()
        )
        received = b""
        while piece := raw.recv(65536):  # the server answers, then closes: the body is never read
            received += piece
        too_big = received.decode()
    assert (
        too_big.startswith("HTTP/1.1 413")
        and "X-ClickHouse-Exception-Code: 396" in too_big
        and "--max-body-bytes" in too_big
    )
    chunked = request(port, "POST", {"query": "INSERT INTO sink FORMAT TSV"}, iter([b"x\n" * (1 << 20)] * 5))
    refused(chunked, 396)  # a chunked body has no length to check first: it is counted as it arrives
    long_query = request(port, "POST", body="SELECT '" + "x" * 70_000 + "'")
    refused(long_query, 62)
    assert "--max-query-bytes" in long_query.text
    # inserts bigger than the statement limit are data, not statement
    rows = b"".join(b"row%d\n" % i for i in range(100_000))
    assert (
        request(port, "POST", {"query": "INSERT INTO sink FORMAT TSV"}, rows, {"Content-Encoding": "identity"}).status
        == 200
    )
    compressed = zstandard.ZstdCompressor().compress(rows)
    assert (
        request(port, "POST", {"query": "INSERT INTO sink FORMAT TSV"}, compressed, {"Content-Encoding": "zstd"}).status
        == 200
    )
    assert request(port, "POST", body="SELECT count() FROM sink").text == "200000\n"


def test_execution_time_limit(locked: ServerProcess) -> None:
    port = locked.port
    slow = "SELECT count() FROM numbers(100000000000) WHERE NOT ignore(sipHash64(number))"
    started = time.perf_counter()
    reply = request(port, "POST", body=slow)
    assert reply.headers["X-ClickHouse-Exception-Code"] == "159" and "TIMEOUT_EXCEEDED" in reply.text
    assert time.perf_counter() - started < 10
    for lifted in (slow + " SETTINGS max_execution_time = 0", slow + " SETTINGS max_execution_time = 100",
                   "SET max_execution_time = DEFAULT",
                   "SELECT * FROM (SELECT 1 SETTINGS max_execution_time=0)"):  # fmt: skip
        refused(request(port, "POST", {"session_id": "t1"}, lifted), 497)
    refused(request(port, "POST", {"max_execution_time": "0"}, "SELECT 1"), 497)
    assert request(port, "POST", {"max_execution_time": "2"}, "SELECT getSetting('max_execution_time')").text == "2\n"
    assert request(port, "POST", body="SELECT getSetting('max_execution_time')").text == "5\n"  # and restored


def test_connection_header_and_session_limits(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--password-file", password_file(tmp_path), "--max-connections", "4",
                       "--header-timeout", "1", "--max-sessions", "2")  # fmt: skip
    try:
        port = srv.port
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        try:
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                answer = extra.recv(4096)
            assert answer.startswith(b"HTTP/1.1 503") and b"Too many connections" in answer
        finally:
            for sock in idle:
                sock.close()
        # a connection that says nothing is closed after --header-timeout, not after the keep-alive time
        with socket.create_connection(("127.0.0.1", port), timeout=10) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b"" and time.monotonic() - started < 4
        # slowloris: headers that trickle in are cut off after --header-timeout
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"POST / HTTP/1.1\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 8:
                try:
                    slow.sendall(b"X-a: b\r\n")
                    if slow.recv(1, socket.MSG_DONTWAIT) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                    break
                time.sleep(0.3)
            assert closed and time.monotonic() - started < 4
        assert request(port, "POST", {"session_id": "a"}, "SELECT 1").text == "1\n"
        assert request(port, "POST", {"session_id": "b"}, "SELECT 1").text == "1\n"
        third = request(port, "POST", {"session_id": "c"}, "SELECT 1")
        assert (
            third.status == 429
            and third.headers["X-ClickHouse-Exception-Code"] == "700"
            and "--max-sessions" in third.text
        )
        assert request(port, "POST", {"session_id": "a"}, "SELECT 2").text == "2\n"
    finally:
        assert srv.stop() == 0


def test_sigterm_stops_within_5_seconds(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--password-file", password_file(tmp_path))
    port = srv.port
    busy: list[object] = []

    def long_query() -> None:
        try:
            busy.append(
                request(
                    port, "POST", body="SELECT sleepEachRow(1) FROM numbers(60) SETTINGS max_block_size = 1 FORMAT JSON"
                )
            )
        except OSError as exc:
            busy.append(exc)

    worker = threading.Thread(target=long_query, daemon=True)
    worker.start()
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # half-open clients
    time.sleep(1.0)
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        srv.proc.wait(5)
    finally:
        for sock in idle:
            sock.close()
        if srv.proc.poll() is None:
            srv.proc.kill()
        srv.proc.wait()
        if srv.proc.stdout is not None:
            srv.proc.stdout.close()
    assert time.monotonic() - started < 5, srv.log.read_text()[-2000:]
    worker.join(10)
    # an idle server stops cleanly, with exit status 0
    again = start_server(tmp_path)
    started = time.monotonic()
    assert again.stop() == 0 and time.monotonic() - started < 5


def test_done_when_against_the_server_process(locked: ServerProcess, secret_file: Path, tmp_path: Path) -> None:
    """The issue's check in one place: each attack fails cleanly and the server stays small."""
    port = locked.port
    outfile = tmp_path / "appended.txt"
    request(port, "POST", body="CREATE TABLE IF NOT EXISTS sink2 (a String) ENGINE = Memory")
    refused(request(locked.port, "POST", body=f"SELECT * FROM file('{secret_file}', 'LineAsString')"), 497)
    refused(request(locked.port, "POST", body="SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')"), 497)
    refused(request(locked.port, "POST", body=f"SELECT 1 INTO OUTFILE '{outfile}' APPEND"), 497)
    refused(request(port, "POST", body="SELECT 1", headers={"Origin": "http://evil.example"}), 497)
    refused(
        request(port, "POST", {"query": "INSERT INTO sink2 FORMAT TSV"}, zstd_bomb(), {"Content-Encoding": "zstd"}), 396
    )
    refused(request(port, "POST", body="SELECT 1", auth=False), 516)
    assert not outfile.exists()
    assert rss_mib(locked.proc.pid, "VmHWM") < 600
    assert request(port, "POST", body="SELECT 'alive'").text == "alive\n"
    print(f"\n[chserver] peak RSS {rss_mib(locked.proc.pid, 'VmHWM'):.0f} MiB, now {rss_mib(locked.proc.pid):.0f} MiB")
