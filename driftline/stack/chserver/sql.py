"""What the embedded server must know about a request's SQL before chdb runs it.

ClickHouse's HTTP interface reads one statement from the ``query`` parameter
followed by the request body. For ``INSERT ... FORMAT X`` (or ``VALUES``) the
rest of the stream after the statement is data, which can be gigabytes, so
the server must find where the data starts without reading it all. Other
statements are read whole, and the server needs their first keyword (does
it return rows? may it run read-only? does it change session state?) and
their ``FORMAT`` clause (the response's content type).

A small lexer that knows ClickHouse's quoting and comments is enough for
both; everything else is left to chdb's parser.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

from driftline.stack.chserver.errors import ACCESS_DENIED, ClickHouseError

_TOKEN = re.compile(
    rb"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|\#[ !][^\n]*)
    | (?P<block>/\*)
    | (?P<string>'(?:[^'\\]|\\.|'')*(?P<string_end>')?)
    | (?P<dquote>"(?:[^"\\]|\\.|"")*(?P<dquote_end>")?)
    | (?P<bquote>`(?:[^`\\]|\\.|``)*(?P<bquote_end>`)?)
    | (?P<heredoc>\$(?P<tag>[A-Za-z0-9_]*)\$)
    | (?P<word>[A-Za-z0-9_$\x80-\xff]+)
    | (?P<symbol>.)
    """,
    re.X | re.S,
)
_BLOCK_EDGE = re.compile(rb"/\*|\*/")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Statements that answer with rows (and so with an output format).
_RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "CHECK", "WATCH"})
_READONLY_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "USE"})


class _Token(NamedTuple):  # a tuple: tokens are made by the hundred thousand, a frozen dataclass is slower
    kind: str  # word | symbol | quoted
    start: int
    end: int
    depth: int  # parenthesis depth the token sits at
    complete: bool  # False when the buffer ends inside the token

    def upper(self, buf: bytes) -> str:
        return buf[self.start : self.end].decode("utf-8", "replace").upper() if self.kind == "word" else ""


def _tokens(buf: bytes) -> Iterator[_Token]:
    """Tokens of ``buf``, stopping at the first one the buffer cuts short.

    One ``finditer`` pass runs until a block comment or a heredoc, whose ends the regular expression
    cannot find, moves the position on; the common case pays for no Python-level position handling.
    """
    pos, depth, end = 0, 0, len(buf)
    while pos < end:
        for match in _TOKEN.finditer(buf, pos):  # the symbol branch matches any byte: nothing is skipped
            kind = match.lastgroup
            if kind == "space" or kind == "comment":
                continue
            start, stop = match.span()
            if kind == "word":
                yield _Token("word", start, stop, depth, stop < end)
            elif kind == "symbol":
                char = buf[start]
                if char == 0x29:  # ')'
                    depth = max(0, depth - 1)
                yield _Token("symbol", start, stop, depth, True)
                if char == 0x28:  # '('
                    depth += 1
            elif kind == "block":
                pos = _block_comment_end(buf, stop)
                if pos < 0:
                    return
                break
            elif kind == "heredoc":  # $tag$ ... $tag$: a string literal, as ClickHouse reads it
                close = buf.find(match.group(), stop)
                pos = close + len(match.group()) if close >= 0 else end
                yield _Token("quoted", start, pos, depth, close >= 0)
                if close < 0:
                    return
                break
            else:  # string, dquote, bquote
                complete = match.group(f"{kind}_end") is not None
                yield _Token("quoted", start, stop, depth, complete)
                if not complete:
                    return
        else:
            return


def _block_comment_end(buf: bytes, pos: int) -> int:
    """Position after a (nested) block comment opened before ``pos``, or -1 if unterminated."""
    nesting = 1
    for edge in _BLOCK_EDGE.finditer(buf, pos):
        nesting += 1 if edge.group() == b"/*" else -1
        if nesting == 0:
            return edge.end()
    return -1


