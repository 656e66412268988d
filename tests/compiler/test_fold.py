"""BatchNorm (any per-channel affine after a conv or dense layer) folded by js.sparsify."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.extend.core import jaxprs_in_params

import jaxsparse as js
from jaxsparse.models import ResNet18, ResNet50, functional
from tests.helpers import assert_close, masked_reference, resnet


def _folded(sp):
    return [r for r in sp.report.rows if r.affine_folded]


@pytest.mark.parametrize("ctor", [ResNet18, ResNet50])
@pytest.mark.parametrize("pattern,sparsity", [(None, None), ("channel", 0.5),
                                              ("block:16x16", 0.75), ("unstructured", 0.8)])
def test_resnet_folds_every_batchnorm_exactly(ctor, pattern, sparsity):
    model = ctor(num_classes=10, stem="small", width=0.25, rngs=nnx.Rngs(0))
    apply_fn, variables = functional(model)
    # Non-trivial statistics, so the fold has something to fold.
    variables = jax.tree.map(lambda v: v + 0.1 * jnp.abs(v) if v.ndim == 1 else v, variables)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    masks = None if pattern is None else js.prune(variables["params"], pattern, sparsity)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    ref = apply_fn(variables, x) if masks is None else \
        masked_reference(apply_fn, variables, masks)(x)
    assert_close(jax.jit(sp)(sp.variables, x), ref)
    unfolded = js.sparsify(apply_fn, variables, masks, x, policy="sparse",
                           fold_batchnorm=False)
    assert_close(jax.jit(sp)(sp.variables, x), jax.jit(unfolded)(unfolded.variables, x))
    convs = [r for r in sp.report.rows if r.kind == "conv"]
    assert all(r.affine_folded == 3 for r in convs), [r.action for r in convs]
    assert not _folded(unfolded)
    assert "BatchNorm folded (3 ops)" in convs[0].action
    assert "per-channel affines (BatchNorm, bias) folded into" in str(sp.report)
    # The folded program runs no BatchNorm arithmetic: fewer multiplies than the unfolded one.
    count = lambda m: str(jax.make_jaxpr(m)(m.variables, x)).count(" mul ")  # noqa: E731
    assert count(sp) < count(unfolded)


def test_masks_keep_their_zeros_after_folding():
    apply_fn, variables, x = resnet(False, "small")
    masks = js.prune(variables["params"], "block:8x8", 0.75)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    w = {r.name: r for r in sp.report.rows}
    assert all(r.lowering == "block" and r.affine_folded for r in w.values() if r.pattern ==
               "block:8x8")
    dense = js.unpack(sp.variables["model"])["params"]
    # Every weight the mask removed is still zero in the folded, packed model; the kept ones
    # are scaled by their BatchNorm's factor (not all equal to the unfolded weights).
    changed = 0
    for (path, mask), leaf, orig in zip(_named(masks), _leaves(dense, masks),
                                        _leaves(variables["params"], masks), strict=True):
        leaf, mask = np.asarray(leaf), np.asarray(mask)
        assert not np.any(leaf[~mask]), path
        changed += not np.allclose(leaf[mask], np.asarray(orig)[mask])
    assert changed > 0
    assert_close(jax.jit(sp)(sp.variables, x), masked_reference(apply_fn, variables, masks)(x))


def _named(masks):
    return [(p, m) for p, m in jax.tree_util.tree_flatten_with_path(masks)[0] if m is not None]


def _leaves(tree, masks):
    flat_m = jax.tree_util.tree_flatten_with_path(masks)[0]
    flat_t = dict(jax.tree_util.tree_flatten_with_path(tree)[0])
    return [flat_t[p] for p, m in flat_m if m is not None]


class _LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3), use_bias=False, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, name="bn1")(x))
        x = nn.Conv(8, (1, 1), use_bias=True, name="conv2")(x)
        x = nn.BatchNorm(use_running_average=True, name="bn2")(x)
        return nn.Dense(4, name="fc")(x.mean((1, 2)))


def test_linen_conv_batchnorm_net():
    net = _LinenNet()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    variables = net.init(jax.random.key(0), x)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda v: v + jnp.asarray(rng.uniform(0.1, 0.5, v.shape), v.dtype)
                             if v.ndim == 1 else v, variables)
    apply_fn = net.apply
    sp = js.sparsify(apply_fn, variables, None, x)
    assert_close(jax.jit(sp)(sp.variables, x), apply_fn(variables, x))
    by = {r.name: r for r in sp.report.rows}
    assert by["params/conv1/kernel"].affine_folded == 3  # sub mean, mul, add bias.
    assert by["params/conv2/kernel"].affine_folded == 4  # Its own bias, then the BatchNorm.
    assert by["params/fc/kernel"].affine_folded == 1
    assert by["params/fc/kernel"].action == "dense + bias folded"


def _conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_plain_jax_conv_affine_and_what_cannot_fold():
    rng = np.random.default_rng(0)
    p = {"w1": jnp.asarray(rng.standard_normal((3, 3, 4, 8)), jnp.float32),
         "w2": jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32),
         "w3": jnp.asarray(rng.standard_normal((1, 1, 8, 8)), jnp.float32),
         "s": jnp.asarray(rng.uniform(0.5, 2.0, 8), jnp.float32),
         "b": jnp.asarray(rng.standard_normal(8), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)

    def fn(p, x):
        y = jax.nn.relu((_conv(x, p["w1"]) - 0.5) / 2.0 * p["s"] + p["b"])  # Foldable.
        z = _conv(y, p["w2"])
        z = z * jnp.mean(z, axis=(0, 1, 2))  # Batch statistics: not a constant, not folded.
        u = _conv(z, p["w3"])
        return (u * p["s"]) + u  # Its raw output is read twice: not folded.

    sp = js.sparsify(fn, p, None, x)
    assert_close(jax.jit(sp)(sp.variables, x), fn(p, x))
    by = {r.name: r for r in sp.report.rows}
    assert by["w1"].affine_folded == 4 and not by["w1"].fold_note
    assert by["w2"].affine_folded == 0 and "not a per-channel constant" in by["w2"].fold_note
    assert by["w3"].affine_folded == 0 and "read at 2 places" in by["w3"].fold_note
    assert "not folded: " in str(sp.report)


def test_training_mode_batchnorm_is_left_unfolded():
    net = nnx.BatchNorm(8, use_running_average=False, rngs=nnx.Rngs(0))
    conv = nnx.Conv(4, 8, (3, 3), rngs=nnx.Rngs(1))

    class M(nnx.Module):
        def __init__(self):
            self.conv, self.bn = conv, net

        def __call__(self, x, train=True):
            return self.bn(self.conv(x))

    apply_fn, variables = functional(M())
    x = jax.random.normal(jax.random.key(2), (4, 6, 6, 4))
    sp = js.sparsify(apply_fn, variables, None, x)
    assert_close(jax.jit(sp)(sp.variables, x), apply_fn(variables, x))
    row = sp.report.rows[0]
    assert row.affine_folded == 0 and row.fold_note, row


def _eqn_count(sp, x, name):
    """How many equations named ``name`` the compiled model's program has (calls inlined)."""
    def walk(jaxpr):
        n = 0
        for e in jaxpr.eqns:
            n += e.primitive.name == name
            for sub in jaxprs_in_params(e.params):
                n += walk(sub)
        return n
    return walk(jax.make_jaxpr(sp)(sp.variables, x).jaxpr)


