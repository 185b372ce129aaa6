"""docs/CONTRACTS.md names every record, field, table, column and name that people build on.

The Avro side is read from ``schemas/avro/``; the ClickHouse side comes from applying every
migration of ``schemas/clickhouse/`` to an empty database in the embedded engine (in a
subprocess, so that this test never shares the in-process engine with another) and reading
``system.columns``, so ALTERs count as ClickHouse itself applies them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.schemas import AVRO_DIR
from driftline.settings import _ENV, TOPIC_NAMES
from driftline.streams.codec import DECODE_ERROR_REASONS
from driftline.streams.core import validation
from driftline.streams.kafka import DLQ_DETAIL_HEADER, DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "CONTRACTS.md"
Records = dict[str, list[tuple[str, list[str]]]]  # record -> [(field, its enum symbols)]
Tables = dict[str, list[tuple[str, str]]]  # table -> [(column, type)]

# Run in a fresh process: the schema after all migrations, as {table: [[column, type], ...]}.
_FINAL_COLUMNS = r"""
import json, sys, tempfile
from chdb import session
from driftline.streams.warehouse.migrations import MIGRATIONS_DDL, load_migrations

with tempfile.TemporaryDirectory() as path:
    db = session.Session(path)
    db.query("CREATE DATABASE contracts")
    db.query("USE contracts")
    db.query(MIGRATIONS_DDL)
    for migration in load_migrations():
        for statement in migration.statements:
            db.query(statement)
    rows = json.loads(db.query(
        "SELECT table, name, type FROM system.columns WHERE database = 'contracts' ORDER BY table, position",
        "JSONCompact").bytes())["data"]
    db.close()
tables = {}
for table, name, type_ in rows:
    tables.setdefault(table, []).append([name, type_])
print(json.dumps(tables))
"""


def final_columns() -> Tables:
    done = subprocess.run([sys.executable, "-c", _FINAL_COLUMNS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return {t: [(c, ty) for c, ty in cols] for t, cols in json.loads(done.stdout.splitlines()[-1]).items()}


def avro_records() -> Records:
    """Every record, nested ones included, of every schema version: {record: [(field, enum symbols)]}."""
    found: Records = {}

    def walk(schema: object) -> None:
        if isinstance(schema, list):
            for branch in schema:
                walk(branch)
        elif isinstance(schema, dict):
            if schema.get("type") == "record":
                fields = found.setdefault(schema["name"], [])
                for f in schema["fields"]:
                    symbols = [s for t in _types(f["type"]) for s in t.get("symbols", [])]
                    if f["name"] not in [name for name, _ in fields]:
                        fields.append((f["name"], symbols))
                    walk(f["type"])
            walk(schema.get("items"))
            walk(schema.get("values"))

    for path in sorted(AVRO_DIR.glob("*.avsc")):
        walk(json.loads(path.read_text()))
    return found


def _types(schema: object) -> list[dict]:
    branches = schema if isinstance(schema, list) else [schema]
    return [b for b in branches if isinstance(b, dict)]


def sections(doc: str) -> dict[str, str]:
    """``### `name` `` headings (any level) and the text up to the next heading."""
    parts = re.split(r"^(#{2,6} .*)$", doc, flags=re.M)
    out = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        named = re.fullmatch(r"#{2,6} `([^`]+)`\s*", heading)
        if named:
            out[named.group(1)] = body
    return out


