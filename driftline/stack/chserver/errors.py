"""ClickHouse exceptions as the embedded server reports them over HTTP.

ClickHouse clients recognise a failed query by three things: a non-2xx status,
the ``X-ClickHouse-Exception-Code`` header and a body of the form
``Code: N. DB::Exception: message. (NAME) (version V)``. chdb raises its
errors as text in that same form, so the code and name are parsed back out of
the text rather than kept in a second table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ClickHouse error codes the server raises itself (names as errorCodeToName() gives them).
UNSUPPORTED_METHOD = 1
BAD_ARGUMENTS = 36
NOT_IMPLEMENTED = 48
SYNTAX_ERROR = 62
UNKNOWN_FORMAT = 73
UNKNOWN_COMPRESSION_METHOD = 89
UNKNOWN_SETTING = 115
READONLY = 164
CANNOT_DECOMPRESS = 271
SESSION_NOT_FOUND = 372
SESSION_IS_LOCKED = 373
HTTP_LENGTH_REQUIRED = 381
ACCESS_DENIED = 497
AUTHENTICATION_FAILED = 516
SESSION_LIMIT_EXCEEDED = 700  # USER_SESSION_LIMIT_EXCEEDED in ClickHouse
TOO_MANY_SIMULTANEOUS_QUERIES = 202
TOO_MANY_ROWS_OR_BYTES = 396  # also: a request body or its decompressed size past the server's limit
STD_EXCEPTION = 1001

_NAMES = {
    UNSUPPORTED_METHOD: "UNSUPPORTED_METHOD",
    BAD_ARGUMENTS: "BAD_ARGUMENTS",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    UNKNOWN_FORMAT: "UNKNOWN_FORMAT",
    UNKNOWN_COMPRESSION_METHOD: "UNKNOWN_COMPRESSION_METHOD",
    UNKNOWN_SETTING: "UNKNOWN_SETTING",
    READONLY: "READONLY",
    CANNOT_DECOMPRESS: "CANNOT_DECOMPRESS",
    SESSION_NOT_FOUND: "SESSION_NOT_FOUND",
    SESSION_IS_LOCKED: "SESSION_IS_LOCKED",
    HTTP_LENGTH_REQUIRED: "HTTP_LENGTH_REQUIRED",
    ACCESS_DENIED: "ACCESS_DENIED",
    AUTHENTICATION_FAILED: "AUTHENTICATION_FAILED",
    STD_EXCEPTION: "STD_EXCEPTION",
    SESSION_LIMIT_EXCEEDED: "USER_SESSION_LIMIT_EXCEEDED",
    TOO_MANY_SIMULTANEOUS_QUERIES: "TOO_MANY_SIMULTANEOUS_QUERIES",
    TOO_MANY_ROWS_OR_BYTES: "TOO_MANY_ROWS_OR_BYTES",
}

# The HTTP statuses ClickHouse's HTTP handler gives these codes; everything else is 500.
_HTTP_STATUS = {
    **dict.fromkeys((164, 497, 192, 193, 516), 403),  # READONLY, ACCESS_DENIED, UNKNOWN_USER, WRONG_PASSWORD, auth
    194: 401,  # REQUIRED_PASSWORD
    # the parse errors: CANNOT_PARSE_*, SYNTAX_ERROR, TYPE_MISMATCH, INCORRECT_DATA, ...
    **dict.fromkeys((6, 25, 26, 27, 38, 41, 53, 62, 72, 117, 130, 381), 400),
    # UNKNOWN_FUNCTION, _IDENTIFIER, _TYPE, _STORAGE, _TABLE, _AGGREGATE_FUNCTION, _FORMAT, _DATABASE, _SETTING, ...
    **dict.fromkeys((46, 47, 50, 56, 60, 63, 73, 81, 115, 372), 404),
    48: 501,  # NOT_IMPLEMENTED
    202: 503,  # TOO_MANY_SIMULTANEOUS_QUERIES: too many connections
    700: 429,  # USER_SESSION_LIMIT_EXCEEDED
    396: 413,  # TOO_MANY_ROWS_OR_BYTES: here, a body or decompressed body past the server's limit
}

_CODE = re.compile(r"Code: (\d+)\. ")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


@dataclass(eq=False)
class ClickHouseError(Exception):
    """A query failure with its ClickHouse error code, ready to send to a client.

    >>> err = ClickHouseError.from_engine("Streaming query failed: Code: 60. DB::Exception: "
    ...                                   "Unknown table expression identifier 'x'. (UNKNOWN_TABLE)")
    >>> err.code, err.name, err.http_status
    (60, 'UNKNOWN_TABLE', 404)
    >>> err.body("26.9.2.1")
    "Code: 60. DB::Exception: Unknown table expression identifier 'x'. (UNKNOWN_TABLE) (version 26.9.2.1)\\n"
    >>> ClickHouseError(SESSION_IS_LOCKED, "Session abc is locked by a concurrent client").body("1")
    'Code: 373. DB::Exception: Session abc is locked by a concurrent client. (SESSION_IS_LOCKED) (version 1)\\n'
    """

    code: int
    message: str
    name: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if not self.name:
            self.name = _NAMES.get(self.code, "UNKNOWN_EXCEPTION")

    @classmethod
    def from_engine(cls, text: str) -> ClickHouseError:
        """Parse chdb's exception text; text without a code becomes STD_EXCEPTION."""
        found = _CODE.search(text)
        if not found:
            return cls(STD_EXCEPTION, text.strip() or "unknown engine error")
        full = text[found.start() :].strip()
        code = int(found.group(1))
        names = _NAME.findall(full)
        message = full[len(found.group(0)) :]
        message = message.removeprefix("DB::Exception: ")
        name = names[-1] if names else ""
        if name and message.endswith(f"({name})"):
            message = message[: -len(name) - 2].rstrip()
        return cls(code, message.rstrip("."), name)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.code, 500)

    def text(self) -> str:
        return f"Code: {self.code}. DB::Exception: {self.message}. ({self.name})"

    def body(self, version: str) -> str:
        return f"{self.text()} (version {version})\n"
