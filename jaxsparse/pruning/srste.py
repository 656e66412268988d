"""SR-STE for N:M sparsity (Zhou et al., 2021, "Learning N:M Fine-grained Structured Sparse
Neural Networks From Scratch").

The forward pass uses the N:M-masked weights ``w * m(w)`` (the mask recomputed from the dense
weights every step); the straight-through estimator passes the gradient to all dense weights;
the sparse-refined term adds ``decay * (1 - m) * w`` to the gradient so pruned weights shrink.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxsparse.pruning.patterns import NM, Pattern, parse_pattern
from jaxsparse.pruning.prune import apply_masks, map_masks, prune
from jaxsparse.pruning.selection import Include


def _nm(pattern: str | Pattern) -> NM:
    p = parse_pattern(pattern)
    if not isinstance(p, NM):
        raise ValueError(f"SR-STE is defined for N:M patterns; got pattern {p}.")
    return p


def ste_params(params: Any, pattern: str | Pattern = "2:4", include: Include = None) -> Any:
    """Forward-pass weights ``w * m(w)`` whose gradient flows straight through to ``w``.

    Use as ``apply_fn({"params": ste_params(params), ...}, x)`` inside the loss.
    """
    pattern = _nm(pattern)
    masks = jax.lax.stop_gradient(prune(params, pattern, include=include))
    sparse = apply_masks(params, masks)
    return jax.tree.map(lambda w, s: w + jax.lax.stop_gradient(s - w), params, sparse)


class SRSTEState(NamedTuple):
    """State of :func:`sr_ste`: the inner optimizer's state."""

    inner_state: Any


def sr_ste(inner: optax.GradientTransformation, pattern: str | Pattern = "2:4",
           decay: float = 2e-4, include: Include = None) -> optax.GradientTransformation:
    """Adds SR-STE's sparse-refined decay ``decay * (1 - m(w)) * w`` to the gradients.

    Pair it with :func:`ste_params` in the forward pass. The weights stay dense during training;
    the deployable model is ``apply_masks(params, prune(params, pattern))``.

    Args:
        inner: the optimizer the refined gradients are passed to.
        pattern: an N:M pattern.
        decay: the sparse-refined decay coefficient (lambda_W in the paper; 2e-4 there).
        include: which parameters are N:M-sparse (see :func:`jaxsparse.prune`).
    """
    pattern = _nm(pattern)
    if decay < 0:
        raise ValueError(f"decay={decay} must be >= 0.")

    def init(params):
        return SRSTEState(inner.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("sr_ste needs params: call tx.update(grads, state, params).")
        masks = prune(params, pattern, include=include)
        refined = map_masks(
            lambda m, g, w: g if m is None else g + decay * jnp.where(m, 0.0, w).astype(g.dtype),
            masks, updates, params)
        new_updates, inner_state = inner.update(refined, state.inner_state, params)
        return new_updates, SRSTEState(inner_state)

    return optax.GradientTransformationExtraArgs(init, update)
