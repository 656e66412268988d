"""Naming pytree leaves by their path, as ``"layer1/0/conv1/kernel"``."""

from __future__ import annotations

from typing import Any

import jax


def key_name(key: Any) -> str:
    """One path component as text (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: tuple) -> str:
    """A ``jax.tree_util`` key path as a ``/``-separated string."""
    return "/".join(key_name(k) for k in path)


def named_leaves(tree: Any, is_leaf=None) -> list[tuple[str, Any]]:
    """``[(path_string, leaf), ...]`` in the tree's flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(p), leaf) for p, leaf in flat]


def map_with_names(fn, tree: Any, *rest: Any, is_leaf=None) -> Any:
    """``jax.tree.map`` whose function also receives the leaf's path string first."""
    return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest,
                                            is_leaf=is_leaf)
