"""Every docstring example of the installed ``driftline`` package runs, as river runs its own.

The modules are found by walking the installed namespace (``driftline``, ``driftline.streams``,
``driftline.retrainer``, ``driftline.schemas``), not by listing them here or by collecting the
repository's folders, so a new module's examples run without a line of this file changing and no
module is ever imported under a second, folder-based name.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

NAMESPACES = ("driftline", "driftline.streams", "driftline.retrainer", "driftline.schemas")


def installed_modules() -> list[str]:
    names: set[str] = set()
    for root in NAMESPACES:
        package = importlib.import_module(root)
        names.add(root)
        names.update(info.name for info in pkgutil.walk_packages(package.__path__, f"{root}."))
    return sorted(names)


MODULES = installed_modules()


def test_every_namespace_is_walked() -> None:
    assert {"driftline.streams.core.drift", "driftline.retrainer.policy", "driftline.stack.chserver"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name} (output above)"


def test_one_name_per_module() -> None:
    """The repository's folders are reached only through the ``driftline`` namespace: no generic
    top-level ``streams``, ``retrainer`` or ``schemas`` is importable, or imported, in the test run."""
    import importlib.util
    import sys

    for name in ("streams", "retrainer", "schemas"):
        assert importlib.util.find_spec(name) is None, f"{name} is importable at the top level"
        assert not [m for m in sys.modules if m == name or m.startswith(f"{name}.")]
