"""Masks for a whole parameter tree: ``prune``, ``apply_masks`` and ``measured_sparsity``.

A masks tree has the structure of the params tree with a bool array for every pruned leaf and
``None`` for every leaf left dense.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse.pruning import distributions
from jaxsparse.pruning.grouped import grouped_channel_masks
from jaxsparse.pruning.masks import check_sparsity, compute_mask
from jaxsparse.pruning.patterns import NM, Channel, Pattern, Unstructured, parse_pattern
from jaxsparse.pruning.selection import Include, select
from jaxsparse.pruning.tree_paths import map_with_names, named_leaves


def _is_none(x: Any) -> bool:
    return x is None


def map_masks(fn, masks: Any, *trees: Any) -> Any:
    """``jax.tree.map`` over a masks tree (``None`` leaves included) and trees shaped like it:
    ``fn(mask_or_None, *leaves)``."""
    return jax.tree.map(fn, masks, *trees, is_leaf=_is_none)


def named_masks(masks: Any) -> list[tuple[str, Any]]:
    """``[(path, mask), ...]`` of the masked leaves of a masks tree (``None`` leaves skipped)."""
    return [(p, m) for p, m in named_leaves(masks, is_leaf=_is_none) if m is not None]


def prune(params: Any, pattern: str | Pattern, sparsity=None, distribution: str = "uniform",
          include: Include = None, scores: Any = None, *, block_score: str = "l2",
          groups: Sequence | None = None, channel_multiple: int = 1,
          speed_model: distributions.SpeedModel | None = None) -> Any:
    """Computes pruning masks for every selected weight of ``params``.

    Args:
        params: any pytree of arrays (e.g. ``variables["params"]`` of a Flax model).
        pattern: ``"2:4"``, ``"block:16x16"``, ``"channel"``, ``"unstructured"`` or a pattern.
        sparsity: target fraction removed, in [0, 1); None for N:M (fixed at 1 - N/M). May be
            traced under ``jax.jit``.
        distribution: ``"uniform"`` (the same sparsity per layer), ``"erk"`` (Erdos-Renyi-Kernel),
            ``"global"`` (one score threshold across layers; unstructured only) or ``"speed"``
            (only layers whose kernel gains time are pruned; block and unstructured patterns;
            needs ``speed_model``). Ignored by N:M.
        include: a regex over parameter paths, a callable ``(path, array) -> bool``, or None for
            the default (conv and dense kernels except the first conv and the classifier).
        scores: a pytree like ``params`` of importance scores (default ``|w|``); see
            :mod:`jaxsparse.pruning.scores`.
        block_score: how block scores combine (``"l2"``, ``"l1"``, ``"mean"``).
        groups: channel pattern only: coupled groups from :func:`jaxsparse.channel_groups`;
            each group's kernels and per-channel vectors (BatchNorm scale/bias) lose the same
            channels, scored by the group's summed filter norms.
        channel_multiple: channel pattern only: round kept channel counts to this multiple
            (8 suits GPUs, 128 TPUs).
        speed_model: ``distribution="speed"`` only: which layers gain from their kernel (see
            :class:`~jaxsparse.pruning.distributions.SpeedModel`; training builds it from the
            compiler's measured cost table).

    Returns:
        A masks tree: bool arrays for pruned leaves, ``None`` for the others.

    Raises:
        ValueError: for a bad pattern, sparsity, distribution or include, or incompatible shapes.
    """
    pattern = parse_pattern(pattern)
    check_sparsity(pattern, sparsity)
    if distribution not in distributions.DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r} is not valid; use one of "
                         f"{distributions.DISTRIBUTIONS}.")
    if distribution == "global" and not isinstance(pattern, Unstructured | NM):
        raise ValueError(f"distribution='global' ranks individual weights and so needs the "
                         f"unstructured pattern; use 'uniform' or 'erk' with {pattern}.")
    if distribution == "speed" and (speed_model is None or isinstance(pattern, Channel | NM)):
        raise ValueError(f"distribution='speed' needs a speed_model and a block or "
                         f"unstructured pattern; got {pattern} with speed_model="
                         f"{'None' if speed_model is None else 'given'}.")
    if (groups is not None or channel_multiple != 1) and not isinstance(pattern, Channel):
        raise ValueError(f"groups and channel_multiple apply to the channel pattern, not "
                         f"{pattern}.")
    if channel_multiple < 1:
        raise ValueError(f"channel_multiple={channel_multiple} must be a positive integer.")
    if groups is not None and distribution != "uniform":
        raise ValueError(f"groups need distribution='uniform'; got {distribution!r}.")
    chosen = select(params, pattern, include)
    score_of = dict(named_leaves(scores)) if scores is not None else {}
    missing = [p for p in chosen if scores is not None and p not in score_of]
    if missing:
        raise ValueError(f"scores has no entry for {missing[0]}; give scores with the structure "
                         f"of params.")
    grouped: dict[str, Any] = {}
    if groups is not None:
        grouped, handled = grouped_channel_masks(dict(named_leaves(params)), chosen, groups,
                                                 sparsity, score_of, channel_multiple)
        chosen = {p: w for p, w in chosen.items() if p not in handled}
    paths = list(chosen)
    layer_scores = [score_of.get(p) for p in paths]
    if isinstance(pattern, NM):
        masks = [compute_mask(chosen[p], pattern, None, s, name=p)
                 for p, s in zip(paths, layer_scores, strict=True)]
    elif distribution == "global":
        full = [jnp.abs(chosen[p]) if s is None else s for p, s in zip(paths, layer_scores,
                                                                       strict=True)]
        masks = distributions.global_ranks(full, sparsity)
    else:
        shapes = [tuple(chosen[p].shape) for p in paths]
        if distribution == "speed":
            per_layer = distributions.speed(shapes, sparsity, speed_model)
        else:
            spread = distributions.erk if distribution == "erk" else distributions.uniform
            per_layer = spread(shapes, sparsity)
        masks = [compute_mask(chosen[p], pattern, s_l, s, block_score=block_score, name=p,
                              channel_multiple=channel_multiple)
                 for p, s_l, s in zip(paths, per_layer, layer_scores, strict=True)]
    by_path = {**dict(zip(paths, masks, strict=True)), **grouped}
    return map_with_names(lambda p, x: by_path.get(p), params)


def apply_masks(params: Any, masks: Any) -> Any:
    """Zeroes the pruned weights: ``where(mask, w, 0)`` for masked leaves, others unchanged."""
    return map_masks(lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
                     masks, params)


def measured_sparsity(tree: Any) -> float:
    """Fraction of zeros.

    For a masks tree (bool leaves, ``None`` for dense ones): the fraction of False over the
    masked leaves. For a params tree: the fraction of exact zeros over its kernels (ndim >= 2).
    """
    leaves = [x for x in jax.tree.leaves(tree) if hasattr(x, "dtype")]
    if not leaves:
        return 0.0
    if all(x.dtype == jnp.bool_ for x in leaves):
        total = sum(x.size for x in leaves)
        return float(sum(int(np.sum(~np.asarray(x))) for x in leaves) / total)
    kernels = [x for x in leaves if x.ndim >= 2] or leaves
    total = sum(x.size for x in kernels)
    return float(sum(int(np.sum(np.asarray(x) == 0)) for x in kernels) / total)


def layer_densities(masks: Any) -> dict[str, float]:
    """``{path: fraction kept}`` of every masked leaf."""
    return {p: float(np.mean(np.asarray(m))) for p, m in named_masks(masks)}


def masks_from_zeros(params: Any, min_ndim: int = 2) -> Any:
    """Masks read back from a pruned model: ``w != 0`` for every weight (ndim >= ``min_ndim``)
    that holds at least one zero, ``None`` elsewhere. Use it to compile a checkpoint that was
    saved with its pruned weights set to zero."""
    return jax.tree.map(lambda w: (np.asarray(w) != 0) if np.ndim(w) >= min_ndim and
                        np.any(np.asarray(w) == 0) else None, params)