@dataclass(frozen=True)
class Statement:
    """The parts of a complete SQL statement the server acts on.

    >>> s = parse_statement("SELECT format FROM t WHERE x = 'FORMAT CSV' FORMAT JSONEachRow SETTINGS a = 1")
    >>> s.kind, s.output_format, s.returns_rows, s.multiple
    ('SELECT', 'JSONEachRow', True, False)
    >>> parse_statement("/* hi */ (SELECT 1); SELECT 2").multiple
    True
    >>> s = parse_statement("create temporary table t (a Int8)")
    >>> s.kind, s.returns_rows, s.changes_session, s.allowed(readonly=1)
    ('CREATE', False, True, False)
    >>> parse_statement("SET max_threads = 1").allowed(readonly=2)
    True
    """

    kind: str
    second: str = ""
    output_format: str | None = None
    multiple: bool = False

    @property
    def returns_rows(self) -> bool:
        return self.kind in _RESULT_KINDS

    @property
    def changes_session(self) -> bool:
        """Whether running it leaves state behind on the connection (settings, database, temporary tables)."""
        return self.kind in ("SET", "USE") or (self.kind in ("CREATE", "DROP") and self.second == "TEMPORARY")

    def allowed(self, readonly: int) -> bool:
        """ClickHouse's ``readonly``: 1 allows reads, 2 also allows changing settings."""
        if readonly <= 0:
            return True
        return self.kind in _READONLY_KINDS or (readonly >= 2 and self.kind == "SET")


def tokenize(sql: bytes) -> list[_Token]:
    """Every token of a complete statement, for ``parse_statement`` and ``Confinement.check`` to share.

    >>> [t.kind for t in tokenize(b"SELECT f(1) -- done")]
    ['word', 'word', 'symbol', 'word', 'symbol']
    """
    return list(_tokens(sql))


def parse_statement(sql: str | bytes, tokens: list[_Token] | None = None) -> Statement:
    """Kind, FORMAT clause and statement count of a complete statement."""
    buf = sql.encode() if isinstance(sql, str) else sql
    words: list[str] = []
    top: list[tuple[str, _Token]] = []  # depth-0 tokens after the first ';' are only counted
    multiple = False
    ended = False
    for token in tokens if tokens is not None else _tokens(buf):
        if ended:
            multiple = True
            break
        if token.kind == "word" and len(words) < 2:
            words.append(token.upper(buf))
        if token.depth == 0:
            if token.kind == "symbol" and buf[token.start] == 0x3B:  # ';'
                ended = True
                continue
            top.append((token.upper(buf), token))
    kind = words[0] if words else ""
    output_format = None
    if kind in _RESULT_KINDS:
        output_format = _format_clause(buf, top)
    return Statement(kind, words[1] if len(words) > 1 else "", output_format, multiple)


def _format_clause(buf: bytes, top: list[tuple[str, _Token]]) -> str | None:
    """The name in a trailing ``FORMAT name [SETTINGS ...]``; a column called ``format`` is not one."""
    for i in range(len(top) - 2, -1, -1):
        word, _ = top[i]
        name_word, name = top[i + 1]
        if word != "FORMAT" or name.kind != "word":
            continue
        rest = top[i + 2 :]
        if not rest or rest[0][0] == "SETTINGS":
            return buf[name.start : name.end].decode()
    return None


@dataclass(frozen=True)
class InsertData:
    """An INSERT whose rows follow its statement in the request stream.

    >>> split_insert(b"INSERT INTO t (a, b) FORMAT CSV\\n1,2\\n", final=False)
    InsertData(sql=b'INSERT INTO t (a, b)', fmt='CSV', data_start=32)
    >>> split_insert(b"insert into t values (1, 'x')", final=True)
    InsertData(sql=b'insert into t', fmt='Values', data_start=20)
    >>> split_insert(b"INSERT INTO t FORMAT Nat", final=False)
    <Head.NEED_MORE: 1>
    >>> split_insert(b"INSERT INTO t SELECT 1", final=True), split_insert(b"SELECT 1", final=False)
    (<Head.WHOLE_STATEMENT: 2>, <Head.WHOLE_STATEMENT: 2>)
    """

    sql: bytes  # the statement up to (not including) FORMAT or VALUES
    fmt: str
    data_start: int


class Head(enum.Enum):
    """What the start of a request stream says when it is not yet an InsertData.

    >>> split_insert(b"INSERT INTO t FORM", final=False) is Head.NEED_MORE
    True
    """

    NEED_MORE = 1  # read more of the stream and ask again
    WHOLE_STATEMENT = 2  # not an insert with inline data: the whole stream is the statement


