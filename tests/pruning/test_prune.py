import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsparse as js
from jaxsparse.models import ResNetTiny, functional


@pytest.fixture(scope="module")
def params():
    _, variables = functional(ResNetTiny(num_classes=10, stem="small", width=0.25,
                                         rngs=nnx.Rngs(0)))
    return variables["params"]


def _masked_paths(masks):
    return {p for p, m in js.pruning.tree_paths.named_leaves(masks, is_leaf=lambda x: x is None)
            if m is not None}


def test_default_include_skips_stem_head_bn_and_biases(params):
    masks = js.prune(params, "2:4")
    paths = _masked_paths(masks)
    assert paths and all(p.endswith("kernel") for p in paths)
    assert not any(p.startswith(("stem", "head")) for p in paths)
    assert "layer1/0/conv1/kernel" in paths
    pruned = js.apply_masks(params, masks)
    assert jax.tree.structure(pruned) == jax.tree.structure(params)


def test_include_regex_and_callable(params):
    masks = js.prune(params, "unstructured", 0.5, include=r"layer1/.*kernel")
    assert _masked_paths(masks) == {"layer1/0/conv1/kernel", "layer1/0/conv2/kernel"}
    masks = js.prune(params, "unstructured", 0.5,
                     include=lambda p, w: p.startswith("head") and w.ndim == 2)
    assert _masked_paths(masks) == {"head/kernel"}


def test_include_matching_nothing_is_an_error(params):
    with pytest.raises(ValueError, match=r"include='conv9' matches no parameter; paths look"):
        js.prune(params, "unstructured", 0.5, include="conv9")


def test_explicit_include_with_bad_shape_is_an_error(params):
    with pytest.raises(ValueError, match="stem/conv/kernel: cannot apply 2:4"):
        js.prune(params, "2:4", include="stem/conv/kernel")


def test_default_include_reports_layers_skipped_for_shape():
    params = {"a": {"kernel": jnp.ones((3, 3, 8, 16))}, "b": {"kernel": jnp.ones((3, 3, 6, 8))}}
    with pytest.warns(js.SkippedLayerWarning, match=r"b/kernel left dense.*6"):
        masks = js.prune(params, "2:4")
    assert masks["b"]["kernel"] is None and masks["a"]["kernel"] is not None


@pytest.mark.parametrize("kwargs,match", [
    ({"pattern": "2:4", "sparsity": 0.75}, "contradicts pattern 2:4"),
    ({"pattern": "unstructured", "sparsity": 1.5}, "sparsity=1.5"),
    ({"pattern": "unstructured", "sparsity": 0.5, "distribution": "erdos"},
     "distribution='erdos'"),
    ({"pattern": "block:4x4", "sparsity": 0.5, "distribution": "global"},
     "distribution='global'"),
    ({"pattern": "chanel", "sparsity": 0.5}, "chanel"),
])
def test_bad_arguments(params, kwargs, match):
    with pytest.raises(ValueError, match=match):
        js.prune(params, **kwargs)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 3]), st.integers(1, 32), st.integers(1, 32)),
                min_size=1, max_size=5), st.floats(0.0, 0.99))
def test_erk_follows_the_formula(layers, sparsity):
    shapes = [(k, k, cin, cout) for k, cin, cout in layers]
    per_layer = np.asarray(js.pruning.distributions.erk(shapes, sparsity))
    density = 1 - per_layer
    assert np.all((density >= -1e-6) & (density <= 1 + 1e-6))
    sizes = np.array([math.prod(s) for s in shapes], float)
    assert np.sum(density * sizes) == pytest.approx((1 - sparsity) * sizes.sum(), rel=1e-3)
    raw = np.array([sum(s) / math.prod(s) for s in shapes])
    free = density < 1 - 1e-6  # Layers not capped at dense share one epsilon.
    if free.sum() >= 2:
        eps = density[free] / raw[free]
        np.testing.assert_allclose(eps, eps[0], rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.floats(0.0, 0.99))
def test_global_threshold_matches_numpy(seed, sparsity):
    rng = np.random.default_rng(seed)
    params = {"a": {"kernel": rng.standard_normal((4, 6)).astype(np.float32)},
              "b": {"kernel": rng.standard_normal((3, 3, 2, 5)).astype(np.float32)}}
    masks = js.prune(params, "unstructured", sparsity, distribution="global",
                     include="kernel")
    flat = np.concatenate([np.abs(params["a"]["kernel"]).ravel(),
                           np.abs(params["b"]["kernel"]).ravel()])
    k = int(np.round((1 - sparsity) * flat.size))
    thr = np.sort(flat)[::-1][k - 1] if k else np.inf
    for name in ("a", "b"):
        expected = np.abs(params[name]["kernel"]) >= thr
        np.testing.assert_array_equal(np.asarray(masks[name]["kernel"]), expected)


def test_uniform_and_erk_reach_the_global_target(params):
    for dist in ("uniform", "erk"):
        masks = js.prune(params, "unstructured", 0.8, distribution=dist)
        assert js.measured_sparsity(masks) == pytest.approx(0.8, abs=1e-3)


def test_scores_tree_replaces_magnitude(params):
    scores = js.scores.random(params, jax.random.key(0))
    a = js.prune(params, "unstructured", 0.5, scores=scores)
    b = js.prune(params, "unstructured", 0.5)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                          strict=True))
    grads = jax.tree.map(jnp.ones_like, params)
    sal = js.prune(params, "unstructured", 0.5, scores=js.scores.saliency(params, grads))
    for x, y in zip(jax.tree.leaves(sal), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)  # |w * 1| == |w|.


def test_apply_masks_sparsity_and_report(params):
    masks = js.prune(params, "2:4")
    pruned = js.apply_masks(params, masks)
    assert js.measured_sparsity(masks) == 0.5
    np.testing.assert_array_equal(pruned["stem"]["conv"]["kernel"],
                                  params["stem"]["conv"]["kernel"])
    k = pruned["layer1"][0]["conv1"]["kernel"]
    assert float(jnp.mean(k == 0)) == 0.5
    report = js.sparsity_report(pruned, masks, "2:4")
    rows = {r.name: r for r in report.rows}
    assert rows["layer1/0/conv1/kernel"].density == 0.5
    assert rows["layer1/0/conv1/kernel"].pattern == "2:4"
    assert rows["head/kernel"].pattern == "dense"
    assert "| layer1/0/conv1/kernel | 3x3x16x16 | 2:4 | 0.500 |" in str(report)
    assert 0 < report.global_sparsity < 0.5


def test_prune_is_deterministic_and_jittable(params):
    a = js.prune(params, "block:4x4", 0.5)
    b = jax.jit(lambda p, s: js.prune(p, "block:4x4", s))(params, 0.5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_no_warning_for_compatible_models(params):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        js.prune(params, "2:8")
