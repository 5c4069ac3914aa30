#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (CTest over Catch2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
start=$(date +%s)
ctest --test-dir build --output-on-failure -j "$(nproc)" --timeout 600 "$@"
echo "tests: finished in $(( $(date +%s) - start )) s"