def split_insert(buf: bytes, final: bool) -> InsertData | Head:
    """Find where an INSERT's data starts in ``buf`` (the stream so far; ``final`` if that is all)."""
    tokens = _tokens(buf)
    first = next((t for t in tokens if t.kind != "symbol"), None)
    if first is None or (not first.complete and not final):
        return Head.NEED_MORE if not final else Head.WHOLE_STATEMENT
    if first.upper(buf) != "INSERT":
        return Head.WHOLE_STATEMENT
    for token in tokens:
        if token.depth != 0 or token.kind != "word":
            continue
        if not token.complete and not final:
            return Head.NEED_MORE
        word = token.upper(buf)
        if word in ("SELECT", "WITH"):
            return Head.WHOLE_STATEMENT
        if word == "VALUES":
            return InsertData(buf[: token.start].rstrip(), "Values", token.end)
        if word == "FORMAT":
            name = next(tokens, None)
            if name is None or (not name.complete and not final):
                return Head.NEED_MORE if not final else Head.WHOLE_STATEMENT
            if name.kind != "word":
                return Head.WHOLE_STATEMENT
            start = _data_start(buf, name.end, final)
            if start is None:
                return Head.NEED_MORE
            return InsertData(buf[: token.start].rstrip(), buf[name.start : name.end].decode(), start)
    return Head.NEED_MORE if not final else Head.WHOLE_STATEMENT


def _data_start(buf: bytes, pos: int, final: bool) -> int | None:
    """ClickHouse's rule: data starts after the line break that ends the FORMAT clause, if there is one."""
    end = len(buf)
    while pos < end and buf[pos] in b" \t\f":
        pos += 1
    if not final and (pos == end or (pos == end - 1 and buf[pos] == 0x0D)):
        return None
    if buf.startswith(b"\r\n", pos):
        return pos + 2
    if buf.startswith(b"\n", pos):
        return pos + 1
    return pos


