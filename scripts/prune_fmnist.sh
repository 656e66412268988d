#!/usr/bin/env bash
# Fine-tunes each pruned variant of a finished dense Fashion-MNIST run (NVIDIA ASP's recipe:
# one-shot magnitude pruning, then fine-tuning with the mask fixed; SR-STE for 2:4) and writes
# the accuracy table to docs/results/.
#   bash scripts/prune_fmnist.sh [DENSE_WORKDIR] [CONFIG] [FINETUNE_EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
DENSE=${1:-runs/study_quickstart/dense}
CONFIG=${2:-experiments/configs/fmnist_resnet18.py}
EPOCHS=${3:-1}
[ -f "$DENSE/results.json" ] || { echo "error: $DENSE has no finished run (results.json)" >&2; exit 2; }
OUT=$(dirname "$DENSE")
run() {  # name method pattern sparsity
  local dir="$OUT/$(basename "$DENSE")_$1"
  echo "== $1: $2 $3 sparsity=$4 -> $dir"
  .venv/bin/python -m experiments.run --config="$CONFIG" --workdir="$dir" \
    --config.init_from="$DENSE" --config.train.epochs="$EPOCHS" --config.train.warmup_epochs=0 \
    --config.sparsity.method="$2" --config.sparsity.pattern="$3" --config.sparsity.sparsity="$4" \
    --config.sparsity.begin_step=0 --config.progress=False
  DIRS+=("$dir")
}
DIRS=("$DENSE")
run nm24_oneshot one_shot 2:4 0
run nm24_srste sr_ste 2:4 0
run channel50 one_shot channel 0.5
run block90 one_shot block:16x16 0.9
run unstructured90 one_shot unstructured 0.9
.venv/bin/python scripts/collect_results.py "${DIRS[@]}" \
  --out "docs/results/pruning_$(basename "$DENSE")_$(.venv/bin/python -c 'import jax; print(jax.devices()[0].platform)').md"