@pytest.mark.parametrize("bottleneck", [False, True])
@pytest.mark.parametrize("pattern,sparsity", [("block:8x8", 0.75), ("unstructured", 0.8)])
def test_residual_add_and_relu_run_in_the_kernel_epilogue(bottleneck, pattern, sparsity):
    """On the C++ kernels every residual add and ReLU after a sparse conv's BatchNorm is in
    its epilogue: the model equals the masked one, and no max (ReLU) is left in its program
    but the stem's; with the portable kernels nothing is fused and the output is the same."""
    apply_fn, variables, x = resnet(bottleneck, "small")
    masks = js.prune(variables["params"], pattern, sparsity)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    ref = masked_reference(apply_fn, variables, masks)(x)
    assert_close(jax.jit(sp)(sp.variables, x), ref)
    sparse = [r for r in sp.report.rows if r.lowering == "block"]
    last = "conv3/kernel" if bottleneck else "conv2/kernel"
    blocks = [r for r in sparse if r.name.endswith(last)]
    # Each block's add goes into its last conv or its projection (the other is the residual).
    adds = [r for r in sparse if r.epilogue == ("add", "relu")]
    assert blocks and len(adds) == len(blocks), [(r.name, r.epilogue) for r in sparse]
    assert all(r.name.endswith((last, "proj_conv/kernel")) for r in adds)
    firsts = [r for r in sparse if r.name.endswith("conv1/kernel") and "stem" not in r.name]
    assert firsts and all(r.epilogue == ("relu",) for r in firsts)
    assert "residual add + ReLU in the kernel" in adds[0].action
    # The ReLUs left to XLA: the stem's (dense) only.
    assert _eqn_count(sp, x, "max") == 1
    portable = js.sparsify(apply_fn, variables, masks, x, policy="sparse", backend="xla")
    assert not any(r.epilogue for r in portable.report.rows)
    assert_close(jax.jit(portable)(portable.variables, x), ref)


