"""N:M inside the channels that channel pruning keeps: one model, both savings.

Channel pruning removes whole filters; the pass slices them away, so each layer's kept weight
has fewer input channels, and which ones depends on the layer that produces its input. An N:M
mask computed on the full weight groups M consecutive *original* input channels, which after
slicing no longer sit together, so the kept weight is not N:M any more. :func:`nm_on_kept_channels`
computes the N:M mask in each layer's kept coordinates instead (the pass tells which channels are
kept), so the compiled model runs channel slicing and N:M kernels together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxsparse.compiler.api import align_masks, sparsify
from jaxsparse.compiler.packed import is_rewritten
from jaxsparse.pruning.masks import compute_mask
from jaxsparse.pruning.patterns import NM, parse_pattern
from jaxsparse.pruning.tree_paths import named_leaves, path_str


def nm_on_kept_channels(apply_fn: Callable[..., Any], variables: Any, masks: Any,
                        *example_args: Any, pattern: str | NM = "2:4") -> Any:
    """Adds an N:M mask (by magnitude) inside the kept channels of every channel-masked layer.

    Args:
        apply_fn: the model function, as for :func:`jaxsparse.sparsify`.
        variables: its variables.
        masks: channel masks for ``variables`` or ``variables["params"]`` (from
            :func:`jaxsparse.prune` with the ``channel`` pattern and channel groups).
        *example_args: example inputs, as for :func:`jaxsparse.sparsify`.
        pattern: the N:M pattern to add.

    Returns:
        A masks tree shaped like ``variables`` (``None`` for unmasked leaves): each masked layer
        whose kept input channels divide by M keeps N of every M kept input channels per tap
        and output; other layers keep their channel mask.

    Raises:
        ValueError: for a pattern that is not N:M, or masks that do not fit ``variables``.
    """
    nm = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    if not isinstance(nm, NM):
        raise ValueError(f"pattern={pattern!r} is not an N:M pattern such as '2:4'.")
    out = align_masks(variables, masks)
    sliced = sparsify(apply_fn, variables, masks, *example_args, policy="dense")
    leaves = dict(named_leaves(variables))
    for path, weight in named_leaves(sliced.variables["model"], is_leaf=is_rewritten):
        if not is_rewritten(weight) or path not in out:
            continue
        cin, cout = weight.layout.channels()
        if len(cin) % nm.m:
            continue
        kept = np.asarray(leaves[path], np.float32)[..., cin[:, None], cout[None, :]]
        out[path] = out[path] & np.asarray(weight.layout.scatter(compute_mask(kept, nm)))
    flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
    return jax.tree.unflatten(treedef, [out.get(path_str(p)) for p, _ in flat])
