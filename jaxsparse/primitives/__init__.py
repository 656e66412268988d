"""Sparse primitives (``jax.extend.core.Primitive``) with AD, batching and lowerings."""

from jaxsparse.primitives.block_sparse_dot import (
    block_sparse_dot,
    block_sparse_dot_p,
    block_sparse_dot_reference,
    pack_block_ell,
    unpack_block_ell,
)
from jaxsparse.primitives.nm_dot import nm_dot, nm_dot_p, nm_dot_reference, pack_nm, unpack_nm

__all__ = [
    "block_sparse_dot",
    "block_sparse_dot_p",
    "block_sparse_dot_reference",
    "nm_dot",
    "nm_dot_p",
    "nm_dot_reference",
    "pack_block_ell",
    "pack_nm",
    "unpack_block_ell",
    "unpack_nm",
]
