"""js.sparsify with the C++ CPU kernels: block and unstructured layers equal the masked model
(rtol 1e-5 f32), really call the FFI kernels, store fewer bytes, and fall back clearly."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxsparse as js
from jaxsparse.compiler import costs
from tests.helpers import assert_close, masked_reference, resnet, run_cli


def conv_net(seed=0):
    """Plain JAX: strided, padded and dilated 3x3 convs, a 1x1 conv and a dense head."""
    rng = np.random.default_rng(seed)
    p = {"c1": rng.standard_normal((3, 3, 16, 32)), "c2": rng.standard_normal((3, 3, 32, 32)),
         "c3": rng.standard_normal((1, 1, 32, 48)), "fc": rng.standard_normal((48, 32))}
    p = {k: jnp.asarray(v * 0.2, jnp.float32) for k, v in p.items()}

    def fn(p, x):
        dn = ("NHWC", "HWIO", "NHWC")
        y = jax.nn.relu(lax.conv_general_dilated(x, p["c1"], (2, 2), ((1, 1), (1, 1)),
                                                 dimension_numbers=dn))
        y = jax.nn.relu(lax.conv_general_dilated(y, p["c2"], (1, 1), ((2, 2), (2, 2)),
                                                 rhs_dilation=(2, 2), dimension_numbers=dn))
        y = lax.conv_general_dilated(y, p["c3"], (1, 1), "VALID", dimension_numbers=dn)
        return jnp.mean(y, axis=(1, 2)) @ p["fc"]

    return fn, p


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.9), ("unstructured", 0.6),
                                              ("block:16x16", 0.9), ("block:8x8", 0.75)])
@pytest.mark.parametrize("batch", [1, 3])
def test_plain_net_equals_masked_and_calls_the_kernels(pattern, sparsity, batch):
    fn, p = conv_net()
    x = jax.random.normal(jax.random.key(0), (batch, 15, 15, 16))
    masks = js.prune(p, pattern, sparsity, include=lambda path, w: True)
    sp = js.sparsify(fn, p, masks, x, policy="sparse")
    assert_close(jax.jit(sp)(sp.variables, x), fn(js.apply_masks(p, masks), x))
    kind = "ell" if pattern == "unstructured" else "block"
    convs = [r for r in sp.report.rows if r.kind == "conv"]
    assert all(r.lowering == "block" and r.kernel == f"cpu {kind} kernel" for r in convs), \
        sp.report
    # The ReLUs after c1 and c2 run in the kernels' epilogue; c3 has none.
    assert [r.action for r in convs] == [f"block_sparse_dot (cpu {kind} kernel)" + e for e in
                                         (" + ReLU in the kernel",) * 2 + ("",)]
    hlo = jax.jit(sp).lower(sp.variables, x).as_text()
    assert f"jaxsparse_{kind}_sparse_conv_f32" in hlo
    if sparsity >= 0.75:
        assert sp.report.bytes_after < 0.6 * sp.report.bytes_before
        assert sp.report.model_bytes_after < sp.report.model_bytes_before


def test_vmap_over_a_compiled_model():
    fn, p = conv_net()
    x = jax.random.normal(jax.random.key(0), (2, 3, 15, 15, 16))
    masks = js.prune(p, "unstructured", 0.8, include=lambda path, w: True)
    sp = js.sparsify(fn, p, masks, x[0], policy="sparse")
    got = jax.jit(jax.vmap(lambda a: sp(sp.variables, a)))(x)
    assert_close(got, jax.vmap(lambda a: fn(js.apply_masks(p, masks), a))(x))


@pytest.mark.parametrize("pattern", ["unstructured", "block:16x16"])
def test_resnet_with_cpu_kernels_equals_masked(pattern):
    apply_fn, variables, x = resnet(True, "imagenet")
    masks = js.prune(variables["params"], pattern, 0.9)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    assert_close(jax.jit(sp)(sp.variables, x), masked_reference(apply_fn, variables, masks)(x))
    assert any(r.kernel.startswith("cpu ") for r in sp.report.rows)
    assert "stored: weights" in str(sp.report)


def test_gradients_through_the_ffi_path():
    fn, p = conv_net()
    x = jax.random.normal(jax.random.key(0), (2, 15, 15, 16))
    masks = js.prune(p, "unstructured", 0.8, include=lambda path, w: True)
    sp = js.sparsify(fn, p, masks, x, policy="sparse")
    g = jax.jit(jax.grad(lambda a: jnp.sum(sp(sp.variables, a) ** 2)))(x)
    ref = jax.grad(lambda a: jnp.sum(fn(js.apply_masks(p, masks), a) ** 2))(x)
    assert_close(g, ref, rtol=1e-4)


def test_auto_policy_uses_the_measured_table_and_calibrate_measures():
    table = costs.load_table("cpu")
    assert table is not None, "jaxsparse/compiler/cost_tables/cpu.json ships with the package"
    assert {"unstructured", "block:16x16", "block:32x32"} <= set(table.entries)
    fn, p = conv_net()
    x = jax.random.normal(jax.random.key(0), (4, 15, 15, 16))
    masks = js.prune(p, "unstructured", 0.9, include=lambda path, w: True)
    sp = js.sparsify(fn, p, masks, x)
    for r in sp.report.rows:
        assert r.timing is not None and r.timing.predicted_ratio is not None
        assert "predicted" in r.why, r.why
    assert_close(sp(sp.variables, x), fn(js.apply_masks(p, masks), x))
    sp = js.sparsify(fn, p, masks, x, calibrate=True)
    assert all(r.timing.measured_ratio is not None and "measured" in r.why
               for r in sp.report.rows)
    assert sp.report.timing_markdown().count("\n") == len(sp.report.rows) + 1
    assert_close(sp(sp.variables, x), fn(js.apply_masks(p, masks), x))


def test_interpolation_and_nearest_block_shape():
    t = costs.CostTable("cpu", "test", {"block:16x16": {"spatial": [[0.1, 0.2], [0.5, 1.0]]}})
    assert t.ratio("block:16x16", "spatial", 0.3) == (pytest.approx(0.6), "block:16x16")
    assert t.ratio("block:32x16", "spatial", 0.1) == (pytest.approx(0.2), "block:16x16")
    assert t.ratio("unstructured", "spatial", 0.1) is None
    assert t.ratio("block:16x16", "pointwise", 0.1) is None


def test_without_the_library_layers_fall_back_and_say_why():
    """In a process where the kernels are disabled: mask-only unstructured layers, a reason
    in the report, the same results, and backend='cpu' is a clear error."""
    code = textwrap.dedent("""
        import json, jax, numpy as np, jaxsparse as js
        from tests.compiler.test_cpu_kernels_in_compile import conv_net
        fn, p = conv_net()
        x = jax.random.normal(jax.random.key(0), (2, 15, 15, 16))
        masks = js.prune(p, "unstructured", 0.9, include=lambda path, w: True)
        sp = js.sparsify(fn, p, masks, x)
        err = float(np.abs(sp(sp.variables, x) - fn(js.apply_masks(p, masks), x)).max())
        try:
            js.sparsify(fn, p, masks, x, backend="cpu")
            msg = ""
        except ValueError as e:
            msg = str(e)
        print(json.dumps({"whys": [r.why for r in sp.report.rows],
                          "kernels": sp.report.kernels, "err": err, "msg": msg}))
    """)
    proc = run_cli(["-c", code], env={"JAXSPARSE_DISABLE_CPU_KERNELS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all("mask only" in w and "disabled" in w for w in out["whys"]), out
    assert "disabled by JAXSPARSE_DISABLE_CPU_KERNELS" in out["kernels"]
    assert out["err"] < 1e-4
    assert "backend='cpu' needs the jaxsparse CPU kernel library" in out["msg"]


@pytest.mark.parametrize("faster", ["kernel", "xla"])
def test_dense_layers_run_on_the_kernel_measured_faster(monkeypatch, faster):
    """No masks, calibrate=True: each dense layer whose GEMM the C++ kernel tiles is timed
    against XLA's conv at full density and runs on the faster one; the model stays equal."""
    fn, p = conv_net()
    x = jax.random.normal(jax.random.key(0), (4, 15, 15, 16))
    calls = []

    def fake(dense, sparse, a, reps=5, extra=()):
        calls.append(a.shape)
        return (2.0, 1.0) if faster == "kernel" else (1.0, 2.0)
    monkeypatch.setattr(costs, "measure_pair", fake)
    sp = js.sparsify(fn, p, None, x, calibrate=True)
    rows = {r.name.split("/")[-1]: r for r in sp.report.rows}
    # c1..c3 and fc: K = 144, 288, 32 and 48 rows, all tiled by 16x16 blocks (or larger).
    assert len(calls) == 4
    for r in rows.values():
        if faster == "kernel":
            assert r.lowering == "block" and r.kernel == "cpu block kernel, full density", r
            assert r.flops_after == r.flops_before  # Every block stored: no FLOPs skipped.
        else:
            assert r.lowering in ("dense", "unchanged"), r
        assert "C++ kernel at full density" in r.why and "calibrate=True" in r.why
    assert_close(jax.jit(sp)(sp.variables, x), fn(p, x))
    plain = js.sparsify(fn, p, None, x)
    assert all(r.lowering == "unchanged" for r in plain.report.rows)


