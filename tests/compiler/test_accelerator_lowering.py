"""Models compiled on this CPU machine for ``cuda`` and ``tpu`` lower with those targets' kernels.

No accelerator is needed: ``jax.jit(...).trace(...).lower(lowering_platforms=(p,))`` lowers for
any platform. The lowered module must hold the cuSPARSELt FFI target for 2:4 layers and the
Pallas Triton kernel for block layers (cuda), and Mosaic's ``tpu_custom_call`` (tpu). The
kernels' numerics are checked in interpret mode in tests/kernels/ and on a GPU in tests/gpu/.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse.compiler import costs
from jaxsparse.compiler.aot import cuda_target
from jaxsparse.compiler.aot import custom_calls as lowered_calls
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.primitives import nm_dot
from tests.helpers import accel_model as model
from tests.helpers import variant_masks

# Layers a 128x128 block does not tile stay dense (with a warning): expected on this model.
pytestmark = pytest.mark.filterwarnings("ignore::jaxsparse.SkippedLayerWarning")

needs_cusparselt = pytest.mark.skipif(
    not cusparselt.available(), reason=f"cuSPARSELt FFI library: {cusparselt.status().reason}")


def lowered_text(sp, platform):
    _, _, x = model()
    with cuda_target():  # Names the target GPU where jax asks for it (0.11+), no GPU needed.
        return jax.jit(sp).trace(sp.variables, x).lower(lowering_platforms=(platform,)).as_text()


def custom_calls(sp, platform):
    return lowered_calls(lowered_text(sp, platform))


@needs_cusparselt
@pytest.mark.parametrize("variant", ["2:4", "block:32x32", "channel", "channel+2:4"])
def test_lowers_for_cuda_with_its_kernels(variant):
    apply_fn, variables, x = model()
    sp = js.sparsify(apply_fn, variables, variant_masks(variant), x, policy="sparse",
                    platform="cuda")
    calls = custom_calls(sp, "cuda")
    kernels = {r.kernel for r in sp.report.rows if r.sparse}
    assert ("jaxsparse_cusparselt_matmul" in calls) == ("2:4" in variant), (calls, kernels)
    assert ("__gpu$xla.gpu.triton" in calls) == ("block" in variant), (calls, kernels)
    if variant.startswith("channel"):
        assert any(r.sliced for r in sp.report.rows)
    assert "cuSPARSELt 2:4: loaded" in sp.report.kernels


@pytest.mark.parametrize("variant", ["2:4", "block:128x128", "block:32x32", "channel",
                                     "channel+2:4"])
def test_lowers_for_tpu_with_its_kernels(variant):
    apply_fn, variables, x = model()
    sp = js.sparsify(apply_fn, variables, variant_masks(variant), x, policy="sparse",
                    platform="tpu")
    calls = custom_calls(sp, "tpu")
    rows = sp.report.rows
    mosaic = [r for r in rows if r.kernel.startswith("pallas-mosaic")]
    assert ("tpu_custom_call" in calls) == bool(mosaic), calls
    if variant == "block:128x128":
        assert mosaic, [r.action for r in rows]
    if variant == "block:32x32":  # Below Mosaic's 128-lane tile: portable, and the report says.
        assert not mosaic and any("needs bh and bw multiples of 128" in r.why for r in rows)
    if "2:4" in variant:
        assert any("no 2:4 sparse tensor cores on tpu" in r.why for r in rows) or \
            any(r.lowering == "nm" and r.kernel == "portable" for r in rows)


def test_bad_platform_is_one_clear_error():
    apply_fn, variables, x = model()
    with pytest.raises(ValueError, match="platform=.metal. is not valid"):
        js.sparsify(apply_fn, variables, None, x, platform="metal")


def test_portable_nm_dot_without_the_library(monkeypatch):
    apply_fn, variables, x = model()
    monkeypatch.setattr(cusparselt, "status", lambda: cusparselt.LibraryStatus(
        False, None, "the cuSPARSELt FFI library is not built"))
    sp = js.sparsify(apply_fn, variables, variant_masks("2:4"), x, platform="cuda")
    assert "jaxsparse_cusparselt_matmul" not in custom_calls(sp, "cuda")
    assert any("no cuSPARSELt kernel: the cuSPARSELt FFI library is not built" in r.why
               for r in sp.report.rows)


def test_cusparselt_names_unsupported_dtypes_and_shapes():
    with pytest.raises(ValueError, match="dtype float32"):
        cusparselt.compress(jnp.zeros((64, 64), jnp.float32))
    with pytest.raises(ValueError, match="K=48, cout=64"):
        cusparselt.matmul(jnp.zeros((8, 48), jnp.bfloat16), jnp.zeros((16,), jnp.uint8), 64)


@needs_cusparselt
@pytest.mark.parametrize("layout", cusparselt.LAYOUTS)
def test_cusparselt_plans_lower_with_their_layout(layout):
    w, x = jnp.zeros((64, 32), jnp.bfloat16), jnp.zeros((10, 64), jnp.bfloat16)
    with cuda_target():
        text = jax.jit(lambda w, x: cusparselt.nm_matmul(x, w, layout)).trace(w, x).lower(
            lowering_platforms=("cuda",)).as_text()
    calls = [line for line in text.splitlines() if "jaxsparse_cusparselt_" in line]
    assert len(calls) == 2 and all(f'layout = "{layout}"' in c for c in calls), calls
    compress = next(c for c in calls if "compress" in c)
    # a_row and b_col compress W^T: the structured operand's memory in that order.
    shape = "32x64" if layout in cusparselt.TRANSPOSED else "64x32"
    assert f"tensor<{shape}xbf16>" in compress, compress
    assert "alg_id = -1" in next(c for c in calls if "matmul" in c)


def test_cusparselt_layout_is_checked():
    with pytest.raises(ValueError, match="layout='c_row' is not valid"):
        cusparselt.compress(jnp.zeros((64, 64), jnp.bfloat16), "c_row")
    with pytest.raises(ValueError, match="layout='c_row' is not valid"):
        nm_dot(jnp.zeros((2, 8)), jnp.zeros((4, 8)), jnp.zeros((4, 8), jnp.int8),
                             m=4, layout="c_row")


def _nm_gemms(sp):
    """(K, N) of every 2:4 layer of a compile report."""
    return [(int(np.prod(r.shape[:-1])), r.shape[-1]) for r in sp.report.rows
            if r.pattern == "2:4"]


@needs_cusparselt
def test_auto_on_cuda_runs_2_4_only_where_the_cuda_table_measured_it_faster(monkeypatch):
    apply_fn, variables, x = model()
    masks = variant_masks("2:4")
    sp = js.sparsify(apply_fn, variables, masks, x, platform="cuda")  # No cuda table: dense.
    assert _nm_gemms(sp) and not any(r.sparse for r in sp.report.rows)
    assert all("no measured 2:4 entry" in r.why for r in sp.report.rows if r.pattern == "2:4")
    shapes = sorted(set(_nm_gemms(sp)))
    fast = shapes[-1]  # One GEMM shape measured faster (on plan b_row), the others slower.
    gemms = tuple({"kernel": "2:4", "k": k, "n": n, "ratio": 0.6 if (k, n) == fast else 1.3,
                   "layout": "b_row" if (k, n) == fast else "a_col"} for k, n in shapes)
    table = costs.CostTable("cuda", "a test GPU", {}, gemms)
    monkeypatch.setattr(costs, "load_table", lambda platform: table)
    sp = js.sparsify(apply_fn, variables, masks, x, platform="cuda")
    for row, gemm in zip([r for r in sp.report.rows if r.pattern == "2:4"], _nm_gemms(sp),
                         strict=True):
        if gemm == fast:
            assert row.lowering == "nm" and "1.67x faster than dense with cuSPARSELt plan " \
                "b_row" in row.why, row
        else:
            assert row.lowering == "dense" and "measured sparse/dense time 1.30" in row.why, row
    layouts = {w.cusparselt_layout for w in jax.tree.leaves(
        sp.variables, is_leaf=lambda v: isinstance(v, js.NMWeight))
        if isinstance(w, js.NMWeight)}
    assert layouts == {"b_row"}
    assert 'layout = "b_row"' in lowered_text(sp, "cuda")
    masked = {**variables, "params": js.apply_masks(variables["params"], masks)}
    np.testing.assert_allclose(np.asarray(sp(sp.variables, x), np.float32), np.asarray(
        apply_fn(masked, x), np.float32), rtol=2e-2, atol=2e-2)



def test_cusparselt_versions_before_the_hopper_fix_are_named():
    assert "predates the Hopper performance fix of 0.8.1" in cusparselt.version_note("0.8.0")
    assert cusparselt.version_note("0.8.1") is None and cusparselt.version_note("0.10.0") is None
    assert cusparselt.version_note("unknown (no GPU)") is None


def test_cuda_blocks_take_the_mosaic_gpu_kernel_where_the_cuda_table_measured_it_faster(
        monkeypatch):
    apply_fn, variables, x = model()
    masks = variant_masks("block:128x128")
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse", platform="cuda")
    assert {r.kernel for r in sp.report.rows if r.sparse} == {"pallas-triton"}  # No table.
    table = costs.CostTable("cuda", "a test GPU", {}, (), {"128x128": {
        "kernel": "mosaic", "mosaic_over_triton": 0.7, "shapes": 3}})
    monkeypatch.setattr(costs, "load_table", lambda platform: table)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse", platform="cuda")
    assert {r.kernel for r in sp.report.rows if r.sparse} == {"pallas-mosaic-gpu"}
    calls = custom_calls(sp, "cuda")
    assert any(c.startswith("mosaic_gpu") for c in calls) and "__gpu$xla.gpu.triton" not in \
        calls, calls
