#!/usr/bin/env bash
# CI step, no accelerator needed: in its own venv (.venv-accel: jaxsparse[gpu] with the CUDA
# plugin, jax[tpu] with libtpu), build the cuSPARSELt FFI library, then COMPILE the sparse
# ResNet50 (224x224 bf16, batch 256; 2:4 and block 90%) for an H100 and for TPU v5e and v6e
# (scripts/check_accel.py), printing each compile's time and custom calls. Fails if any fails.
#   bash scripts/check_accel.sh [--targets=h100,v5e,v6e] [--variants=nm24,block90] [--batch=256]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ACCEL_VENV:-.venv-accel}
PY=${PYTHON:-python3}
t0=$(date +%s)
stamp() { echo "== [check_accel $(( $(date +%s) - t0 )) s] $*"; }
# The same jax as the main venv (scripts/setup.sh), when there is one.
JAX_PIN=""
if [ -x .venv/bin/python ]; then
  JAX_PIN="==$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
fi
[ -x "$VENV/bin/python" ] || { stamp "creating $VENV"; "$PY" -m venv "$VENV"; }
want="$(cat setup.cfg setup.py | sha256sum | cut -d' ' -f1) jax$JAX_PIN"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
  stamp "installing jaxsparse[gpu] and jax[tpu]$JAX_PIN into $VENV (first time: a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e ".[gpu]" "jax[cuda13,tpu]$JAX_PIN" absl-py flatbuffers
  echo "$want" > "$VENV/.installed"
fi
stamp "building the cuSPARSELt FFI library"
"$VENV/bin/python" -m jaxsparse.kernels.gpu.build
stamp "compiling for the targets (JAX_PLATFORMS=cpu: compile-only devices, no accelerator)"
JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1 "$VENV/bin/python" scripts/check_accel.py "$@"
stamp "all compiles passed"
