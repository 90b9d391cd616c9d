"""Old names that changed keep working for one release, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable


def warn(old: str, new: str) -> None:
    """Say that ``old`` is deprecated and what to use instead (the warning points at the caller's line)."""
    warnings.warn(f"{old} is deprecated and goes in the next release; use {new}", DeprecationWarning, stacklevel=3)


def moved(module: str, names: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for names that moved: {old name: "new.module:new_name"}. Reading an old name
    warns and returns the object from its new home."""
    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        where, _, new = names[name].partition(":")
        warn(f"{module}.{name}", f"{where}.{new}")
        return getattr(importlib.import_module(where), new)

    return __getattr__


def module_moved(module: str, new: str) -> Callable[[str], object]:
    """A module ``__getattr__`` for a module that moved as a whole to ``new``: every name read from the old
    path warns and comes from the new one."""
    def __getattr__(name: str):
        target = importlib.import_module(new)
        if not hasattr(target, name):
            raise AttributeError(f"module {module!r} (now {new!r}) has no attribute {name!r}")
        warn(f"{module}.{name}", f"{new}.{name}")
        return getattr(target, name)

    return __getattr__


def call(old: str, new: str, *args, **kwargs):
    """Warn that ``old`` is deprecated and call ``new`` ("module:function", imported now, at call time: a shim
    in a lower layer forwards to a higher one without importing it)."""
    where, _, name = new.partition(":")
    warn(old, f"{where}.{name}")
    return getattr(importlib.import_module(where), name)(*args, **kwargs)
