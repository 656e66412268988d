"""Pure-function view of an NNX model: ``apply_fn(variables, x, train=False)``.

Pruning and the compiler pass work on pure functions and variable pytrees, never on modules, so
anything with that signature (a Flax Linen ``model.apply``, plain JAX code) is served the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

Variables = dict[str, Any]
ApplyFn = Callable[..., Any]


def functional(model: nnx.Module) -> tuple[ApplyFn, Variables]:
    """Splits an NNX model into a pure apply function and a plain variables pytree.

    ``variables`` is ``{"params": ..., "batch_stats": ...}`` of nested dicts of arrays (the
    Linen convention). ``apply_fn(variables, x, train=False)`` returns the logits; with
    ``train=True`` it returns ``(logits, new_variables)`` where the batch statistics were updated
    from the batch, as ``model.apply(..., mutable=["batch_stats"])`` does in Linen.

    Args:
        model: an NNX module whose ``__call__(x, train)`` takes a ``train`` flag.

    Returns:
        ``(apply_fn, variables)``.
    """
    graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    variables = {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(batch_stats)}

    def apply_fn(variables: Variables, x: jax.Array, train: bool = False):
        p = jax.tree.map(lambda v: v, params)
        b = jax.tree.map(lambda v: v, batch_stats)
        nnx.replace_by_pure_dict(p, variables["params"])
        nnx.replace_by_pure_dict(b, variables.get("batch_stats", {}))
        module = nnx.merge(graphdef, p, b, rest)
        logits = module(x, train=train)
        if not train:
            return logits
        _, _, new_stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
        return logits, {"params": variables["params"], "batch_stats": nnx.to_pure_dict(new_stats)}

    return apply_fn, variables
