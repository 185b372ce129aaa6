"""The naming rule for model ids, aliases and tag keys: a contract that the policy file, the
registry and the command line all check, so it lives below all of them.

>>> validate_name("credit-risk_v2.1")
'credit-risk_v2.1'
>>> validate_name("../etc/passwd")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
driftline.naming.InvalidName: invalid model id '../etc/passwd': use 1-128 letters, ...
"""

from __future__ import annotations

import re

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidName(ValueError):
    """A model id, alias or tag key that breaks the naming rule."""


def validate_name(value: object, what: str = "model id", error: type[ValueError] = InvalidName) -> str:
    """Return ``value`` if it is a valid model id, alias or tag key; raise ``error`` otherwise."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise error(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value
