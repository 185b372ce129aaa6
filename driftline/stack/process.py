"""Background processes that outlive the command which started them.

``driftline stack up`` starts the broker and the warehouse server and exits;
``stack down`` stops them later by the pid written here. A process that dies
while starting is reported with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


class StackError(RuntimeError):
    """A local service could not be started, reached or stopped."""


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port`` now (a port held by any socket, even an outgoing
    connection's local end, cannot be bound).

    >>> with socket.socket() as s:
    ...     s.bind(("127.0.0.1", 0)); s.listen(); taken = s.getsockname()[1]
    ...     port_free("127.0.0.1", taken)
    False
    """
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class ManagedProcess:
    """A daemon known by its pid file and its log file."""

    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,  # survives the CLI that started it, and Ctrl-C in that terminal
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        self._popen = proc
        return proc.pid

    def crashed(self) -> bool:
        popen = getattr(self, "_popen", None)
        if popen is not None:
            return popen.poll() is not None
        return self.pid() is None

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; False when nothing ran."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            _reap(pid)
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still answers kill(0); it is dead all the same
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state != "Z"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(ready: Callable[[], bool], timeout: float, process: ManagedProcess, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process.crashed():
            raise StackError(
                f"{what} exited while starting; last lines of {process.log_file}:\n{tail(process.log_file)}"
            )
        time.sleep(0.25)
    raise StackError(
        f"{what} did not answer within {timeout:.0f} s; last lines of {process.log_file}:\n{tail(process.log_file)}"
    )
