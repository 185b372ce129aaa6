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
from collections.abc import Iterator
from dataclasses import dataclass

_TOKEN = re.compile(
    rb"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|\#[ !][^\n]*)
    | (?P<block>/\*)
    | (?P<string>'(?:[^'\\]|\\.|'')*(?P<string_end>')?)
    | (?P<dquote>"(?:[^"\\]|\\.|"")*(?P<dquote_end>")?)
    | (?P<bquote>`(?:[^`\\]|\\.|``)*(?P<bquote_end>`)?)
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


@dataclass(frozen=True)
class _Token:
    kind: str  # word | symbol | quoted
    start: int
    end: int
    depth: int  # parenthesis depth the token sits at
    complete: bool  # False when the buffer ends inside the token

    def upper(self, buf: bytes) -> str:
        return buf[self.start : self.end].decode("utf-8", "replace").upper() if self.kind == "word" else ""


def _tokens(buf: bytes) -> Iterator[_Token]:
    """Tokens of ``buf``, stopping at the first one the buffer cuts short."""
    pos, depth, end = 0, 0, len(buf)
    while pos < end:
        match = _TOKEN.match(buf, pos)
        assert match is not None  # the symbol branch matches any byte
        kind = match.lastgroup
        if kind in ("space", "comment"):
            pos = match.end()
            continue
        if kind == "block":
            pos = _block_comment_end(buf, match.end())
            if pos < 0:
                return
            continue
        if kind in ("string", "dquote", "bquote"):
            complete = match.group(f"{kind}_end") is not None
            yield _Token("quoted", match.start(), match.end(), depth, complete)
            if not complete:
                return
        elif kind == "word":
            yield _Token("word", match.start(), match.end(), depth, match.end() < end)
        else:
            char = buf[match.start()]
            if char == 0x29:  # ')'
                depth = max(0, depth - 1)
            yield _Token("symbol", match.start(), match.end(), depth, True)
            if char == 0x28:  # '('
                depth += 1
        pos = match.end()


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


def parse_statement(sql: str | bytes) -> Statement:
    """Kind, FORMAT clause and statement count of a complete statement."""
    buf = sql.encode() if isinstance(sql, str) else sql
    words: list[str] = []
    top: list[tuple[str, _Token]] = []  # depth-0 tokens after the first ';' are only counted
    multiple = False
    ended = False
    for token in _tokens(buf):
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
