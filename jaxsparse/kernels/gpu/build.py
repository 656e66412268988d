"""Builds the cuSPARSELt XLA FFI library: ``python -m jaxsparse.kernels.gpu.build``.

Compiles ``jaxsparse/kernels/gpu/csrc/cusparselt_nm.cc`` with g++ (no nvcc needed) against the
XLA FFI headers of the installed jaxlib (``jax.ffi.include_dir()``), ``cusparseLt.h`` and the CUDA
runtime headers, linking ``libcusparseLt.so.0`` and ``libcudart``. Headers and libraries are
found in the NVIDIA wheels that ``pip install 'jaxsparse[gpu]'`` brings
(``nvidia-cusparselt-cu13``, ``nvidia-cuda-runtime``), else under ``$CUDA_HOME`` /
``/usr/local/cuda``; ``--cusparselt DIR`` names a cuSPARSELt folder with ``include/`` and
``lib/``. The library lands in the package (or ``--out``) where
:mod:`jaxsparse.kernels.gpu.cusparselt` loads it. A GPU is not needed to build or to lower.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from jaxsparse.kernels.gpu.cusparselt import LIBRARY, SOURCE, nvidia_dirs


def find(name: str, sub: str, extra: list[str], also: str | None = None) -> str | None:
    """The first folder ``<root>/<sub>`` holding ``name`` (and ``also``) among the known roots."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    toolkit = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    roots = [*extra, *nvidia_dirs(), cuda_home, *toolkit, "/usr"]
    subs = [sub, f"{sub}64"] if sub == "lib" else [sub]
    for root in roots:
        for s in subs:
            if os.path.exists(os.path.join(root, s, name)) and \
                    (also is None or os.path.exists(os.path.join(root, s, also))):
                return os.path.join(root, s)
    return None


def build(out: str = LIBRARY, cusparselt: str | None = None, verbose: bool = True) -> str:
    """Compiles the library to ``out`` and returns its path.

    Raises:
        RuntimeError: naming the missing compiler, header or library, or the compiler's error.
    """
    import jax

    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"no C++ compiler {cxx!r} on PATH; install g++ (or set CXX)")
    extra = [cusparselt] if cusparselt else []
    need = {"cusparseLt.h": find("cusparseLt.h", "include", extra),
            "cuda_runtime_api.h": find("cuda_runtime_api.h", "include", extra,
                                      also=os.path.join("crt", "host_defines.h")),
            "libcusparseLt.so.0": find("libcusparseLt.so.0", "lib", extra)}
    cudart = next(((n, d) for n in ("libcudart.so.13", "libcudart.so.12", "libcudart.so")
                   if (d := find(n, "lib", extra))), (None, None))
    need["libcudart.so"] = cudart[1]
    missing = [k for k, v in need.items() if v is None]
    if missing:
        raise RuntimeError(f"cannot build the cuSPARSELt FFI library: {', '.join(missing)} not "
                           f"found; `pip install 'jaxsparse[gpu]'` (nvidia-cusparselt-cu13, "
                           f"nvidia-cuda-runtime, nvidia-cuda-crt) or pass --cusparselt DIR / "
                           f"set CUDA_HOME")
    includes = sorted({jax.ffi.include_dir(), need["cusparseLt.h"], need["cuda_runtime_api.h"]})
    libdirs = sorted({need["libcusparseLt.so.0"], cudart[1]})
    cmd = [cxx, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wno-attributes", SOURCE,
           *(f"-I{d}" for d in includes), *(f"-L{d}" for d in libdirs),
           *(f"-Wl,-rpath,{d}" for d in libdirs),
           "-l:libcusparseLt.so.0", f"-l:{cudart[0]}", "-o", out]
    t0 = time.perf_counter()
    if verbose:
        print("jaxsparse.kernels.gpu.build:", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"g++ failed building {SOURCE}:\n{res.stderr[-4000:]}")
    if verbose:
        print(f"jaxsparse.kernels.gpu.build: built {out} in {time.perf_counter() - t0:.1f} s",
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints one line and returns 1 when the build is not possible."""
    p = argparse.ArgumentParser(prog="python -m jaxsparse.kernels.gpu.build",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=LIBRARY, help="where to write the library")
    p.add_argument("--cusparselt", default=None, help="a cuSPARSELt folder (include/, lib/)")
    args = p.parse_args(argv)
    try:
        build(args.out, args.cusparselt)
    except RuntimeError as e:
        print(f"jaxsparse.kernels.gpu.build: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
