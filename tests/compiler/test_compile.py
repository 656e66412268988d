"""js.sparsify against the dense masked reference (rtol 1e-5 in f32)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import jaxsparse as js
from jaxsparse.models import ResNetTiny, functional
from tests.helpers import assert_close, masked_reference, resnet

CASES = [("2:4", None), ("1:4", None), ("2:8", None), ("block:16x16", 0.5),
         ("block:16x16", 0.9), ("block:32x32", 0.75), ("channel", 0.5)]


@pytest.mark.parametrize("pattern,sparsity", CASES)
@pytest.mark.parametrize("bottleneck,stem", [(False, "small"), (True, "imagenet")])
def test_resnet_equals_masked(pattern, sparsity, bottleneck, stem):
    apply_fn, variables, x = resnet(bottleneck, stem)
    masks = js.prune(variables["params"], pattern, sparsity)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    ref = masked_reference(apply_fn, variables, masks)(x)
    assert_close(jax.jit(sp)(sp.variables, x), ref)
    lowerings = {("sliced" if r.sliced else r.lowering) for r in sp.report.rows}
    expected = {"2": "nm", "1": "nm", "b": "block", "c": "sliced"}
    assert expected[pattern[0]] in lowerings, lowerings
    assert sp.report.flops_ratio < 0.95


@pytest.mark.parametrize("bottleneck", [False, True])
def test_coupled_residual_channel_pruning(bottleneck):
    apply_fn, variables, x = resnet(bottleneck, "small")
    groups = js.channel_groups(apply_fn, variables, x)
    assert any(len(g.kernels) > 1 for g in groups)
    masks = js.prune(variables, "channel", sparsity=0.5, groups=groups,
                     include=lambda p, w: w.ndim == 4)
    sp = js.sparsify(apply_fn, variables, masks, x)
    assert_close(jax.jit(sp)(sp.variables, x), masked_reference(apply_fn, variables, masks)(x))
    # Every conv, the residual stream included, lost input and output channels.
    convs = [r for r in sp.report.rows if r.kind == "conv"]
    assert all(r.sliced and r.action.startswith("channel-sliced") for r in convs)
    assert sp.report.flops_ratio < 0.35
    bias_maps = [k for k in sp.variables["folded"] if not k.endswith("/shift")]
    assert not bias_maps, "masked BatchNorm makes removed channels exact zeros"


def test_grouped_masks_cover_batchnorm_and_round_to_multiple():
    apply_fn, variables, x = resnet(True, "small")
    groups = js.channel_groups(apply_fn, variables, x)
    masks = js.prune(variables, "channel", sparsity=0.4, groups=groups,
                     include=lambda p, w: w.ndim == 4, channel_multiple=8)
    conv1 = np.asarray(masks["params"]["layer2"][0]["conv1"]["kernel"])
    kept = conv1.reshape(-1, conv1.shape[-1]).all(axis=0)
    assert kept.sum() % 8 == 0
    np.testing.assert_array_equal(masks["params"]["layer2"][0]["bn1"]["scale"], kept)
    np.testing.assert_array_equal(masks["params"]["layer2"][0]["bn1"]["bias"], kept)
    c3 = np.asarray(masks["params"]["layer2"][0]["conv3"]["kernel"])
    pj = np.asarray(masks["params"]["layer2"][0]["proj_conv"]["kernel"])
    np.testing.assert_array_equal(c3.reshape(-1, c3.shape[-1]).all(0),
                                  pj.reshape(-1, pj.shape[-1]).all(0))


def test_vmap_and_bfloat16():
    apply_fn, variables, x = resnet(False, "small")
    masks = js.prune(variables["params"], "block:16x16", 0.75)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    xs = jnp.stack([x, -x])
    ref = masked_reference(apply_fn, variables, masks)
    assert_close(jax.jit(jax.vmap(lambda a: sp(sp.variables, a)))(xs),
                 jax.jit(jax.vmap(ref))(xs))
    model = ResNetTiny(num_classes=10, stem="small", width=0.5, dtype=jnp.bfloat16,
                       rngs=nnx.Rngs(0))
    f16, v16 = functional(model)
    m16 = js.prune(v16["params"], "2:4")
    sp16 = js.sparsify(f16, v16, m16, x.astype(jnp.bfloat16), policy="sparse")
    assert_close(jax.jit(sp16)(sp16.variables, x.astype(jnp.bfloat16)),
                 masked_reference(f16, v16, m16)(x.astype(jnp.bfloat16)), rtol=1e-2)


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        y = nn.Conv(16, (1, 1), name="inner")(x)
        x = nn.relu(x + y)
        x = nn.Conv(32, (3, 3), strides=(2, 2))(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(32)(x)))


@pytest.mark.parametrize("pattern,sparsity", [("2:4", None), ("block:8x8", 0.75),
                                              ("channel", 0.5)])
def test_flax_linen_model(pattern, sparsity):
    model = LinenNet()
    x = jax.random.normal(jax.random.key(0), (3, 8, 8, 4))
    variables = model.init(jax.random.key(1), x)
    masks = js.prune(variables["params"], pattern, sparsity,
                     include=lambda p, w: w.ndim >= 2 and w.shape[-2] % 8 == 0
                     and w.shape[-1] % 8 == 0)
    sp = js.sparsify(model.apply, variables, masks, x, policy="sparse")
    assert_close(jax.jit(sp)(sp.variables, x), masked_reference(model.apply, variables,
                                                                masks)(x))


def _plain_fn(params, x):
    dn = ("NHWC", "HWIO", "NHWC")
    y = lax.conv_general_dilated(x, params["a"], (2, 2), ((1, 2), (0, 1)), dimension_numbers=dn)
    y = jax.nn.relu(y)
    y = lax.conv_general_dilated(y, params["b"], (1, 1), "SAME", rhs_dilation=(2, 2),
                                 dimension_numbers=dn)
    y = lax.conv_general_dilated(y, params["g"], (1, 1), "SAME", feature_group_count=2,
                                 dimension_numbers=dn)
    y = jnp.mean(y, axis=(1, 2))
    return jnp.tanh(y @ params["d"]) @ params["e"]


def test_plain_jax_strided_padded_dilated_grouped():
    rng = np.random.default_rng(0)
    params = {"a": rng.standard_normal((3, 3, 8, 16)), "b": rng.standard_normal((3, 3, 16, 16)),
              "g": rng.standard_normal((3, 3, 8, 16)), "d": rng.standard_normal((16, 32)),
              "e": rng.standard_normal((32, 8))}
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32) * 0.2, params)
    x = jnp.asarray(rng.standard_normal((2, 11, 11, 8)), jnp.float32)
    for pattern, sparsity in [("2:4", None), ("block:8x8", 0.75), ("channel", 0.5)]:
        masks = js.prune(params, pattern, sparsity, include=".*")
        sp = js.sparsify(_plain_fn, params, masks, x, policy="sparse")
        assert_close(jax.jit(sp)(sp.variables, x), _plain_fn(js.apply_masks(params, masks), x))
        row = {r.name: r for r in sp.report.rows}["g"]
        assert row.lowering == "unchanged" and not row.supported
        assert row.action == "dense (unsupported)" and row.why == "grouped convolution"


@st.composite
def residual_nets(draw):
    """A random small net: conv stem, residual blocks of 1x1/3x3 convs, dense head."""
    c = draw(st.sampled_from([8, 16]))
    blocks = draw(st.lists(st.tuples(st.sampled_from([1, 3]), st.booleans()), min_size=1,
                           max_size=3))
    seed = draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    params = {"stem": rng.standard_normal((3, 3, 8, c)) * 0.3}
    for i, (k, _) in enumerate(blocks):
        params[f"b{i}"] = {"w": rng.standard_normal((k, k, c, c)) * 0.3,
                           "s": rng.standard_normal(c), "t": rng.standard_normal(c)}
    params["head"] = rng.standard_normal((c, 5)) * 0.3
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)

    def fn(p, x):
        dn = ("NHWC", "HWIO", "NHWC")
        h = jax.nn.relu(lax.conv_general_dilated(x, p["stem"], (1, 1), "SAME",
                                                 dimension_numbers=dn))
        for i, (_, residual) in enumerate(blocks):
            b = p[f"b{i}"]
            y = lax.conv_general_dilated(h, b["w"], (1, 1), "SAME", dimension_numbers=dn)
            y = jax.nn.relu(y * b["s"] + b["t"])
            h = h + y if residual else y
        return jnp.max(h, axis=(1, 2)) @ p["head"]

    pattern = draw(st.sampled_from([("2:4", None), ("block:8x8", 0.5), ("channel", 0.5)]))
    return fn, params, pattern


@settings(max_examples=12, deadline=None)
@given(residual_nets())
def test_random_residual_networks(net):
    fn, params, (pattern, sparsity) = net
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 8))
    masks = js.prune(params, pattern, sparsity, include=r"(stem|b\d/w)$")
    sp = js.sparsify(fn, params, masks, x, policy="sparse")
    assert_close(sp(sp.variables, x), fn(js.apply_masks(params, masks), x))


def test_gradients_flow_to_packed_values():
    apply_fn, variables, x = resnet(False, "small")
    masks = js.prune(variables["params"], "block:16x16", 0.75)
    # Unfolded: with a BatchNorm folded, the gradient is the folded weight's.
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse", fold_batchnorm=False)
    # Block indices are integers: they get no gradient (allow_int gives them float0 zeros).
    grads = jax.jit(jax.grad(lambda v: jnp.sum(sp(v, x) ** 2), allow_int=True))(sp.variables)
    masked = {**variables, "params": js.apply_masks(variables["params"], masks)}
    dense_grads = jax.jit(jax.grad(lambda v: jnp.sum(apply_fn(v, x) ** 2)))(masked)
    packed = grads["model"]["params"]["layer2"][0]["conv2"]["kernel"]
    assert isinstance(packed, js.compiler.BlockWeight)
    original = sp.variables["model"]["params"]["layer2"][0]["conv2"]["kernel"]
    got = js.unpack({"model": {"w": dataclasses.replace(packed, rows=original.rows)}})["w"]
    dense = dense_grads["params"]["layer2"][0]["conv2"]["kernel"]
    mask = np.asarray(masks["layer2"][0]["conv2"]["kernel"])
    assert_close(got, np.asarray(dense) * mask, rtol=1e-4)


def test_unpack_round_trip_and_checkpoint(tmp_path):
    apply_fn, variables, x = resnet(False, "small")
    for pattern, sparsity in [("2:4", None), ("block:16x16", 0.75)]:
        masks = js.prune(variables["params"], pattern, sparsity)
        # Unfolded: a folded layer's weights come back scaled by its BatchNorm (test_fold.py).
        sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse", fold_batchnorm=False)
        unpacked = js.unpack(sp.variables)
        expected = js.apply_masks(variables["params"], masks)
        for a, b in zip(jax.tree.leaves(unpacked["params"]), jax.tree.leaves(expected),
                        strict=True):
            np.testing.assert_array_equal(a, b)
    path = tmp_path / "sp"
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, sp.variables)
    with ocp.StandardCheckpointer() as ckptr:
        restored = ckptr.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                    sp.variables))
    run = jax.jit(sp)
    assert_close(run(restored, x), run(sp.variables, x))


def test_policy_auto_and_report():
    apply_fn, variables, x = resnet(False, "small")
    sp = js.sparsify(apply_fn, variables, js.prune(variables["params"], "2:4"), x)
    rows = [r for r in sp.report.rows if r.pattern == "2:4"]
    assert rows and all(r.lowering == "dense" and "no 2:4 sparse tensor cores on cpu" in r.why
                       for r in rows)
    assert "| params/layer1/0/conv1/kernel | conv |" in str(sp.report)
    sp = js.sparsify(apply_fn, variables, js.prune(variables["params"], "unstructured", 0.9),
                    x, policy="sparse", backend="xla")
    assert all("mask only" in r.why for r in sp.report.rows if r.pattern == "unstructured")


def test_shared_weight_is_kept_whole():
    w = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8)), jnp.float32)
    fn = lambda p, x: jnp.sum(p["w"]) + (x @ p["w"]) @ p["w"]
    masks = js.prune({"w": w}, "2:4", include="w")
    sp = js.sparsify(fn, {"w": w}, masks, jnp.ones((3, 8)), policy="sparse")
    assert_close(sp(sp.variables, jnp.ones((3, 8))),
                 fn(js.apply_masks({"w": w}, masks), jnp.ones((3, 8))))


@pytest.mark.parametrize("kwargs,match", [({"policy": "fast"}, "policy='fast'"),
                                          ({"backend": "cuda"}, "backend='cuda'")])
def test_bad_arguments(kwargs, match):
    apply_fn, variables, x = resnet(False, "small")
    with pytest.raises(ValueError, match=match):
        js.sparsify(apply_fn, variables, js.prune(variables["params"], "2:4"), x, **kwargs)


def test_mask_for_unknown_leaf():
    with pytest.raises(ValueError, match="no leaf of variables"):
        js.sparsify(lambda p, x: x @ p["w"], {"w": jnp.ones((4, 4))},
                   {"v": jnp.ones((4, 4), bool)}, jnp.ones((1, 4)))


def test_other_input_shape_is_a_clear_error():
    apply_fn, variables, x = resnet(False, "small")
    sp = js.sparsify(apply_fn, variables, js.prune(variables["params"], "2:4"), x)
    with pytest.raises(ValueError, match="compiled for inputs"):
        sp(sp.variables, x[:1])
