#!/usr/bin/env bash
# Sets up from nothing and runs the main job on the embedded Fashion-MNIST default: the short
# sparsity study (dense baseline + sparse variants, trained, compiled, evaluated, benchmarked),
# then MLPerf LoadGen's Offline scenario (shortened) for dense and the best model within 99%.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR=${WORKDIR:-runs/study_quickstart}
echo "== sparsity study on Fashion-MNIST (ResNet-18, width 0.25): $WORKDIR"
start=$(date +%s)
.venv/bin/python -m experiments.study --config=experiments/configs/study_quickstart.py \
  --workdir="$WORKDIR" "$@"
echo "== MLPerf LoadGen, Offline (shortened run): dense and the best model within 99%"
.venv/bin/python -m experiments.mlperf --config=experiments/configs/mlperf_quickstart.py \
  --workdir="$WORKDIR"
echo "== done in $(( $(date +%s) - start )) s (TensorBoard from this checkout: .venv/bin/tensorboard --logdir $WORKDIR)"
