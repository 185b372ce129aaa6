"""Who the embedded server answers: the ``Host`` headers it accepts, and the one user it lets in.

A browser page must not reach the warehouse through DNS rebinding (``allowed_hosts``,
``host_allowed``); with a password, every query needs it (``Credentials``, compared in constant time).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from driftline.stack.chserver.errors import AUTHENTICATION_FAILED, ClickHouseError


def allowed_hosts(bind: str, port: int, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """The ``Host`` headers the server answers: a defence against DNS rebinding from a browser.

    A loopback bind answers the loopback names only; a specific address, that address; a
    wildcard bind (0.0.0.0, ::) any IP literal (``None`` here, checked per request), plus ``extra``.

    >>> sorted(allowed_hosts("127.0.0.1", 8123))
    ['127.0.0.1:8123', '[::1]:8123', 'localhost:8123']
    >>> sorted(allowed_hosts("10.0.0.5", 8123, ("ch.internal",)))
    ['10.0.0.5:8123', 'ch.internal:8123']
    """
    names = {f"{name}:{port}" for name in extra}
    if bind in ("", "0.0.0.0", "::"):
        return None
    if _loopback(bind):
        return frozenset(names | {f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})
    host = f"[{bind}]" if ":" in bind else bind
    return frozenset(names | {f"{host}:{port}"})


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def host_allowed(host: str, allowed: frozenset[str] | None, port: int, extra: tuple[str, ...] = ()) -> bool:
    """Whether a request's ``Host`` header names this server (see ``allowed_hosts``).

    >>> host_allowed("localhost:8123", allowed_hosts("127.0.0.1", 8123), 8123)
    True
    >>> host_allowed("evil.example:8123", allowed_hosts("127.0.0.1", 8123), 8123)
    False
    >>> host_allowed("192.168.1.9:8123", None, 8123), host_allowed("rebind.example:8123", None, 8123)
    (True, False)
    """
    if allowed is not None:
        return host.lower() in allowed
    name, _, rest = host.rpartition(":") if not host.endswith("]") else (host, "", str(port))
    if rest != str(port):
        return False
    if name.lower() in ("localhost", *extra):
        return True
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    """The one user the server accepts; without it, authentication is off.

    >>> Credentials("analyst", "s3cret").check("analyst", "s3cret")
    >>> Credentials("analyst", "s3cret").check("analyst", "nope")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    driftline.stack.chserver.errors.ClickHouseError: analyst: Authentication failed: password is incorrect,
    or there is no user with such name
    """

    user: str
    password: str

    def check(self, user: str, password: str) -> None:
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        if not (user_ok and password_ok):
            raise ClickHouseError(
                AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
            )
