"""Pallas kernel (TPU, Mosaic) for blocked-ELL ``x @ W`` that visits only the stored blocks.

Grid ``(row tiles of x, block columns of W, stored blocks)``: step ``(i, j, m)`` multiplies the
``rows[j, m]``-th ``bh``-wide slice of row tile ``i`` of ``x`` by stored block ``values[j, m]``
and accumulates into output tile ``(i, j)``. The block index is prefetched as a scalar
(``PrefetchScalarGridSpec``), so the pipeline's ``index_map`` fetches only the ``x`` slices that
stored blocks need — the Pallas TPU block-sparse technique. ``interpret=True`` runs the same
kernel on CPU; :func:`block_sparse_matmul_reference` is its oracle.

Mosaic tiles VMEM in (8, 128) (f32) / (16, 128) (bf16) units: a block's last two dims must be
multiples of those or span the whole array. The ``x`` slice is ``(block_m, bh)`` and the output
tile ``(block_m, bw)``, so the kernel takes blocks with ``bh`` and ``bw`` multiples of 128
(:func:`unsupported` says why others stay dense; NVIDIA GPUs use
:mod:`jaxsparse.kernels.gpu.block_sparse`, which has no such limit).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

LANES = 128  # Mosaic's lane tile: the last dim of every block.
SUBLANES = 16  # Rows per tile for 16-bit types (8 for 32-bit): row tiles are multiples of 16.


BLOCK_M = 128  # Default row tile of ``x`` (rows are padded up to a multiple).


def unsupported(bh: int, bw: int) -> str | None:
    """Why the TPU kernel cannot run ``bh x bw`` blocks (None when it can)."""
    if bh % LANES or bw % LANES:
        return (f"block {bh}x{bw}: the TPU Pallas kernel needs bh and bw multiples of {LANES} "
                f"(Mosaic's lane tile)")
    return None


def block_sparse_matmul_reference(x: jax.Array, values: jax.Array, rows: jax.Array) -> jax.Array:
    """Pure-jnp oracle: ``sum_m x[:, rows[j, m]] @ values[j, m]`` for every block column j
    (padding blocks have row -1 and zero values)."""
    b, k = x.shape
    cb, maxk, bh, bw = values.shape
    xg = jnp.take(x.reshape(b, k // bh, bh), jnp.maximum(rows, 0).reshape(-1),
                  axis=1).reshape(b, cb, maxk, bh)
    y = jnp.einsum("bjmh,jmhw->bjw", xg.astype(jnp.float32), values.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
    return y.reshape(b, cb * bw).astype(x.dtype)


def _kernel(rows_ref, x_ref, v_ref, o_ref, acc_ref):
    """One (row tile, block column, stored block) step; rows_ref is only used by index maps."""
    del rows_ref
    m = pl.program_id(2)

    @pl.when(m == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, acc_ref.dtype)

    acc_ref[...] += jnp.dot(x_ref[...], v_ref[0, 0], preferred_element_type=jnp.float32)

    @pl.when(m == pl.num_programs(2) - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_m", "interpret"))
def block_sparse_matmul(x: jax.Array, values: jax.Array, rows: jax.Array, *,
                        block_m: int = BLOCK_M, interpret: bool = False) -> jax.Array:
    """``x @ W`` for blocked-ELL ``(values, rows)`` with a Pallas kernel.

    Args:
        x: ``(B, K)``.
        values: ``(cout//bw, maxk, bh, bw)``.
        rows: ``(cout//bw, maxk)`` int32.
        block_m: rows of ``x`` per tile.
        interpret: run in the Pallas interpreter (CPU).

    Returns:
        ``(B, cout)`` in ``x.dtype``.

    Raises:
        ValueError: for blocks Mosaic cannot tile (see :func:`unsupported`), unless
            ``interpret``.
    """
    from jax.experimental.pallas import tpu as pltpu

    b, k = x.shape
    cb, maxk, bh, bw = values.shape
    why = None if interpret else unsupported(bh, bw)
    if why is not None:
        raise ValueError(f"block_sparse_matmul: {why}.")
    bm = min(block_m, max(SUBLANES, -(-b // SUBLANES) * SUBLANES))
    padded = -(-b // bm) * bm
    xp = jnp.pad(x, ((0, padded - b), (0, 0))) if padded != b else x
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=1,
        grid=(padded // bm, cb, maxk),
        in_specs=[
            pl.BlockSpec((bm, bh), lambda i, j, m, rows: (i, rows[j, m])),
            pl.BlockSpec((1, 1, bh, bw), lambda i, j, m, rows: (j, m, 0, 0)),
        ],
        out_specs=pl.BlockSpec((bm, bw), lambda i, j, m, rows: (i, j)),
        scratch_shapes=[pltpu.VMEM((bm, bw), jnp.float32)],
    )
    out = pl.pallas_call(
        _kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((padded, cb * bw), x.dtype),
        interpret=interpret,
    )(jnp.maximum(rows, 0).astype(jnp.int32), xp, values.astype(x.dtype))
    return out[:b]
