"""Pallas kernel on Mosaic GPU (Hopper: TMA and wgmma) for blocked-ELL ``x @ W``.

The Triton backend of :mod:`jaxsparse.kernels.gpu.block_sparse` is deprecated in jax 0.11;
Mosaic GPU is the supported Pallas GPU backend. This kernel keeps the same organisation around
the output: program ``(i, j)`` of the grid ``(row tiles of x, block columns of W)`` holds an
f32 ``(block_m, bw)`` accumulator (``plgpu.ACC``) and runs a software pipeline
(``plgpu.emit_pipeline``, ``max_concurrent_steps`` stages of TMA copies in flight) over the
``maxk`` stored blocks of column ``j``: step ``s`` copies the ``(block_m, bh)`` panel of ``x``
at the block's row ``rows[j, s]`` (read from global memory in the index map) and the block
itself into shared memory, and multiplies them on the tensor cores (``plgpu.wgmma``). The tile
is written back through shared memory with one TMA store. Padding blocks (row -1) have zero
values and read panel 0; a weight of one stored block per column gets a second, zero one (the
pipeline keeps a step's buffers until the next step's multiply is issued).

``interpret=True`` runs the kernel in Mosaic GPU's interpreter on the CPU (it simulates shared
memory, barriers and the TMA unit); :func:`block_sparse_matmul_reference` is the oracle.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxsparse.kernels.tpu.block_sparse import block_sparse_matmul_reference

BLOCKS = (64, 128)  # Block sides the kernel runs: wgmma tiles of 64 rows, 128-byte swizzle.
BLOCK_M = 128  # Rows of x per program (two wgmma row tiles).

__all__ = ["block_sparse_matmul_mosaic", "block_sparse_matmul_reference", "unsupported"]


def unsupported(bh: int, bw: int, dtype=jnp.bfloat16) -> str | None:
    """Why this kernel cannot run ``bh x bw`` blocks in ``dtype`` (None when it can)."""
    if bh not in BLOCKS or bw not in BLOCKS:
        sides = " or ".join(map(str, BLOCKS))
        return f"block {bh}x{bw}: the Mosaic GPU kernel runs blocks of {sides} on each side"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"dtype {jnp.dtype(dtype).name} (the Mosaic GPU kernel runs bf16 or f16)"
    return None


def _interpret_params(interpret: bool):
    if not interpret:
        return None
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # No public name.

    return InterpretGPUParams()


@functools.partial(jax.jit, static_argnames=("block_m", "max_concurrent_steps", "out_dtype",
                                             "interpret"))
def block_sparse_matmul_mosaic(x: jax.Array, values: jax.Array, rows: jax.Array, *,
                               block_m: int = BLOCK_M, max_concurrent_steps: int = 2,
                               out_dtype=None, interpret: bool = False) -> jax.Array:
    """``x @ W`` for blocked-ELL ``(values, rows)`` with the Mosaic GPU Pallas kernel.

    Args:
        x: ``(B, K)`` in bf16 or f16.
        values: ``(cout//bw, maxk, bh, bw)``; padding blocks must be zero.
        rows: ``(cout//bw, maxk)`` int32 (-1: padding).
        block_m: rows of ``x`` per program (a multiple of 64; rows are padded up).
        max_concurrent_steps: pipeline stages (TMA copies in flight).
        out_dtype: the output's dtype (default ``x.dtype``; f32 keeps the accumulator).
        interpret: run in Mosaic GPU's interpreter (CPU, tests).

    Returns:
        ``(B, cout)`` in ``out_dtype``.

    Raises:
        ValueError: for blocks, a dtype or a ``block_m`` the kernel does not support.
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu

    b, k = x.shape
    cb, maxk, bh, bw = values.shape
    why = unsupported(bh, bw, x.dtype)
    if why is not None:
        raise ValueError(f"block_sparse_matmul_mosaic: {why}.")
    if block_m % 64:
        raise ValueError(f"block_sparse_matmul_mosaic: block_m={block_m} is not a multiple of "
                         f"64 (wgmma row tiles).")
    out_dtype = x.dtype if out_dtype is None else jnp.dtype(out_dtype)
    if maxk == 0:  # No stored block at all.
        return jnp.zeros((b, cb * bw), out_dtype)
    padded = -(-b // block_m) * block_m
    xp = jnp.pad(x, ((0, padded - b), (0, 0))) if padded != b else x
    if maxk < 2:  # The pipeline keeps one step's buffers while the next loads: pad to two.
        values = jnp.pad(values, ((0, 0), (0, 2 - maxk), (0, 0), (0, 0)))
        rows = jnp.pad(rows, ((0, 0), (0, 2 - maxk)), constant_values=-1)
        maxk = 2
    v = values.astype(x.dtype).reshape(cb, maxk * bh, bw)
    steps = max(2, min(max_concurrent_steps, maxk))

    def body(rows_gmem, x_gmem, v_gmem, o_gmem):
        i, j = jax.lax.axis_index("m"), jax.lax.axis_index("n")

        def acc_scope(acc_ref):
            plgpu.emit_pipeline(
                lambda _, x_smem, v_smem: plgpu.wgmma(acc_ref, x_smem, v_smem),
                grid=(maxk,),
                in_specs=[plgpu.BlockSpec((block_m, bh), lambda s: (i, rows_gmem[j, s]),
                                          delay_release=1),
                          plgpu.BlockSpec((bh, bw), lambda s: (s, 0), delay_release=1)],
                max_concurrent_steps=steps,
            )(x_gmem, v_gmem.at[j])
            return acc_ref[...]

        acc = pl.run_scoped(acc_scope, plgpu.ACC((block_m, bw)))

        @functools.partial(pl.run_scoped, o_smem=plgpu.SMEM((block_m, bw), dtype=o_gmem.dtype))
        def store(o_smem):
            o_smem[...] = acc.astype(o_smem.dtype)
            plgpu.commit_smem()
            plgpu.copy_smem_to_gmem(
                o_smem, o_gmem.at[pl.ds(i * block_m, block_m), pl.ds(j * bw, bw)])
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)

    kernel = plgpu.kernel(
        body, out_type=jax.ShapeDtypeStruct((padded, cb * bw), out_dtype),
        grid=(padded // block_m, cb), grid_names=("m", "n"),
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        interpret=_interpret_params(interpret))
    out = kernel(jnp.maximum(rows, 0).astype(jnp.int32), xp, v)
    return out[:b] if padded != b else out
