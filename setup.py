"""Builds the optional C++ CPU kernel library (XLA FFI) with the package.

Metadata lives in setup.cfg. The library ``jaxsparse/kernels/cpu/_cpu_kernels*.so`` is compiled
from ``jaxsparse/kernels/cpu/csrc`` against the XLA FFI headers that jaxlib ships
(``jax.ffi.include_dir()``); a build failure (no compiler, no headers) is reported and the
package installs without it, falling back to the portable XLA lowerings.
"""

import importlib.util
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = os.path.join("jaxsparse", "kernels", "cpu", "csrc")


def ffi_include_dir() -> str | None:
    """jaxlib's bundled XLA FFI headers, found without importing jax."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "include")
    return path if os.path.isfile(os.path.join(path, "xla", "ffi", "api", "ffi.h")) else None


class BuildKernels(build_ext):
    """build_ext that adds the FFI headers and explains a failed optional build."""

    def build_extension(self, ext):
        include = ffi_include_dir()
        if include is None:
            print("jaxsparse: jaxlib's XLA FFI headers were not found; the CPU kernels are not "
                  "built (the portable XLA lowerings will be used).")
            return
        ext.include_dirs.append(include)
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001 - any compiler failure leaves the fallback.
            print(f"jaxsparse: building the CPU kernels failed ({e}); the portable XLA "
                  f"lowerings will be used. Install g++ and reinstall to get them.")


setup(
    ext_modules=[Extension(
        "jaxsparse.kernels.cpu._cpu_kernels",
        sources=[os.path.join(CSRC, f) for f in ("block_conv.cc", "ell_conv.cc")],
        depends=[os.path.join(CSRC, f) for f in ("conv.h", "block_tile.inc")],
        language="c++",
        extra_compile_args=["-std=c++17", "-O3", "-Wno-attributes"],
        optional=True,
    )],
    cmdclass={"build_ext": BuildKernels},
)
