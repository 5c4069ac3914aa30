#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and
# runs each for SECONDS: the aggregator's message handling, then update
# validation and recovery from a store holding arbitrary records. Usage:
#   scripts/fuzz.sh [SECONDS=60]     (CI runs a short smoke: 30 s each)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
bash scripts/setup.sh --no-build
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
  -DFLOTILLA_FUZZ=ON -DFLOTILLA_BUILD_TESTS=OFF -DFLOTILLA_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz --target aggregator_fuzzer recovery_fuzzer -j "$(nproc)"
for target in aggregator_fuzzer recovery_fuzzer; do
  corpus=build-fuzz/corpus-$target
  [ "$target" = aggregator_fuzzer ] && [ -d build-fuzz/corpus ] && corpus=build-fuzz/corpus  # earlier runs' corpus
  mkdir -p "$corpus"  # new inputs go there; fuzz/regressions/ holds inputs that once crashed
  echo "fuzz: running $target for ${seconds}s"
  log=build-fuzz/$target.log
  if ! build-fuzz/fuzz/$target -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 \
      -artifact_prefix=build-fuzz/ "$corpus" "fuzz/regressions/$target" >"$log" 2>&1; then
    # The whole report: what the target printed, the stack, the input.
    grep -v -E "^#[0-9]+ +(NEW|REDUCE|pulse|INITED)" "$log" | tail -60
    echo "fuzz: $target FAILED; the input is in build-fuzz/crash-* (rerun: build-fuzz/fuzz/$target <file>)" >&2
    exit 1
  fi
  grep -E "^#[0-9]+.*(DONE|pulse)|stat::" "$log" | tail -8
  echo "fuzz: $target: no crash in ${seconds}s"
done
