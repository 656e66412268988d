"""jaxsparse: structured sparsity for JAX.

    import jaxsparse as js
    masks = js.prune(params, "2:4")
    params = js.apply_masks(params, masks)
    sp = js.sparsify(apply_fn, variables, masks, x)

The root's names are those of :mod:`jaxsparse.pruning` and :mod:`jaxsparse.compiler`. Names of
0.1 that were renamed still work for one release and raise a ``DeprecationWarning``:
``js.compile`` (now ``js.sparsify``: it does not shadow the builtin), ``js.optax`` (now
``js.transforms``: it does not shadow optax) and ``js.sparsity`` (now ``js.measured_sparsity``).
"""

import warnings
from typing import Any

from jaxsparse import compiler, pruning
from jaxsparse.compiler import *  # noqa: F403
from jaxsparse.pruning import *  # noqa: F403

__version__ = "0.1.0"

__all__ = sorted({*compiler.__all__, *pruning.__all__})

# Old name -> (new name, where it lives now). Removed in 0.3.
_RENAMED = {"compile": ("sparsify", compiler), "optax": ("transforms", pruning),
            "sparsity": ("measured_sparsity", pruning)}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        new, home = _RENAMED[name]
        warnings.warn(f"jaxsparse.{name} is deprecated and will be removed in jaxsparse 0.3; "
                      f"use jaxsparse.{new}.", DeprecationWarning, stacklevel=2)
        return getattr(home, new)
    raise AttributeError(f"module 'jaxsparse' has no attribute {name!r}")
