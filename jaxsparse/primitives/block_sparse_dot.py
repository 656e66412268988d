"""``block_sparse_dot``: ``x @ W`` for a block-sparse weight in blocked-ELL layout.

Layout: ``W`` of shape ``(K, cout)`` is tiled in ``bh x bw`` blocks. For every block column
``j`` (``cout // bw`` of them) the same static number ``maxk`` of blocks is stored:
``values (cout//bw, maxk, bh, bw)`` and ``rows (cout//bw, maxk) int32`` (each block's row-block
index). Columns with fewer stored blocks are padded with zero blocks whose row index is -1, so
the number of stored blocks (and every shape) is static; padding never receives gradient.

Lowerings: ``impl="xla"`` (every platform) gathers only the stored row blocks of ``x`` and runs one
batched GEMM over block columns, so its work is proportional to the stored blocks;
``impl="pallas"`` runs :mod:`jaxsparse.kernels.block_sparse` (GPU/TPU, or interpret mode on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jaxsparse.primitives.rules import bilinear_jvp, rows_batcher

block_sparse_dot_p = Primitive("block_sparse_dot")
IMPLS = ("xla", "pallas", "pallas_interpret")


def pack_block_ell(w: np.ndarray, mask: np.ndarray, bh: int, bw: int,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Packs a ``(K, cout)`` weight whose ``mask`` is constant on ``bh x bw`` blocks.

    Returns:
        ``(values (cout//bw, maxk, bh, bw), rows (cout//bw, maxk) int32)`` with ``maxk`` the most
        blocks any column keeps (at least 1).
    """
    w, mask = np.asarray(w), np.asarray(mask, bool)
    k, cout = w.shape
    if k % bh or cout % bw:
        raise ValueError(f"block pack: ({k}, {cout}) is not tiled by {bh}x{bw} blocks.")
    kb, cb = k // bh, cout // bw
    blocks = w.reshape(kb, bh, cb, bw).transpose(2, 0, 1, 3)  # (cb, kb, bh, bw)
    keep = mask.reshape(kb, bh, cb, bw).any(axis=(1, 3)).T  # (cb, kb)
    maxk = max(1, int(keep.sum(axis=1).max(initial=0)))
    values = np.zeros((cb, maxk, bh, bw), w.dtype)
    rows = np.full((cb, maxk), -1, np.int32)
    bmask = mask.reshape(kb, bh, cb, bw).transpose(2, 0, 1, 3)
    for j in range(cb):
        idx = np.flatnonzero(keep[j])
        rows[j, :len(idx)] = idx
        values[j, :len(idx)] = np.where(bmask[j, idx], blocks[j, idx], 0)
    return values, rows


