"""The embedded ClickHouse HTTP server, run as its own process like production, against real clients.

Raw HTTP (as curl sends it), clickhouse-connect's sync and async clients, and
two separate OS processes inserting at once all talk to one server process
that owns a chdb path in a temporary directory.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import gzip
import http.client
import json
import select
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import clickhouse_connect
import lz4.block
import lz4.frame
import pandas as pd
import pyarrow as pa
import pytest
import zstandard
from clickhouse_connect.driver.exceptions import DatabaseError

pytestmark = pytest.mark.warehouse

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC
# The module's server is locked like `driftline stack up` leaves it; requests here carry the password.
PASSWORD = "pw-" + uuid.uuid4().hex
AUTH = {"Authorization": "Basic " + base64.b64encode(f"default:{PASSWORD}".encode()).decode()}


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log: Path

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def start_server(root: Path, *extra: str) -> ServerProcess:
    """``python -m driftline.stack.chserver`` on a free port (it prints the port it took)."""
    log = root / "chserver.log"
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "driftline.stack.chserver", "--path", str(root / "data"), "--port", "0",
             "--log-level", "DEBUG", *extra],
            stdout=subprocess.PIPE, stderr=err, cwd=REPO,
        )  # fmt: skip
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on http://"):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}\n{log.read_text()[-3000:]}")
    return ServerProcess(proc, int(line.rsplit(":", 1)[1]), log)


def password_file(root: Path, password: str = PASSWORD) -> str:
    path = root / "clickhouse.password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("chserver")
    srv = start_server(root, "--password-file", password_file(root))
    yield srv
    assert srv.stop() == 0, srv.log.read_text()[-3000:]  # SIGTERM is a clean shutdown


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def request(port: int, method: str = "GET", params: dict | None = None, body=None, headers: dict | None = None,
            path: str = "/", auth: bool = True) -> Reply:  # fmt: skip
    """One HTTP request the way curl sends it (``curl -u default:PASSWORD``); an iterable body goes out chunked."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    url = path + ("?" + urlencode(params) if params else "")
    encode_chunked = body is not None and not isinstance(body, (bytes, str))
    conn.request(
        method, url, body=body, headers={**(AUTH if auth else {}), **(headers or {})}, encode_chunked=encode_chunked
    )
    response = conn.getresponse()
    reply = Reply(response.status, response.headers, response.read())
    conn.close()
    return reply


def query(port: int, sql: str, **params: str) -> str:
    reply = request(port, "POST", params, sql)
    assert reply.status == 200, reply.text
    return reply.text


@pytest.fixture
def db(server: ServerProcess) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    query(server.port, f"CREATE DATABASE {name}")
    return name


@pytest.fixture
def client(server: ServerProcess, db: str):
    c = clickhouse_connect.get_client(host="127.0.0.1", port=server.port, database=db, password=PASSWORD)
    yield c
    c.close()


# -- raw HTTP ----------------------------------------------------------------------------------------


def test_ping_root_and_plain_queries(server: ServerProcess, db: str) -> None:
    for path in ("/ping", "/", "/replicas_status"):
        assert request(server.port, path=path).body == b"Ok.\n"
    got = request(server.port, params={"query": "SELECT 1 + 1, 'a\tb'"})
    assert (got.status, got.body) == (200, b"2\ta\\tb\n")
    assert got.headers["X-ClickHouse-Format"] == "TabSeparated"
    assert got.headers["X-ClickHouse-Query-Id"] and got.headers["X-ClickHouse-Timezone"]
    # the URL query and the body are one statement; the body alone too
    assert query(server.port, " 40 + 2", query="SELECT") == "42\n"
    assert (
        query(server.port, "SELECT number FROM numbers(3) FORMAT JSONEachRow")
        == '{"number":0}\n{"number":1}\n{"number":2}\n'
    )
    assert json.loads(query(server.port, "SELECT 7 AS x", default_format="JSON"))["data"] == [{"x": 7}]
    # database from the parameter or the header
    query(server.port, "CREATE TABLE t (a UInt8) ENGINE = Memory", database=db)
    assert query(server.port, "SELECT currentDatabase(), count() FROM t", database=db) == f"{db}\t0\n"
    by_header = request(server.port, "POST", body="SHOW TABLES", headers={"X-ClickHouse-Database": db})
    assert by_header.text == "t\n"
    # INSERT with the data in the body, the statement in the URL or in the body
    query(server.port, "1\n2\n", query=f"INSERT INTO {db}.t FORMAT TSV")
    query(server.port, f"INSERT INTO {db}.t FORMAT CSV\n3\n")
    query(server.port, f"INSERT INTO {db}.t VALUES (4), (5)")
    query(server.port, "(6)", query=f"INSERT INTO {db}.t VALUES")
    summary = json.loads(
        request(server.port, "POST", {"query": f"INSERT INTO {db}.t FORMAT TSV"}, b"7\n8\n").headers[
            "X-ClickHouse-Summary"
        ]
    )
    assert summary["written_rows"] == "2"
    assert query(server.port, f"SELECT groupArray(a) FROM (SELECT a FROM {db}.t ORDER BY a)") == "[1,2,3,4,5,6,7,8]\n"


