"""Native output for clients that send ``client_protocol_version``.

Over HTTP, ClickHouse writes the Native format the way the client's protocol
revision reads it: from revision 1 each block starts with a BlockInfo, and from
revision 54454 each column header carries a "custom serialization" flag.
clickhouse-go (Grafana's ClickHouse datasource) relies on both;
clickhouse-connect probes for the first. chdb has no way to be told a client's
revision and always writes revision 0, so the server rewrites its output.

A chdb stream chunk is exactly one block, so adding BlockInfo needs no parsing.
The per-column flag does: finding where a column's data ends means walking it
by type. That walker covers the types analysts meet (numbers, dates, strings,
Nullable, Array, Map, Tuple, LowCardinality, Enum, Decimal, geo types); any
other type fails the request with a clear error instead of sending bytes the
client would misread.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from driftline.stack.chserver.errors import NOT_IMPLEMENTED, ClickHouseError

# BlockInfo: field 1 is_overflows = false, field 2 bucket_num = -1, field 0 ends it.
BLOCK_INFO = b"\x01\x00\x02\xff\xff\xff\xff\x00"
CUSTOM_SERIALIZATION_REVISION = 54454

_FIXED = {
    **dict.fromkeys(("UInt8", "Int8", "Bool", "Enum8"), 1),
    **dict.fromkeys(("UInt16", "Int16", "Enum16", "Date", "BFloat16"), 2),
    **dict.fromkeys(("UInt32", "Int32", "Float32", "DateTime", "Date32", "IPv4", "Decimal32", "Time"), 4),
    **dict.fromkeys(("UInt64", "Int64", "Float64", "DateTime64", "Decimal64", "Time64"), 8),
    **dict.fromkeys(("UInt128", "Int128", "UUID", "IPv6", "Decimal128", "Point"), 16),
    **dict.fromkeys(("UInt256", "Int256", "Decimal256"), 32),
}
_ALIASES = {
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "Polygon": "Array(Array(Point))",
    "MultiLineString": "Array(Array(Point))",
    "MultiPolygon": "Array(Array(Array(Point)))",
}
_NAMED_ELEMENT = re.compile(r"(`(?:[^`\\]|\\.)*`|[A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)\Z", re.S)
_LC_HAS_ADDITIONAL_KEYS = 1 << 9
_LC_INDEX_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class DataType:
    """A ClickHouse type name parsed into its name and arguments.

    >>> nested = DataType.parse("Map(String, Array(Nullable(DateTime64(3, 'UTC'))))")
    >>> nested.args[1].args[0]  # doctest: +NORMALIZE_WHITESPACE
    DataType(name='Nullable',
             args=(DataType(name='DateTime64', args=(DataType(name='3', args=()), DataType(name="'UTC'", args=()))),))
    >>> [a.name for a in DataType.parse("Tuple(a String, `b c` UInt8)").args]
    ['String', 'UInt8']
    """

    name: str
    args: tuple[DataType, ...] = ()

    @classmethod
    def parse(cls, text: str) -> DataType:
        text = _ALIASES.get(text.strip(), text.strip())
        if not text.endswith(")") or "(" not in text:
            return cls(text)
        name, _, inner = text.partition("(")
        args = []
        for part in _split_args(inner[:-1]):
            named = _NAMED_ELEMENT.match(part) if name.strip() == "Tuple" else None
            args.append(cls.parse(named.group(2) if named else part))
        return cls(name.strip(), tuple(args))


def _split_args(text: str) -> list[str]:
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "'`\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
        i += 1
    if text[start:].strip():
        parts.append(text[start:].strip())
    return parts


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _prefix_size(t: DataType) -> int:
    """Bytes of serialization state written once before a column's data (LowCardinality's key version)."""
    if t.name == "LowCardinality":
        return 8
    if t.name in ("Nullable", "Array", "Map", "Tuple"):
        return sum(_prefix_size(a) for a in t.args)
    if t.name == "SimpleAggregateFunction":
        return _prefix_size(t.args[-1])
    return 0


def _data_end(buf: bytes, pos: int, t: DataType, rows: int) -> int:
    """Where the data of ``rows`` values of type ``t`` starting at ``pos`` ends."""
    if rows == 0:
        return pos  # ClickHouse writes nothing for empty columns, LowCardinality included
    name = t.name
    if name in _FIXED:
        return pos + rows * _FIXED[name]
    if name == "String":
        end = len(buf)
        for _ in range(rows):
            size = buf[pos]
            if size < 0x80:
                pos += 1 + size
            else:
                size, pos = _varint(buf, pos)
                pos += size
            if pos > end:
                raise ClickHouseError(NOT_IMPLEMENTED, "Native data ends inside a String column")
        return pos
    if name == "FixedString":
        return pos + rows * int(t.args[0].name)
    if name == "Decimal":
        precision = int(t.args[0].name)
        return pos + rows * (4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32)
    if name.startswith("Interval") or name == "Nothing":
        return pos + rows * (8 if name != "Nothing" else 1)
    if name == "Nullable":
        return _data_end(buf, pos + rows, t.args[0], rows)
    if name in ("Array", "Map"):
        (total,) = struct.unpack_from("<Q", buf, pos + 8 * (rows - 1))
        pos += 8 * rows
        for element in t.args:  # Map(K, V) is Array(Tuple(K, V)): keys, then values
            pos = _data_end(buf, pos, element, total)
        return pos
    if name == "Tuple":
        for element in t.args:
            pos = _data_end(buf, pos, element, rows)
        return pos
    if name == "SimpleAggregateFunction":
        return _data_end(buf, pos, t.args[-1], rows)
    if name == "LowCardinality":
        (flags,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        if flags & _LC_HAS_ADDITIONAL_KEYS:
            (keys,) = struct.unpack_from("<Q", buf, pos)
            dictionary = t.args[0].args[0] if t.args[0].name == "Nullable" else t.args[0]
            pos = _data_end(buf, pos + 8, dictionary, keys)
        (count,) = struct.unpack_from("<Q", buf, pos)
        return pos + 8 + count * _LC_INDEX_SIZES[flags & 0xFF]
    raise ClickHouseError(
        NOT_IMPLEMENTED,
        f"Columns of type {name} cannot be sent in Native format to clients with client_protocol_version "
        "by the embedded server; cast them (for example to String) or use another format",
    )


def upgrade_native(data: bytes, revision: int, rows: int | None = None) -> bytes:
    """chdb's revision-0 Native ``data`` rewritten for a client at protocol ``revision``.

    ``rows``, when given, is the row count of ``data`` known to be a single block, which lets
    revisions below 54454 skip parsing.

    >>> block = b"\\x01\\x02\\x01x\\x05UInt8\\x07\\x09"  # one column x UInt8, rows 7 and 9
    >>> upgrade_native(block, 54405, rows=2) == BLOCK_INFO + block
    True
    >>> upgrade_native(block + block, 54460) == (BLOCK_INFO + b"\\x01\\x02\\x01x\\x05UInt8\\x00\\x07\\x09") * 2
    True
    """
    if revision <= 0 or not data:
        return data
    custom_flag = revision >= CUSTOM_SERIALIZATION_REVISION
    if not custom_flag and rows is not None and _varint(data, _varint(data, 0)[1])[0] == rows:
        return BLOCK_INFO + data
    out = bytearray()
    pos, end = 0, len(data)
    while pos < end:
        columns, pos = _varint(data, pos)
        block_rows, header_end = _varint(data, pos)
        out += BLOCK_INFO
        out += data[pos - _varint_size(columns) : header_end]
        pos = header_end
        for _ in range(columns):
            name_size, after = _varint(data, pos)
            type_size, type_start = _varint(data, after + name_size)
            type_end = type_start + type_size
            out += data[pos:type_end]
            if custom_flag:
                out += b"\x00"
            column_type = DataType.parse(data[type_start:type_end].decode())
            pos = type_end
            if block_rows:
                data_end = _data_end(data, pos + _prefix_size(column_type), column_type, block_rows)
                out += data[pos:data_end]
                pos = data_end
        if pos > end:
            raise ClickHouseError(NOT_IMPLEMENTED, "Native data ended inside a block while adding protocol headers")
    return bytes(out)


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size
