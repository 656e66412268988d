"""How a global sparsity target is spread over layers: uniform, ERK, or a global threshold.

All functions accept a traced ``sparsity`` so masks can be recomputed inside ``jax.jit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxsparse.pruning.masks import keep_count, keep_top

DISTRIBUTIONS = ("uniform", "erk", "global")


def uniform(shapes: Sequence[tuple[int, ...]], sparsity) -> list[jax.Array]:
    """The same sparsity for every layer."""
    return [jnp.asarray(sparsity, jnp.float32) for _ in shapes]


def erk_raw_density(shape: tuple[int, ...]) -> float:
    """ERK's unnormalised density: ``sum(shape) / prod(shape)`` (Evci et al., RigL)."""
    return sum(shape) / math.prod(shape)


def erk(shapes: Sequence[tuple[int, ...]], sparsity) -> list[jax.Array]:
    """Erdos-Renyi-Kernel: density of layer ``l`` is ``eps * sum(shape_l) / prod(shape_l)``.

    ``eps`` is chosen so the total number of kept weights is ``(1 - sparsity) * total``. Layers
    whose density would exceed 1 are kept dense and ``eps`` is recomputed for the rest, as in
    RigL. Returns per-layer sparsities in [0, 1].
    """
    sizes = jnp.array([math.prod(s) for s in shapes], jnp.float32)
    raw = jnp.array([erk_raw_density(s) for s in shapes], jnp.float32)
    target = (1.0 - jnp.asarray(sparsity, jnp.float32)) * jnp.sum(sizes)
    dense = jnp.zeros(len(shapes), bool)
    for _ in range(len(shapes)):  # At most one layer turns dense per round.
        budget = target - jnp.sum(jnp.where(dense, sizes, 0.0))
        eps = budget / jnp.sum(jnp.where(dense, 0.0, raw * sizes))
        dense = dense | (eps * raw > 1.0)
    budget = target - jnp.sum(jnp.where(dense, sizes, 0.0))
    eps = budget / jnp.maximum(jnp.sum(jnp.where(dense, 0.0, raw * sizes)), 1e-12)
    density = jnp.clip(jnp.where(dense, 1.0, eps * raw), 0.0, 1.0)
    return list(1.0 - density)


def global_ranks(scores: Sequence[jax.Array], sparsity) -> list[jax.Array]:
    """One threshold across layers: keeps the ``round((1-s) * total)`` highest scores overall.

    Returns boolean masks shaped like ``scores`` (ties go to the earlier layer / lower index).
    """
    flat = jnp.concatenate([s.ravel().astype(jnp.float32) for s in scores])
    keep = keep_top(flat, keep_count(flat.size, sparsity))
    out, start = [], 0
    for s in scores:
        out.append(keep[start:start + s.size].reshape(s.shape))
        start += s.size
    return out
