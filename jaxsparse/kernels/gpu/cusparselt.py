"""2:4 GEMMs on NVIDIA GPUs through cuSPARSELt: loading the FFI library and calling it.

The library (``jaxsparse/kernels/gpu/_cusparselt.so``, built by
``python -m jaxsparse.kernels.gpu.build``) registers two XLA FFI targets for the CUDA
platform; registering needs no GPU, so a model that uses them lowers (and, with the CUDA
plugin, compiles ahead of time) on a CPU-only machine.
:func:`nm_matmul` is what ``nm_dot``'s CUDA lowering calls: it densifies the packed weight,
compresses it into cuSPARSELt's layout and multiplies. Where the library is missing or a shape
or dtype is not supported, :func:`status` / :func:`unsupported` say why and ``nm_dot`` keeps its
portable lowering.

The weight is compressed once, so how cuSPARSELt sees it is free: :data:`LAYOUTS` names the
four plans (the structured operand is ``A = W^T`` or ``B = W``, column- or row-major; see
``csrc/cusparselt_nm.cc``). The GPU figures time each per shape, and :func:`plans` lists the
algorithm id and split-K that ``cusparseLtMatmulSearch`` chose for every plan run so far.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxsparse import ffi_library
from jaxsparse.ffi_library import LibraryStatus

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "csrc", "cusparselt_nm.cc")
LIBRARY = os.path.join(HERE, "_cusparselt.so")
TARGETS = {
    "jaxsparse_cusparselt_compress": "JaxsparseCusparseltCompress",
    "jaxsparse_cusparselt_matmul": "JaxsparseCusparseltMatmul",
}
DISABLE_ENV = "JAXSPARSE_DISABLE_CUSPARSELT"
BUILD_HINT = ("build it with `python -m jaxsparse.kernels.gpu.build` (needs "
              "`pip install 'jaxsparse[gpu]'`)")
# bf16 only: f16 passed lowering but cuSPARSELt 0.8's algorithm search failed with an internal
# error on an H200 (docs/results/nvidia-h200-2026-11-26.md), so f16 keeps the portable path.
DTYPES = (jnp.bfloat16,)
# cuSPARSELt 0.8 refused a dense operand of 3.2M rows (ResNet50 batch 1024, 56x56): longer
# inputs run in chunks of this many rows (batch 256 at 56x56 is 0.8M rows and ran whole).
MAX_ROWS = 1 << 20
# The cuSPARSELt plans (csrc/cusparselt_nm.cc): structured operand A = W^T or B = W, and its
# order. "a_col" is the plan the first H200 figures ran (docs/results/nvidia-h200-2026-11-26.md).
LAYOUTS = ("a_col", "a_row", "b_row", "b_col")
DEFAULT_LAYOUT = "a_col"
# Layouts whose compress input is W^T (cout, K): the structured operand's memory in that order.
TRANSPOSED = ("a_row", "b_col")


def nvidia_dirs() -> list[str]:
    """``nvidia/<cu13|cu12>`` folders of the installed NVIDIA wheels (may be empty)."""
    try:
        import nvidia  # namespace package of the NVIDIA wheels
    except ImportError:
        return []
    out = []
    for root in getattr(nvidia, "__path__", []):
        for sub in ("cu13", "cusparselt", "cuda_runtime", "cu12"):
            path = os.path.join(root, sub)
            if os.path.isdir(path):
                out.append(path)
    return out


def _preload_wheel_libraries() -> None:
    """Loads libcusparseLt / libcudart from the NVIDIA wheels (global symbols), so the FFI
    library finds them wherever the wheels were installed."""
    for d in nvidia_dirs():
        for pattern in ("libcudart.so.1[0-9]", "libcusparseLt.so.0"):
            for path in sorted(glob.glob(os.path.join(d, "lib", pattern))):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, LibraryStatus]:
    return ffi_library.load(LIBRARY, TARGETS, "CUDA", disable_env=DISABLE_ENV,
                            missing=f"the cuSPARSELt FFI library is not built; {BUILD_HINT}",
                            hint=BUILD_HINT, preload=_preload_wheel_libraries)


def status() -> LibraryStatus:
    """Loads the library once and registers its FFI targets for the CUDA platform."""
    return _library()[1]


def available() -> bool:
    """True when the cuSPARSELt FFI targets are registered (lowering works; running needs a
    GPU)."""
    return status().available


def version() -> str:
    """The cuSPARSELt version the library runs, or why it cannot tell (no GPU, not built)."""
    lib, st = _library()
    if lib is None:
        return f"unknown ({st.reason})"
    v = lib.JaxsparseCusparseltVersion()
    if v < 0:
        return f"unknown (cusparseLtInit failed with status {-v - 1}: no usable GPU)"
    return f"{v // 1000000}.{v // 100 % 10000}.{v % 100}"


# cuSPARSELt 0.8.0 (the first H200 figures' version) had a Hopper performance regression that
# 0.8.1 fixed (its release notes); the gpu extras require 0.8.1 or newer.
FIXED_HOPPER = (0, 8, 1)


def version_note(text: str) -> str | None:
    """A warning for a :func:`version` older than :data:`FIXED_HOPPER` (None otherwise, or
    when the version is unknown)."""
    try:
        parts = tuple(int(p) for p in text.split("."))
    except ValueError:
        return None
    if parts < FIXED_HOPPER:
        return (f"cuSPARSELt {text} predates the Hopper performance fix of 0.8.1; install "
                f"nvidia-cusparselt-cu13>=0.8.1 (pip install -e '.[gpu]') before timing")
    return None


def unsupported(k: int, cout: int, dtype) -> str | None:
    """Why cuSPARSELt cannot run ``x (N, k) @ W (k, cout)`` 2:4 in ``dtype``; None when it can."""
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in DTYPES]:
        return (f"dtype {jnp.dtype(dtype).name} (jaxsparse runs cuSPARSELt 2:4 in bf16; f32 "
                f"has only 1:2 tf32 sparsity, f16 failed on-device checks)")
    if k % 32 or cout % 32:
        return f"shape K={k}, cout={cout} (the cuSPARSELt kernel needs K and cout multiples of 32)"
    return None


def blob_bytes(k: int, cout: int, dtype) -> int:
    """Bytes reserved for a compressed ``(k, cout)`` weight: the kept half of the values plus
    their 2-bit positions (``k * cout * 1.125`` B in 16 bits, as cuSPARSELt 0.8 reports for
    ResNet50's shapes in the ``a_col`` layout), 3% for the padding of the other layouts (not
    yet run on a device) and 4 KiB; the handler checks the real size and says if not.
    """
    itemsize = jnp.dtype(dtype).itemsize
    return k * cout * itemsize // 2 + k * cout // 8 + k * cout // 32 + 4096


def _check(k: int, cout: int, dtype, what: str, layout: str = DEFAULT_LAYOUT) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"cusparselt.{what}: layout={layout!r} is not valid; valid: "
                         f"{list(LAYOUTS)}.")
    why = unsupported(k, cout, dtype)
    if why is not None:
        raise ValueError(f"cusparselt.{what}: unsupported {why}.")


def compress(w: jax.Array, layout: str = DEFAULT_LAYOUT) -> jax.Array:
    """cuSPARSELt's compressed blob (uint8) of a dense 2:4 ``(K, cout)`` weight (CUDA only).

    Args:
        w: ``(K, cout)``, 2:4 along K.
        layout: the plan of :data:`LAYOUTS` the blob is for; :func:`matmul` must be given the
            same one.

    Raises:
        ValueError: for a dtype, shape or layout the kernel does not take (see
            :func:`unsupported`).
    """
    k, cout = w.shape
    _check(k, cout, w.dtype, "compress", layout)
    out = jax.ShapeDtypeStruct((blob_bytes(k, cout, w.dtype),), jnp.uint8)
    operand = w.T if layout in TRANSPOSED else w
    return jax.ffi.ffi_call("jaxsparse_cusparselt_compress", out)(operand, layout=layout)


def matmul(x: jax.Array, blob: jax.Array, cout: int, layout: str = DEFAULT_LAYOUT,
           alg_id: int = -1) -> jax.Array:
    """``x (N, K) @ W`` with ``W`` given as its compressed blob (CUDA only); N is padded to a
    multiple of 8 as cuSPARSELt requires, and split in chunks of at most :data:`MAX_ROWS`.

    Args:
        x: ``(N, K)`` in bf16.
        blob: :func:`compress`'s output for the same ``layout``.
        cout: output channels.
        layout: the plan of :data:`LAYOUTS`.
        alg_id: cuSPARSELt's algorithm id, or -1 to search for the fastest on the first call
            of each shape (``cusparseLtMatmulSearch``; :func:`plans` says what it chose).

    Raises:
        ValueError: for a dtype, shape or layout the kernel does not take (see
            :func:`unsupported`).
    """
    _check(x.shape[1], cout, x.dtype, "matmul", layout)
    n = x.shape[0]
    if n > MAX_ROWS:
        return jnp.concatenate([matmul(x[i:i + MAX_ROWS], blob, cout, layout, alg_id)
                                for i in range(0, n, MAX_ROWS)], axis=0)
    pad = _padded_rows(n) - n
    xp = jnp.pad(x, ((0, pad), (0, 0))) if pad else x
    out = jax.ShapeDtypeStruct((n + pad, cout), x.dtype)
    y = jax.ffi.ffi_call("jaxsparse_cusparselt_matmul", out)(
        xp, blob, layout=layout, alg_id=np.int32(alg_id))
    return y[:n] if pad else y


def _padded_rows(n: int) -> int:
    """The rows cuSPARSELt gets for ``n`` rows of ``x``: a multiple of 8."""
    return -(-n // 8) * 8


def _chunk_rows(n: int) -> set[int]:
    """The (padded) row counts of the plans :func:`matmul` makes for ``n`` rows."""
    return {_padded_rows(min(MAX_ROWS, n - i)) for i in range(0, n, MAX_ROWS)}


def nm_matmul(x: jax.Array, w_dense: jax.Array, layout: str = DEFAULT_LAYOUT) -> jax.Array:
    """``x @ W`` for a dense-stored 2:4 ``W``: compress, then the sparse GEMM (CUDA only)."""
    return matmul(x, compress(w_dense.astype(x.dtype), layout), w_dense.shape[1], layout)


PLAN_FIELDS = ("layout", "cout", "k", "n", "dtype", "alg_id", "max_alg_id", "split_k",
               "split_k_mode", "split_k_buffers", "workspace_bytes")


def plans() -> list[dict[str, int | str]]:
    """Every cuSPARSELt plan this process has made: layout, shape (``n``: rows of ``x``,
    padded), and the algorithm id, largest id, split-K (with its mode and buffers) and
    workspace it runs (-1 for a plan not run yet). Empty where the library is not loaded."""
    lib, _ = _library()
    if lib is None:
        return []
    fn = lib.JaxsparseCusparseltPlans
    fn.argtypes, fn.restype = (ctypes.c_char_p, ctypes.c_int), ctypes.c_int
    size = fn(None, 0) + 1
    buf = ctypes.create_string_buffer(size)
    fn(buf, size)
    out = []
    for line in buf.value.decode().splitlines():
        layout, *numbers = line.split()
        out.append(dict(zip(PLAN_FIELDS, [layout, *map(int, numbers)], strict=True)))
    return out


def plans_for(rows: int, k: int, cout: int) -> dict[str, dict[str, int]]:
    """Per layout, what :func:`plans` says the search chose for :func:`matmul` of ``rows``
    rows of ``x (rows, k)`` and a ``(k, cout)`` weight (its first chunk's plan, when longer
    inputs run in chunks): the algorithm id, largest id and split-K with its mode and
    buffers."""
    chunks = _chunk_rows(rows)
    out: dict[str, dict[str, int]] = {}
    for p in plans():
        if (p["k"], p["cout"]) == (k, cout) and p["n"] in chunks:
            out.setdefault(p["layout"], {f: p[f] for f in (
                "alg_id", "max_alg_id", "split_k", "split_k_mode", "split_k_buffers")})
    return out