def test_sliced_outputs_take_a_sliced_residual_in_the_epilogue(monkeypatch):
    """Coupled channel pruning on the C++ kernel at full density (calibrate=True, measured
    faster here by a fixed timing): the sliced conv outputs take the sliced residual stream
    in their epilogue, and removed channels keep their constants."""
    from jaxsparse.compiler import layers

    monkeypatch.setattr(layers, "_measure", lambda *a, **k: (1.0, 0.1))
    apply_fn, variables, x = resnet(False, "small")
    groups = js.channel_groups(apply_fn, variables, x[:1])
    masks = js.prune(variables, "channel", 0.5, groups=groups,
                     include=lambda path, w: w.ndim == 4)
    sp = js.sparsify(apply_fn, variables, masks, x, calibrate=True)
    assert_close(jax.jit(sp)(sp.variables, x), masked_reference(apply_fn, variables, masks)(x))
    fused = [r for r in sp.report.rows if r.epilogue == ("add", "relu")]
    assert fused and all(r.sliced and r.lowering == "block" for r in fused), \
        [(r.name, r.action) for r in sp.report.rows]


def test_epilogue_is_not_fused_where_the_raw_output_is_read_again():
    """A sparse conv whose BatchNorm output is also read beside the residual add keeps its
    ops (BatchNorm, add, ReLU) as they are, says why, and the result is exact."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    mask = np.kron(rng.random((9 * 16 // 8, 2)) < 0.5, np.ones((8, 8), bool)).reshape(w.shape)
    p = {"w": jnp.asarray(w), "s": jnp.asarray(rng.uniform(0.5, 2, 16), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 16)), jnp.float32)

    def fn(p, x):
        y = _conv(x, p["w"]) * p["s"] + 1.0
        return jax.nn.relu(y + x) - y  # y is needed twice: before and after the add.

    sp = js.sparsify(fn, p, {"w": mask, "s": None}, x, policy="sparse")
    (row,) = sp.report.rows
    assert row.lowering == "block" and row.affine_folded == 0 and row.epilogue == ()
    assert "read at 2 places" in row.fold_note
    assert_close(jax.jit(sp)(sp.variables, x),
                 fn({**p, "w": p["w"] * mask}, x))


def test_calibration_times_each_layer_with_its_epilogue(monkeypatch):
    """calibrate=True times XLA's conv and the kernel each with the ops that follow the layer
    (the folded bias, the residual add, the ReLU): both timed functions compute the same
    thing, and the block's last conv is timed with a bias and a residual."""
    from jaxsparse.compiler import costs

    seen = []

    def fake(dense, sparse, x, reps=5, extra=()):
        np.testing.assert_allclose(np.asarray(jax.jit(dense)(x, *extra)),
                                   np.asarray(jax.jit(sparse)(x, *extra)), rtol=1e-4,
                                   atol=1e-4)
        seen.append(len(extra))
        return 2.0, 1.0
    monkeypatch.setattr(costs, "measure_pair", fake)
    apply_fn, variables, x = resnet(False, "small")
    sp = js.sparsify(apply_fn, variables, None, x, calibrate=True)
    # Every layer but the head (10 outputs: no block width tiles them) is timed once.
    assert 2 in seen and len(seen) == len(sp.report.rows) - 1, seen
    assert_close(jax.jit(sp)(sp.variables, x), apply_fn(variables, x))
    adds = [r for r in sp.report.rows if r.epilogue == ("add", "relu")]
    assert adds and all(r.kernel == "cpu block kernel, full density" for r in adds)
