"""Pickles read through an allowlist: the one restricted unpickler for detector states and model artifacts.

A pickle can call any global it names, so ``pickle.loads`` of bytes someone else wrote runs their
code. Everything driftline unpickles (change-detector states from ``detector_states``, model
artifacts from the artifact store) goes through :func:`restricted_loads`, whose ``find_class``
resolves only what an :class:`Allowlist` names and refuses the rest with
:class:`PickleNotAllowed`, naming the global and how to allow it.

>>> import pickle, collections
>>> allow = Allowlist.parse(["collections"], what="a test artifact")
>>> restricted_loads(pickle.dumps(collections.Counter("aab")), allow)
Counter({'a': 2, 'b': 1})
>>> import os
>>> restricted_loads(pickle.dumps(os.getcwd), allow)  # doctest: +NORMALIZE_WHITESPACE
Traceback (most recent call last):
...
driftline.unpickling.PickleNotAllowed: posix.getcwd is not allowed in a test artifact:
its allowlist names only collections; if you trust it, add 'posix:getcwd' (or its module 'posix') to the allowlist
"""

from __future__ import annotations

import inspect
import io
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class PickleNotAllowed(pickle.UnpicklingError):
    """A pickle names a global that its allowlist does not allow."""


@dataclass(frozen=True)
class Allowlist:
    """What a pickle may reference.

    ``modules``: packages or modules whose own *classes* may be built (``"river"`` allows
    ``river.preprocessing.scale.StandardScaler``, not a function of river, nor a class river imported
    from elsewhere); ``globals``: single globals as ``(module, name)``, functions included;
    ``bound_methods_of``: packages whose objects' own methods may be pickled as ``getattr(obj, name)``.
    ``what`` names the pickle's kind in errors.

    >>> a = Allowlist.parse(["river", "numpy:dtype"], what="x")
    >>> a.modules, a.globals
    (('river',), (('numpy', 'dtype'),))
    >>> a.entries()
    ['river', 'numpy:dtype']
    """

    modules: tuple[str, ...] = ()
    globals: tuple[tuple[str, str], ...] = ()
    bound_methods_of: tuple[str, ...] = ()
    what: str = "a pickle"

    @classmethod
    def parse(
        cls, entries: Iterable[str], *, what: str = "a pickle", bound_methods_of: Iterable[str] = ()
    ) -> Allowlist:
        """An allowlist from entries ``"module"`` (its classes) or ``"module:name"`` (one global)."""
        modules: list[str] = []
        names: list[tuple[str, str]] = []
        for entry in entries:
            module, sep, name = str(entry).partition(":")
            if not module or (sep and not name):
                raise ValueError(f"invalid allowlist entry {entry!r}: use 'module' or 'module:name'")
            (names.append((module, name)) if sep else modules.append(module))
        return cls(tuple(modules), tuple(names), tuple(bound_methods_of), what)

    def entries(self) -> list[str]:
        """The allowlist as ``parse`` reads it."""
        return [*self.modules, *(f"{m}:{n}" for m, n in self.globals)]

    def within(self, module: str) -> bool:
        """Whether ``module`` is one of ``modules`` or inside one."""
        return any(module == m or module.startswith(m + ".") for m in self.modules)


class _AllowlistUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, allow: Allowlist) -> None:
        super().__init__(io.BytesIO(data))
        self.allow = allow

    def find_class(self, module: str, name: str) -> Any:
        allow = self.allow
        if module == "builtins" and name == "getattr" and allow.bound_methods_of:
            return self._bound_method
        if (module, name) in allow.globals:
            return super().find_class(module, name)
        if allow.within(module):
            found = super().find_class(module, name)
            # a class the allowed module defines, not something it imported (e.g. subprocess.Popen)
            if isinstance(found, type) and allow.within(found.__module__):
                return found
        raise PickleNotAllowed(
            f"{module}.{name} is not allowed in {allow.what}: its allowlist names only "
            f"{', '.join(allow.entries()) or 'nothing'}; if you trust it, add "
            f"'{module}:{name}' (or its module '{module}') to the allowlist"
        )

    def _bound_method(self, obj: Any, name: str) -> Any:
        # what pickle stores for a bound method: getattr(instance, name)
        method = None if name.startswith("__") else getattr(obj, name, None)
        owner = type(obj).__module__
        if not (
            inspect.ismethod(method)
            and method.__self__ is obj
            and any(owner == m or owner.startswith(m + ".") for m in self.allow.bound_methods_of)
        ):
            raise PickleNotAllowed(f"getattr({type(obj).__name__}, {name!r}) is not allowed in {self.allow.what}")
        return method


def restricted_loads(data: bytes, allow: Allowlist) -> Any:
    """``pickle.loads`` that resolves only the globals ``allow`` names (see :class:`Allowlist`).

    This narrows what forged bytes can do; it does not make bytes from an untrusted writer safe
    (an allowed class may still be built with hostile arguments).

    >>> restricted_loads(pickle.dumps([1, 2.5, "x"]), Allowlist())
    [1, 2.5, 'x']
    """
    return _AllowlistUnpickler(data, allow).load()
