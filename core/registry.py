"""A name -> implementation table with one error for unknown names (listing the valid ones).

Every extensible kind of the framework (scenarios, metrics, benchmarks) has one `Registry`. Built-in
entries register when their module is imported (`Registry.builtins` names those modules, imported
on the first lookup); a user's entry registers the same way from their own module, which a
scenario's or metric's YAML names as `impl: package.module` so it is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from core.errors import ConfigError, unknown_option

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: tuple[str, ...] = ()):
        self.kind = kind
        self.builtins = builtins  # modules whose import registers the built-in entries
        self._entries: dict[str, T] = {}
        self._loaded = False

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self.builtins:
                importlib.import_module(module)

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register()` uses the entry's own `name` attribute."""

        def add(entry: T) -> T:
            self.add(name or entry.name, entry)  # type: ignore[attr-defined]
            return entry

        return add

    def add(self, name: str, entry: T, replace: bool = False) -> None:
        if not replace and name in self._entries and self._entries[name] is not entry:
            raise ConfigError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, impl: str | None = None) -> T:
        """The entry called `name`; `impl` ("package.module:attr") imports it first when it is
        not registered yet (a user's own scenario or metric)."""
        self._load_builtins()
        if name not in self._entries and impl:
            load_impl(impl, f"{self.kind} {name!r}")
        if name not in self._entries:
            raise unknown_option(self.kind, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        self._load_builtins()
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return name in self._entries

    def __iter__(self) -> Iterator[T]:
        self._load_builtins()
        return iter(list(self._entries.values()))


def load_impl(spec: str, what: str) -> object:
    """Import "package.module:attr" (registering whatever the module registers)."""
    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"{what}: cannot import {module!r} ({e})") from None
    if attr:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(f"{what}: {module!r} has no {attr!r}") from None
    return obj
