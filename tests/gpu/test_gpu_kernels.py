"""On-device correctness of the NVIDIA GPU kernels (cuSPARSELt 2:4, Pallas Triton block-sparse).

These need an NVIDIA GPU and the built cuSPARSELt library; without them they are skipped with the
reason (CI has no GPU: there the same kernels are checked in interpret mode and by lowering, in
tests/compiler/test_accelerator_lowering.py). ``bash scripts/gpu_check.sh`` runs them on a GPU
before the benchmark. Tolerances are bf16's (rtol 1e-2 of the output scale).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsparse as js
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.kernels.gpu.block_sparse import block_sparse_matmul_gpu
from jaxsparse.primitives.block_sparse_dot import (
    block_sparse_dot,
    block_sparse_dot_reference,
    pack_block_ell,
)
from jaxsparse.primitives.nm_dot import nm_dot, nm_dot_reference, pack_nm, unpack_nm
from tests.helpers import accel_model as model
from tests.helpers import variant_masks

ON_GPU = jax.devices()[0].platform == "gpu"
_MISSING = [what for what, ok in (("an NVIDIA GPU", ON_GPU), (
    "the cuSPARSELt FFI library (python -m jaxsparse.kernels.gpu.build)", cusparselt.available()))
    if not ok]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason="needs " + " and ".join(_MISSING))


def close(got, ref, rtol=1e-2):
    got, ref = np.asarray(got, np.float32), np.asarray(ref, np.float32)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))


def packed_24(k, n, dtype, seed=0):
    w = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32)
    values, idx = pack_nm(w, np.asarray(js.compute_mask(w, "2:4")), 2, 4)
    return jnp.asarray(values, dtype), jnp.asarray(idx)


def lowered_text(fn, *args):
    return jax.jit(fn).trace(*args).lower().as_text()


# ResNet50 GEMM shapes (K, cout) and odd row counts.
@pytest.mark.parametrize("k,n", [(64, 256), (576, 64), (2048, 1024), (4608, 512)])
@pytest.mark.parametrize("rows", [37, 1000])
def test_nm_dot_cusparselt_equals_reference(k, n, rows):
    dtype = jnp.bfloat16
    values, idx = packed_24(k, n, dtype)
    x = jax.random.normal(jax.random.key(0), (rows, k), dtype)
    fn = lambda x, v, i: nm_dot(x, v, i, m=4)  # noqa: E731
    assert "jaxsparse_cusparselt_matmul" in lowered_text(fn, x, values, idx)
    close(jax.jit(fn)(x, values, idx),
          nm_dot_reference(x.astype(jnp.float32), values.astype(jnp.float32), idx, m=4))


def test_nm_dot_precompressed_blob_equals_reference():
    values, idx = packed_24(576, 128, jnp.bfloat16)
    blob = jax.jit(cusparselt.compress)(unpack_nm(values, idx, 576, 4))
    x = jax.random.normal(jax.random.key(4), (3000, 576), jnp.bfloat16)
    fn = lambda x, v, b: nm_dot(x, v, idx, m=4, blob=b)  # noqa: E731
    close(jax.jit(fn)(x, values, blob), nm_dot_reference(x.astype(jnp.float32),
                                                         values.astype(jnp.float32), idx, m=4))


@pytest.mark.parametrize("layout", cusparselt.LAYOUTS)
@pytest.mark.parametrize("k,n", [(576, 128), (2048, 512)])
def test_every_cusparselt_plan_equals_reference_and_reports_its_algorithm(layout, k, n):
    values, idx = packed_24(k, n, jnp.bfloat16, seed=k)
    blob = jax.jit(cusparselt.compress, static_argnums=1)(unpack_nm(values, idx, k, 4), layout)
    x = jax.random.normal(jax.random.key(5), (1003, k), jnp.bfloat16)
    fn = lambda x, v, b: nm_dot(x, v, idx, m=4, blob=b, layout=layout)  # noqa: E731
    close(jax.jit(fn)(x, values, blob), nm_dot_reference(x.astype(jnp.float32),
                                                         values.astype(jnp.float32), idx, m=4))
    plan = [p for p in cusparselt.plans() if (p["layout"], p["k"], p["cout"], p["n"]) ==
            (layout, k, n, 1008)]
    assert len(plan) == 1 and 0 <= plan[0]["alg_id"] <= plan[0]["max_alg_id"], plan


def test_f16_keeps_the_portable_path():
    values, idx = packed_24(64, 64, jnp.float16)
    x = jnp.ones((8, 64), jnp.float16)
    fn = lambda x, v, i: nm_dot(x, v, i, m=4)  # noqa: E731
    assert "cusparselt" not in lowered_text(fn, x, values, idx)
    close(jax.jit(fn)(x, values, idx), nm_dot_reference(x, values, idx, m=4))


def test_nm_dot_cusparselt_vmap_and_gradients():
    values, idx = packed_24(256, 128, jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (3, 50, 256), jnp.bfloat16)
    fn = lambda x, v: nm_dot(x, v, idx, m=4)  # noqa: E731
    ref = lambda x, v: nm_dot_reference(x, v, idx, m=4)  # noqa: E731
    close(jax.jit(jax.vmap(fn, (0, None)))(x, values), jax.vmap(ref, (0, None))(
        x.astype(jnp.float32), values.astype(jnp.float32)))
    loss = lambda f: lambda x, v: jnp.sum(f(x, v).astype(jnp.float32) ** 2)  # noqa: E731
    gx, gv = jax.jit(jax.grad(loss(fn), argnums=(0, 1)))(x[0], values)
    rx, rv = jax.grad(loss(ref), argnums=(0, 1))(x[0].astype(jnp.float32),
                                                 values.astype(jnp.float32))
    close(gx, rx, 3e-2)
    close(gv, rv, 3e-2)


@pytest.mark.parametrize("gpu_kernel,b", [("triton", 32), ("triton", 128), ("mosaic", 64),
                                          ("mosaic", 128)])
@pytest.mark.parametrize("rows", [5, 300])
def test_block_sparse_gpu_kernels_equal_reference(gpu_kernel, b, rows):
    from jaxsparse.kernels.gpu.block_sparse_mosaic import block_sparse_matmul_mosaic

    kernel = {"triton": block_sparse_matmul_gpu, "mosaic": block_sparse_matmul_mosaic}
    rng = np.random.default_rng(2)
    k, n = 512, 256
    w = rng.standard_normal((k, n)).astype(np.float32)
    mask = np.kron(rng.random((k // b, n // b)) < 0.3, np.ones((b, b), bool))
    values, brows = pack_block_ell(w, mask, b, b)
    x = jax.random.normal(jax.random.key(2), (rows, k), jnp.bfloat16)
    v, brows = jnp.asarray(values, jnp.bfloat16), jnp.asarray(brows)
    close(kernel[gpu_kernel](x, v, brows), block_sparse_dot_reference(
        x.astype(jnp.float32), v.astype(jnp.float32), brows))
    fn = lambda x, v, r: block_sparse_dot(x, v, r, impl="pallas", gpu_kernel=gpu_kernel)  # noqa
    assert {"triton": "triton", "mosaic": "mosaic_gpu"}[gpu_kernel] in lowered_text(fn, x, v,
                                                                                   brows)


@pytest.mark.parametrize("variant", ["2:4", "block:32x32", "channel", "channel+2:4"])
def test_compiled_resnet_on_gpu_equals_masked(variant):
    apply_fn, variables, _ = model()  # The model tests/compiler lowers for cuda, run here.
    x = jax.random.normal(jax.random.key(3), (8, 64, 64, 3), jnp.bfloat16)
    masks = variant_masks(variant)
    sp = js.sparsify(apply_fn, variables, masks, x, policy="sparse")
    masked = js.apply_masks(variables, masks) if "params" in masks else \
        {**variables, "params": js.apply_masks(variables["params"], masks)}
    close(jax.jit(sp)(sp.variables, x), apply_fn(masked, x), 3e-2)
    kernels = {r.kernel for r in sp.report.rows if r.sparse}
    assert ("cusparselt" in kernels) == ("2:4" in variant), kernels
    assert ("pallas-triton" in kernels) == ("block" in variant), kernels