def test_errors_carry_code_header_and_body(server: ServerProcess, db: str) -> None:
    query(server.port, f"CREATE TABLE {db}.t (a UInt8) ENGINE = Memory")
    missing = request(server.port, "POST", body="SELECT * FROM no_such_table")
    assert missing.status == 404 and missing.headers["X-ClickHouse-Exception-Code"] == "60"
    assert missing.text.startswith("Code: 60. DB::Exception: ") and "(UNKNOWN_TABLE) (version " in missing.text
    syntax = request(server.port, "POST", body="SELEC 1")
    assert syntax.status == 400 and syntax.headers["X-ClickHouse-Exception-Code"] == "62"
    two = request(server.port, "POST", body="SELECT 1; SELECT 2")
    assert two.headers["X-ClickHouse-Exception-Code"] == "62" and "Multi-statements" in two.text
    readonly = request(server.port, "GET", {"query": "CREATE TABLE x (a UInt8) ENGINE = Memory"})
    assert readonly.status == 403 and readonly.headers["X-ClickHouse-Exception-Code"] == "164"
    readonly = request(server.port, "POST", {"readonly": "1"}, "CREATE TABLE x (a UInt8) ENGINE = Memory")
    assert readonly.headers["X-ClickHouse-Exception-Code"] == "164"
    unknown_setting = request(server.port, "POST", {"no_such_setting": "1"}, "SELECT 1")
    assert unknown_setting.headers["X-ClickHouse-Exception-Code"] == "115"
    empty = request(server.port, "POST", body="  ")
    assert empty.headers["X-ClickHouse-Exception-Code"] == "62"
    corrupt = request(
        server.port, "POST", {"query": f"INSERT INTO {db}.t FORMAT TSV"}, b"not lz4", {"Content-Encoding": "lz4"}
    )
    assert corrupt.headers["X-ClickHouse-Exception-Code"] == "271"
    bogus_encoding = request(server.port, "POST", body=b"SELECT 1", headers={"Content-Encoding": "snappy"})
    assert bogus_encoding.headers["X-ClickHouse-Exception-Code"] == "89"
    bad_rows = request(server.port, "POST", {"query": f"INSERT INTO {db}.t FORMAT TSV"}, b"1\nnot a number\n")
    assert (
        bad_rows.headers["X-ClickHouse-Exception-Code"] == "27"
        and "(CANNOT_PARSE_INPUT_ASSERTION_FAILED)" in bad_rows.text
    )
    # a malformed chunked body: the server answers or hangs up, and keeps serving
    import socket

    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        head = (
            f"POST / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
        )
        raw.sendall(head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nSELECT 1\r\n0\r\n\r\n")
        assert raw.recv(65536).startswith(b"HTTP/1.1 ")
    assert query(server.port, "SELECT 'still serving'") == "still serving\n"


def test_clickhouse_connect_raises_database_error(client) -> None:
    with pytest.raises(DatabaseError, match="UNKNOWN_TABLE") as caught:
        client.query("SELECT * FROM no_such_table")
    assert getattr(caught.value, "code", None) == 60
    assert client.command("SELECT 'fine'") == "fine"


def test_request_compression_every_frame_arrives(server: ServerProcess, db: str) -> None:
    query(server.port, f"CREATE TABLE {db}.c (a UInt32) ENGINE = MergeTree ORDER BY a")
    lines = [b"".join(b"%d\n" % (i * 100 + j) for j in range(100)) for i in range(3)]
    bodies = {
        "lz4": b"".join(lz4.frame.compress(part) for part in lines),
        "zstd": b"".join(zstandard.ZstdCompressor().compress(part) for part in lines),
        "gzip": b"".join(gzip.compress(part) for part in lines),
        "deflate": zlib.compress(b"".join(lines)),
    }
    for encoding, body in bodies.items():
        query(server.port, f"TRUNCATE TABLE {db}.c")
        # sent chunked in odd-sized pieces, so frames straddle chunk boundaries
        pieces = [body[i : i + 37] for i in range(0, len(body), 37)]
        reply = request(server.port, "POST", {"query": f"INSERT INTO {db}.c FORMAT TSV"}, iter(pieces),
                        {"Content-Encoding": encoding})  # fmt: skip
        assert reply.status == 200, (encoding, reply.text)
        assert query(server.port, f"SELECT count(), sum(a) FROM {db}.c") == "300\t44850\n", encoding
    truncated = request(server.port, "POST", {"query": f"INSERT INTO {db}.c FORMAT TSV"}, bodies["lz4"][:-3],
                        {"Content-Encoding": "lz4"})  # fmt: skip
    assert truncated.headers["X-ClickHouse-Exception-Code"] == "271"

    # decompress=1: ClickHouse's own compressed blocks (LZ4 and none)
    def block(method: int, payload: bytes, raw: bytes) -> bytes:
        return (
            bytes(16)
            + bytes([method])
            + (9 + len(payload)).to_bytes(4, "little")
            + len(raw).to_bytes(4, "little")
            + payload
        )

    native = block(0x82, lz4.block.compress(b"1\n2\n", store_size=False), b"1\n2\n") + block(0x02, b"3\n", b"3\n")
    query(server.port, f"TRUNCATE TABLE {db}.c")
    reply = request(server.port, "POST", {"query": f"INSERT INTO {db}.c FORMAT TSV", "decompress": "1"}, native)
    assert reply.status == 200, reply.text
    assert query(server.port, f"SELECT groupArray(a) FROM {db}.c") == "[1,2,3]\n"


def test_response_compression(server: ServerProcess) -> None:
    sql = "SELECT number FROM numbers(5000)"
    expected = "".join(f"{i}\n" for i in range(5000)).encode()
    decoders = {
        "gzip": gzip.decompress,
        "deflate": zlib.decompress,
        "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
        "lz4": lz4.frame.decompress,
    }
    for encoding, decode in decoders.items():
        for wait in ("0", "1"):
            reply = request(server.port, "POST", {"enable_http_compression": "1", "wait_end_of_query": wait}, sql,
                            {"Accept-Encoding": encoding})  # fmt: skip
            assert reply.headers["Content-Encoding"] == encoding
            assert decode(reply.body) == expected, (encoding, wait)
    plain = request(server.port, "POST", {"enable_http_compression": "0"}, sql, {"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers and plain.body == expected


def test_large_result_streams_in_chunks(server: ServerProcess) -> None:
    reply = request(server.port, "GET", {"query": "SELECT number FROM numbers(1000000)"})
    assert reply.headers["Transfer-Encoding"] == "chunked"
    numbers = reply.body.split()
    assert len(numbers) == 1_000_000 and sum(map(int, numbers)) == 999_999 * 1_000_000 // 2
    buffered = request(server.port, "GET", {"query": "SELECT number FROM numbers(300000)", "wait_end_of_query": "1"})
    assert int(buffered.headers["Content-Length"]) == len(buffered.body) and len(buffered.body.split()) == 300_000
    assert json.loads(buffered.headers["X-ClickHouse-Summary"])["result_rows"] == "300000"


def test_error_after_the_first_rows_reaches_the_client(server: ServerProcess, client) -> None:
    failing = (
        "SELECT number, throwIf(number >= 150000) FROM numbers(200000) SETTINGS max_block_size = 1000, max_threads = 1"
    )
    reply = request(server.port, "GET", {"query": failing})
    assert reply.status == 200  # the headers went out with the first rows
    tag = reply.headers["X-ClickHouse-Exception-Tag"]
    tail = reply.body[-600:].decode()
    assert (
        f"__exception__\r\n{tag}\r\n" in tail and "Code: 395" in tail and tail.endswith(f" {tag}\r\n__exception__\r\n")
    )
    with pytest.raises(DatabaseError, match="395"):
        with client.query_row_block_stream(failing) as stream:
            for _ in stream:
                pass
    with pytest.raises(DatabaseError, match="395"):  # wait_end_of_query: an ordinary error response
        client.query(failing)


def test_native_for_protocol_revisions(server: ServerProcess) -> None:
    from driftline.stack.chserver.native import BLOCK_INFO

    sql = "SELECT toUInt8(number) AS x FROM numbers(3) FORMAT Native"
    plain = request(server.port, "POST", body=sql).body
    assert plain == b"\x01\x03\x01x\x05UInt8\x00\x01\x02"
    assert request(server.port, "POST", {"client_protocol_version": "54405"}, sql).body == BLOCK_INFO + plain
    # clickhouse-go (Grafana) reads a custom-serialization flag after each column's type
    flagged = request(server.port, "POST", {"client_protocol_version": "54460"}, sql).body
    assert flagged == BLOCK_INFO + b"\x01\x03\x01x\x05UInt8\x00" + b"\x00\x01\x02"


def test_native_walker_finds_every_block_boundary(server: ServerProcess) -> None:
    """Walking Native output by type lands exactly where chdb's own blocks start, for many types.

    The server adds BlockInfo per streamed chunk (one chunk is one block) without parsing; the
    walker must find the same boundaries in the plain stream, or the two outputs differ.
    """
    from driftline.stack.chserver.native import BLOCK_INFO, upgrade_native

    sql = """SELECT number AS n, toString(number) AS s, if(number % 3 = 0, NULL, number / 7) AS nf,
        toLowCardinality(concat('k', toString(number % 17))) AS lc,
        toLowCardinality(if(number % 5 = 0, NULL, toString(number % 4))) AS lcn, range(number % 4) AS arr,
        map('a', number, 'b', 1) AS m, (number, repeat('x', number % 300), [toLowCardinality('x')]) AS tup,
        toDateTime64(number / 1000, 3, 'UTC') AS ts, toDecimal64(number, 4) AS dec, toFixedString('ab', 2) AS fs,
        CAST(number % 2 AS Enum8('a' = 0, 'b' = 1)) AS e, [[toString(number)], []] AS aa, generateUUIDv4() AS u,
        toIPv4('1.2.3.4') AS ip, if(number % 2 = 0, [], [toLowCardinality('q')]) AS alc,
        CAST(map('x', [1, 2]) AS Map(LowCardinality(String), Array(UInt8))) AS mlc, (1.5, 2.5)::Point AS pt,
        toDate(number) AS d, NULL AS nothing, toInt128(number) AS big, toBool(number % 2) AS flag
        FROM numbers(30000) ORDER BY n SETTINGS max_block_size = 2000, max_threads = 1
        FORMAT Native"""
    sql = sql.replace("generateUUIDv4()", "toUUID('61f0c404-5cb3-11e7-907b-a6006ad3dba0')")  # the same bytes twice
    plain = request(server.port, "POST", body=sql).body
    with_info = request(server.port, "POST", {"client_protocol_version": "54405"}, sql).body
    assert with_info.count(BLOCK_INFO + b"\x16") == 15  # 15 blocks of 22 columns
    assert upgrade_native(plain, 54405) == with_info
    flagged = request(server.port, "POST", {"client_protocol_version": "54460"}, sql).body
    assert len(flagged) == len(plain) + 15 * (len(BLOCK_INFO) + 22)


def test_param_binding(server: ServerProcess, client) -> None:
    got = query(
        server.port,
        "SELECT {x:UInt32} + 1, {s:String}, {a:Array(UInt8)}",
        param_x="41",
        param_s="it's",
        param_a="[1,2]",
    )
    assert got == "42\tit\\'s\t[1,2]\n"
    at = dt.datetime(2024, 5, 6, 7, 8, 9, 123000)
    row = client.query(
        "SELECT {a:String}, {n:Int64}, {t:DateTime64(3, 'UTC')}", parameters={"a": "x'y", "n": -5, "t": at}
    ).result_rows[0]
    assert row == ("x'y", -5, at)
    long_value = "v" * 10_000  # past clickhouse-connect's URL budget: sent as a multipart form
    assert client.query("SELECT length({s:String})", parameters={"s": long_value}).result_rows == [(10_000,)]


# -- clickhouse-connect ------------------------------------------------------------------------------


def test_sync_client_round_trips_types(client, db: str) -> None:
    assert client.protocol_version == 54405 and client.server_version  # block info in Native replies
    client.command(
        "CREATE TABLE events (id UInt64, ts DateTime64(3, 'UTC'), score Nullable(Float64), "
        "region LowCardinality(String), "
        "tags Map(String, Float64), names Array(String), note String) ENGINE = MergeTree ORDER BY id"
    )
    base = dt.datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC)
    rows = [
        [i, base + dt.timedelta(milliseconds=i * 7 + 1), None if i % 3 == 0 else i / 4, f"r{i % 4}",
         {"a": float(i), "b": -1.5}, [f"n{i}", ""], "é\t'\"\\"]
        for i in range(1000)
    ]  # fmt: skip
    summary = client.insert("events", rows, column_names=["id", "ts", "score", "region", "tags", "names", "note"])
    assert summary.written_rows == 1000
    got = client.query("SELECT * FROM events ORDER BY id").result_rows
    assert len(got) == 1000
    for want, have in zip(rows, got, strict=True):
        assert have[0] == want[0] and have[2:] == tuple(want[2:])
        assert have[1].replace(tzinfo=UTC) == want[1]  # exact milliseconds
    df = client.query_df("SELECT id, ts, score, region FROM events ORDER BY id")
    assert df["ts"].iloc[1] == pd.Timestamp("2024-02-29 23:59:58.008") and pd.isna(df["score"].iloc[0])
    table = client.query_arrow("SELECT id, ts, region FROM events ORDER BY id")
    assert table.num_rows == 1000 and pa.types.is_timestamp(table.schema.field("ts").type)

    client.command("CREATE TABLE copy AS events")
    client.insert_df("copy", df.assign(tags=[{"x": 1.0}] * 1000, names=[["a"]] * 1000, note="df"))
    client.insert_arrow("copy", pa.table({"id": pa.array([5000], pa.uint64()), "note": ["arrow"]}))
    assert client.query("SELECT count(), countIf(note = 'arrow') FROM copy").result_rows == [(1001, 1)]
    assert client.query("SELECT max(ts) FROM copy WHERE note = 'df'").result_rows[0][0] == dt.datetime(
        2024, 3, 1, 0, 0, 4, 994000
    )

    client.raw_insert("copy", ["id", "note"], b"9001,raw\n9002,raw\n", fmt="CSV")
    assert client.raw_query("SELECT id FROM copy WHERE note = 'raw' ORDER BY id FORMAT CSV") == b"9001\n9002\n"
    assert client.command("SELECT count() FROM copy") == 1003
    streamed = 0
    with client.query_row_block_stream("SELECT number FROM numbers(300000)") as stream:
        for block in stream:
            streamed += sum(r[0] for r in block)
    assert streamed == 299_999 * 300_000 // 2


def test_replacing_merge_tree_final(client) -> None:
    client.command(
        "CREATE TABLE drift (model_id String, feature String, value Float64, computed_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree(computed_at) ORDER BY (model_id, feature)"
    )
    t0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
    client.insert("drift", [["m", "f1", 0.1, t0], ["m", "f2", 0.2, t0]])
    client.insert("drift", [["m", "f1", 0.9, t0 + dt.timedelta(milliseconds=1)]])
    assert client.command("SELECT count() FROM drift") == 3
    got = client.query("SELECT feature, value FROM drift FINAL ORDER BY feature").result_rows
    assert got == [("f1", 0.9), ("f2", 0.2)]


def test_async_client(server: ServerProcess, db: str) -> None:
    async def run() -> None:
        client = await clickhouse_connect.get_async_client(
            host="127.0.0.1", port=server.port, database=db, password=PASSWORD
        )
        try:
            await client.command("CREATE TABLE a (id UInt32, ts DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY id")
            ts = dt.datetime(2024, 1, 1, 0, 0, 0, 5000, tzinfo=UTC)
            await client.insert("a", [[i, ts] for i in range(5000)], column_names=["id", "ts"])
            result = await client.query("SELECT count(), max(ts) FROM a")
            assert result.result_rows == [(5000, ts.replace(tzinfo=None))]
            df = await client.query_df("SELECT id FROM a ORDER BY id LIMIT 3")
            assert df["id"].tolist() == [0, 1, 2]
            assert await client.raw_query("SELECT sum(id) FROM a") == b"12497500\n"
            with pytest.raises(DatabaseError, match="UNKNOWN_TABLE"):
                await client.query("SELECT * FROM missing")
        finally:
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_large_compressed_insert_arrives_whole(server: ServerProcess, db: str, compression: str) -> None:
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=server.port, database=db, compress=compression, password=PASSWORD
    )
    client.command("CREATE TABLE big (id UInt64, ts DateTime64(3, 'UTC'), x Float64, tag LowCardinality(String)) "
                   "ENGINE = MergeTree ORDER BY id")  # fmt: skip
    n = 200_000
    frame = pd.DataFrame({
        "id": range(n),
        "ts": pd.date_range("2024-01-01", periods=n, freq="ms", tz="UTC"),
        "x": [i * 0.5 for i in range(n)],
        "tag": [f"t{i % 10}" for i in range(n)],
    })  # fmt: skip
    started = time.perf_counter()
    summary = client.insert_df("big", frame)
    elapsed = time.perf_counter() - started
    assert summary.written_rows == n
    assert client.query("SELECT count(), uniqExact(id), sum(x) FROM big").result_rows == [(n, n, sum(frame["x"]))]
    started = time.perf_counter()
    for _ in range(200):
        client.query("SELECT 1")
    latency_ms = (time.perf_counter() - started) / 200 * 1000
    print(
        f"\n[chserver] {compression}: insert {n / elapsed:,.0f} rows/s ({elapsed:.2f} s); SELECT 1 {latency_ms:.2f} ms"
    )
    client.close()


def test_sessions_settings_and_temporary_tables(server: ServerProcess) -> None:
    port = server.port

    def in_session(session: str, sql: str, **params: str) -> Reply:
        return request(port, "POST", {"session_id": session, **params}, sql)

    a, b = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    setting = "SELECT getSetting('max_block_size')"
    default = query(port, setting)
    assert in_session(a, "SET max_block_size = 1234").status == 200
    assert in_session(a, setting).text == "1234\n"  # SET persists in the session
    assert in_session(b, setting).text == default  # and only there
    assert query(port, setting) == default
    # a URL setting is for that query only, in a session and without one
    assert in_session(a, setting, max_block_size="77").text == "77\n"
    assert in_session(a, setting).text == "1234\n"
    assert query(port, setting, max_block_size="55") == "55\n"
    assert query(port, setting) == default
    # a URL database is for that query only; USE changes the session's
    assert in_session(a, "SELECT currentDatabase()", database="system").text == "system\n"
    assert in_session(a, "SELECT currentDatabase()").text == "default\n"
    # temporary tables live in their session
    assert in_session(a, "CREATE TEMPORARY TABLE tmp (x UInt8)").status == 200
    assert in_session(a, "INSERT INTO tmp VALUES (1), (2)").status == 200
    assert in_session(a, "SELECT sum(x) FROM tmp").text == "3\n"
    assert in_session(b, "SELECT sum(x) FROM tmp").headers["X-ClickHouse-Exception-Code"] == "60"
    # a temporary table made without a session does not linger on a pooled connection
    assert query(port, "CREATE TEMPORARY TABLE lone (x UInt8)") == ""
    assert request(port, "POST", body="SELECT * FROM lone").headers["X-ClickHouse-Exception-Code"] == "60"

    # a second request while the session is busy is refused, like ClickHouse (373)
    slow: list[Reply] = []
    worker = threading.Thread(
        target=lambda: slow.append(in_session(a, "SELECT sleepEachRow(0.1) FROM numbers(20) FORMAT Null"))
    )
    worker.start()
    time.sleep(0.6)
    busy = in_session(a, "SELECT 1")
    worker.join()
    assert busy.headers["X-ClickHouse-Exception-Code"] == "373" and slow[0].status == 200
    assert in_session(a, "SELECT 1").text == "1\n"

    # sessions expire after their timeout
    short = f"s-{uuid.uuid4()}"
    assert in_session(short, "SET max_block_size = 4321", session_timeout="1").status == 200
    assert in_session(short, setting, session_check="1", session_timeout="1").text == "4321\n"
    time.sleep(2.5)
    assert in_session(short, setting, session_check="1").headers["X-ClickHouse-Exception-Code"] == "372"


def test_client_settings_do_not_leak(client) -> None:
    probe = "SELECT getSetting('max_block_size')"
    default = client.command(probe)
    assert client.command(probe, settings={"max_block_size": 99}) == 99
    assert client.query(probe).result_rows == [(default,)]
    assert client.query(probe, settings={"max_block_size": 98}).result_rows == [(98,)]
    assert client.command(probe) == default


def test_authentication(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--user", "analyst", "--password", "s3cret")
    try:
        port = srv.port
        assert request(port, path="/ping", auth=False).body == b"Ok.\n"  # health checks need no credentials
        denied = request(port, "POST", body="SELECT 1", auth=False)
        assert denied.status == 403 and denied.headers["X-ClickHouse-Exception-Code"] == "516"
        wrong = request(port, "POST", {"user": "analyst", "password": "nope"}, "SELECT 1", auth=False)
        assert wrong.headers["X-ClickHouse-Exception-Code"] == "516" and "AUTHENTICATION_FAILED" in wrong.text
        assert request(port, "POST", {"user": "analyst", "password": "s3cret"}, "SELECT 1", auth=False).text == "1\n"
        by_headers = request(
            port,
            "POST",
            body="SELECT 2",
            headers={"X-ClickHouse-User": "analyst", "X-ClickHouse-Key": "s3cret"},
            auth=False,
        )
        assert by_headers.text == "2\n"
        basic = "Basic " + base64.b64encode(b"analyst:s3cret").decode()
        assert request(port, "POST", body="SELECT 3", headers={"Authorization": basic}, auth=False).text == "3\n"
        good = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst", password="s3cret")
        assert good.command("SELECT 4") == 4
        with pytest.raises(DatabaseError, match="516"):
            clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst", password="bad")
    finally:
        assert srv.stop() == 0


_WRITER = """
import sys, clickhouse_connect
port, db, tag, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
client = clickhouse_connect.get_client(host="127.0.0.1", port=port, database=db, password=password)
for batch in range(20):
    client.insert("shared", [[tag, batch * 2000 + i] for i in range(2000)], column_names=["writer", "n"])
"""


def test_two_processes_insert_concurrently(server: ServerProcess, db: str) -> None:
    query(server.port, f"CREATE TABLE {db}.shared (writer String, n UInt64) ENGINE = MergeTree ORDER BY (writer, n)")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(server.port), db, tag, PASSWORD], cwd=REPO, stderr=subprocess.PIPE
        )
        for tag in ("p1", "p2")
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()[-2000:]
    got = query(
        server.port, f"SELECT writer, count(), uniqExact(n), sum(n) FROM {db}.shared GROUP BY writer ORDER BY writer"
    )
    total = 39_999 * 40_000 // 2
    assert got == f"p1\t40000\t40000\t{total}\np2\t40000\t40000\t{total}\n"


_EMBEDDED = """
import sys, urllib.request
import clickhouse_connect
from driftline.stack.chserver import serve

def q(port, sql):
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/", data=sql.encode()).read().decode()

with serve(sys.argv[1], "127.0.0.1", 0) as srv:
    client = clickhouse_connect.get_client(host="127.0.0.1", port=srv.port)
    client.command("CREATE TABLE keep (a UInt8) ENGINE = MergeTree ORDER BY a")
    client.insert("keep", [[1], [2]])
# closed: the path is free for the next owner, and the data is there
with serve(sys.argv[1], "127.0.0.1", 0) as srv:
    print(q(srv.port, "SELECT sum(a) FROM keep"), end="")
"""


def test_embedded_serve_and_clean_shutdown(tmp_path: Path) -> None:
    # its own process: chdb allows one path per process, and the test process may hold another
    done = subprocess.run([sys.executable, "-c", _EMBEDDED, str(tmp_path / "data")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "3\n"
