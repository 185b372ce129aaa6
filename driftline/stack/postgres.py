"""A throwaway PostgreSQL server for tests and local use, from the distribution's server binaries.

``initdb`` refuses to run as root, and so does the server. When we are root
the data directory is handed to the ``postgres`` system user and every
server command runs as that user (``runuser``). The server listens on
127.0.0.1 only, keeps its unix socket inside the data directory (so it never
collides with a system server's ``/var/run/postgresql``), and trusts local
connections: it is a development server, never a production one.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from driftline.stack.process import StackError, port_answers, tail

SERVICE_USER = "postgres"
HOST = "127.0.0.1"


def find_bin_dir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live: ``PG_BIN``, the newest Debian install, or the PATH."""
    candidates = [os.environ.get("PG_BIN", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major_version, reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise StackError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found; install them "
        "(Debian: apt-get install -y postgresql) or set PG_BIN to their directory"
    )


def _major_version(bin_dir: str) -> int:
    try:
        return int(Path(bin_dir).parent.name)
    except ValueError:
        return 0


@dataclass
class PostgresServer:
    """A PostgreSQL server on 127.0.0.1; ``stop()`` stops it only if we started it.

    >>> PostgresServer(Path("/tmp/pg"), 5499, started=False).url
    'postgresql://postgres@127.0.0.1:5499/postgres'
    """

    data_dir: Path
    port: int
    started: bool
    bin_dir: Path | None = None

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database (e.g. one per test) and return its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.database_url(name)

    def create_schema(self, name: str) -> str:
        """Create an empty schema and return a URL whose unqualified tables live in it.

        Much cheaper than a database (a catalogue row instead of a copied
        template), which matters for one-per-test isolation.
        """
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return f"{self.url}?options={quote(f'-c search_path={name}')}"

    def stop(self) -> bool:
        """Stop the server if this object started it; False when there was nothing of ours to stop."""
        if not self.started or self.bin_dir is None:
            return False
        _run_as_service_user(
            [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
            what="stop PostgreSQL",
            log=self.data_dir / "postgres.log",
        )
        self.started = False
        return True


def start_postgres(
    data_dir: str | os.PathLike[str], port: int, *, fsync: bool = True, timeout_s: int = 30
) -> PostgresServer:
    """Start a server on ``127.0.0.1:port`` with its cluster in ``data_dir`` (created on first use).

    If something already answers on the port it is reused and left running on
    ``stop()``. ``fsync=False`` trades durability for speed: fine for tests.
    """
    data_dir = Path(data_dir).resolve()
    if port_answers(HOST, port):
        _check_is_postgres(port)
        return PostgresServer(data_dir, port, started=False)
    bin_dir = find_bin_dir()
    log = data_dir / "postgres.log"
    _prepare_data_dir(data_dir)
    if not (data_dir / "PG_VERSION").is_file():
        _run_as_service_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            what="initialise the PostgreSQL cluster",
            log=log,
        )
    # pg_ctl hands -o to a shell, so the socket path is quoted
    options = f"-h {HOST} -p {port} -k {shlex.quote(str(data_dir))}" + (
        "" if fsync else " -c fsync=off -c synchronous_commit=off"
    )
    _run_as_service_user(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            str(timeout_s),
            "-o",
            options,
            "start",
        ],
        what=f"start PostgreSQL on {HOST}:{port}",
        log=log,
    )
    return PostgresServer(data_dir, port, started=True, bin_dir=bin_dir)


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not _running_as_root():
        return
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise StackError(
            f"running as root, PostgreSQL needs the unprivileged system user {SERVICE_USER!r}, which does not "
            "exist (Debian's postgresql package creates it)"
        ) from None
    if data_dir.stat().st_uid != user.pw_uid:
        for path in [data_dir, *data_dir.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    os.chmod(data_dir, 0o700)
    # the service user must be able to walk to the data directory
    for parent in data_dir.parents:
        mode = parent.stat().st_mode
        if parent.stat().st_uid != user.pw_uid and not mode & 0o001:
            raise StackError(
                f"the {SERVICE_USER} user cannot reach {data_dir}: {parent} is not searchable by others "
                f"(chmod o+x {parent}, or choose a data directory elsewhere)"
            )


def _run_as_service_user(argv: list[str], *, what: str, log: Path) -> None:
    if _running_as_root():
        argv = ["runuser", "-u", SERVICE_USER, "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/")
    if done.returncode != 0:
        raise StackError(
            f"could not {what} (exit {done.returncode}):\n{(done.stdout + done.stderr)[-2000:]}\n"
            f"last lines of {log}:\n{tail(log)}"
        )


def _check_is_postgres(port: int) -> None:
    import psycopg

    try:
        with psycopg.connect(f"postgresql://postgres@{HOST}:{port}/postgres", connect_timeout=5):
            pass
    except psycopg.Error as exc:
        raise StackError(
            f"something answers on {HOST}:{port} but it is not a PostgreSQL server that lets user postgres in: {exc}"
        ) from exc
