"""Name -> implementation registries for every pluggable kind (estimators, selectors, datasets, models).

A new implementation is one new module in the kind's package: its class subclasses the kind's base
class with a ``name`` and is registered by :meth:`Registry.add` from ``__init_subclass__``.  Nothing
else is edited.  Listing names (for ``--help`` and errors) reads the package's module names without
importing them, so help stays fast; a module is imported the first time its name is asked for.
The convention that makes this work: the module is named after what it registers, ``-`` written ``_``
(``influence-score`` lives in ``influence_score.py``).  Modules whose names start with ``_`` hold
shared code and register nothing.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
from typing import Generic, Iterator, TypeVar

from dpcli.errors import DpcliError

T = TypeVar("T")


class Registry(Generic[T]):
    """The implementations of one kind, discovered from the modules of ``package``."""

    def __init__(self, kind: str, package: str, option: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.option = option  # the CLI option that takes these names, for error messages
        self._items: dict[str, type[T]] = {}

    def add(self, cls: type[T]) -> type[T]:
        name = getattr(cls, "name", None)
        if not name:
            raise TypeError(f"{cls.__qualname__}: a registered {self.kind} needs a class attribute `name`")
        other = self._items.get(name)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise TypeError(f"{self.kind} {name!r} is registered twice ({other.__module__}, {cls.__module__})")
        self._items[name] = cls
        return cls

    def names(self) -> tuple[str, ...]:
        """Every registered name, in a stable order, without importing the implementations."""
        pkg = sys.modules.get(self.package)
        if pkg is not None:  # its live path (a plugin folder may have been added to it)
            path: list[str] | None = list(pkg.__path__)
        else:  # the package's folder, without running its __init__ (which may import numpy)
            spec = importlib.util.find_spec(self.package)
            path = spec.submodule_search_locations if spec is not None else None
        found = {m.name.replace("_", "-") for m in pkgutil.iter_modules(path or []) if not m.name.startswith("_")}
        return tuple(sorted(found | set(self._items)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def get(self, name: str) -> type[T]:
        """The implementation registered as ``name``; one clear line listing the choices otherwise."""
        if name not in self._items and name in self.names():
            importlib.import_module(f"{self.package}.{name.replace('-', '_')}")
        try:
            return self._items[name]
        except KeyError:
            raise DpcliError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        what = f"{self.option} {name!r}" if self.option else f"{self.kind} {name!r}"
        return f"unknown {what}{hint}; choose one of {', '.join(names)}"

    def load_all(self) -> dict[str, type[T]]:
        for name in self.names():
            self.get(name)
        return dict(self._items)
