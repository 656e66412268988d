#!/usr/bin/env bash
# Sets up (scripts/setup.sh, with the cuSPARSELt FFI library so models lower for NVIDIA GPUs)
# and runs the linter and the test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
JAXSPARSE_GPU_BUILD=1 bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check jaxsparse experiments scripts tests
echo "== pytest (one line per test file; about 10 minutes on 2 CPU cores)"
start=$(date +%s)
set +e
.venv/bin/python -m pytest --durations=5 "$@"
rc=$?
set -e
echo "== pytest finished in $(( $(date +%s) - start )) s (exit status $rc)"
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
