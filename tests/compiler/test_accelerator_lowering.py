"""Models compiled on this CPU machine for ``cuda`` and ``tpu`` lower with those targets' kernels.

No accelerator is needed: ``jax.jit(...).trace(...).lower(lowering_platforms=(p,))`` lowers for
any platform. The lowered module must hold the cuSPARSELt FFI target for 2:4 layers and the
Pallas Triton kernel for block layers (cuda), and Mosaic's ``tpu_custom_call`` (tpu). The
kernels' numerics are checked in interpret mode in tests/kernels/ and on a GPU in tests/gpu/.
"""


import jax
import jax.numpy as jnp
import pytest

import jaxsparse as js
from jaxsparse.compiler.aot import cuda_target
from jaxsparse.compiler.aot import custom_calls as lowered_calls
from jaxsparse.kernels.gpu import cusparselt
from tests.helpers import accel_model as model
from tests.helpers import variant_masks

# Layers a 128x128 block does not tile stay dense (with a warning): expected on this model.
pytestmark = pytest.mark.filterwarnings("ignore::jaxsparse.SkippedLayerWarning")

needs_cusparselt = pytest.mark.skipif(
    not cusparselt.available(), reason=f"cuSPARSELt FFI library: {cusparselt.status().reason}")


def custom_calls(sp, platform):
    _, _, x = model()
    with cuda_target():  # Names the target GPU where jax asks for it (0.11+), no GPU needed.
        text = jax.jit(sp).trace(sp.variables, x).lower(lowering_platforms=(platform,)).as_text()
    return lowered_calls(text)


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
