#!/usr/bin/env bash
# Starts N local processes of one run, to try multi-process (multi-host) training on one machine:
# each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID and, on CPU,
# DEVICES_PER_PROCESS local devices (default 2); process 0 prints, the others log to
# <workdir>.proc<i>.log. Exits with the first failing process's status.
#   bash scripts/launch_local.sh 2 -m experiments.run --config=experiments/configs/smoke.py \
#       --workdir=runs/smoke_2proc
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash scripts/launch_local.sh N <python args...>  (N >= 1 processes)" >&2
  exit 2
fi
N=$1; shift
PY=${PYTHON:-.venv/bin/python}
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
DEV=${DEVICES_PER_PROCESS:-2}
LOGDIR=${LOGDIR:-runs/launch_local}
mkdir -p "$LOGDIR"
pids=()
for i in $(seq 0 $(( N - 1 ))); do
  env JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}" PYTHONUNBUFFERED=1 \
    XLA_FLAGS="--xla_force_host_platform_device_count=$DEV ${XLA_FLAGS:-}" \
    "$PY" "$@" > >(if [ "$i" = 0 ]; then cat; else cat > "$LOGDIR/proc$i.log"; fi) 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
  wait "$p" || { s=$?; if [ "$rc" = 0 ]; then rc=$s; fi; }
done
exit "$rc"
