"""Names a package re-exports, imported from their modules on first use (PEP 562).

A package's ``__init__`` that re-exports its public surface this way costs nothing to import:
``import driftline`` stays the SDK's weight, reading a warehouse URL loads no pyarrow, and
reading a statement of the embedded server loads no chdb.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``, whose names live in the modules ``homes`` gives.

    A looked-up name is kept in the package's namespace, so later lookups skip ``__getattr__``.

    >>> import types
    >>> pkg = sys.modules["demo_pkg"] = types.ModuleType("demo_pkg")
    >>> pkg.__getattr__, pkg.__dir__ = lazy_exports("demo_pkg", {"dedent": "textwrap"})
    >>> pkg.dedent("  x"), "dedent" in vars(pkg), "dedent" in dir(pkg)
    ('x', True, True)
    >>> pkg.missing
    Traceback (most recent call last):
    ...
    AttributeError: module 'demo_pkg' has no attribute 'missing'
    >>> del sys.modules["demo_pkg"]
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *homes})

    return __getattr__, __dir__
