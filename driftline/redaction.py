"""Secrets out of text: the one place that decides what a password looks like in a URL or a message.

Every log line, error message, repr, DLQ header, metric label and report that may quote a URL or a
connection string passes it through :func:`redact` (or :func:`redact_url` for a URL alone), so
that a password given in ``http://user:secret@host``, ``?password=secret`` or ``password=secret``
never leaves the process.

>>> redact_url("http://bob:s3cret@ch.local:8123/metrics?password=x&database=d")
'http://bob:***@ch.local:8123/metrics?password=***&database=d'
>>> redact("could not reach https://u:p%40ss@registry.local/subjects: timed out")
'could not reach https://u:***@registry.local/subjects: timed out'
>>> redact("host=db user=app password=hunter2 dbname=registry")
'host=db user=app password=*** dbname=registry'
>>> redact("nothing to hide")
'nothing to hide'
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

MASK = "***"

# scheme://user:password@ : the password is whatever stands between the first ':' after '//' and '@'
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*:)(?P<secret>[^@\s/]*)(?=@)")
# password=..., passwd=..., secret=..., token=..., key=... in a query string or a libpq/DSN string
_PARAM = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:password|passwd|pwd|secret|token|api_key|apikey|access_key|secret_key|sasl_password)"
    r"\s*[=:]\s*)(?P<secret>[^&\s;,'\"]+)",
    re.IGNORECASE,
)


def redact(text: object) -> str:
    """``text`` (anything, as ``str``) with every password in a URL or a ``key=value`` pair masked."""
    out = _USERINFO.sub(lambda m: m["head"] + MASK, str(text))
    return _PARAM.sub(lambda m: m["head"] + MASK, out)


def redact_url(url: str) -> str:
    """A URL with its password (userinfo or query parameter) masked; the rest stays readable."""
    return redact(url)


# Field or key names whose whole value is a secret (a Slack webhook URL's path is its token).
_SECRET_NAME = re.compile(r"password|passwd|secret|token|webhook|credential|api_?key", re.IGNORECASE)


def redacted_repr(obj: object) -> str:
    """A dataclass's repr with secrets masked: fields named like a secret entirely, URLs' passwords, mapping values.

    The ``__repr__`` of every settings-like dataclass that holds a URL or a password.

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class Conf:
    ...     url: str
    ...     password: str = ""
    ...     extra: dict = field(default_factory=dict)
    >>> redacted_repr(Conf("http://u:pw@h/d", "hunter2", {"sasl.password": "p", "acks": "all"}))
    "Conf(url='http://u:***@h/d', password='***', extra={'sasl.password': '***', 'acks': 'all'})"
    """
    shown = []
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        if f.repr:
            shown.append(f"{f.name}={_redacted_value(f.name, getattr(obj, f.name))}")
    return f"{type(obj).__name__}({', '.join(shown)})"


def _redacted_value(name: str, value: object) -> str:
    if value and _SECRET_NAME.search(name):
        return repr(MASK)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_redacted_value(str(k), v)}" for k, v in value.items()) + "}"
    return redact(repr(value))
