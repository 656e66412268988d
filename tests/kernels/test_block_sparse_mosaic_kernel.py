"""The Mosaic GPU block-sparse kernel (Hopper) in Mosaic GPU's interpreter on the CPU, against
the masked dense product, and lowered for ``cuda``; on a GPU, tests/gpu runs it compiled.

The kernel multiplies in bf16 on the tensor cores: with small integer inputs every product and
sum is exact, so the f32-output case is checked for equality; random bf16 inputs are checked to
bf16's tolerance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse.compiler.aot import cuda_target
from jaxsparse.kernels.gpu.block_sparse_mosaic import (
    block_sparse_matmul_mosaic,
    block_sparse_matmul_reference,
    unsupported,
)
from jaxsparse.primitives import pack_block_ell


def problem(b, kb, nb, batch, sparsity, seed, integer=False):
    rng = np.random.default_rng(seed)
    shape = (kb * b, nb * b)
    w = rng.integers(-2, 3, shape) if integer else rng.standard_normal(shape)
    x = rng.integers(-2, 3, (batch, kb * b)) if integer else rng.standard_normal((batch, kb * b))
    w, x = w.astype(np.float32), x.astype(np.float32)
    mask = np.asarray(js.compute_mask(w + 1e-3 * rng.random(shape), f"block:{b}x{b}", sparsity))
    values, rows = pack_block_ell(w, mask, b, b)
    return jnp.asarray(x, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16), rows, x @ (w * mask)


@pytest.mark.parametrize("b,kb,nb,batch,sparsity", [(64, 3, 2, 200, 0.5), (128, 2, 2, 128, 0.5),
                                                    (64, 4, 1, 70, 0.75)])
def test_mosaic_kernel_equals_masked_dense_exactly_on_integers(b, kb, nb, batch, sparsity):
    x, values, rows, dense = problem(b, kb, nb, batch, sparsity, seed=b + batch, integer=True)
    out = block_sparse_matmul_mosaic(x, values, rows, out_dtype=jnp.float32, interpret=True)
    np.testing.assert_array_equal(np.asarray(out), dense)


def test_mosaic_kernel_skips_padding_blocks_and_single_block_columns():
    rng = np.random.default_rng(3)
    w = rng.integers(-2, 3, (256, 192)).astype(np.float32)
    x = rng.integers(-2, 3, (64, 256)).astype(np.float32)
    keep = np.zeros((4, 3), bool)
    keep[[0, 1, 3], 0] = keep[2, 1] = keep[[1, 2], 2] = True  # 3, 1 and 2 blocks per column.
    mask = np.kron(keep, np.ones((64, 64), bool))
    values, rows = pack_block_ell(w, mask, 64, 64)
    assert (np.asarray(rows) < 0).sum() == 3
    args = jnp.asarray(x, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16)
    out = block_sparse_matmul_mosaic(*args, rows, out_dtype=jnp.float32, interpret=True)
    np.testing.assert_array_equal(np.asarray(out), x @ (w * mask))
    one = np.kron(np.eye(4, 3, dtype=bool), np.ones((64, 64), bool))  # One block per column.
    values, rows = pack_block_ell(w, one, 64, 64)
    out = block_sparse_matmul_mosaic(args[0], jnp.asarray(values, jnp.bfloat16), rows,
                                     out_dtype=jnp.float32, interpret=True)
    np.testing.assert_array_equal(np.asarray(out), x @ (w * one))


def test_mosaic_kernel_bf16():
    x, values, rows, _ = problem(64, 2, 2, 96, 0.5, seed=1)
    out = np.asarray(block_sparse_matmul_mosaic(x, values, rows, interpret=True), np.float32)
    ref = np.asarray(block_sparse_matmul_reference(x.astype(jnp.float32),
                                                   values.astype(jnp.float32), rows))
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_mosaic_kernel_lowers_for_cuda_as_a_mosaic_gpu_call():
    x, values, rows, _ = problem(128, 2, 2, 256, 0.5, seed=2)
    with cuda_target():
        text = jax.jit(block_sparse_matmul_mosaic).trace(x, values, rows).lower(
            lowering_platforms=("cuda",)).as_text()
    assert "stablehlo.custom_call @mosaic_gpu" in text


def test_unsupported_blocks_dtypes_and_tiles_are_named():
    assert "blocks of 64 or 128" in unsupported(32, 64)
    assert unsupported(64, 128) is None
    assert "dtype float32" in unsupported(64, 64, jnp.float32)
    x, values, rows, _ = problem(64, 1, 1, 8, 0.0, seed=0)
    with pytest.raises(ValueError, match="dtype float32"):
        block_sparse_matmul_mosaic(x.astype(jnp.float32), values, rows, interpret=True)
    with pytest.raises(ValueError, match="block_m=96 is not a multiple of 64"):
        block_sparse_matmul_mosaic(x, values, rows, block_m=96, interpret=True)
