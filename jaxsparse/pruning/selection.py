"""Which parameters are pruned: the ``include`` rule and the shape checks behind it."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import jax

from jaxsparse.pruning.masks import incompatibility
from jaxsparse.pruning.patterns import Pattern
from jaxsparse.pruning.tree_paths import named_leaves

Include = str | Callable[[str, jax.Array], bool] | None

KERNEL_NAMES = ("kernel", "weight", "w")
# Layers that practice leaves dense: the network's input layer and its classifier.
DEFAULT_EXCLUDE = re.compile(r"(^|/)(stem|conv_init|conv0|input_conv|head|classifier|logits|fc)"
                             r"(/|$)")


def default_include(path: str, w: jax.Array) -> bool:
    """Practice's default: conv and dense kernels, not biases, BatchNorm, the first conv (a
    layer named ``stem``/``conv_init``/... or any conv reading <= 3 input channels) or the
    classifier (``head``/``classifier``/``fc``/``logits``)."""
    if getattr(w, "ndim", 0) not in (2, 4) or path.rsplit("/", 1)[-1] not in KERNEL_NAMES:
        return False
    if DEFAULT_EXCLUDE.search(path):
        return False
    return not (w.ndim == 4 and w.shape[2] <= 3)


class SkippedLayerWarning(UserWarning):
    """A layer the default rule selected was left dense because of its shape."""


def select(params: Any, pattern: Pattern, include: Include = None) -> dict[str, jax.Array]:
    """The leaves of ``params`` to prune, as ``{path: array}`` in flattening order.

    Args:
        params: any pytree of arrays.
        pattern: the pattern (shapes it cannot tile are checked).
        include: a regex searched in each leaf's path, a callable ``(path, array) -> bool``, or
            None for :func:`default_include`.

    Raises:
        ValueError: if ``include`` matches nothing, or if a layer it selects explicitly has a
            shape the pattern cannot tile. Layers selected by the default rule with such a shape
            are left dense and reported with a :class:`SkippedLayerWarning`.
    """
    leaves = [(p, x) for p, x in named_leaves(params) if hasattr(x, "shape")]
    if include is None or include == "":
        rule, explicit = default_include, False
    elif isinstance(include, str):
        try:
            regex = re.compile(include)
        except re.error as e:
            raise ValueError(f"include={include!r} is not a valid regex: {e}.") from None
        rule, explicit = (lambda p, x: regex.search(p) is not None), True
    elif callable(include):
        rule, explicit = include, True
    else:
        raise ValueError(f"include={include!r} is not valid; use a regex string, a callable "
                         f"(path, array) -> bool, or None for the default rule.")
    chosen = {p: x for p, x in leaves if rule(p, x)}
    if not chosen:
        examples = ", ".join(p for p, _ in leaves[:8])
        raise ValueError(f"include={include!r} matches no parameter; paths look like: "
                         f"{examples}{', ...' if len(leaves) > 8 else ''}.")
    selected = {}
    for p, x in chosen.items():
        why = incompatibility(tuple(x.shape), pattern)
        if why is None:
            selected[p] = x
        elif explicit:
            raise ValueError(f"{p}: cannot apply {pattern}: {why}. Exclude it with `include`.")
        else:
            warnings.warn(f"{p} left dense: {why}.", SkippedLayerWarning, stacklevel=3)
    if not selected:
        raise ValueError(f"no selected parameter can take pattern {pattern}; each was skipped "
                         f"for its shape.")
    return selected