def quote_string(value: str) -> str:
    """A ClickHouse string literal.

    >>> print(quote_string("it's a \\\\ test"))
    'it\\'s a \\\\ test'
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_identifier(name: str) -> str:
    """A back-quoted ClickHouse identifier.

    >>> print(quote_identifier("my`db"))
    `my\\`db`
    """
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be spliced into SQL unquoted (setting names).

    >>> is_identifier("max_threads"), is_identifier("x; DROP TABLE t")
    (True, False)
    """
    return bool(_IDENTIFIER.match(name))


# -- confinement: what no request may do ---------------------------------------------------------------
# chdb runs ClickHouse in "local" mode, where file() reads any path the process can read, url() and
# friends reach the network, and INTO OUTFILE writes anywhere: the engine has no switch for these
# (user_files_path and remote_url_allow_hosts are not honoured in local mode), so the server refuses
# them before the engine sees the statement. Allowlists, not denylists, where the set is open-ended.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "numbers", "numbers_mt", "zeros", "zeros_mt", "generaterandom", "generateseries", "generate_series",
        "values", "null", "merge", "view", "viewifpermitted", "viewexplain", "format", "input", "loop", "primes",
        "sqlstandardvalues", "dictionary", "mergetreeindex", "mergetreeprojection", "mergetreeanalyzeindexes",
        "mergetreeanalyzeindexesuuid", "mergetreecodecblockcounts", "mergetreetextindex",
    }
)  # fmt: skip
ALLOWED_ENGINES = frozenset(
    {
        "mergetree", "replacingmergetree", "summingmergetree", "aggregatingmergetree", "collapsingmergetree",
        "versionedcollapsingmergetree", "graphitemergetree", "coalescingmergetree", "memory", "log", "tinylog",
        "stripelog", "null", "set", "join", "buffer", "merge", "view", "materializedview", "generaterandom",
        "dictionary", "alias", "loop", "atomic", "ordinary", "lazy",
    }
)  # fmt: skip
ALLOWED_DICTIONARY_SOURCES = frozenset({"clickhouse", "null"})
# Keys that would make a ClickHouse dictionary source connect somewhere, or run SQL hidden in a string.
_REMOTE_SOURCE_KEYS = frozenset(
    {"HOST", "PORT", "SECURE", "USER", "PASSWORD", "QUERY", "NAME", "UPDATE_FIELD", "INVALIDATE_QUERY"}
)
# Table functions and engines of chdb 26.9 that read files, reach the network or run programs (the
# server adds whatever its engine lists beyond the allowlists), and scalar functions that read files.
DENIED_CALLS = frozenset(
    {
        "file", "filecluster", "filesystem", "url", "urlcluster", "remote", "remotesecure", "cluster",
        "clusterallreplicas", "s3", "s3cluster", "gcs", "oss", "cosn", "azureblobstorage", "azureblobstoragecluster",
        "hdfs", "hdfscluster", "mysql", "postgresql", "jdbc", "odbc", "sqlite", "mongodb", "redis", "executable",
        "executablepool", "python", "eval", "arrowstream", "bigquery", "ytsaurus", "fuzzjson", "fuzzquery",
        "deltalake", "deltalakes3", "deltalakeazure", "deltalakelocal", "deltalakecluster", "deltalakes3cluster",
        "deltalakeazurecluster", "hudi", "hudicluster", "iceberg", "icebergs3", "icebergazure", "iceberghdfs",
        "iceberglocal", "icebergcluster", "icebergs3cluster", "icebergazurecluster", "iceberghdfscluster",
        "iceberglocalcluster", "paimon", "paimons3", "paimonazure", "paimonhdfs", "paimonlocal", "paimoncluster",
        "paimons3cluster", "paimonazurecluster", "paimonhdfscluster", "prometheusquery", "prometheusqueryrange",
        "timeseriesdata", "timeseriesmetrics", "timeseriestags", "timeseriessamples", "timeseriesmetricfamilies",
        "timeseriesselector", "disk", "catboostevaluate", "kafka", "rabbitmq", "nats", "filelog", "s3queue",
        "azurequeue", "distributed", "keepermap", "embeddedrocksdb", "materializedpostgresql", "hive",
        "externaldistributed", "backup", "datalakecatalog", "replicated", "queryrunner", "timeseries",
    }
)  # fmt: skip
# Settings that name a file to read or write, or a host to call.
FILE_SETTINGS = frozenset(
    {
        "format_schema", "format_schema_source", "format_template_resultset", "format_template_row",
        "output_format_schema", "input_format_record_errors_file_path", "format_avro_schema_registry_url",
        "into_outfile_create_parent_directories", "allow_introspection_functions",
        "s3_allow_server_credentials_in_user_queries", "url_base",
    }
)  # fmt: skip
TIME_SETTINGS = frozenset({"max_execution_time", "max_execution_time_leaf"})
_REFUSED_KINDS = {
    "SYSTEM": "SYSTEM statements",
    "BACKUP": "BACKUP (it writes outside the data folder)",
    "RESTORE": "RESTORE (it reads outside the data folder)",
}


@dataclass(frozen=True)
class Confinement:
    """What the server refuses before chdb runs a statement: files, network, programs, unbounded time.

    >>> box = Confinement(max_execution_time=60)
    >>> box.check("SELECT count() FROM numbers(10) SETTINGS max_execution_time = 5")
    >>> box.check("select * from/**/`FILE` ('/etc/passwd', 'LineAsString')")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.stack.chserver.errors.ClickHouseError: FILE(...) is not allowed on this server:
    it reads files or reaches the network
    >>> box.check("SELECT 1 INTO OUTFILE '/tmp/x'")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.stack.chserver.errors.ClickHouseError: INTO OUTFILE and FROM INFILE are not allowed on this server:
    they reach files outside its data folder
    >>> box.check_settings({"max_execution_time": "0"})  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.stack.chserver.errors.ClickHouseError: max_execution_time must be between 0 and 60 seconds on this server
    (0, no limit, is not allowed), not '0'
    """

    max_execution_time: float
    denied_calls: frozenset[str] = DENIED_CALLS

    def check(self, sql: str | bytes, tokens: list[_Token] | None = None) -> None:
        """Refuse a statement that could reach files, the network or programs, whatever its shape."""
        buf = sql.encode() if isinstance(sql, str) else sql
        tokens = tokenize(buf) if tokens is None else tokens
        words = [t.upper(buf) for t in tokens if t.kind == "word"][:3]
        if words and words[0] in _REFUSED_KINDS:
            raise _refused(f"{_REFUSED_KINDS[words[0]]} are not allowed on this server")
        if words[:2] == ["CREATE", "NAMED"] or words[:2] == ["ALTER", "NAMED"] or words[1:3] == ["NAMED", "COLLECTION"]:
            raise _refused("named collections are not allowed on this server")
        for i, token in enumerate(tokens):
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            word = token.upper(buf)
            if word in ("OUTFILE", "INFILE"):
                raise _refused(
                    "INTO OUTFILE and FROM INFILE are not allowed on this server: "
                    "they reach files outside its data folder"
                )
            if nxt is not None and nxt.kind == "symbol" and buf[nxt.start] == 0x28:  # name(
                name = _name(buf, token)
                if name is not None and name.lower() in self.denied_calls:
                    raise _refused(f"{name}(...) is not allowed on this server: it reads files or reaches the network")
            if word == "ENGINE":
                self._check_engine(buf, tokens, i + 1)
            elif word == "SOURCE":
                _check_source(buf, tokens, i + 1)
            elif word == "ATTACH" and _attach_from_path(buf, tokens):
                raise _refused("ATTACH ... FROM a path is not allowed on this server")
            watched = word.lower() in FILE_SETTINGS or word.lower() in TIME_SETTINGS
            if watched and _is_assignment(buf, tokens, i + 1):  # SET name = v, SETTINGS name = v, at any depth
                value = tokens[i + 2] if i + 2 < len(tokens) else None
                self.check_settings({buf[token.start : token.end].decode(): _literal(buf, value)})

    def _check_engine(self, buf: bytes, tokens: list[_Token], at: int) -> None:
        if at < len(tokens) and tokens[at].kind == "symbol" and buf[tokens[at].start] == 0x3D:  # '='
            at += 1
        name = _name(buf, tokens[at]) if at < len(tokens) else None
        if name is not None and name.lower() not in ALLOWED_ENGINES:
            raise _refused(
                f"ENGINE = {name} is not allowed on this server: only local engines (MergeTree, Memory, Log, ...) are"
            )

    def check_settings(self, settings: Mapping[str, str]) -> None:
        """Refuse settings that name files or hosts, or that lift the time limit."""
        for name, value in settings.items():
            key = name.lower()
            if key in FILE_SETTINGS:
                raise _refused(f"setting {name} is not allowed on this server: it names a file or a host")
            if key in TIME_SETTINGS:
                try:
                    seconds = float(value)
                except ValueError:
                    seconds = -1.0
                if not 0 < seconds <= self.max_execution_time:
                    raise _refused(
                        f"{name} must be between 0 and {self.max_execution_time:g} seconds on this server "
                        f"(0, no limit, is not allowed), not {value!r}"
                    )

    def check_ast(self, ast: str) -> None:
        """Refuse what the engine's own parser found (``EXPLAIN AST``): a second opinion on the lexer's."""
        for line in ast.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "Function" and parts[1].lower() in self.denied_calls:
                raise _refused(f"{parts[1]}(...) is not allowed on this server: it reads files or reaches the network")
            if (
                len(parts) >= 2
                and parts[0] == "FunctionWithKeyValueArguments"
                and parts[1].lower() not in ALLOWED_DICTIONARY_SOURCES
            ):
                raise _refused(
                    f"dictionary source {parts[1]} is not allowed on this server: only local ClickHouse tables are"
                )


def _refused(message: str) -> ClickHouseError:
    return ClickHouseError(ACCESS_DENIED, message)


def _name(buf: bytes, token: _Token) -> str | None:
    """A function or engine name: a bare word, or a back/double-quoted identifier."""
    if token.kind == "word":
        return buf[token.start : token.end].decode("utf-8", "replace")
    if token.kind == "quoted" and token.complete and buf[token.start] in b'`"':
        inner = buf[token.start + 1 : token.end - 1].decode("utf-8", "replace")
        return re.sub(r"\\(.)|``|\"\"", lambda m: m.group(1) or m.group(0)[0], inner)
    return None


