#!/usr/bin/env bash
# On an NVIDIA GPU, in one command: build the cuSPARSELt FFI library, print the doctor's
# findings, run the GPU correctness tests (tests/gpu), then the benchmark (scripts/bench_gpu.py;
# its flags pass through), printing the elapsed time at each step. Needs jax with CUDA and the
# NVIDIA wheels (`pip install -e '.[gpu]'`). Seen on an H200: build 4 s, tests about 1 min,
# GEMM section 1 min, end to end about 2 min per batch size (each variant is pruned, compiled
# and checked first): about 8 minutes with the defaults.
#   bash scripts/gpu_check.sh --batches=256,1024 --out=docs/results
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }
stamp "1/3 building the cuSPARSELt FFI library"
"$PY" -m jaxsparse.kernels.gpu.build
"$PY" -m jaxsparse.doctor
stamp "2/3 GPU correctness tests (tests/gpu)"
"$PY" -m pytest -q -x -p no:cacheprovider tests/gpu
stamp "3/3 benchmark: scripts/bench_gpu.py $*"
"$PY" scripts/bench_gpu.py "$@"
stamp "done"
