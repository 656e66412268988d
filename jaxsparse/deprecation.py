"""Renamed public names: the old name keeps working for one release, with a warning.

A package lists its renames and sets ``__getattr__ = renamed(__name__, {...})`` (PEP 562), so
``getattr(package, old)`` warns with a ``DeprecationWarning`` naming the new spelling and
returns the new object; a renamed argument value calls :func:`warn` where it is accepted.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

REMOVED_IN = "0.3"


def warn(old: str, new: str, stacklevel: int = 3) -> None:
    """Warns that ``old`` is deprecated in favour of ``new`` (both as the user writes them)."""
    warnings.warn(f"{old} is deprecated and will be removed in jaxsparse {REMOVED_IN}; use "
                  f"{new}.", DeprecationWarning, stacklevel=stacklevel)


def renamed(module: str, names: dict[str, tuple[str, Callable[[], Any]]]
            ) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``{old name: (new name, () -> new object)}``."""

    def __getattr__(name: str) -> Any:
        if name in names:
            new, get = names[name]
            warn(f"{module}.{name}", f"{module}.{new}")
            return get()
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
