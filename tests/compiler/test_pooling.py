"""Max pooling as the maximum of strided slices (compiler/pooling.py), and js.sparsify using it
on cpu."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxsparse as js
from jaxsparse.compiler import pooling
from tests.helpers import masked_reference, resnet


def _params(window, strides, padding, base=None, dilation=None):
    n = len(window)
    return dict(window_dimensions=window, window_strides=strides, padding=padding,
                base_dilation=base or (1,) * n, window_dilation=dilation or (1,) * n)


def _reference(x, p):
    return lax.reduce_window(x, jnp.asarray(-jnp.inf if x.dtype.kind == "f" else
                                            jnp.iinfo(x.dtype).min, x.dtype), lax.max,
                             p["window_dimensions"], p["window_strides"], p["padding"])


POOLS = [
    # ResNet's stem pool: 3x3 / 2, padding 1, NHWC.
    ((2, 9, 10, 5), _params((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))),
    ((1, 8, 8, 3), _params((1, 2, 2, 1), (1, 2, 2, 1), ((0, 0),) * 4)),  # 2x2/2, no padding.
    ((3, 7, 6, 4), _params((1, 3, 2, 1), (1, 1, 3, 1), ((0, 0), (2, 0), (0, 1), (0, 0)))),
    ((4, 11, 6), _params((1, 5, 1), (1, 3, 1), ((0, 0), (2, 2), (0, 0)))),  # 1-D, rank 3.
]


@pytest.mark.parametrize("shape,params", POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_slices_equal_reduce_window_exactly(shape, params, dtype):
    rng = np.random.default_rng(0)
    x = jnp.asarray((rng.standard_normal(shape) * 100).astype(dtype))
    got = jax.jit(lambda x: pooling.max_pool_as_maxima(x, params))(x)
    ref = _reference(x, params)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_nan_and_all_negative_windows_match():
    """A NaN propagates as in reduce_window; a window of only padding and negatives gives the
    largest negative, not 0."""
    x = -jnp.arange(1.0, 2 * 5 * 5 * 2 + 1).reshape(2, 5, 5, 2)
    x = x.at[0, 2, 2, 1].set(jnp.nan)
    p = POOLS[0][1]
    got, ref = pooling.max_pool_as_maxima(x, p), _reference(x, p)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert np.isnan(np.asarray(got)).any()


@pytest.mark.parametrize("params,why", [
    (_params((1, 3, 3, 1), (1, 1, 1, 1), ((0, 0),) * 4, base=(1, 2, 2, 1)), "base dilation"),
    (_params((1, 3, 3, 1), (1, 1, 1, 1), ((0, 0),) * 4, dilation=(1, 2, 2, 1)),
     "window dilation"),
    (_params((1, 9, 9, 1), (1, 1, 1, 1), ((0, 0),) * 4), "more than 64 elements"),
    (_params((1, 3, 3, 1), (1, 1, 1, 1), ((0, 0),) * 4), "larger than the padded input"),
])
def test_unsupported_pools_say_why(params, why):
    x = jnp.zeros((1, 2, 9, 1)) if "larger" in why else jnp.zeros((1, 9, 9, 1))
    assert why in pooling.why_not_maxima(tuple(x.shape), params)
    with pytest.raises(ValueError, match=why):
        pooling.max_pool_as_maxima(x, params)


def _has_reduce_window(sp, x):
    return "reduce_window_max" in str(jax.make_jaxpr(sp)(sp.variables, x))


@pytest.mark.parametrize("pattern", [None, "channel"])
def test_sparsify_on_cpu_runs_the_stem_pool_as_slices(pattern):
    """Dense (a plain or pending activation) and channel-pruned (a sliced one) models: the
    pool is rewritten, the report counts it, the output equals the masked model's."""
    apply_fn, variables, x = resnet(True, "imagenet")
    masks = None if pattern is None else js.prune(variables["params"], pattern, 0.5)
    sp = js.sparsify(apply_fn, variables, masks, x)
    ref = apply_fn(variables, x) if masks is None else \
        masked_reference(apply_fn, variables, masks)(x)
    np.testing.assert_allclose(np.asarray(jax.jit(sp)(sp.variables, x)), np.asarray(ref),
                               rtol=1e-5, atol=1e-5)
    assert sp.report.pools_as_maxima == 1
    assert sp.report.as_dict()["pools_as_maxima"] == 1
    assert "max pools as the maximum of strided slices" in str(sp.report)
    assert not _has_reduce_window(sp, x)


def test_other_platforms_keep_reduce_window():
    apply_fn, variables, x = resnet(True, "imagenet")
    sp = js.sparsify(apply_fn, variables, None, x, platform="tpu")
    assert sp.report.pools_as_maxima == 0
    assert "max pools" not in str(sp.report)
    assert _has_reduce_window(sp, x)


def test_a_pool_of_the_input_itself_is_rewritten_too():
    """A pool whose input no layer produced (an untracked value) takes the same form."""
    p = POOLS[0][1]

    def fn(v, x):
        pooled = lax.reduce_window(x, -jnp.inf, lax.max, p["window_dimensions"],
                                   p["window_strides"], p["padding"])
        return pooled.reshape(pooled.shape[0], -1) @ v["w"]

    x = jax.random.normal(jax.random.key(0), (2, 9, 10, 5))
    variables = {"w": jax.random.normal(jax.random.key(1), (5 * 5 * 5, 4))}
    sp = js.sparsify(fn, variables, None, x)
    np.testing.assert_allclose(np.asarray(jax.jit(sp)(sp.variables, x)),
                               np.asarray(fn(variables, x)), rtol=1e-5, atol=1e-5)
    assert sp.report.pools_as_maxima == 1 and not _has_reduce_window(sp, x)
