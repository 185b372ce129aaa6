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

import re

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
