"""Filter kinds by name: the built-ins, ``ferryman.filters`` entry points, and import paths.

``kind = "ratelimit"`` names a registered kind; ``kind = "mypkg.filters:Paywall"`` imports a
user's :class:`~ferryman.filters.base.Filter` subclass directly.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .base import Filter

_KINDS: dict[str, type[Filter]] = {}
_BUILTINS_LOADED = False


def register(cls: type[Filter]) -> type[Filter]:
    """Register a filter class under its ``kind`` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Filter)) or not cls.kind:
        raise TypeError(f"{cls!r} is not a Filter subclass with a kind")
    _KINDS[cls.kind] = cls
    return cls


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    importlib.import_module("ferryman.filters.builtin")
    for entry in entry_points(group="ferryman.filters"):
        register(entry.load())


def lookup(kind: str) -> type[Filter]:
    """The class for ``kind``; raises ValueError with a message fit for a config error."""
    _load_builtins()
    cls = _KINDS.get(kind)
    if cls is not None:
        return cls
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot import filter {kind!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Filter)):
            raise ValueError(f"{kind!r} is not a ferryman Filter subclass")
        return cls
    known = ", ".join(sorted(_KINDS))
    raise ValueError(f"unknown filter kind {kind!r} (known: {known}; or \"module:Class\")")


def kinds() -> list[str]:
    _load_builtins()
    return sorted(_KINDS)
