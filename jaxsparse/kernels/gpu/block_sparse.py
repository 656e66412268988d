"""Pallas kernel (Triton backend, NVIDIA GPUs) for blocked-ELL ``x @ W``, without scalar prefetch.

Neither Pallas GPU backend supports scalar prefetch, so the TPU kernel
(:mod:`jaxsparse.kernels.tpu.block_sparse`) cannot lower for CUDA. This one is organised around
the output instead: grid ``(row tiles of x, block columns of W)``; program ``(i, j)`` keeps an
f32 ``(block_m, bw)`` accumulator in registers and loops over the ``maxk`` stored blocks of
column ``j``, reading each block's row index from ``rows`` (a scalar load), slicing the matching
``bh``-wide panel of its ``x`` row tile with ``pl.ds`` and multiplying it by the block on the
tensor cores. Padding blocks (row -1) have zero values and read panel 0. ``interpret=True`` runs
the same kernel on CPU; :func:`block_sparse_matmul_reference` is the oracle.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxsparse.kernels.tpu.block_sparse import block_sparse_matmul_reference

MIN_BLOCK = 16  # Triton's tl.dot needs every operand dimension >= 16.

__all__ = ["block_sparse_matmul_gpu", "block_sparse_matmul_reference", "unsupported"]


def unsupported(bh: int, bw: int) -> str | None:
    """Why this kernel cannot run ``bh x bw`` blocks (None when it can)."""
    if bh < MIN_BLOCK or bw < MIN_BLOCK or bh & (bh - 1) or bw & (bw - 1):
        return (f"block {bh}x{bw}: the GPU Pallas kernel needs power-of-two blocks of at least "
                f"{MIN_BLOCK}x{MIN_BLOCK} (tensor-core tiles)")
    return None


def _kernel(rows_ref, x_ref, v_ref, o_ref, *, maxk: int, bh: int):
    j = pl.program_id(1)

    def step(m, acc):
        start = pl.multiple_of(rows_ref[j, m] * bh, bh)
        panel = x_ref[:, pl.ds(start, bh)]
        return acc + jnp.dot(panel, v_ref[j, m], preferred_element_type=jnp.float32)

    acc = lax.fori_loop(0, maxk, step, jnp.zeros(o_ref.shape, jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("block_m", "num_warps", "num_stages",
                                             "interpret"))
def block_sparse_matmul_gpu(x: jax.Array, values: jax.Array, rows: jax.Array, *,
                            block_m: int = 64, num_warps: int = 4, num_stages: int = 3,
                            interpret: bool = False) -> jax.Array:
    """``x @ W`` for blocked-ELL ``(values, rows)`` with the Triton-backend Pallas kernel.

    Args:
        x: ``(B, K)``.
        values: ``(cout//bw, maxk, bh, bw)``; padding blocks must be zero.
        rows: ``(cout//bw, maxk)`` int32 (-1: padding).
        block_m: rows of ``x`` per program (a power of two; rows are padded up).
        num_warps: Triton warps per program.
        num_stages: Triton software-pipelining depth.
        interpret: run in the Pallas interpreter (CPU, tests).

    Returns:
        ``(B, cout)`` in ``x.dtype``.

    Raises:
        ValueError: for blocks the kernel does not support (see :func:`unsupported`).
    """
    from jax.experimental.pallas import triton as plgpu

    b, k = x.shape
    cb, maxk, bh, bw = values.shape
    why = unsupported(bh, bw)
    if why is not None:
        raise ValueError(f"block_sparse_matmul_gpu: {why}.")
    bm = min(block_m, max(MIN_BLOCK, pl.next_power_of_2(b)))
    padded = -(-b // bm) * bm
    xp = jnp.pad(x, ((0, padded - b), (0, 0))) if padded != b else x
    out = pl.pallas_call(
        functools.partial(_kernel, maxk=maxk, bh=bh),
        grid=(padded // bm, cb),
        in_specs=[pl.no_block_spec, pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
                  pl.no_block_spec],
        out_specs=pl.BlockSpec((bm, bw), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((padded, cb * bw), x.dtype),
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
    )(jnp.maximum(rows, 0).astype(jnp.int32), xp, values.astype(x.dtype))
    return out[:b] if padded != b else out
