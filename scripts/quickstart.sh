#!/usr/bin/env bash
# Sets up from nothing and runs the main job on the embedded Fashion-MNIST default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR=${WORKDIR:-runs/quickstart_resnet18}
echo "== training ResNet-18 (width 0.25) on Fashion-MNIST: $WORKDIR"
start=$(date +%s)
.venv/bin/python -m experiments.run --config=experiments/configs/fmnist_resnet18.py \
  --workdir="$WORKDIR" "$@"
echo "== done in $(( $(date +%s) - start )) s"
echo "Results: $WORKDIR/results.json"
echo "TensorBoard: .venv/bin/tensorboard --logdir $(dirname "$WORKDIR")"
