#!/usr/bin/env bash
# On an NVIDIA GPU, in one command: build the cuSPARSELt FFI library, print the doctor's
# findings, run the GPU correctness tests (tests/gpu), then the benchmark (scripts/bench_gpu.py):
# the GEMM sweep (every ResNet-50 GEMM shape: dense, each cuSPARSELt plan, block 90%), the cuda
# cost table from it (jaxsparse/compiler/cost_tables/cuda.json, read by policy="auto"), and end
# to end at batch 256 and 1024 (dense as written, dense optimized, 2:4 precompressed, block 90%
# 64x64 and 128x128, channel 50%, channel 50% + 2:4), printing the elapsed time at each step.
# Results files go to docs/results/<device>-<date>.{json,md} as the benchmark writes them.
# Flags pass through to bench_gpu.py and override the defaults below. The benchmark gets what
# is left of GPU_CHECK_BUDGET_S (default 540 s, 9 minutes) and skips an end-to-end batch size it
# predicts would not finish in it, saying so. Needs jax with CUDA and the NVIDIA wheels
# (`pip install -e '.[gpu]'`).
#   bash scripts/gpu_check.sh [--batches=256,1024] [--sections=gemm,e2e]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s of ${BUDGET} s] $*"; }
stamp "1/3 building the cuSPARSELt FFI library"
"$PY" -m jaxsparse.kernels.gpu.build
"$PY" -m jaxsparse.doctor
stamp "2/3 GPU correctness tests (tests/gpu)"
# A failing test is reported and ends the command with its status, after the benchmark: the
# benchmark checks every kernel itself and leaves out (with the reason) any that fails.
set +e
"$PY" -m pytest -q -p no:cacheprovider tests/gpu
tests_rc=$?
set -e
[ "$tests_rc" = 0 ] || stamp "tests/gpu FAILED (exit $tests_rc); running the benchmark anyway"
left=$(( BUDGET - ($(date +%s) - t0) ))
stamp "3/3 benchmark: scripts/bench_gpu.py (${left} s left) $*"
"$PY" scripts/bench_gpu.py --out=docs/results --batches=256,1024 \
  --variants=nm24,block90_64,block90_128,channel50,channel50_nm24 \
  --cost_table=jaxsparse/compiler/cost_tables/cuda.json --budget_s="$left" "$@"
stamp "done (tests/gpu exit status $tests_rc)"
exit "$tests_rc"
