"""The embedded server's statement check: hostile shapes are refused, driftline's own SQL is not.

Pure lexer tests (no engine); the integration tests send the same shapes to the server process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from driftline.stack.chserver.errors import ClickHouseError
from driftline.stack.chserver.sql import Confinement, parse_statement

REPO = Path(__file__).resolve().parents[2]
BOX = Confinement(max_execution_time=600)
FLAT = "LAYOUT(FLAT()) LIFETIME(0)"  # the dictionary layout of the statements below

HOSTILE = [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM FiLe('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    "SELECT * FROM \"url\"('http://x', 'TSV')",
    "SELECT * FROM file/* nested /* comment */ still */('/etc/passwd')",
    "SELECT * FROM file\n-- comment\n# another\n('/etc/passwd')",
    "SELECT $$ ' $$ AS a, * FROM file('/etc/passwd')",
    "SELECT $tag$ ' $tag$ AS a, * FROM url('http://x', 'TSV')",
    "SELECT (SELECT count() FROM (SELECT * FROM remote('h:9000', system.one)))",
    "SELECT * FROM system.one WHERE 1 IN (SELECT 1 FROM s3('http://x/a', 'CSV'))",
    "WITH (SELECT * FROM hdfs('hdfs://x/a', 'TSV', 'a String')) AS x SELECT x",
    "INSERT INTO FUNCTION file('/tmp/x', 'TSV') SELECT 1",
    "insert into function remoteSecure('h:9440', db.t) values (1)",
    "SELECT 1 INTO OUTFILE '/tmp/x' APPEND",
    "SELECT 1 INTO/**/OUTFILE '/tmp/x'",
    "INSERT INTO t FROM INFILE '/etc/passwd' FORMAT TSV",
    "CREATE TABLE t (a String) ENGINE = File(TSV, '/tmp/x')",
    "CREATE TABLE t (a String) ENGINE=`URL`('http://x', TSV)",
    "create table t (a String) engine = s3('http://x', 'TSV')",
    "CREATE TABLE t (a String) ENGINE = EmbeddedRocksDB(0, '/tmp/rocks') PRIMARY KEY a",
    "CREATE TABLE t (a UInt8) ENGINE = MergeTree ORDER BY a SETTINGS disk = disk(type=local, path='/tmp/d/')",
    "CREATE DATABASE d ENGINE = Filesystem('/')",
    "CREATE DATABASE d ENGINE = MySQL('h:3306', 'db', 'u', 'p')",
    f"CREATE DICTIONARY d (a UInt8) PRIMARY KEY a SOURCE(HTTP(url 'http://x' format 'TSV')) {FLAT}",
    f"CREATE DICTIONARY d (a UInt8) PRIMARY KEY a SOURCE(ClickHouse(host 'h' port 9000 table 't')) {FLAT}",
    f"CREATE DICTIONARY d (a UInt8) PRIMARY KEY a SOURCE(CLICKHOUSE(query 'SELECT * FROM url(1)')) {FLAT}",
    "ATTACH TABLE t FROM '/var/lib/x' (a UInt8) ENGINE = MergeTree ORDER BY a",
    "SYSTEM RELOAD DICTIONARIES",
    "  /* lead */ system shutdown",
    "BACKUP DATABASE d TO Disk('default', 'b.zip')",
    "RESTORE DATABASE d FROM File('/tmp/b.zip')",
    "CREATE NAMED COLLECTION c AS url = 'http://x'",
    "SELECT * FROM executable('x.sh', 'TSV', 'a String')",
    "SELECT * FROM python(df)",
    "SELECT catboostEvaluate('/tmp/model.bin', 1)",
    "SELECT 1 FORMAT Template SETTINGS format_template_resultset = '/etc/passwd'",
    "SELECT 1 SETTINGS format_schema='/etc/passwd:M'",
    "SET output_format_schema = '/tmp/x.proto'",
    "SET format_avro_schema_registry_url = 'http://x'",
    "SELECT 1 SETTINGS max_execution_time = 0",
    "SELECT 1 SETTINGS max_execution_time = 601",
    "SELECT * FROM (SELECT 1 SETTINGS max_execution_time_leaf = 100000)",
    "SET max_execution_time = DEFAULT",
]

LEGIT = [
    "SELECT count() FROM numbers(10) SETTINGS max_execution_time = 30",
    "SELECT 'file(x)', 'INTO OUTFILE', $$ url('http://x') $$",
    "SELECT `file` FROM (SELECT 1 AS `file`) WHERE `file` = 1",
    "SELECT * FROM system.settings WHERE name = 'max_execution_time'",
    "CREATE TABLE t (a UInt8, b String) ENGINE = ReplacingMergeTree ORDER BY a SETTINGS index_granularity = 8192",
    "CREATE TABLE m (a UInt8) ENGINE = Memory",
    "CREATE DATABASE IF NOT EXISTS d ENGINE = Atomic",
    f"CREATE DICTIONARY d (a UInt64, b String) PRIMARY KEY a SOURCE(CLICKHOUSE(TABLE 't' DB 'x')) {FLAT}",
    "INSERT INTO t SELECT number, toString(number) FROM numbers(3)",
    "SELECT * FROM input('a String') FORMAT TSV",
    "SELECT a == 1, b = 2 FROM t",
    "ALTER TABLE t DELETE WHERE a = 1",
    "SYSTEMATIC_TABLE_NAME_IS_NOT_A_STATEMENT",
]


@pytest.mark.parametrize("sql", HOSTILE)
def test_hostile_statements_are_refused(sql: str) -> None:
    with pytest.raises(ClickHouseError) as caught:
        BOX.check(sql)
    assert caught.value.code == 497 and caught.value.http_status == 403
    assert "not allowed" in caught.value.message or "must be between" in caught.value.message


@pytest.mark.parametrize("sql", LEGIT)
def test_legitimate_statements_pass(sql: str) -> None:
    BOX.check(sql)


def project_sql() -> list[tuple[str, str]]:
    """Every statement driftline itself sends: migrations, the cookbook, the Grafana dashboard."""
    found = []
    for path in sorted((REPO / "schemas" / "clickhouse").rglob("*.sql")):
        for i, statement in enumerate(s for s in path.read_text().split(";\n") if s.strip()):
            found.append((f"{path.name}#{i}", statement))
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "driftline.json").read_text())
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            sql = target.get("rawSql") or target.get("query") or ""
            if sql:
                found.append((f"grafana:{panel.get('title')}", sql))
    return found


def test_driftlines_own_sql_is_never_refused() -> None:
    statements = project_sql()
    assert len(statements) > 15
    for name, sql in statements:
        BOX.check(sql.replace("$__timeFilter", "timeFilter"))  # Grafana macros are expanded before they are sent
        assert parse_statement(sql).kind, name


def test_settings_in_the_url() -> None:
    BOX.check_settings({"max_threads": "2", "max_execution_time": "30", "readonly": "1"})
    for name, value in (
        ("format_template_row", "/etc/passwd"),
        ("max_execution_time", "0"),
        ("max_execution_time", "1e9"),
    ):
        with pytest.raises(ClickHouseError, match=name):
            BOX.check_settings({name: value})
