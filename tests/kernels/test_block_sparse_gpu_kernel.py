"""The Pallas Triton block-sparse kernel (NVIDIA GPUs) in interpret mode, against the masked
dense product (rtol 1e-5 f32, 1e-2 bf16); on a GPU, tests/gpu runs it compiled."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse.kernels.gpu.block_sparse import (
    block_sparse_matmul_gpu,
    block_sparse_matmul_reference,
    unsupported,
)
from jaxsparse.kernels.tpu.block_sparse import unsupported as tpu_unsupported
from jaxsparse.primitives import pack_block_ell


def masked_problem(bh, bw, kb, nb, batch, sparsity, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((kb * bh, nb * bw)).astype(np.float32)
    x = rng.standard_normal((batch, kb * bh)).astype(np.float32)
    mask = np.asarray(js.compute_mask(w, f"block:{bh}x{bw}", sparsity))
    values, rows = pack_block_ell(w, mask, bh, bw)
    return x, values, rows, x @ (w * mask)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from([(16, 16), (32, 16), (16, 32)]), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([1, 7, 16, 70]), st.floats(0.0, 0.9), st.integers(0, 100))
def test_triton_kernel_matches_masked_dense_f32(block, kb, nb, batch, sparsity, seed):
    x, values, rows, dense = masked_problem(*block, kb, nb, batch, sparsity, seed)
    out = block_sparse_matmul_gpu(x, values, rows, block_m=32, interpret=True)
    np.testing.assert_allclose(out, dense, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block_sparse_matmul_reference(x, values, rows), dense, rtol=1e-5,
                               atol=1e-5)


def test_triton_kernel_bf16():
    x, values, rows, _ = masked_problem(32, 32, 4, 2, 50, 0.5, 0)
    xb, vb = jnp.asarray(x, jnp.bfloat16), jnp.asarray(values, jnp.bfloat16)
    out = np.asarray(block_sparse_matmul_gpu(xb, vb, rows, interpret=True), np.float32)
    ref = np.asarray(block_sparse_matmul_reference(xb.astype(jnp.float32),
                                                   vb.astype(jnp.float32), rows))
    np.testing.assert_allclose(out, ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_unsupported_blocks_are_named():
    assert "at least 16x16" in unsupported(8, 8)
    assert unsupported(16, 128) is None
    assert "multiples of 128" in tpu_unsupported(32, 32)
    assert tpu_unsupported(128, 256) is None
    x, values, rows, _ = masked_problem(8, 8, 2, 2, 4, 0.5, 0)
    with pytest.raises(ValueError, match="block 8x8"):
        block_sparse_matmul_gpu(x, values, rows, interpret=True)
