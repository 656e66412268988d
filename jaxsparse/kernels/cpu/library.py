"""Loading the jaxsparse CPU kernel library (C++, XLA FFI) and registering its targets.

The library is built from ``jaxsparse/kernels/cpu/csrc`` by the package's install (``pip install
-e .``, which ``scripts/setup.sh`` runs) when a C++ compiler is present. It is optional: where
it is missing or does not load, :func:`status` says why and every sparse layer keeps its
portable XLA lowering (``js.sparsify``'s report names the kernel each layer got).
"""

from __future__ import annotations

import functools
import importlib.machinery
import os

from jaxsparse import ffi_library
from jaxsparse.ffi_library import LibraryStatus

LIBRARY_STEM = "_cpu_kernels"
TARGETS = {
    "jaxsparse_block_sparse_conv_f32": "JaxsparseBlockSparseConvF32",
    "jaxsparse_ell_sparse_conv_f32": "JaxsparseEllSparseConvF32",
}
DISABLE_ENV = "JAXSPARSE_DISABLE_CPU_KERNELS"
REBUILD_HINT = ("rebuild it with a C++ compiler (g++) present: `pip install -e .` in the "
                "repository (or `bash scripts/setup.sh`)")


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
    return ffi_library.load(library_path(), TARGETS, "cpu", disable_env=DISABLE_ENV,
                            missing=f"the CPU kernel library was not built; {REBUILD_HINT}",
                            hint=REBUILD_HINT)[1]


def available() -> bool:
    """True when the CPU kernels are built and registered."""
    return status().available
