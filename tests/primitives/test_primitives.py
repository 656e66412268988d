"""nm_dot and block_sparse_dot against their dense masked references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxsparse as js
from jaxsparse.primitives import (
    block_sparse_dot,
    nm_dot,
    pack_block_ell,
    pack_nm,
    unpack_block_ell,
    unpack_nm,
)


def _case(k, n, pattern, sparsity, seed=0, batch=5):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    mask = np.asarray(js.compute_mask(w, pattern, sparsity))
    return x, w, mask


def _nm(k=32, n=16, nm=(2, 4), **kw):
    x, w, mask = _case(k, n, f"{nm[0]}:{nm[1]}", None, **kw)
    v, i = pack_nm(w, mask, *nm)
    return x, w * mask, mask, jnp.asarray(v), jnp.asarray(i), nm[1]


def _block(k=64, n=32, b=(8, 8), sparsity=0.75, **kw):
    x, w, mask = _case(k, n, f"block:{b[0]}x{b[1]}", sparsity, **kw)
    v, r = pack_block_ell(w, mask, *b)
    return x, w * mask, mask, jnp.asarray(v), jnp.asarray(r)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([(2, 4), (1, 4), (2, 8)]), st.integers(1, 6), st.integers(1, 20),
       st.integers(1, 9), st.integers(0, 1000))
def test_nm_pack_round_trip_and_product(nm, groups, n, batch, seed):
    x, wm, _, v, i, m = _nm(k=groups * nm[1], n=n, nm=nm, seed=seed, batch=batch)
    np.testing.assert_array_equal(unpack_nm(v, i, wm.shape[0], m), wm)
    np.testing.assert_allclose(nm_dot(x, v, i, m=m), x @ wm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(lambda x, v: nm_dot(x, v, i, m=m))(x, v), x @ wm,
                               rtol=1e-5, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([(4, 4), (8, 8), (16, 8)]), st.integers(1, 4), st.integers(1, 4),
       st.floats(0.0, 0.95), st.integers(1, 9), st.integers(0, 1000))
def test_block_pack_round_trip_and_product(b, kb, nb, sparsity, batch, seed):
    x, wm, _, v, r = _block(k=kb * b[0], n=nb * b[1], b=b, sparsity=sparsity, seed=seed,
                            batch=batch)
    np.testing.assert_array_equal(unpack_block_ell(v, r, wm.shape[0]), wm)
    np.testing.assert_allclose(block_sparse_dot(x, v, r), x @ wm, rtol=1e-5, atol=1e-5)


def test_leading_dims_and_vmap():
    x, wm, _, v, i, m = _nm()
    x3 = np.stack([x, 2 * x, -x])
    np.testing.assert_allclose(nm_dot(x3, v, i, m=m), x3 @ wm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda a: nm_dot(a, v, i, m=m))(x3), x3 @ wm,
                               rtol=1e-5, atol=1e-5)
    vs = jnp.stack([v, 2 * v])
    out = jax.vmap(lambda vv: nm_dot(x, vv, i, m=m))(vs)
    np.testing.assert_allclose(out[1], 2 * (x @ wm), rtol=1e-5, atol=1e-5)
    xb, wb, _, bv, br = _block()
    x3 = np.stack([xb, -xb])
    np.testing.assert_allclose(jax.vmap(lambda a: block_sparse_dot(a, bv, br))(x3), x3 @ wb,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(lambda vv: block_sparse_dot(xb, vv, br))(
        jnp.stack([bv, bv]))[0], xb @ wb, rtol=1e-5, atol=1e-5)


def test_nm_gradients_match_dense_masked():
    x, wm, mask, v, i, m = _nm()
    loss = lambda x, v: jnp.sum(nm_dot(x, v, i, m=m) ** 2)
    gx, gv = jax.grad(loss, argnums=(0, 1))(x, v)
    dgx, dgw = jax.grad(lambda x, w: jnp.sum((x @ w) ** 2), argnums=(0, 1))(x, wm)
    np.testing.assert_allclose(gx, dgx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gv, pack_nm(np.asarray(dgw), mask, 2, 4)[0], rtol=1e-5,
                               atol=1e-4)
    check_grads(lambda x, v: nm_dot(x, v, i, m=m), (x, v), order=2, modes=("fwd", "rev"),
                atol=1e-2, rtol=1e-2)


def test_block_gradients_match_dense_masked_and_skip_padding():
    x, wm, mask, v, r = _block(sparsity=0.8)
    assert np.any(np.asarray(r) < 0), "the case should have padding blocks"
    loss = lambda x, v: jnp.sum(block_sparse_dot(x, v, r) ** 2)
    gx, gv = jax.grad(loss, argnums=(0, 1))(x, v)
    dgx, dgw = jax.grad(lambda x, w: jnp.sum((x @ w) ** 2), argnums=(0, 1))(x, wm)
    np.testing.assert_allclose(gx, dgx, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(gv, pack_block_ell(np.asarray(dgw), mask, 8, 8)[0], rtol=1e-5,
                               atol=1e-4)
    assert np.all(np.asarray(gv)[np.asarray(r) < 0] == 0)
    check_grads(lambda x, v: block_sparse_dot(x, v, r), (x, v), order=2, modes=("fwd", "rev"),
                atol=1e-2, rtol=1e-2)


def test_pallas_interpret_matches():
    x, wm, _, v, r = _block()
    np.testing.assert_allclose(block_sparse_dot(x, v, r, impl="pallas", interpret=True), x @ wm,
                               rtol=1e-5, atol=1e-5)
    with pytest.warns(DeprecationWarning, match="impl='pallas', interpret=True"):
        y = block_sparse_dot(x, v, r, impl="pallas_interpret")  # The 0.1 spelling.
    np.testing.assert_allclose(y, x @ wm, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs impl='pallas', not 'xla'"):
        block_sparse_dot(x, v, r, impl="xla", interpret=True)


def test_bad_arguments():
    x, _, _, v, i, m = _nm()
    with pytest.raises(ValueError, match="impl='cuda'"):
        block_sparse_dot(x, *_block()[3:], impl="cuda")
    with pytest.raises(ValueError, match="K=30"):
        pack_nm(np.ones((30, 4)), np.ones((30, 4), bool), 2, 4)
    with pytest.raises(ValueError, match="keeps 4 > N=2"):
        pack_nm(np.ones((8, 4)), np.ones((8, 4), bool), 2, 4)
