"""Which code produced a model version: the driftline release plus, where known, the git commit."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

# the checkout this module runs from (retrainer/registry/provenance.py is two folders down)
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(_SOURCE_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def release() -> str:
    """The installed driftline release (``0.1.0``), read from the package metadata."""
    try:
        return metadata.version("driftline")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>`` plus ``+g<commit>`` in a git checkout, and ``.dirty`` with local changes.

    Installed wheels have no git metadata, so the release number alone is the
    honest answer there. Computed once per process: the code does not change
    under a running process.

    >>> code_version().startswith(release())
    True
    """
    version = release()
    commit = _git("rev-parse", "--verify", "--quiet", "HEAD")
    if not commit:
        return version
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{version}+g{commit[:12]}{'.dirty' if dirty else ''}"
