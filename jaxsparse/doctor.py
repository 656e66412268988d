"""``python -m jaxsparse.doctor``: what jaxsparse can run on this machine, and why not.

Prints the platform and devices, the jax/jaxlib versions, whether the CPU kernel library and the
cuSPARSELt FFI library are built and load (with the cuSPARSELt version when a GPU is present),
and which sparse kernels lower here for each target platform (lowering needs no accelerator).
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np


def _lowers(fn, args, platform: str) -> str:
    """``"ok (custom calls)"`` when ``fn`` lowers for ``platform``, else the error's first line."""
    from jaxsparse.compiler.aot import cuda_target, custom_calls

    t0 = time.perf_counter()
    try:
        with cuda_target():
            text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    except Exception as e:  # noqa: BLE001 - reporting any lowering failure is the point.
        return f"no ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    calls = sorted(custom_calls(text))
    return f"ok in {time.perf_counter() - t0:.1f} s ({', '.join(calls) or 'no custom call'})"


def checks() -> list[tuple[str, str]]:
    """``[(what, finding), ...]`` in print order."""
    from jaxsparse import host_memory
    from jaxsparse.kernels.cpu import library as cpu_library
    from jaxsparse.kernels.gpu import cusparselt
    from jaxsparse.primitives.block_sparse_dot import block_sparse_dot
    from jaxsparse.primitives.nm_dot import nm_dot

    devs = jax.devices()
    out = [("python", sys.version.split()[0]), ("jax / jaxlib", f"{jax.__version__} / "
                                                                 f"{jaxlib.__version__}"),
           ("default platform", devs[0].platform),
           ("devices", ", ".join(f"{d.device_kind} ({d.id})" for d in devs))]
    st = cpu_library.status()
    out.append(("CPU kernel library", "loaded: " + st.path if st.available else st.reason))
    cs = cusparselt.status()
    out.append(("cuSPARSELt FFI library", "loaded: " + cs.path if cs.available else cs.reason))
    out.append(("host memory", host_memory.sentence(host_memory.state().as_dict())))
    if devs[0].platform == "gpu":
        version = cusparselt.version()
        note = cusparselt.version_note(version)
        out.append(("cuSPARSELt version", version + (f" (WARNING: {note})" if note else "")))
    x = jnp.zeros((64, 256), jnp.bfloat16)
    values = jnp.zeros((128, 128), jnp.bfloat16)
    idx = jnp.asarray(np.tile(np.array([[0], [1]], np.int8), (64, 128)))
    out.append(("nm_dot 2:4 -> cuda", _lowers(lambda x, v, i: nm_dot(x, v, i, m=4),
                                               (x, values, idx), "cuda")))
    bv = jnp.zeros((1, 1, 128, 128), jnp.bfloat16)
    br = jnp.zeros((1, 1), jnp.int32)
    for platform, label, kernel in (("cuda", "Pallas Triton", "triton"),
                                    ("cuda", "Pallas Mosaic GPU", "mosaic"),
                                    ("tpu", "Pallas Mosaic TPU", "triton")):
        out.append((f"block_sparse_dot 128x128 -> {platform} ({label})", _lowers(
            lambda x, v, r, g=kernel: block_sparse_dot(x, v, r, impl="pallas", gpu_kernel=g),
            (x, bv, br), platform)))
    return out


def main() -> int:
    """Prints every check, one line each."""
    rows = checks()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
