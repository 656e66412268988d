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

from jaxsparse import compiler, pruning
from jaxsparse.compiler import *  # noqa: F403
from jaxsparse.deprecation import renamed
from jaxsparse.pruning import *  # noqa: F403

__version__ = "0.2.0"

__all__ = sorted({*compiler.__all__, *pruning.__all__})

__getattr__ = renamed(__name__, {
    "compile": ("sparsify", lambda: compiler.sparsify),
    "optax": ("transforms", lambda: pruning.transforms),
    "sparsity": ("measured_sparsity", lambda: pruning.measured_sparsity),
})
