#!/usr/bin/env bash
# The sanitizer job: a Debug build with AddressSanitizer and
# UndefinedBehaviorSanitizer (in build-asan/) running the unit, privacy,
# command-line and integration tests. The crash tests (kill -9 of child
# processes), the training and the DP-statistics tests stay release-only:
# they exercise LibTorch far more than our code, at ten times the cost.
# Usage: scripts/sanitize.sh [extra ctest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-build
# -O1: Debug's assertions and frame pointers at a speed the integration
# tests' deadlines tolerate.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-g -O1" \
  -DFLOTILLA_SANITIZE=ON -DFLOTILLA_BUILD_BENCH=OFF ${FLOTILLA_CMAKE_ARGS:-} >/dev/null
cmake --build build-asan -j "$(nproc)" --target flotilla flotilla_unit_tests flotilla_privacy_tests \
  flotilla_cli_tests flotilla_integration_tests
start=$(date +%s)
# Leak checking stays on; UBSan reports abort the test (halt_on_error).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
ctest --test-dir build-asan --output-on-failure -j "$(nproc)" --timeout 900 -L "unit|privacy|cli|integration" "$@"
echo "sanitize: finished in $(( $(date +%s) - start )) s"
