"""How a global sparsity target is spread over layers: uniform, ERK, a global threshold, or
speed-aware (only where the compiled kernel gains time).

All functions accept a traced ``sparsity`` so masks can be recomputed inside ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.pruning.masks import keep_count, keep_top

DISTRIBUTIONS = ("uniform", "erk", "global", "speed")


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


@dataclasses.dataclass(frozen=True)
class SpeedModel:
    """What ``distribution="speed"`` knows of the kernels the pruned model will run on.

    Attributes:
        max_density: weight shape -> the largest density at which that layer's sparse kernel
            is predicted faster than its dense op (0: never faster, the layer stays dense).
        target: the global sparsity the allocation is decided at (a schedule's final
            target); a smaller, possibly traced, sparsity scales every layer's share.
        source: where the predictions come from, for reports (e.g. a cost table's path).
    """

    max_density: Callable[[tuple[int, ...]], float]
    target: float
    source: str = ""


def speed_allocation(shapes: Sequence[tuple[int, ...]], target: float,
                     max_density: Callable[[tuple[int, ...]], float]) -> list[float]:
    """Per-layer sparsities that remove exactly ``target`` of all weights, only from layers
    whose kernel is predicted faster at the density they end with.

    Each layer ``l`` has a largest gaining density ``dmax_l``. The pruned layers get the
    densities ``min(dmax_l, D)`` for one common level ``D`` (water filling: as even as the
    kernels allow, since accuracy suffers most where one layer is pruned hardest); layers with
    ``dmax_l = 0`` stay dense. When ``target`` is too low for every gaining layer to get below
    its ``dmax_l``, the layers that need the most sparsity to gain (smallest ``dmax_l``; among
    equals the smallest layer) are kept dense one by one until the rest can.

    Raises:
        ValueError: when no such allocation exists (no layer gains, or the target is too low
            or too high for the layers that do).
    """
    target = float(target)
    sizes = np.array([math.prod(s) for s in shapes], np.float64)
    dmax = np.array([min(max(float(max_density(tuple(s))), 0.0), 1.0) for s in shapes])
    if target == 0.0 or not len(shapes):
        return [0.0] * len(shapes)
    keep = (1.0 - target) * sizes.sum()
    pruned = dmax > 0
    while True:
        budget = keep - sizes[~pruned].sum()  # What the pruned layers keep, together.
        if budget <= (dmax * sizes)[pruned].sum() + 1e-9 or not pruned.any():
            break
        # Keep dense the layer that needs the most sparsity to gain; among equals the
        # smallest (its dense weights cost least of the kept budget).
        idx = np.flatnonzero(pruned)
        pruned[idx[np.lexsort((sizes[idx], dmax[idx]))[0]]] = False
    if not pruned.any() or budget <= 0:
        gains = ", ".join(f"{tuple(s)}: {d:.2f}" for s, d in zip(shapes, dmax, strict=True))
        raise ValueError(f"distribution='speed': no allocation removes {target:.3f} of the "
                         f"weights with every pruned layer on a kernel predicted faster than "
                         f"dense (largest gaining density per layer: {gains}); change the "
                         f"sparsity or use distribution='uniform'.")
    lo, hi = 0.0, 1.0  # The common level D, by bisection: kept(D) is increasing.
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if (np.minimum(dmax, mid) * sizes)[pruned].sum() < budget:
            lo = mid
        else:
            hi = mid
    density = np.where(pruned, np.minimum(dmax, 0.5 * (lo + hi)), 1.0)
    return [float(1.0 - d) for d in density]


def speed(shapes: Sequence[tuple[int, ...]], sparsity, model: SpeedModel) -> list[jax.Array]:
    """Speed-aware sparsities: :func:`speed_allocation` at ``model.target``, each scaled by
    ``sparsity / model.target`` (so a gradual schedule ramps every layer in proportion and the
    global sparsity equals ``sparsity`` at every step)."""
    alloc = speed_allocation(shapes, model.target, model.max_density)
    scale = jnp.asarray(sparsity, jnp.float32) / max(model.target, 1e-12)
    return [jnp.asarray(a, jnp.float32) * scale for a in alloc]
