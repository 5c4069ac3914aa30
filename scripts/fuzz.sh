#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-fuzz/ and
# runs the aggregator's message-handling fuzzer. Usage:
#   scripts/fuzz.sh [SECONDS=60]     (CI runs a short smoke: 30 s)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
bash scripts/setup.sh --no-build
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
  -DFLOTILLA_FUZZ=ON -DFLOTILLA_BUILD_TESTS=OFF -DFLOTILLA_BUILD_BENCH=OFF >/dev/null
cmake --build build-fuzz --target aggregator_fuzzer -j "$(nproc)"
corpus=build-fuzz/corpus
mkdir -p "$corpus"
echo "fuzz: running aggregator_fuzzer for ${seconds}s"
build-fuzz/fuzz/aggregator_fuzzer -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 "$corpus" 2>&1 |
  grep -E "^#[0-9]+.*(DONE|pulse)|stat::|ERROR|SUMMARY" | tail -15
echo "fuzz: no crash in ${seconds}s"
