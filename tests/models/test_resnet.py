import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsparse import models

VARIANTS = [("ResNet18", 11_689_512), ("ResNet34", 21_797_672), ("ResNet50", 25_557_032),
            ("ResNet101", 44_549_160)]


def _param_count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name,expected_params", VARIANTS)
def test_imagenet_variants_match_reference_sizes(name, expected_params):
    ctor = getattr(models, name)
    abstract = nnx.eval_shape(lambda: ctor(num_classes=1000, stem="imagenet", rngs=nnx.Rngs(0)))
    _, params, _ = nnx.split(abstract, nnx.Param, ...)
    assert _param_count(params) == expected_params


@pytest.mark.parametrize("name", [v for v, _ in VARIANTS])
@pytest.mark.parametrize("stem,hw", [("imagenet", 224), ("small", 32)])
def test_output_shapes(name, stem, hw):
    ctor = getattr(models, name)
    model = nnx.eval_shape(lambda: ctor(num_classes=7, stem=stem, rngs=nnx.Rngs(0)))
    out = jax.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, hw, hw, 3),
                                                                      jnp.float32))
    assert out.shape == (2, 7) and out.dtype == jnp.float32


@pytest.mark.parametrize("ctor", [models.ResNetTiny, models.ResNetTinyBottleneck])
def test_functional_equals_module(ctor):
    model = ctor(num_classes=10, stem="small", width=0.25, in_channels=1, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    apply_fn, variables = models.functional(model)
    np.testing.assert_allclose(apply_fn(variables, x), model(x, train=False), rtol=1e-6)
    logits, new_vars = jax.jit(apply_fn, static_argnums=2)(variables, x, True)
    np.testing.assert_allclose(logits, model(x, train=True), rtol=1e-5, atol=1e-5)
    # Training mode updated the running statistics, eval mode did not.
    old = jax.tree.leaves(variables["batch_stats"])
    new = jax.tree.leaves(new_vars["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(old, new, strict=True))


def test_width_multiplier_scales_channels():
    model = models.ResNetTiny(num_classes=10, stem="small", width=0.5, rngs=nnx.Rngs(0))
    assert model.stem.conv.kernel.get_value().shape == (3, 3, 3, 32)


def test_bfloat16_compute_keeps_f32_params():
    model = models.ResNetTiny(num_classes=3, stem="small", width=0.25, dtype=jnp.bfloat16,
                              rngs=nnx.Rngs(0))
    _, variables = models.functional(model)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert model(jnp.ones((1, 28, 28, 3))).dtype == jnp.float32


@pytest.mark.parametrize("kwargs,match", [({"stem": "cifar"}, "stem='cifar'"),
                                          ({"width": 0.0}, "width=0.0"),
                                          ({"num_classes": 0}, "num_classes=0")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.ResNetTiny(rngs=nnx.Rngs(0), **kwargs)


def test_create_model_unknown_name():
    with pytest.raises(ValueError, match="resnet_51"):
        models.create_model("resnet_51", rngs=nnx.Rngs(0))
