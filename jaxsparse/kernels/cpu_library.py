"""Loading the jaxsparse CPU kernel library (C++, XLA FFI) and registering its targets.

The library is built from ``jaxsparse/kernels/csrc`` by the package's install (``pip install
-e .``, which ``scripts/setup.sh`` runs) when a C++ compiler is present. It is optional: where
it is missing or does not load, :func:`status` says why and every sparse layer keeps its
portable XLA lowering (``js.sparsify``'s report names the kernel each layer got).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.machinery
import os

import jax

LIBRARY_STEM = "_cpu_kernels"
TARGETS = {
    "jaxsparse_block_sparse_conv_f32": "JaxsparseBlockSparseConvF32",
    "jaxsparse_ell_sparse_conv_f32": "JaxsparseEllSparseConvF32",
}
DISABLE_ENV = "JAXSPARSE_DISABLE_CPU_KERNELS"
REBUILD_HINT = ("rebuild it with a C++ compiler (g++) present: `pip install -e .` in the "
                "repository (or `bash scripts/setup.sh`)")


@dataclasses.dataclass(frozen=True)
class LibraryStatus:
    """Whether the CPU kernels can be used, where the library is, and why not otherwise."""

    available: bool
    path: str | None
    reason: str


def library_path() -> str | None:
    """Path of the built library inside the package, or None when it was not built."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, LIBRARY_STEM + suffix)
        if os.path.isfile(path):
            return path
    return None


@functools.cache
def status() -> LibraryStatus:
    """Loads the library once and registers its FFI targets for the ``cpu`` platform."""
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return LibraryStatus(False, None, f"disabled by {DISABLE_ENV}")
    path = library_path()
    if path is None:
        return LibraryStatus(False, None, f"the CPU kernel library was not built; "
                                          f"{REBUILD_HINT}")
    try:
        lib = ctypes.cdll.LoadLibrary(path)
        for target, symbol in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                        platform="cpu")
    except (OSError, AttributeError) as e:
        return LibraryStatus(False, path, f"{path} does not load ({e}); {REBUILD_HINT}")
    return LibraryStatus(True, path, "loaded")


def available() -> bool:
    """True when the CPU kernels are built and registered."""
    return status().available
