"""Renamed public names: the old name keeps working for one release, with a warning.

A package lists its renames and sets ``__getattr__ = renamed(__name__, {...})`` (PEP 562), so
``getattr(package, old)`` warns with a ``DeprecationWarning`` naming the new spelling and
returns the new object.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

REMOVED_IN = "0.3"


def renamed(module: str, names: dict[str, tuple[str, Callable[[], Any]]]
            ) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``{old name: (new name, () -> new object)}``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            new, get = names[name]
            warnings.warn(f"{module}.{name} is deprecated and will be removed in jaxsparse "
                          f"{REMOVED_IN}; use {module}.{new}.", DeprecationWarning,
                          stacklevel=2)
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
