"""Versioned ClickHouse migrations: the files of ``schemas/clickhouse/``.

A migration is a file ``NNNN_name.sql`` holding one or more statements
separated by ``;``. Files are applied in version order, each once; the
``schema_migrations`` table records what was applied with the checksum of
the file, so that an applied migration that was edited afterwards is found
instead of silently diverging. Statements are written without a database
name and run against the warehouse's database.

This module only reads files and splits SQL; ``Warehouse.migrate`` applies.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from driftline.schemas import CLICKHOUSE_DIR

MIGRATIONS_TABLE = "schema_migrations"

# ReplacingMergeTree: two processes migrating at once may both record a version; it still counts once.
MIGRATIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version
"""

_FILE_NAME = re.compile(r"^(\d{4})_([A-Za-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration that cannot be applied, or one that changed after it was applied.

    >>> try:
    ...     Migration.from_file(Path("0001-initial.sql"))
    ... except MigrationError as exc:
    ...     print(exc)
    migration file 0001-initial.sql is not named NNNN_name.sql
    """


@dataclass(frozen=True)
class Migration:
    """One migration file.

    >>> m = Migration.from_text(7, "add_things", "CREATE TABLE a (x UInt8) ENGINE = Memory;")
    >>> m.version, m.name, m.statements
    (7, 'add_things', ['CREATE TABLE a (x UInt8) ENGINE = Memory'])
    >>> len(m.checksum)
    64
    """

    version: int
    name: str
    checksum: str
    statements: list[str]

    @classmethod
    def from_text(cls, version: int, name: str, text: str) -> Migration:
        return cls(version, name, hashlib.sha256(text.encode()).hexdigest(), split_statements(text))

    @classmethod
    def from_file(cls, path: Path) -> Migration:
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path} is not named NNNN_name.sql")
        return cls.from_text(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8"))


def load_migrations(directory: Path = CLICKHOUSE_DIR) -> list[Migration]:
    """Every migration in ``directory``, in version order; versions must be unique."""
    migrations = sorted((Migration.from_file(p) for p in directory.glob("*.sql")), key=lambda m: m.version)
    seen: dict[int, str] = {}
    for m in migrations:
        if m.version in seen:
            raise MigrationError(
                f"migrations {seen[m.version]} and {m.name} in {directory} share version {m.version:04d}"
            )
        seen[m.version] = m.name
    return migrations


def split_statements(sql: str) -> list[str]:
    """Split SQL text on ``;``, leaving quotes and comments intact.

    Comment-only pieces are dropped; statements keep their inner comments.

    >>> split_statements("SELECT ';' -- a; b\\n; /* c; */ SELECT 2;\\n-- trailing")
    ["SELECT ';' -- a; b", '/* c; */ SELECT 2']
    """
    statements: list[str] = []
    start = i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"`":
            i = _end_of_quoted(sql, i)
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            if close < 0:
                raise MigrationError(f"unterminated /* comment at offset {i}")
            i = close + 2
        elif ch == ";":
            statements.append(sql[start:i])
            i += 1
            start = i
        else:
            i += 1
    statements.append(sql[start:])
    return [s.strip() for s in statements if _has_code(s)]


def _end_of_quoted(sql: str, i: int) -> int:
    quote = sql[i]
    j = i + 1
    while j < len(sql):
        if sql[j] == "\\":
            j += 2
        elif sql[j] == quote:
            if sql.startswith(quote * 2, j):  # a doubled quote escapes itself
                j += 2
            else:
                return j + 1
        else:
            j += 1
    raise MigrationError(f"unterminated {quote} quote starting at offset {i}")


def _has_code(statement: str) -> bool:
    without_line_comments = re.sub(r"--[^\n]*", "", statement)
    without_comments = re.sub(r"/\*.*?\*/", "", without_line_comments, flags=re.S)
    return bool(without_comments.strip())
