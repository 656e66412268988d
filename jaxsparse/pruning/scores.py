"""Importance scorers: pytrees of scores to pass as ``prune(..., scores=...)``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def magnitude(params: Any) -> Any:
    """``|w|``: the default score."""
    return jax.tree.map(jnp.abs, params)


def random(params: Any, key: jax.Array) -> Any:
    """Uniform random scores (a random-pruning baseline), one independent draw per leaf."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.uniform(k, x.shape)
                                        for k, x in zip(keys, leaves, strict=True)])


def saliency(params: Any, grads: Any) -> Any:
    """``|w * dL/dw|``: first-order Taylor saliency (SNIP-like)."""
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)

