"""Pruning as optax transformations (exposed as ``jaxsparse.transforms``).

``masked_pruning`` wraps any optimizer: it keeps the masks in its state, recomputes them at the
schedule's update steps, masks the gradients fed to the inner optimizer, and returns updates
that leave every pruned weight exactly zero after ``optax.apply_updates``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxsparse.pruning.patterns import NM, Pattern, parse_pattern
from jaxsparse.pruning.prune import apply_masks, map_masks, prune
from jaxsparse.pruning.schedules import Schedule
from jaxsparse.pruning.selection import Include
from jaxsparse.pruning.srste import sr_ste

Scorer = Callable[[Any], Any]


class MaskedPruningState(NamedTuple):
    """State of :func:`masked_pruning`: step count, current masks, inner optimizer state."""

    count: jax.Array
    masks: Any
    inner_state: Any


def initial_masks(params: Any, pattern: Pattern, include: Include = None,
                  groups: Any = None) -> Any:
    """All-True masks with the structure ``prune`` gives (``None`` for dense leaves)."""
    sparsity = None if isinstance(pattern, NM) else 0.0
    masks = prune(params, pattern, sparsity, include=include, groups=groups)
    return map_masks(lambda m: None if m is None else jnp.ones(m.shape, bool), masks)


def masked_pruning(inner: optax.GradientTransformation, pattern: str | Pattern,
                   schedule: Schedule, *, sparsity: float | None = None,
                   distribution: str = "uniform", include: Include = None,
                   scorer: Scorer | None = None,
                   groups: Any = None,
                   speed_model: Any = None) -> optax.GradientTransformation:
    """Wraps ``inner`` so that training prunes on ``schedule`` and pruned weights stay zero.

    Args:
        inner: any optax optimizer (SGD, momentum, AdamW, chains with weight decay...).
        pattern: the sparsity pattern.
        schedule: when to recompute masks and the target sparsity then (see
            :mod:`jaxsparse.pruning.schedules`).
        sparsity: overrides the schedule's target sparsity at every update (used with
            ``one_shot(step)`` whose sparsity was left None). Ignored by N:M patterns.
        distribution: ``"uniform"``, ``"erk"``, ``"global"`` or ``"speed"`` (see
            :func:`prune`).
        include: which parameters to prune (see :func:`prune`).
        scorer: ``params -> scores``; default magnitude.
        groups: channel pattern: coupled groups from :func:`jaxsparse.channel_groups`, pruned
            together with their BatchNorm vectors (see :func:`prune`).
        speed_model: ``distribution="speed"``: which layers gain from their kernel (see
            :func:`prune`).

    Returns:
        An ``optax.GradientTransformation`` whose ``update`` needs ``params``. Its state is a
        :class:`MaskedPruningState`; ``state.masks`` holds the current masks.
    """
    pattern = parse_pattern(pattern)
    is_nm = isinstance(pattern, NM)

    def target(count):
        if is_nm:
            return None
        return jnp.asarray(sparsity, jnp.float32) if sparsity is not None else schedule(count)

    def init(params):
        return MaskedPruningState(jnp.zeros((), jnp.int32),
                                  initial_masks(params, pattern, include, groups),
                                  inner.init(params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("masked_pruning needs params: call tx.update(grads, state, params).")
        grads = apply_masks(updates, state.masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)
        candidate = optax.apply_updates(params, inner_updates)

        def recompute(_):
            scores = scorer(candidate) if scorer is not None else None
            return prune(candidate, pattern, target(state.count), distribution, include, scores,
                         groups=groups, speed_model=speed_model)

        masks = jax.lax.cond(schedule.should_update(state.count), recompute,
                             lambda _: state.masks, None)
        final = map_masks(lambda m, u, p: u if m is None else jnp.where(m, u, -p),
                          masks, inner_updates, params)
        return final, MaskedPruningState(state.count + 1, masks, inner_state)

    return optax.GradientTransformationExtraArgs(init, update)


__all__ = ["MaskedPruningState", "initial_masks", "masked_pruning", "sr_ste"]
