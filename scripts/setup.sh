#!/usr/bin/env bash
# Sets up jaxsparse from nothing: the Fashion-MNIST Debian package (when root), a .venv with the
# package and its test extras. Safe to rerun: it skips what is already done.
# JAXSPARSE_GPU_BUILD=1 (scripts/test.sh sets it) also installs the cuSPARSELt and CUDA runtime
# headers (extra "gpu-build", no GPU needed) and builds the cuSPARSELt FFI library, so models
# lower for NVIDIA GPUs with it, and the external dense runtimes (extra "baselines": ONNX
# Runtime, OpenVINO) so the ONNX export is tested against them.
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing Debian package dataset-fashion-mnist"
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
  else
    echo "!! Fashion-MNIST is not in $FMNIST_DIR and this is not root: run" \
         "'sudo apt-get install dataset-fashion-mnist' or set --config.data.dir." >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.jaxsparse-installed
# Reinstall when the metadata or the C++ kernels change (the install builds them).
extras="test"
if [ "${JAXSPARSE_GPU_BUILD:-0}" = 1 ]; then extras="test,gpu-build,baselines"; fi
want="$(cat setup.cfg pyproject.toml setup.py jaxsparse/kernels/cpu/csrc/* jaxsparse/kernels/gpu/csrc/* \
  | sha256sum | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "== installing jaxsparse[$extras] into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # PYTHONWARNINGS: no setuptools banner about editable installs (the warning is for
  # folders named like the package, which this checkout does not have outside jaxsparse/).
  PYTHONWARNINGS="ignore::UserWarning" .venv/bin/python -m pip install -q -e ".[$extras]"
  if [ "$extras" != test ]; then
    echo "== building the cuSPARSELt FFI library (python -m jaxsparse.kernels.gpu.build)"
    .venv/bin/python -m jaxsparse.kernels.gpu.build
  fi
  echo "$want" > "$stamp"
fi
echo "== setup done: $(.venv/bin/python -c '
import jax
from jaxsparse.kernels.gpu import cusparselt
from jaxsparse.kernels.cpu import library as cpu_library
st, gst = cpu_library.status(), cusparselt.status()
print("jax", jax.__version__, jax.devices(), "| CPU sparse kernels:",
      "built" if st.available else "NOT available (" + st.reason + ")",
      "| cuSPARSELt (NVIDIA GPUs):", "built" if gst.available else gst.reason)')"