def unpack_block_ell(values: jax.Array, rows: jax.Array, k: int) -> jax.Array:
    """The dense ``(K, cout)`` weight of a blocked-ELL pair (padding blocks add zeros)."""
    cb, maxk, bh, bw = values.shape
    onehot = (rows[:, :, None] == jnp.arange(k // bh)[None, None, :]).astype(values.dtype)
    dense = jnp.einsum("jmr,jmhw->rhjw", onehot, values, precision=jax.lax.Precision.HIGHEST)
    return dense.reshape(k, cb * bw)


def block_sparse_dot_reference(x: jax.Array, values: jax.Array, rows: jax.Array) -> jax.Array:
    """Pure-jnp oracle: densify, then ``x @ W``."""
    w = unpack_block_ell(values, rows, x.shape[-1])
    return jnp.matmul(x, w.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)


def block_sparse_dot_xla(x: jax.Array, values: jax.Array, rows: jax.Array) -> jax.Array:
    """Gathers the stored row blocks of ``x`` and runs one batched GEMM per block column."""
    b, k = x.shape
    cb, maxk, bh, bw = values.shape
    xb = x.reshape(b, k // bh, bh)
    xg = jnp.take(xb, jnp.maximum(rows, 0).reshape(-1), axis=1).reshape(b, cb, maxk * bh)
    y = jnp.einsum("bjk,jkw->bjw", xg, values.reshape(cb, maxk * bh, bw).astype(x.dtype),
                   preferred_element_type=jnp.float32 if x.dtype == jnp.float32 else None)
    return y.reshape(b, cb * bw).astype(x.dtype)


def block_sparse_dot(x: jax.Array, values: jax.Array, rows: jax.Array, *,
                     impl: str = "xla") -> jax.Array:
    """``x @ W`` for a blocked-ELL weight ``W`` of shape ``(x.shape[-1], cout)``.

    Args:
        x: ``(..., K)`` activations.
        values: ``(cout//bw, maxk, bh, bw)`` stored blocks.
        rows: ``(cout//bw, maxk)`` int32 row-block index of each stored block.
        impl: ``"xla"``, ``"pallas"`` or ``"pallas_interpret"`` (Pallas on CPU, for tests).

    Returns:
        ``(..., cout)``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not valid; use one of {IMPLS}.")
    lead = x.shape[:-1]
    y = block_sparse_dot_p.bind(x.reshape(-1, x.shape[-1]), values, rows, impl=impl)
    return y.reshape(*lead, values.shape[0] * values.shape[-1])


def _abstract_eval(x, values, rows, *, impl):
    if x.ndim != 2 or values.ndim != 4 or rows.shape != values.shape[:2]:
        raise ValueError(f"block_sparse_dot: need x (B, K), values (cb, maxk, bh, bw), rows "
                         f"(cb, maxk); got {x.shape}, {values.shape}, {rows.shape}.")
    if x.shape[1] % values.shape[2]:
        raise ValueError(f"block_sparse_dot: K={x.shape[1]} not divisible by bh="
                         f"{values.shape[2]}.")
    return jax.core.ShapedArray((x.shape[0], values.shape[0] * values.shape[3]), x.dtype)


def _impl(x, values, rows, *, impl):
    values = jnp.where((rows >= 0)[:, :, None, None], values, 0)  # Padding never contributes.
    if impl == "xla":
        return block_sparse_dot_xla(x, values, rows)
    from jaxsparse.kernels.block_sparse import block_sparse_matmul

    return block_sparse_matmul(x, values, rows, interpret=impl == "pallas_interpret")


def _transpose(ct, x, values, rows, *, impl):
    if type(ct) is ad.Zero:
        return [None, None, None]
    if ad.is_undefined_primal(x):
        k = x.aval.shape[-1]
        cb, maxk, bh, bw = values.shape
        # ct_x[:, row block r] += ct[:, col block j] @ values[j, m].T for each stored (j, m).
        ctb = ct.reshape(ct.shape[0], cb, bw)
        contrib = jnp.einsum("bjw,jmhw->bjmh", ctb, values.astype(ct.dtype),
                             precision=jax.lax.Precision.HIGHEST)
        out = jnp.zeros((ct.shape[0], k // bh, bh), ct.dtype)
        contrib = jnp.where((rows >= 0)[None, :, :, None], contrib, 0)
        out = out.at[:, jnp.maximum(rows, 0).reshape(-1)].add(
            contrib.reshape(ct.shape[0], cb * maxk, bh))
        return [out.reshape(ct.shape[0], k), None, None]
    cb, maxk, bh, bw = values.aval.shape
    b, k = x.shape
    xg = jnp.take(x.reshape(b, k // bh, bh), jnp.maximum(rows, 0).reshape(-1),
                  axis=1).reshape(b, cb, maxk, bh)
    dv = jnp.einsum("bjmh,bjw->jmhw", xg, ct.reshape(b, cb, bw),
                    precision=jax.lax.Precision.HIGHEST)
    dv = jnp.where((rows >= 0)[:, :, None, None], dv, 0)  # Padding blocks stay zero.
    return [None, dv.astype(values.aval.dtype), None]


block_sparse_dot_p.def_impl(_impl)
block_sparse_dot_p.def_abstract_eval(_abstract_eval)
ad.primitive_jvps[block_sparse_dot_p] = bilinear_jvp(block_sparse_dot_p)
ad.primitive_transposes[block_sparse_dot_p] = _transpose
batching.primitive_batchers[block_sparse_dot_p] = rows_batcher(
    block_sparse_dot_p, lambda x, v, r, impl: block_sparse_dot_reference(x, v, r))
mlir.register_lowering(block_sparse_dot_p, mlir.lower_fun(_impl, multiple_results=False))
