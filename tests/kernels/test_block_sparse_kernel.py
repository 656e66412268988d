"""The Pallas block-sparse kernel in interpret mode against its pure-jnp reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse.kernels.block_sparse import block_sparse_matmul, block_sparse_matmul_reference
from jaxsparse.primitives import pack_block_ell

INTERPRET = True  # CI has no accelerator; the same tests run the compiled kernel on a GPU/TPU.


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([(8, 8), (16, 16), (8, 16)]), st.integers(1, 3), st.integers(1, 3),
       st.sampled_from([1, 7, 16, 130]), st.floats(0.0, 0.9), st.integers(0, 100))
def test_kernel_matches_reference(block, kb, nb, batch, sparsity, seed):
    bh, bw = block
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((kb * bh, nb * bw)).astype(np.float32)
    x = rng.standard_normal((batch, kb * bh)).astype(np.float32)
    mask = np.asarray(js.compute_mask(w, f"block:{bh}x{bw}", sparsity))
    values, rows = pack_block_ell(w, mask, bh, bw)
    out = block_sparse_matmul(x, values, rows, block_m=64, interpret=INTERPRET)
    ref = block_sparse_matmul_reference(x, values, rows)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ref, x @ (w * mask), rtol=1e-5, atol=1e-5)
