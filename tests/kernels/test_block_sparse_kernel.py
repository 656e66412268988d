"""The Pallas block-sparse kernel in interpret mode against its pure-jnp reference."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse.kernels.tpu.block_sparse import block_sparse_matmul, block_sparse_matmul_reference
from jaxsparse.primitives import pack_block_ell

INTERPRET = True  # The Pallas interpreter: these tests check the kernel's logic on any machine
#                  (the compiled Mosaic kernel is checked on a TPU only by lowering, in
#                  tests/compiler/test_accelerator_lowering.py).


def test_kernel_with_the_128x128_blocks_mosaic_runs():
    """The block size the TPU kernel accepts (128-lane blocks), numerically, in interpret
    mode: several kept blocks per column, empty columns and padding."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((384, 384)).astype(np.float32)
    mask = np.array(js.compute_mask(w, "block:128x128", 0.6))
    mask[:, 256:] = False  # A block column with no kept block.
    values, rows = pack_block_ell(w, mask, 128, 128)
    assert int((np.asarray(rows) < 0).sum()) > 0  # Padded slots are exercised.
    x = rng.standard_normal((64, 384)).astype(np.float32)
    out = block_sparse_matmul(x, values, rows, block_m=64, interpret=INTERPRET)
    np.testing.assert_allclose(out, x @ (w * mask), rtol=1e-5, atol=1e-4)


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
