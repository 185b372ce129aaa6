"""The analysts' cookbook: named, parameterised ClickHouse queries in ``schemas/clickhouse/queries/``.

Each file holds one ``SELECT`` whose name is the file's stem. It opens with a
header of ``--`` comments: a ``title:`` line, free text describing the
result, and one ``param NAME: meaning`` line per parameter. Parameters use
ClickHouse's server-side syntax ``{name:Type}``, so a query runs unchanged in
``clickhouse-client --param_name=...``, in the HTTP interface
(``?param_name=...``) and through :meth:`Query.run`. The loader checks that
the header documents exactly the parameters the SQL uses, so the cookbook
cannot drift from its own documentation.

The report (``driftline.report``) reads the warehouse through these queries
too, so what the report shows is what an analyst gets from the same file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.schemas import QUERIES_DIR
from driftline.streams.warehouse.migrations import MigrationError, split_statements

if TYPE_CHECKING:
    import pyarrow as pa

    from driftline.streams.warehouse import Warehouse

__all__ = ["CookbookError", "Query", "load_queries"]

# {name:Type}; the type may hold parentheses, commas and quotes: DateTime64(3, 'UTC'), Array(String)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):([^{}]+)\}")
_PARAM_DOC = re.compile(r"^param\s+([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+)$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TABLE_REF = re.compile(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_]*)\b", re.IGNORECASE)


class CookbookError(ValueError):
    """A malformed cookbook file, or a query run with the wrong parameters.

    >>> try:
    ...     Query.parse("q", "SELECT 1")
    ... except CookbookError as exc:
    ...     print(exc)
    query q: the header has no '-- title:' line
    """


@dataclass(frozen=True)
class Query:
    """One named query of the cookbook.

    ``parameters`` maps each parameter to its ClickHouse type, in order of
    first use; ``docs`` maps it to the header's explanation.

    >>> q = Query.parse("answer", '''-- title: The answer
    ... -- Adds one to a number.
    ... -- param x: the number
    ... SELECT {x:UInt8} + 1 AS y''')
    >>> q.title, q.parameters, q.docs["x"]
    ('The answer', {'x': 'UInt8'}, 'the number')
    >>> q.bind(x=41)
    {'x': 41}
    >>> Query.parse("t", "-- title: T\\nSELECT * FROM (SELECT * FROM alerts FINAL) AS a JOIN labels AS l ON 1").tables
    ('alerts', 'labels')
    """

    name: str
    title: str
    description: str
    sql: str
    parameters: dict[str, str]
    docs: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def parse(cls, name: str, text: str, path: Path | None = None) -> Query:
        where = f"query {name}" + (f" ({path})" if path else "")
        if not _NAME.match(name):
            raise CookbookError(f"{where}: names are lower case letters, digits and underscores")
        header, body = _split_header(text)
        title = ""
        description: list[str] = []
        docs: dict[str, str] = {}
        for line in header:
            if line.startswith("title:"):
                title = line[len("title:") :].strip()
            elif (doc := _PARAM_DOC.match(line)) is not None:
                docs[doc.group(1)] = doc.group(2).strip()
            else:
                description.append(line)
        if not title:
            raise CookbookError(f"{where}: the header has no '-- title:' line")
        try:
            statements = split_statements(body)
        except MigrationError as exc:
            raise CookbookError(f"{where}: {exc}") from exc
        if len(statements) != 1:
            raise CookbookError(f"{where}: a cookbook file holds exactly one statement, found {len(statements)}")
        sql = statements[0]
        parameters: dict[str, str] = {}
        for pname, ptype in _PLACEHOLDER.findall(sql):
            ptype = ptype.strip()
            if parameters.setdefault(pname, ptype) != ptype:
                raise CookbookError(f"{where}: parameter {pname} is used as {parameters[pname]} and as {ptype}")
        undocumented = [p for p in parameters if p not in docs]
        unused = [p for p in docs if p not in parameters]
        if undocumented or unused:
            problems = []
            if undocumented:
                problems.append(f"no '-- param NAME: ...' line for {', '.join(undocumented)}")
            if unused:
                problems.append(f"documented but not used: {', '.join(unused)}")
            raise CookbookError(f"{where}: " + "; ".join(problems))
        text_description = " ".join(" ".join(description).split())
        return cls(name, title, text_description, sql, parameters, docs, path)

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables the query reads, in order of first mention."""
        return tuple(dict.fromkeys(_TABLE_REF.findall(self.sql)))

    @classmethod
    def from_file(cls, path: Path) -> Query:
        return cls.parse(path.stem, path.read_text(encoding="utf-8"), path)

    def bind(self, **values: Any) -> dict[str, Any]:
        """The parameters for a run: exactly those the query uses, else a CookbookError saying which."""
        missing = [p for p in self.parameters if p not in values]
        unknown = sorted(set(values) - set(self.parameters))
        if missing or unknown:
            expected = ", ".join(f"{p} ({t})" for p, t in self.parameters.items()) or "none"
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else []
            )
            raise CookbookError(f"query {self.name}: {'; '.join(problems)}; it takes {expected}")
        return {p: values[p] for p in self.parameters}

    def run(self, warehouse: Warehouse, **values: Any) -> list[dict[str, Any]]:
        """Run on ``warehouse``; rows as dicts, timestamps as UTC-aware datetimes."""
        return warehouse.query_rows(self.sql, self.bind(**values))

    def run_arrow(self, warehouse: Warehouse, **values: Any) -> pa.Table:
        """Run on ``warehouse``; the result in columns (timestamps as ``timestamp[ms, UTC]``)."""
        return warehouse.query_arrow(self.sql, self.bind(**values))


def _split_header(text: str) -> tuple[list[str], str]:
    """The leading ``--`` comment lines (without the dashes) and the rest."""
    lines = text.splitlines()
    header: list[str] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("--"):
            content = stripped[2:].strip()
            if content:
                header.append(content)
        elif stripped:
            break
        i += 1
    return header, "\n".join(lines[i:])


def load_queries(directory: Path = QUERIES_DIR) -> dict[str, Query]:
    """Every query of the cookbook by name, sorted by name.

    >>> queries = load_queries()
    >>> "top_drifting_features" in queries and queries["top_drifting_features"].parameters["model_id"]
    'String'
    """
    paths = sorted(Path(directory).glob("*.sql"))
    if not paths:
        raise CookbookError(f"no cookbook queries (*.sql) in {directory}")
    return {q.name: q for q in map(Query.from_file, paths)}