def test_full_density_blocks_follow_the_input_channels():
    """A block covers input channels of one tap, so its height divides cin (not only K);
    with fewer than 8 channels (an RGB stem) a block covers a whole kernel row (kw * cin
    high), or one tap (cin high) when the taps are dilated."""
    from jaxsparse.compiler.policy import full_density_block
    from jaxsparse.kernels.window import ConvWindow
    from jaxsparse.pruning.patterns import Block

    stem = ConvWindow((7, 7), (2, 2), ((3, 3), (3, 3)))
    assert full_density_block(9 * 64, 64, 64) == Block(32, 32)
    assert full_density_block(9 * 24, 64, 24) == Block(8, 8)  # K % 32 == 0, cin % 32 != 0.
    assert full_density_block(49 * 3, 64, 3, stem) == Block(21, 32)
    dilated = ConvWindow((7, 7), dilation=(2, 2))
    assert full_density_block(49 * 3, 64, 3, dilated) == Block(3, 32)
    assert full_density_block(49 * 3, 20, 3) is None  # No block width tiles 20 outputs.
    assert full_density_block(48, 32) == Block(16, 16)  # A dense layer: K is its cin.


def test_rgb_stem_runs_on_the_kernel_where_measured_faster(monkeypatch):
    """A 7x7 stride-2 conv on 3 channels (ResNet's stem) with its bias and ReLU runs on the
    C++ block kernel at full density (blocks of a kernel row, 7 taps x 3 channels) when
    measured faster; exact."""
    rng = np.random.default_rng(0)
    p = {"w": jnp.asarray(rng.standard_normal((7, 7, 3, 32)) * 0.2, jnp.float32),
         "b": jnp.asarray(rng.standard_normal(32), jnp.float32)}

    def fn(p, x):
        y = lax.conv_general_dilated(x, p["w"], (2, 2), ((3, 3), (3, 3)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y + p["b"])

    monkeypatch.setattr(costs, "measure_pair", lambda *a, **k: (2.0, 1.0))
    x = jax.random.normal(jax.random.key(0), (2, 20, 20, 3))
    sp = js.sparsify(fn, p, None, x, calibrate=True)
    (row,) = sp.report.rows
    assert row.kernel == "cpu block kernel, full density" and row.epilogue == ("relu",), row
    assert "block:21x32" in row.why, row.why
    assert_close(jax.jit(sp)(sp.variables, x), fn(p, x))
