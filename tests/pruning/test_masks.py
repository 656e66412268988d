import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def weights(draw, m=1, bh=1, bw=1):
    """Random conv (kh, kw, cin, cout) or dense (in, out) weights compatible with the tiling."""
    conv = draw(st.booleans())
    cin = math.lcm(m, bh) * draw(st.integers(1, 4))
    cout = bw * draw(st.integers(1, 4))
    k = draw(st.sampled_from([1, 3])) if conv else 1
    shape = (k, k, cin, cout) if conv else (cin, cout)
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    seed = draw(st.integers(0, 2**16))
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if draw(st.booleans()):  # Many ties: a few distinct magnitudes only.
        w = np.round(w).astype(dtype)
    return w


@SETTINGS
@given(st.sampled_from([(2, 4), (1, 4), (2, 8), (3, 4)]), st.data())
def test_nm_keeps_exactly_n_per_group_and_the_top_n(nm, data):
    n, m = nm
    w = data.draw(weights(m=m))
    mask = np.asarray(js.compute_mask(w, f"{n}:{m}"))
    groups = mask.reshape(*w.shape[:-2], w.shape[-2] // m, m, w.shape[-1])
    assert np.all(groups.sum(axis=-2) == n)
    a = np.abs(w.astype(np.float32)).reshape(groups.shape)
    kept_min = np.where(groups, a, np.inf).min(axis=-2)
    dropped_max = np.where(groups, -np.inf, a).max(axis=-2)
    assert np.all(kept_min >= dropped_max)


def test_nm_ties_go_to_the_lower_index():
    w = np.ones((8, 1), np.float32)
    mask = np.asarray(js.compute_mask(w, "2:4"))[:, 0]
    np.testing.assert_array_equal(mask, [1, 1, 0, 0, 1, 1, 0, 0])


@SETTINGS
@given(st.sampled_from([(2, 2), (4, 4), (2, 8)]), st.floats(0.0, 0.95), st.data())
def test_block_masks_are_constant_per_block_with_exact_count(block, sparsity, data):
    bh, bw = block
    w = data.draw(weights(bh=bh, bw=bw))
    mask = np.asarray(js.compute_mask(w, f"block:{bh}x{bw}", sparsity))
    k, cout = mask.size // mask.shape[-1], mask.shape[-1]
    blocks = mask.reshape(k // bh, bh, cout // bw, bw)
    assert np.all(blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3)))
    nblocks = (k // bh) * (cout // bw)
    assert blocks.all(axis=(1, 3)).sum() == round((1 - sparsity) * nblocks)


@SETTINGS
@given(st.floats(0.0, 0.99), st.data())
def test_unstructured_exact_count(sparsity, data):
    w = data.draw(weights())
    mask = np.asarray(js.compute_mask(w, "unstructured", sparsity))
    assert mask.sum() == np.round((1 - sparsity) * w.size)


@SETTINGS
@given(st.floats(0.0, 0.99), st.data())
def test_channel_removes_whole_filters_exactly(sparsity, data):
    w = data.draw(weights())
    mask = np.asarray(js.compute_mask(w, "channel", sparsity)).reshape(-1, w.shape[-1])
    per_filter = mask.all(axis=0)
    assert np.all(per_filter | ~mask.any(axis=0))
    assert per_filter.sum() == max(1, np.round((1 - sparsity) * w.shape[-1]))


@SETTINGS
@given(st.sampled_from(["2:4", "block:2x2", "channel", "unstructured"]), st.data())
def test_jit_agrees_and_is_deterministic(pattern, data):
    w = data.draw(weights(m=4, bh=2, bw=2))
    s = None if pattern == "2:4" else 0.5
    eager = js.compute_mask(w, pattern, s)
    jitted = jax.jit(lambda w, s: js.compute_mask(w, pattern, s),
                     static_argnums=() if s is not None else (1,))(w, s)
    np.testing.assert_array_equal(eager, jitted)
    np.testing.assert_array_equal(eager, js.compute_mask(w, pattern, s))


def test_custom_scores_and_block_score_options():
    w = jnp.arange(16.0).reshape(4, 4)
    scores = -w  # Prefer the small weights.
    mask = js.compute_mask(w, "unstructured", 0.75, scores)
    np.testing.assert_array_equal(np.asarray(mask).ravel()[:4], [1, 1, 1, 1])
    for reduce in ("l1", "mean"):
        assert js.compute_mask(w, "block:2x2", 0.5, block_score=reduce).sum() == 8


@pytest.mark.parametrize("shape,pattern,sparsity,match", [
    ((3, 3, 6, 8), "2:4", None, "reduction dimension 6"),
    ((10, 8), "block:4x4", 0.5, r"does not tile its GEMM view \(10, 8\)"),
    ((8, 8), "unstructured", 1.0, "sparsity=1.0"),
    ((8, 8), "unstructured", -0.1, "sparsity=-0.1"),
    ((8, 8), "channel", None, "needs a sparsity"),
    ((8, 8), "2:4", 0.9, "contradicts pattern 2:4"),
])
def test_bad_input(shape, pattern, sparsity, match):
    with pytest.raises(ValueError, match=match):
        js.compute_mask(jnp.ones(shape), pattern, sparsity, name="my/kernel")


def test_nm_accepts_its_own_sparsity():
    assert js.compute_mask(jnp.ones((8, 2)), "2:4", 0.5).sum() == 8


def test_score_shape_mismatch():
    with pytest.raises(ValueError, match="scores shape"):
        js.compute_mask(jnp.ones((8, 8)), "unstructured", 0.5, jnp.ones((8, 4)))