def _is_assignment(buf: bytes, tokens: list[_Token], at: int) -> bool:
    """``name = value`` (a setting), not ``a == b``."""
    if at >= len(tokens) or tokens[at].kind != "symbol" or buf[tokens[at].start] != 0x3D:
        return False
    after = tokens[at + 1] if at + 1 < len(tokens) else None
    return not (
        after is not None and after.kind == "symbol" and buf[after.start] == 0x3D and after.start == tokens[at].end
    )


def _literal(buf: bytes, token: _Token | None) -> str:
    if token is None:
        return ""
    text = buf[token.start : token.end].decode("utf-8", "replace")
    if token.kind == "quoted" and text[:1] == "'":
        return text[1:-1]
    return text


def _check_source(buf: bytes, tokens: list[_Token], at: int) -> None:
    """``SOURCE(KIND(key value ...))`` of a dictionary: local ClickHouse tables only."""
    if at + 1 >= len(tokens) or tokens[at].kind != "symbol" or buf[tokens[at].start] != 0x28:
        return
    kind = _name(buf, tokens[at + 1]) or ""
    if kind.lower() not in ALLOWED_DICTIONARY_SOURCES:
        raise _refused(f"dictionary source {kind} is not allowed on this server: only local ClickHouse tables are")
    depth = tokens[at].depth + 1
    for token in tokens[at + 1 :]:
        if token.depth < depth:
            break
        if token.upper(buf) in _REMOTE_SOURCE_KEYS:
            raise _refused(
                f"dictionary source key {token.upper(buf)} is not allowed on this server: only local tables are"
            )


def _attach_from_path(buf: bytes, tokens: list[_Token]) -> bool:
    return any(t.upper(buf) == "FROM" and n.kind == "quoted" and buf[n.start] == 0x27 for t, n in pairwise(tokens))
