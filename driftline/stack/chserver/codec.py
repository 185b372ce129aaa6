"""Request and response compression as ClickHouse's HTTP interface speaks it.

Request bodies arrive with ``Content-Encoding`` lz4, zstd, gzip, deflate or br,
and a body may hold many frames: clickhouse-connect sends every insert block
as its own LZ4 frame, so a decoder that stops at the end of the first frame
silently loses rows. Each decoder here restarts on the bytes after a finished
frame and fails loudly on a body that ends inside one.

``decompress=1`` bodies use ClickHouse's own block framing (a 16-byte
CityHash128 checksum, a method byte, sizes, payload). The checksum is not
verified: that needs a CityHash binding the project does not otherwise use,
and TCP already guards the bytes on a loopback or local network.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import lz4.block
import lz4.frame
import zstandard

from driftline.stack.chserver.errors import (
    CANNOT_DECOMPRESS,
    TOO_MANY_ROWS_OR_BYTES,
    UNKNOWN_COMPRESSION_METHOD,
    ClickHouseError,
)

try:  # optional, as in ClickHouse clients: br only where the brotli package is installed
    import brotli  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None


_PIECE = 1 << 20  # the most output one decoder step produces, so a bomb is caught before it grows
_SLICE = 1 << 10  # input per step for decoders without an output bound: zstd's densest block is about 32,000:1
# Past BOMB_FLOOR bytes of output, a body may not expand more than BOMB_RATIO times: lz4 cannot pass
# 255:1 and real insert data stays far below; a body of zeros reaches 32,000:1 with zstd.
BOMB_FLOOR = 16 << 20
BOMB_RATIO = 1000


class _FrameDecoder(Protocol):
    """One compressed frame; ``feed`` yields its output in pieces of at most about ``_PIECE`` bytes."""

    eof: bool
    unused_data: bytes

    def feed(self, data: bytes) -> Iterator[bytes]: ...


class _Lz4Decoder:
    def __init__(self) -> None:
        self._decoder = lz4.frame.LZ4FrameDecompressor()

    @property
    def eof(self) -> bool:
        return bool(self._decoder.eof)

    @property
    def unused_data(self) -> bytes:
        return self._decoder.unused_data or b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        yield self._decoder.decompress(data, max_length=_PIECE)
        while not self._decoder.eof and not self._decoder.needs_input:
            yield self._decoder.decompress(b"", max_length=_PIECE)


class _ZlibDecoder:
    def __init__(self, wbits: int) -> None:
        self._decoder = zlib.decompressobj(wbits=wbits)

    @property
    def eof(self) -> bool:
        return self._decoder.eof

    @property
    def unused_data(self) -> bytes:
        return self._decoder.unused_data

    def feed(self, data: bytes) -> Iterator[bytes]:
        out = self._decoder.decompress(data, _PIECE)
        yield out
        while not self._decoder.eof and (self._decoder.unconsumed_tail or len(out) == _PIECE):
            out = self._decoder.decompress(self._decoder.unconsumed_tail, _PIECE)
            yield out


class _SlicedDecoder:
    """A decoder without an output bound (zstd, brotli), fed a little input at a time."""

    def __init__(self, decoder: Any) -> None:
        self._decoder = decoder
        self.unused_data = b""

    @property
    def eof(self) -> bool:
        return bool(self._decoder.eof)

    def feed(self, data: bytes) -> Iterator[bytes]:
        for start in range(0, len(data), _SLICE):
            yield self._decoder.decompress(data[start : start + _SLICE])
            if self._decoder.eof:
                self.unused_data = (self._decoder.unused_data or b"") + data[start + _SLICE :]
                return


class _BrotliDecoder:
    """brotli's decompressor with zstd's eof/unused_data surface (one stream per body)."""

    def __init__(self) -> None:
        self._decoder = brotli.Decompressor()
        self.unused_data = b""

    @property
    def eof(self) -> bool:
        return bool(self._decoder.is_finished())

    def decompress(self, data: bytes) -> bytes:
        return self._decoder.process(data)


def _decoder_factory(encoding: str) -> Callable[[], Any]:
    if encoding == "lz4":
        return _Lz4Decoder
    if encoding == "zstd":
        return lambda: _SlicedDecoder(zstandard.ZstdDecompressor().decompressobj())
    if encoding in ("gzip", "x-gzip"):
        return lambda: _ZlibDecoder(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return lambda: _ZlibDecoder(zlib.MAX_WBITS)
    if encoding == "br":
        if brotli is None:
            raise ClickHouseError(UNKNOWN_COMPRESSION_METHOD, "br request bodies need the brotli package on the server")
        return lambda: _SlicedDecoder(_BrotliDecoder())
    raise ClickHouseError(UNKNOWN_COMPRESSION_METHOD, f"Unknown HTTP Content-Encoding {encoding!r}")


def decode_body(chunks: Iterable[bytes], content_encoding: str | None, max_bytes: int | None = None) -> Iterator[bytes]:
    """The decompressed body, frame after frame, for one ``Content-Encoding``; at most ``max_bytes`` of it.

    The limit is checked while decompressing, piece by piece, so a small body that expands to
    gigabytes fails after about ``max_bytes``, without ever holding more than a piece in memory:

    >>> bomb = zstandard.ZstdCompressor(level=19).compress(bytes(1 << 28))
    >>> len(bomb) < 20_000
    True
    >>> sum(map(len, decode_body([bomb], "zstd", max_bytes=4 << 20)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftline.stack.chserver.errors.ClickHouseError: The zstd request body decompresses to more than 4194304 bytes...

    >>> frames = lz4.frame.compress(b"a" * 5) + lz4.frame.compress(b"b" * 3)
    >>> b"".join(decode_body([frames[:7], frames[7:]], "lz4"))
    b'aaaaabbb'
    >>> b"".join(decode_body([lz4.frame.compress(b"abc")[:-2]], "lz4"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    driftline.stack.chserver.errors.ClickHouseError: ... lz4 body ends inside a frame...
    """
    encoding = (content_encoding or "").strip().lower()
    if encoding in ("", "identity"):
        yield from (chunk for chunk in chunks if chunk)
        return
    if "," in encoding:
        raise ClickHouseError(UNKNOWN_COMPRESSION_METHOD, f"Stacked Content-Encoding {encoding!r} is not supported")
    new_decoder = _decoder_factory(encoding)
    yield from _frames(chunks, new_decoder, encoding, max_bytes)


def _frames(
    chunks: Iterable[bytes], new_decoder: Callable[[], _FrameDecoder], name: str, max_bytes: int | None
) -> Iterator[bytes]:
    decoder = new_decoder()
    inside = False  # the current decoder has taken bytes of a frame it has not finished
    total = taken = 0
    try:
        for chunk in chunks:
            data = chunk
            taken += len(chunk)
            while data:
                for out in decoder.feed(data):
                    total += len(out)
                    if max_bytes is not None and total > max_bytes:
                        raise ClickHouseError(
                            TOO_MANY_ROWS_OR_BYTES,
                            f"The {name} request body decompresses to more than {max_bytes} bytes, the server's "
                            "--max-body-bytes; send it in smaller requests",
                        )
                    if total > BOMB_FLOOR and total > BOMB_RATIO * taken:
                        raise ClickHouseError(
                            TOO_MANY_ROWS_OR_BYTES,
                            f"The {name} request body decompresses more than {BOMB_RATIO} times its size "
                            f"({taken} bytes to over {total}): refused as a decompression bomb",
                        )
                    if out:
                        yield out
                if decoder.eof:
                    data = decoder.unused_data
                    decoder, inside = new_decoder(), False
                else:
                    data, inside = b"", True
    except (RuntimeError, zlib.error, zstandard.ZstdError, ValueError) as exc:
        raise ClickHouseError(CANNOT_DECOMPRESS, f"Cannot decompress {name} request body: {exc}") from exc
    if inside:
        raise ClickHouseError(
            CANNOT_DECOMPRESS, f"Cannot decompress {name} request body: the {name} body ends inside a frame"
        )


_NATIVE_HEADER = 25  # checksum 16 + method 1 + compressed size 4 + decompressed size 4
_NATIVE_NONE, _NATIVE_LZ4, _NATIVE_ZSTD = 0x02, 0x82, 0x90


def decode_native_blocks(chunks: Iterable[bytes], max_bytes: int | None = None) -> Iterator[bytes]:
    """The payload of a ``decompress=1`` body: ClickHouse-compressed blocks, one after another.

    >>> def block(method, payload, raw):
    ...     sizes = (9 + len(payload)).to_bytes(4, "little") + len(raw).to_bytes(4, "little")
    ...     return bytes(16) + bytes([method]) + sizes + payload
    >>> body = block(0x82, lz4.block.compress(b"hello", store_size=False), b"hello") + block(0x02, b"!", b"!")
    >>> b"".join(decode_native_blocks([body[:10], body[10:]]))
    b'hello!'
    """
    pending = bytearray()
    total = 0
    for chunk in chunks:
        pending += chunk
        offset = 0
        while len(pending) - offset >= _NATIVE_HEADER:
            method = pending[offset + 16]
            size = int.from_bytes(pending[offset + 17 : offset + 21], "little")
            raw_size = int.from_bytes(pending[offset + 21 : offset + 25], "little")
            if size < 9:
                raise ClickHouseError(CANNOT_DECOMPRESS, f"Corrupt compressed block: size {size}")
            if raw_size > BOMB_FLOOR and raw_size > BOMB_RATIO * size:
                raise ClickHouseError(
                    TOO_MANY_ROWS_OR_BYTES,
                    f"A compressed block of {size} bytes claims {raw_size} decompressed: "
                    "refused as a decompression bomb",
                )
            total += raw_size  # checked before the block is decompressed: the header says how big it will be
            if max_bytes is not None and total > max_bytes:
                raise ClickHouseError(
                    TOO_MANY_ROWS_OR_BYTES,
                    f"The request body decompresses to more than {max_bytes} bytes, the server's --max-body-bytes",
                )
            if len(pending) - offset < 16 + size:
                break
            payload = bytes(pending[offset + _NATIVE_HEADER : offset + 16 + size])
            yield _native_block(method, payload, raw_size)
            offset += 16 + size
        del pending[:offset]
    if pending:
        raise ClickHouseError(CANNOT_DECOMPRESS, "Cannot decompress request body: it ends inside a compressed block")


def _native_block(method: int, payload: bytes, raw_size: int) -> bytes:
    try:
        if method == _NATIVE_NONE:
            return payload
        if method == _NATIVE_LZ4:
            return lz4.block.decompress(payload, uncompressed_size=raw_size)
        if method == _NATIVE_ZSTD:
            return zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_size)
    except (lz4.block.LZ4BlockError, zstandard.ZstdError) as exc:
        raise ClickHouseError(CANNOT_DECOMPRESS, f"Cannot decompress block: {exc}") from exc
    raise ClickHouseError(UNKNOWN_COMPRESSION_METHOD, f"Unknown compression method byte 0x{method:02x}")


class ResponseEncoder(Protocol):
    """Compresses one response body piece by piece; ``flush`` ends it.

    >>> enc: ResponseEncoder = response_encoder("gzip")
    >>> zlib.decompress(enc.compress(b"Ok.") + enc.flush(), wbits=31)
    b'Ok.'
    """

    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Lz4Encoder:
    """One LZ4 frame for the whole response: what clickhouse-connect's decoders expect."""

    def __init__(self) -> None:
        self._compressor = lz4.frame.LZ4FrameCompressor()
        self._header = self._compressor.begin()

    def compress(self, data: bytes) -> bytes:
        out = self._header + self._compressor.compress(data)
        self._header = b""
        return out

    def flush(self) -> bytes:
        out = self._header + self._compressor.flush()
        self._header = b""
        return out


class _BrotliEncoder:
    def __init__(self) -> None:
        self._compressor = brotli.Compressor()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.process(data)

    def flush(self) -> bytes:
        return self._compressor.finish()


# ClickHouse's own preference when a client accepts several. It also keeps clickhouse-connect's async
# client, which decodes a whole lz4 response with an output cap of the compressed size, on zstd.
_RESPONSE_ENCODINGS = ("zstd", "br", "lz4", "gzip", "deflate")


def response_encoding(accept_encoding: str | None) -> str | None:
    """The encoding to answer with, from an ``Accept-Encoding`` header.

    >>> response_encoding("lz4,zstd,gzip,deflate"), response_encoding("lz4;q=0, gzip"), response_encoding("identity")
    ('zstd', 'gzip', None)
    """
    offered = set()
    for item in (accept_encoding or "").split(","):
        name, _, params = item.strip().lower().partition(";")
        if name and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            offered.add(name)
    for name in _RESPONSE_ENCODINGS:
        if name in offered and (name != "br" or brotli is not None):
            return name
    return None


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


def response_encoder(encoding: str | None, zlib_level: int = 3) -> ResponseEncoder:
    """A streaming compressor for one response body (``None``: bytes pass through).

    >>> enc = response_encoder("zstd")
    >>> body = enc.compress(b"abc" * 100) + enc.flush()
    >>> zstandard.ZstdDecompressor().decompressobj().decompress(body) == b"abc" * 100
    True
    """
    if encoding is None:
        return _Identity()
    if encoding == "lz4":
        return _Lz4Encoder()
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=1).compressobj()
    if encoding == "gzip":
        return zlib.compressobj(zlib_level, wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.compressobj(zlib_level, wbits=zlib.MAX_WBITS)
    if encoding == "br" and brotli is not None:
        return _BrotliEncoder()
    raise ClickHouseError(UNKNOWN_COMPRESSION_METHOD, f"Unknown response encoding {encoding!r}")
