#!/usr/bin/env bash
# Adds a grid of sparsities for one pattern to a study: the new points join the same report and
# Pareto plot (finished variants are reused).
#   bash scripts/sweep.sh [WORKDIR] [PATTERN] [SPARSITIES] [CONFIG] [extra flags...]
#   bash scripts/sweep.sh runs/study_fmnist block:16x16 "0.5,0.75,0.9"
set -euo pipefail
cd "$(dirname "$0")/.."
WORKDIR=${1:-runs/study_fmnist}
PATTERN=${2:-block:16x16}
SPARSITIES=${3:-0.5,0.75,0.9}
CONFIG=${4:-experiments/configs/study_fmnist.py}
shift $(( $# < 4 ? $# : 4 ))
.venv/bin/python -m experiments.study --config="$CONFIG" --workdir="$WORKDIR" \
  --config.sweep.pattern="$PATTERN" --config.sweep.sparsities="($SPARSITIES,)" "$@"
