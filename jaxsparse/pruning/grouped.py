"""Channel pruning of coupled groups: the same channels removed from every member.

Groups come from :func:`jaxsparse.channel_groups`. A group's channels are scored by the sum of
its kernels' filter norms; every kernel of the group and every per-channel parameter vector
applied to it (BatchNorm scale and bias, biases) gets the same mask, so a removed channel is
exactly zero where it is produced and the compiler pass can drop it from the residual stream.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxsparse.pruning.masks import channel_keep, channel_scores
from jaxsparse.pruning.selection import SkippedLayerWarning


def _resolve(path: str, leaves: dict[str, Any]) -> str | None:
    if path in leaves:
        return path
    if path.startswith("params/") and path[len("params/"):] in leaves:
        return path[len("params/"):]
    return None


def grouped_channel_masks(leaves: dict[str, Any], chosen: dict[str, Any], groups: Sequence,
                          sparsity, score_of: dict[str, Any], multiple: int = 1,
                          ) -> tuple[dict[str, jax.Array], set[str]]:
    """Masks for every group whose kernels are all selected.

    Args:
        leaves: ``{path: array}`` of the tree being pruned.
        chosen: the kernels selected by ``include``.
        groups: :class:`~jaxsparse.compiler.groups.ChannelGroup` objects.
        sparsity: fraction of each group's channels removed.
        score_of: ``{path: scores}`` overriding magnitude.
        multiple: round kept channel counts to this multiple.

    Returns:
        ``(masks by path, kernels handled)``; kernels of groups that are only partly selected
        are handled (left dense, with a :class:`SkippedLayerWarning`).
    """
    masks: dict[str, jax.Array] = {}
    handled: set[str] = set()
    for g in groups:
        kernels = [_resolve(p, leaves) for p in g.kernels]
        kernels = [k for k in kernels if k is not None]
        if not kernels:
            continue
        missing = [k for k in kernels if k not in chosen]
        if missing:
            if len(kernels) > len(missing):
                warnings.warn(f"channel group {kernels} left dense: {missing} not included "
                              f"(widen `include` to prune this residual stream).",
                              SkippedLayerWarning, stacklevel=4)
            handled.update(kernels)
            continue
        total = sum(channel_scores(jnp.abs(chosen[k]) if k not in score_of
                                   else jnp.asarray(score_of[k])) for k in kernels)
        keep = channel_keep(total, sparsity, multiple)
        for k in kernels:
            masks[k] = jnp.broadcast_to(keep, chosen[k].shape)
            handled.add(k)
        for v in g.vectors:
            path = _resolve(v, leaves)
            if path is not None and not path.startswith("batch_stats") and \
                    getattr(leaves[path], "shape", None) == keep.shape:
                masks[path] = keep
    return masks, handled
