"""``python -m driftline.stack.chserver``: the embedded server as a process (``driftline stack up`` starts it).

Arguments, the password (``--password-file``, or ``--password``), logging, and a clean stop on
SIGTERM or SIGINT within ``STOP_SECONDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from driftline.stack.chserver.engine import DEFAULT_MAX_EXECUTION_TIME, DEFAULT_MAX_SESSIONS, Limits
from driftline.stack.chserver.server import HttpLimits, serve
from driftline.stack.process import StackError

logger = logging.getLogger("driftline.stack.chserver")


STOP_SECONDS = 4.0  # SIGTERM to exit, at most: requests get 2 s to finish, the rest is for closing


def read_password_file(path: str | Path) -> str:
    """The password in ``path`` (its first line), refusing a file others may read.

    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = Path(tmp, "pw"); _ = p.write_text("s3cret\\n"); os.chmod(p, 0o600)
    ...     read_password_file(p)
    's3cret'
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text()
    except OSError as exc:
        raise StackError(f"cannot read the password file {file}: {exc}") from exc
    if mode & 0o077:
        raise StackError(f"the password file {file} may be read by others (mode {mode & 0o777:o}); chmod 600 it")
    password = text.splitlines()[0].strip() if text.strip() else ""
    if not password:
        raise StackError(f"the password file {file} is empty")
    return password


def server_password(password: str | None, password_file: str | Path | None) -> str | None:
    """The password the server asks for: ``--password-file``'s when given, else ``--password``, else None
    (authentication off). The one place that reads the two options.

    >>> server_password("pw", None), server_password(None, None)
    ('pw', None)
    >>> import tempfile, os
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     p = Path(tmp, "pw"); _ = p.write_text("from-file\\n"); os.chmod(p, 0o600)
    ...     server_password("ignored", p)
    'from-file'
    """
    return read_password_file(password_file) if password_file else password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftline.stack.chserver", description="Serve chdb over ClickHouse's HTTP interface."
    )
    parser.add_argument("--path", required=True, help="chdb data directory (this process owns it)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123, help="0 picks a free port (printed on start)")
    parser.add_argument(
        "--user",
        help="the one accepted user (default: default, when a password is given); "
        "without a password authentication is off",
    )
    parser.add_argument(
        "--password", help="that user's password (visible to other local users in ps: prefer --password-file)"
    )
    parser.add_argument(
        "--password-file", help="read the password from this file (mode 600); `driftline stack up` makes one"
    )
    parser.add_argument(
        "--readonly",
        type=int,
        choices=[0, 1, 2],
        default=0,
        help="the user's readonly level, enforced by the engine: 1 reads only, 2 also changes settings",
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME:PORT (repeatable)",
    )
    http_defaults = HttpLimits()
    # the limits, one table: flag, type, default, what it bounds
    for flag, kind, default, about in (
        (
            "--max-execution-time",
            float,
            DEFAULT_MAX_EXECUTION_TIME,
            "seconds a query may run; clients may lower it, not raise it",
        ),
        ("--max-sessions", int, DEFAULT_MAX_SESSIONS, "open HTTP sessions"),
        ("--max-body-bytes", int, http_defaults.max_body_bytes, "request body, on the wire and decompressed"),
        ("--max-query-bytes", int, http_defaults.max_query_bytes, "statement text, not counting INSERT data"),
        ("--max-connections", int, http_defaults.max_connections, "open client connections"),
        ("--header-timeout", float, http_defaults.header_timeout, "seconds for a request's headers to arrive"),
        (
            "--read-timeout",
            float,
            http_defaults.read_timeout,
            "seconds to wait for a client's next bytes, or for it to read",
        ),
    ):
        parser.add_argument(
            flag, type=kind, default=default, help=f"{about} (default %(default){'g' if kind is float else 's'})"
        )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(args.readonly, args.max_execution_time, args.max_sessions)
    http_limits = HttpLimits(
        args.max_body_bytes, args.max_query_bytes, args.max_connections, args.header_timeout, args.read_timeout
    )
    try:
        password = server_password(args.password, args.password_file)
        server = serve(
            args.path, args.host, args.port, args.user, password, limits, http_limits, tuple(args.allow_host)
        )
    except (StackError, OSError) as exc:
        logger.error("cannot serve on %s:%s: %s", args.host, args.port, exc)
        return 1
    if password is None:
        logger.warning(
            "serving without a password: anything that can reach %s may read and write the warehouse", server.url
        )

    def stop(signum: int, frame: object) -> None:
        # close() waits for requests, so it runs beside the main thread rather than inside the handler
        threading.Thread(target=server.close, kwargs={"timeout": 2.0}, name="chserver-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on {server.url}", flush=True)
    server.wait()
    stopped_at = time.monotonic()
    for thread in threading.enumerate():
        if thread.name == "chserver-stop":
            thread.join(max(0.0, STOP_SECONDS - (time.monotonic() - stopped_at)))
            if thread.is_alive():
                logger.warning("the server did not close within %.0f s of the signal; exiting now", STOP_SECONDS)
                logging.shutdown()
                os._exit(1)
    return 0