def table_rows(section: str) -> dict[str, list[str]]:
    """The rows of a markdown table whose first cell is a `name`: {name: [other cells]}."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        first = re.fullmatch(r"`([^`]+)`", cells[0]) if line.lstrip().startswith("|") else None
        if first:
            rows[first.group(1)] = cells[1:]
    return rows


def gaps(doc: str, records: Records, tables: Tables) -> list[str]:
    """What the document misses or states wrongly; empty when it matches the schemas.

    >>> doc = "### `T`\\n| column | type |\\n|---|---|\\n| `a` | `UInt8` |\\n"
    >>> gaps(doc, {}, {"T": [("a", "String"), ("b", "UInt8")]})
    ['table T: column a is documented as UInt8, is String', 'table T: column b missing']
    """
    found = []
    named = sections(doc)
    for record, fields in records.items():
        if record not in named:
            found.append(f"record {record}: no section")
            continue
        rows = table_rows(named[record])
        for field, symbols in fields:
            if field not in rows:
                found.append(f"record {record}: field {field} missing")
            for symbol in symbols:
                if symbol not in " ".join(rows.get(field, [])):
                    found.append(f"record {record}: field {field}: symbol {symbol} missing")
        found += [f"record {record}: field {f} is not in the schema" for f in rows if f not in dict(fields)]
    for table, columns in tables.items():
        if table not in named:
            found.append(f"table {table}: no section")
            continue
        rows = table_rows(named[table])
        for column, type_ in columns:
            if column not in rows:
                found.append(f"table {table}: column {column} missing")
                continue
            documented = re.match(r"`([^`]+)`", rows[column][0] if rows[column] else "")
            if documented is None or documented.group(1) != type_:
                found.append(
                    f"table {table}: column {column} is documented as "
                    f"{documented.group(1) if documented else '?'}, is {type_}"
                )
        found += [f"table {table}: column {c} is not in the schema" for c in rows if c not in dict(columns)]
    return found


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tables() -> Tables:
    return final_columns()


def test_every_record_field_table_and_column_is_documented(doc: str, tables: dict) -> None:
    records = avro_records()
    assert {"PredictionEvent", "PredictionBatch", "FeatureDrift", "Evidence"} <= set(records)  # nested ones too
    assert {"drift_metrics", "predictions", "schema_migrations"} <= set(tables)
    found = gaps(doc, records, tables)
    assert not found, "docs/CONTRACTS.md is out of step with schemas/:\n" + "\n".join(found)


def test_a_missing_field_or_column_is_found(doc: str, tables: dict) -> None:
    records = avro_records()
    without_field = re.sub(r"^\| `latency_ms` \| `union\{null, double\}`.*\n", "", doc, count=1, flags=re.M)
    assert without_field != doc
    assert gaps(without_field, records, tables) == ["record PredictionEvent: field latency_ms missing"]
    # a column added by a new migration and not yet documented
    grown = {**tables, "drift_reports": [*tables["drift_reports"], ("undocumented", "UInt64")]}
    assert gaps(doc, records, grown) == ["table drift_reports: column undocumented missing"]
    # a changed type, and a documented column that no longer exists
    retyped = {**tables, "labels": [(c, "String" if c == "label_value" else t) for c, t in tables["labels"]]}
    assert gaps(doc, records, retyped) == [
        "table labels: column label_value is documented as Nullable(Float64), is String"
    ]
    dropped = {**tables, "alerts": [(c, t) for c, t in tables["alerts"] if c != "kind"]}
    assert gaps(doc, records, dropped) == ["table alerts: column kind is not in the schema"]
    symbols = {**records, "Alert": [(f, s + ["fatal"] if f == "severity" else s) for f, s in records["Alert"]]}
    assert gaps(doc, symbols, tables) == ["record Alert: field severity: symbol fatal missing"]


def test_topics_headers_reasons_and_settings_are_documented(doc: str) -> None:
    topics = table_rows(doc.split("## Kafka topics", 1)[1].split("\n## ", 1)[0])
    assert set(TOPIC_NAMES) <= set(topics), set(TOPIC_NAMES) - set(topics)
    headers = table_rows(doc.split("### DLQ headers", 1)[1].split("\n## ", 1)[0])  # headers, then reasons
    assert {DLQ_ERROR_HEADER, DLQ_SOURCE_HEADER, DLQ_DETAIL_HEADER} <= set(headers)
    reasons = DECODE_ERROR_REASONS | {
        validation.UNKNOWN_MODEL,
        validation.INVALID_VALUE,
        validation.FUTURE_EVENT_TIME,
        validation.INVALID_EVENT_TIME,
        validation.VALUE_TOO_LONG,
        validation.RESERVED_FEATURE_NAME,
        validation.FEATURE_KIND_CONFLICT,
    }
    assert reasons <= set(headers), reasons - set(headers)
    variables = table_rows(doc.split("## Configuration", 1)[1].split("\n## ", 1)[0])
    assert set(_ENV) | {"DRIFTLINE_CONFIG", "DRIFTLINE_KAFKA_JARS"} <= set(variables), set(_ENV) - set(variables)


def test_every_command_line_verb_is_documented(doc: str) -> None:
    from driftline.cli import build_parser

    cli = doc.split("## Command line", 1)[1]
    (verbs,) = [a for a in build_parser()._actions if a.dest == "command"]
    for verb, parser in verbs.choices.items():
        assert f"`driftline {verb}" in cli, verb
        for action in parser._actions:  # positional choices are sub-verbs: stack up, registry list
            names = list(action.choices or ()) if not action.option_strings else []
            missing = [n for n in names if not re.search(rf"`driftline {verb} [^`]*\b{n}\b", cli)]
            assert not missing, (verb, missing)
