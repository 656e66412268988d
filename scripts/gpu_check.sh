#!/usr/bin/env bash
# On an NVIDIA GPU, in one command: build the cuSPARSELt FFI library, run the GPU correctness
# tests, then the benchmark (scripts/bench_gpu.py; its flags pass through). Needs jax with CUDA
# and nvidia-cusparselt-cu13 (`pip install -e '.[gpu]'`); about 8 minutes on an H100/H200.
#   bash scripts/gpu_check.sh --batches=256,1024 --out=docs/results
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }
stamp "1/3 building the cuSPARSELt FFI library"
"$PY" -m jaxsparse.gpu.build
"$PY" -m jaxsparse.doctor
stamp "2/3 GPU correctness tests (tests/gpu)"
"$PY" -m pytest -q -x -p no:cacheprovider tests/gpu
stamp "3/3 benchmark: scripts/bench_gpu.py $*"
"$PY" scripts/bench_gpu.py "$@"
stamp "done"
